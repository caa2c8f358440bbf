package mailproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"go.uber.org/zap"

	"moat/auth"
)

// Timeouts of the pre-authentication phase.
const (
	// preAuthIdle caps the wait for a command before login: RFC 3501
	// allows a shorter autologout for clients that have not logged in.
	preAuthIdle = 5 * time.Minute
	// writeTimeout bounds every write to the client before login.
	writeTimeout = time.Minute
)

// session is one client connection, from the greeting to the end of the
// splice.
type session struct {
	srv      *Server
	listener Listener
	raw      net.Conn // the TCP connection; closing it aborts the session
	conn     net.Conn // raw, or the TLS connection over it
	remote   netip.AddrPort
	tls      bool
	ctx      context.Context // ends with the session, or at a forced shutdown
	cancel   context.CancelFunc

	br *bufio.Reader
	bw *bufio.Writer

	started bool // a command line was read: a ClientHello can only come first
	bad     int  // bad commands so far
	quit    bool // end the session after this command

	spliced bool // logged in; guarded by the server's sessions lock

	up   *upConn // the logged-in upstream
	user string  // the canonical user name after login

	clientID []string // IMAP ID fields the client sent, name value name value ...
}

func newSession(s *Server, c net.Conn, l Listener) *session {
	ctx, cancel := context.WithCancel(context.Background())
	sess := &session{srv: s, listener: l, raw: c, conn: c, remote: remoteAddr(c), ctx: ctx, cancel: cancel}
	sess.setConn(c)
	return sess
}

func (c *session) setConn(conn net.Conn) {
	c.conn = conn
	c.br = bufio.NewReaderSize(conn, readBufferSize)
	c.bw = bufio.NewWriterSize(deadlineWriter{conn}, 4<<10)
}

// readBufferSize holds the longest line of either protocol.
const readBufferSize = 16 << 10

// Abort cuts the session off (accept.Session); the caller holds the
// sessions' lock.
func (c *session) Abort() {
	c.cancel()
	c.raw.Close()
}

// Busy reports a session Shutdown lets finish (accept.Session).
func (c *session) Busy() bool { return c.spliced }

// Serve runs the session (accept.Session).
func (c *session) Serve() {
	defer c.srv.sessions.Done(c)
	defer c.raw.Close()
	defer c.cancel()
	defer func() {
		// One client must not take the gateway down with it.
		if v := recover(); v != nil {
			c.logError("panic", fmt.Errorf("%v\n%s", v, debug.Stack()))
			if c.up != nil {
				c.up.conn.Close()
			}
		}
	}()

	if c.listener.ImplicitTLS {
		cfg := c.srv.tls.Load()
		if cfg == nil {
			c.logError("tls", errors.New("implicit TLS listener without a TLS configuration"))
			return
		}
		if !c.startTLS(cfg) {
			return
		}
	}
	if c.srv.o.Protocol == "pop3" {
		c.pop3()
	} else {
		c.imap()
	}
	if c.up == nil {
		c.bw.Flush()
		return
	}
	// Spliced before the client hears it is logged in: from its OK on,
	// Shutdown must treat the session as one with work in progress.
	if !c.srv.startSplice(c) || c.bw.Flush() != nil {
		c.up.conn.Close()
		return
	}
	c.splice()
}

// startTLS runs the server side of the TLS handshake on the raw
// connection. Whatever the client sent before it in clear is dropped with
// the old reader: a man in the middle could have injected it to run inside
// the TLS session (CVE-2011-0411 and its kin).
func (c *session) startTLS(cfg *tls.Config) bool {
	tc := tls.Server(c.raw, cfg)
	ctx, cancel := context.WithTimeout(c.ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.srv.o.Log.Debug(c.srv.o.Protocol+".tls", zap.String("source.ip", c.remote.Addr().String()),
			zap.String("error.message", err.Error()))
		return false
	}
	c.tls = true
	c.setConn(tc)
	return true
}

// plaintextOK reports whether a password may be read on this connection
// now; checked at each use, since a reload may change it.
func (c *session) plaintextOK() bool {
	return c.tls || c.srv.o.Auth.PlaintextAllowed(c.remote.Addr(), false)
}

func (c *session) tlsOffered() bool { return !c.tls && c.srv.tls.Load() != nil }

// upstreamLogin logs in at u inside auth's Verify; it returns the logged-in
// connection, or nil and whether the upstream refused the credentials
// (false, nil) or could not be asked (an error).
type upstreamLogin func(ctx context.Context, u Upstream, user, password string) (*upConn, error)

// errRefused is what an upstreamLogin returns when the upstream said no to
// the credentials.
var errRefused = errors.New("upstream refused the credentials")

