// Package proxy is moat's SMTP side: listeners, sessions, the strict DATA
// reader, delivery to upstreams (pooled, replies relayed verbatim) and to
// the built-in store.
package proxy

import (
	"context"
	"crypto/tls"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"moat/auth"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"moat/audit"
	"moat/config"
	"moat/filters"
	"moat/greylist"
	"moat/metrics"
	"moat/policies"
	"moat/store/mailbox"
	"moat/store/quarantine"
	"moat/store/users"
)

// Runtime is one loaded configuration: config, compiled policies and the
// certificate. It is immutable; a reload builds a new one and swaps it in.
// A session keeps the Runtime it started with.
type Runtime struct {
	Cfg      *config.Config
	Policies *policies.Set
	Cert     *tls.Certificate
	DNS      filters.Resolver // the resolver every check shares; nil: checks that need DNS say temperror
	Greylist greylist.Store   // the greylist store; nil: greylisting is skipped
	Users    *users.DB        // the built-in store's users; nil: every local name is taken
	// Quarantine keeps what the quarantine action holds back; nil: such
	// messages are refused with 452 4.3.1 (the client retries).
	Quarantine *quarantine.Store
	// Auth decides SMTP AUTH logins on submission listeners; nil: AUTH is
	// not offered.
	Auth auth.Authenticator
	// Mailboxes is the built-in store local routes deliver into; nil: a
	// store over Cfg.DataDir is opened per delivery (IMAP sessions then
	// learn of new mail at their next rescan, within 30 s, not at once).
	Mailboxes *mailbox.Store
	// Redis, when set (redis.addr), keeps the smtp.limits mail rates
	// (messages and recipients per network, messages per sender) that
	// every moat using it enforces together; nil: each process counts
	// in its own memory.
	Redis redis.UniversalClient
}

// Server runs the SMTP listeners of one moat.
type Server struct {
	rt        atomic.Pointer[Runtime]
	log       *audit.Logger
	pool      *pool
	tlsConfig *tls.Config
	spoolDir  string

	listeners []*listener
	wg        sync.WaitGroup // accept loops and sessions
	mu        sync.Mutex
	sessions  map[*session]struct{}
	shutting  atomic.Bool

	greylisters sync.Map // greylisterKey → *greylist.Greylister
	limits      *connLimiter
	mailLimits  *mailLimiter
	sleep       func(time.Duration) // the tarpit's wait; replaced by tests
	idleRelease atomic.Int64        // a time.Duration: see session.awaitCommand; shortened by tests
	idleFreed   atomic.Int64        // read buffers given back by idle sessions, for tests
}

type listener struct {
	conf config.Listener
	name string // "mx" or "submission", for the event
	ln   net.Listener
	m    *metrics.Listener
}

// New prepares a server for rt; Listen binds the sockets.
func New(rt *Runtime, log *audit.Logger) (*Server, error) {
	c := rt.Cfg
	spoolDir := filepath.Join(c.DataDir, "spool")
	if err := os.MkdirAll(spoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("smtp: spool directory: %w", err)
	}
	s := &Server{
		log:        log,
		spoolDir:   spoolDir,
		sessions:   map[*session]struct{}{},
		limits:     newConnLimiter(time.Now),
		mailLimits: newMailLimiter(time.Now, log),
		sleep:      time.Sleep,
		pool:       newPool(c.SMTP.UpstreamPool.MaxIdle, c.SMTP.UpstreamPool.IdleTimeout.D(), c.SMTP.UpstreamPool.MaxAge.D()),
	}
	s.rt.Store(rt)
	s.idleRelease.Store(int64(idleRelease))
	expectMetrics(rt)
	s.tlsConfig = &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := s.rt.Load().Cert; c != nil {
				return c, nil
			}
			return nil, errors.New("no certificate")
		},
	}
	return s, nil
}

// Listen binds every configured SMTP listener.
func (s *Server) Listen() error {
	// No TCP keepalive probes on client connections: every stage has a
	// read deadline, and the three setsockopt calls per connection cost
	// more than they find.
	lcfg := net.ListenConfig{KeepAlive: -1}
	for _, lc := range s.rt.Load().Cfg.SMTP.Listeners {
		ln, err := lcfg.Listen(context.Background(), "tcp", lc.Addr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("smtp: listen %s: %w", lc.Addr, err)
		}
		name := lc.Mode
		if name == "" {
			name = "mx"
		}
		s.listeners = append(s.listeners, &listener{conf: lc, name: name, ln: ln, m: metrics.SMTPListener(name)})
	}
	return nil
}

