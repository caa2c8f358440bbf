// Package imapd is moat's IMAP4rev1 server for the built-in store, built
// on go-imap v2's imapserver (protocol) over store/mailbox (Maildir++).
//
// Logins go through auth.Authenticator, which also decides per client
// whether a password may travel in clear. imapserver decides that per
// server (InsecureAuth), so one accept loop hands each connection to one
// of four imapserver.Servers: with or without STARTTLS (a TLS config is
// set or not) × cleartext logins allowed or not (LOGINDISABLED).
//
// go-imap has no graceful shutdown: Close stops the listeners and cuts
// every connection at once; IMAP clients reconnect and resynchronise by
// UID, and the store is crash-safe, so nothing is lost.
package imapd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"go.uber.org/zap"

	"moat/audit"
	"moat/auth"
	"moat/store/mailbox"
)

// Options configure a Server. Store and Auth are required.
type Options struct {
	Store *mailbox.Store
	Auth  auth.Authenticator
	// TLSConfig is for STARTTLS and implicit TLS; nil: neither (swap it
	// later with SetTLSConfig).
	TLSConfig *tls.Config
	Hostname  string
	Log       *audit.Logger // nil: discard
}

// Listener describes the socket a connection came in on.
type Listener struct {
	Name        string // for login events
	ImplicitTLS bool   // IMAPS: TLS from the first byte
}

// caps are the capabilities every session implements, beyond what
// imapserver adds on its own (SASL-IR, LITERAL-, STARTTLS, AUTH=PLAIN or
// LOGINDISABLED, and after login UNSELECT, ENABLE, IDLE, UTF8=ACCEPT).
// imapserver panics at connect if a session lacks the interface of
// NAMESPACE or MOVE; the tests run every one of them.
var caps = imap.CapSet{
	imap.CapIMAP4rev1: {},
	imap.CapNamespace: {},
	imap.CapUIDPlus:   {},
	imap.CapMove:      {},
	imap.CapChildren:  {},
}

// Server serves IMAP on any number of listeners.
type Server struct {
	o   Options
	log *audit.Logger
	tls atomic.Pointer[tls.Config]
	// dynamic is the config handshakes start with: it asks for the
	// current one, so SetTLSConfig applies to new handshakes at once.
	dynamic *tls.Config
	ctx     context.Context
	cancel  context.CancelFunc

	// variants[startTLS][cleartextLogin] are the protocol servers a
	// connection can be handed to.
	variants [2][2]*variant

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	loops     sync.WaitGroup // accept loops and variants' Serve
	sessions  sync.WaitGroup

	trackers trackers
}

type variant struct {
	srv *imapserver.Server
	ln  *chanListener
}

// New returns a server; Serve starts it on a listener.
func New(o Options) *Server {
	s := &Server{o: o, log: o.Log, listeners: map[net.Listener]struct{}{}}
	if s.log == nil {
		s.log = audit.Discard()
	}
	s.trackers.m = map[*mailbox.Folder]*sharedTracker{}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.tls.Store(o.TLSConfig)
	s.dynamic = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := s.tls.Load()
		if c == nil {
			return nil, errors.New("imapd: no TLS certificate configured")
		}
		return c, nil
	}}
	for st := range 2 {
		for clear := range 2 {
			opts := &imapserver.Options{
				NewSession:   s.newSession,
				Caps:         caps,
				Logger:       errorLog{s.log},
				InsecureAuth: clear == 1,
			}
			if st == 1 {
				opts.TLSConfig = s.dynamic
			}
			v := &variant{srv: imapserver.New(opts), ln: newChanListener()}
			s.variants[st][clear] = v
			s.loops.Add(1)
			go func() {
				defer s.loops.Done()
				v.srv.Serve(v.ln)
			}()
			// imapserver.Close races with a Serve that has not begun
			// (its WaitGroup.Add runs late): wait until it accepts.
			<-v.ln.accepting
		}
	}
	return s
}

// SetTLSConfig swaps the TLS configuration for new connections and
// handshakes (certificate reload); nil turns TLS off.
func (s *Server) SetTLSConfig(c *tls.Config) { s.tls.Store(c) }

// Serve accepts connections on ln until ln or the server is closed.
func (s *Server) Serve(ln net.Listener, l Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("imapd: server closed")
	}
	s.listeners[ln] = struct{}{}
	s.loops.Add(1)
	s.mu.Unlock()
	defer s.loops.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if temporary(err) {
				// Out of file descriptors and the like: back off, as
				// net/http does, instead of spinning.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("imapd: accept: %w", err)
		}
		delay = 0
		s.dispatch(conn, l)
	}
}

// dispatch hands a new connection to the protocol server that fits it.
func (s *Server) dispatch(conn net.Conn, l Listener) {
	tagged := &taggedConn{Conn: conn, listener: l}
	var c net.Conn = tagged
	tlsNow := s.tls.Load() != nil
	clear := false
	if l.ImplicitTLS {
		if !tlsNow {
			s.log.Warn("imap.tls_error", zap.String("message", "implicit TLS listener without a certificate"),
				zap.String("moat.listener", l.Name))
			conn.Close()
			return
		}
		// *tls.Conn outermost: imapserver tells TLS by type assertion.
		c = tls.Server(tagged, s.dynamic)
		tlsNow = false // no STARTTLS inside TLS
	} else if s.o.Auth != nil {
		clear = s.o.Auth.PlaintextAllowed(remoteAddr(conn).Addr(), false)
	}
	v := s.variants[b2i(tlsNow)][b2i(clear)]
	select {
	case v.ln.ch <- c:
	case <-v.ln.done:
		conn.Close()
	}
}

// temporary reports accept errors worth waiting out.
func temporary(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Close stops every listener and cuts every connection (there is no
// graceful way in go-imap), then waits for the sessions to let go of the
// store.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var err error
	for ln := range s.listeners {
		if cerr := ln.Close(); cerr != nil && err == nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
	}
	s.mu.Unlock()
	s.cancel()
	for _, row := range s.variants {
		for _, v := range row {
			v.srv.Close()
		}
	}
	s.loops.Wait()
	s.sessions.Wait()
	return err
}

// taggedConn carries the listener a connection came from to NewSession.
type taggedConn struct {
	net.Conn
	listener Listener
}

// chanListener is the net.Listener a variant serves: dispatch feeds it.
type chanListener struct {
	ch        chan net.Conn
	done      chan struct{}
	once      sync.Once
	accepting chan struct{} // closed at the first Accept
	first     sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{}), accepting: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	l.first.Do(func() { close(l.accepting) })
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4zero} }

func remoteAddr(c net.Conn) netip.AddrPort {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap
}

// errorLog passes imapserver's messages (failed writes, internal errors,
// panics in a session) to the audit log.
type errorLog struct{ l *audit.Logger }

func (e errorLog) Printf(format string, args ...any) {
	e.l.Warn("imap.error", zap.String("message", fmt.Sprintf(format, args...)))
}