// login runs one login attempt through the auth service, which calls back
// Verify to log in at the upstream the user is routed to. On success c.up
// holds the upstream connection.
func (c *session) login(mechanism, user, password string, at upstreamLogin) error {
	var route Upstream
	routed := false
	if name, ok := auth.CanonicalUser(user); ok {
		route, routed = (*c.srv.route.Load())(name)
	}
	var up *upConn
	given := strings.TrimSpace(user) // sent upstream as the client wrote it
	r := auth.Request{
		Protocol: c.srv.o.Protocol, Mechanism: mechanism, Listener: c.listener.Name,
		Remote: c.remote, TLS: c.tls, User: user, Password: password,
		Verify: func(ctx context.Context, _, password string) (bool, error) {
			if !routed || up != nil {
				return false, nil
			}
			ctx, cancel := context.WithTimeout(ctx, c.srv.o.LoginTimeout)
			defer cancel()
			u, err := at(ctx, route, given, password)
			if errors.Is(err, errRefused) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			up = u
			return true, nil
		},
	}
	if routed {
		r.Upstream = route.Addr
	}
	name, err := c.srv.o.Auth.Login(c.ctx, r)
	if err == nil && up == nil {
		// An Authenticator that does not call Verify cannot let
		// anybody in: there would be no upstream to splice to.
		err = fmt.Errorf("%w: the authenticator did not log in upstream", auth.ErrUnavailable)
	}
	if err != nil {
		if up != nil {
			up.conn.Close()
		}
		return err
	}
	c.up, c.user = up, name
	return nil
}

var (
	errLineTooLong = errors.New("line too long")
	errForeign     = errors.New("not a mail client")
)

// readLine reads the next line without its CRLF (or bare LF), after
// flushing the replies when no complete command is waiting (pipelining).
func (c *session) readLine(limit int) ([]byte, error) {
	if buf, _ := c.br.Peek(c.br.Buffered()); bytes.IndexByte(buf, '\n') < 0 {
		if err := c.bw.Flush(); err != nil {
			return nil, err
		}
	}
	if err := c.conn.SetReadDeadline(time.Now().Add(min(c.srv.o.IdleTimeout, preAuthIdle))); err != nil {
		return nil, err
	}
	if !c.started && !c.tls {
		// A TLS client on the cleartext port sends a ClientHello that
		// may hold no LF at all: catch it before waiting for a line.
		if b, err := c.br.Peek(1); err == nil && b[0] == tlsHandshakeRecord {
			return nil, errForeign
		}
	}
	c.started = true
	line, err := c.br.ReadSlice('\n')
	switch {
	case err == bufio.ErrBufferFull || len(line) > limit:
		return nil, errLineTooLong
	case err != nil:
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// reply queues one response line (or lines joined by CRLF), without the
// last CRLF.
func (c *session) reply(s string) {
	c.bw.WriteString(s)
	if _, err := c.bw.WriteString("\r\n"); err != nil {
		c.quit = true
	}
}

func (c *session) logError(op string, err error) {
	fs := []zap.Field{zap.String("moat.operation", op), zap.String("moat.listener", c.listener.Name),
		zap.String("source.ip", c.remote.Addr().String()), zap.String("error.message", err.Error())}
	if c.user != "" {
		fs = append(fs, zap.String("user.name", c.user))
	}
	c.srv.o.Log.Error(c.srv.o.Protocol+".error", fs...)
}

// deadlineWriter gives every write to the client its own deadline.
type deadlineWriter struct{ conn net.Conn }

func (w deadlineWriter) Write(p []byte) (int, error) {
	if err := w.conn.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return 0, err
	}
	return w.conn.Write(p)
}

func remoteAddr(c net.Conn) netip.AddrPort {
	return addrPort(c.RemoteAddr())
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// httpMethods start the request line of an HTTP/1.x request.
var httpMethods = []string{"GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ", "CONNECT ", "TRACE ", "PATCH "}

// foreignProtocol reports whether a line is another protocol's opening: an
// HTTP request line (a browser lured into talking to the mail port, as in
// the ALPACA attack) or a TLS record. Such a session is ended at once.
// Copied from pop3/command.go.
func foreignProtocol(line []byte) bool {
	if len(line) > 0 && line[0] == tlsHandshakeRecord {
		return true
	}
	for _, m := range httpMethods {
		if len(line) >= len(m) && strings.EqualFold(string(line[:len(m)]), m) {
			return true
		}
	}
	return bytes.Contains(line, []byte(" HTTP/1.")) || bytes.Contains(line, []byte(" HTTP/2"))
}

// tlsHandshakeRecord is the first byte of a TLS ClientHello.
const tlsHandshakeRecord = 0x16