// Addrs returns the bound addresses, in listener order.
func (s *Server) Addrs() []net.Addr {
	var a []net.Addr
	for _, l := range s.listeners {
		a = append(a, l.ln.Addr())
	}
	return a
}

// Serve accepts connections on every listener until Shutdown.
func (s *Server) Serve(ctx context.Context) {
	for _, l := range s.listeners {
		s.wg.Add(1)
		go s.acceptLoop(ctx, l)
	}
}

func (s *Server) acceptLoop(ctx context.Context, l *listener) {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if s.shutting.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: back off, as net/http does.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > time.Second {
				delay = time.Second
			}
			s.log.Error("smtp.accept_error", zap.String("message", err.Error()))
			time.Sleep(delay)
			continue
		}
		delay = 0
		sess := s.newSession(l, c)
		if sess == nil {
			c.Close()
			l.m.Refused()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sess.serve(ctx)
		}()
	}
}

func (s *Server) newSession(l *listener, c net.Conn) *session {
	rt := s.rt.Load()
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return nil
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	dc := &deadlineConn{Conn: c}
	sess := &session{
		srv: s, rt: rt, l: l, raw: c, conn: c, dc: dc,
		br:      newReader(dc),
		bw:      newWriter(c),
		id:      newID(),
		start:   time.Now(),
		remote:  ap,
		trusted: rt.Cfg.Trusted(ap.Addr()),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		return nil
	}
	s.sessions[sess] = struct{}{}
	l.m.Opened()
	return sess
}

func (s *Server) forget(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// newID makes a session id: 16 characters of Crockford base32 from the
// runtime's ChaCha8 generator (unique, not secret; no system call).
func newID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return idEncoding.EncodeToString(b[:10])
}

// Reload swaps in a new runtime; sessions in progress keep theirs.
func (s *Server) Reload(rt *Runtime) {
	p := rt.Cfg.SMTP.UpstreamPool
	s.pool.setLimits(p.MaxIdle, p.IdleTimeout.D(), p.MaxAge.D())
	expectMetrics(rt)
	s.rt.Store(rt)
}

// expectMetrics creates the metric series of the policies, checks and
// upstreams rt names, so that they show as 0 before any traffic.
func expectMetrics(rt *Runtime) {
	var e metrics.Expected
	if rt.Policies != nil {
		seen := map[string]bool{}
		for _, p := range append(rt.Policies.Policies(), rt.Policies.Default()) {
			e.Policies = append(e.Policies, p.Name())
			for _, c := range p.Checks() {
				if !seen[c.Name()] {
					seen[c.Name()] = true
					e.Checks = append(e.Checks, c.Name())
				}
			}
		}
	}
	if rt.Cfg != nil {
		for _, r := range rt.Cfg.Routes {
			e.Upstreams = append(e.Upstreams, r.Upstream)
		}
	}
	metrics.Expect(e)
}

// Runtime returns the configuration in force.
func (s *Server) Runtime() *Runtime { return s.rt.Load() }

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.ln.Close()
	}
}

// Shutdown stops accepting, tells idle sessions goodbye (421), lets
// transactions in progress finish until ctx ends, then closes what is
// left. It returns when every session has ended.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutting.Store(true)
	s.closeListeners()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
	for waiting := true; waiting; {
		s.mu.Lock()
		for sess := range s.sessions {
			sess.interruptIfIdle()
		}
		s.mu.Unlock()
		select {
		case <-done:
			waiting = false
		case <-tick.C:
		case <-ctx.Done():
			err = ctx.Err()
			s.mu.Lock()
			for sess := range s.sessions {
				sess.raw.Close()
			}
			s.mu.Unlock()
			<-done
			waiting = false
		}
	}
	s.pool.close()
	return err
}

func (s *Server) upstreamTimeouts(c *config.Config) upstreamTimeouts {
	t := c.SMTP.Timeouts
	return upstreamTimeouts{connect: t.UpstreamConnect.D(), command: t.UpstreamCommand.D(), data: t.UpstreamData.D()}
}

// upstreamFor returns a pooled or new connection to addr.
func (s *Server) upstreamFor(ctx context.Context, addr string, c *config.Config) (*upstreamConn, *Reply, error) {
	u, _, greet, err := s.pool.get(ctx, addr, c.Hostname, s.upstreamTimeouts(c))
	return u, greet, err
}
