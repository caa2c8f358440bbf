// Package mailproxy is moat's POP3 and IMAP4 proxy mode: a listener that
// terminates TLS, runs the pre-authentication phase itself, checks the
// login through moat/auth (delays, lockouts, login events) by logging in
// at the internal server (Exchange, Domino, Dovecot) with the user's own
// credentials, and on success splices client and upstream byte for byte.
//
// It is written by hand because no Go library proxies POP3 or IMAP (go-imap
// has no proxy support and there is no POP3 library); the design follows
// nginx's mail module and Dovecot's proxy: only the commands of the
// pre-authentication phase are understood, everything after the login is
// the upstream's business.
//
// Defences, before login: line and literal limits, a bad-command budget,
// an HTTP request or a TLS ClientHello on a cleartext port ends the session
// at once (the ALPACA class, CVE-2021-3618), input pipelined after STLS or
// STARTTLS is discarded (CVE-2011-0411, CVE-2021-33515), and credentials
// are passed upstream so that they cannot inject commands there.
package mailproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"moat/audit"
	"moat/auth"
	"moat/internal/accept"
)

// Upstream is an internal server the proxy logs in at.
type Upstream struct {
	Addr string // host:port
	// TLS is how the connection to Addr is protected: "implicit" (TLS
	// from the first byte), "starttls" (STLS or STARTTLS after the
	// greeting) or "none". Empty means "none".
	TLS string
	// RootCAs verify the upstream's certificate; nil: the system roots.
	// Verification is always on.
	RootCAs *x509.CertPool
	// ServerName is the name the certificate must carry; default the
	// host of Addr.
	ServerName string
}

// The values of Upstream.TLS.
const (
	TLSImplicit = "implicit"
	TLSStartTLS = "starttls"
	TLSNone     = "none"
)

// Options configure a Server. Protocol and Auth are required.
type Options struct {
	Protocol string // "pop3" or "imap"
	Auth     auth.Authenticator
	// Route picks the upstream of a login by its canonical user@domain;
	// false means no upstream serves the user: the login fails like a
	// bad password.
	Route func(user string) (Upstream, bool)
	// TLSConfig is the client side: STLS/STARTTLS and implicit-TLS
	// listeners. nil: neither.
	TLSConfig *tls.Config
	Hostname  string        // in the greeting; default os.Hostname()
	Log       *audit.Logger // nil: discard
	// DialTimeout bounds the connection to the upstream (TCP and TLS);
	// default 10s. LoginTimeout bounds the whole upstream login; default
	// 30s. IdleTimeout ends a session, before or after login, when
	// neither side sent anything for so long; default 30m (IMAP IDLE
	// sessions are quiet for up to 29 minutes).
	DialTimeout, LoginTimeout, IdleTimeout time.Duration
	// MaxBadCommands ends a session after this many unknown, malformed
	// or misplaced commands or failed logins before login; default 10.
	MaxBadCommands int
}

// Listener describes where a connection came in.
type Listener struct {
	Name        string // for events; default the listening address
	ImplicitTLS bool   // POP3S/IMAPS: the TLS handshake comes first
}

// ErrServerClosed is what Serve returns after Shutdown.
var ErrServerClosed = errors.New("mailproxy: server closed")

// handshakeTimeout bounds a client TLS handshake.
const handshakeTimeout = 30 * time.Second

// Server proxies one protocol on any number of listeners.
type Server struct {
	o     Options
	tls   atomic.Pointer[tls.Config]
	route atomic.Pointer[func(string) (Upstream, bool)]

	sessions accept.Sessions[*session]
}

// New returns a server with o's defaults filled in. It panics on a
// Protocol other than "pop3" or "imap", a programming error.
func New(o Options) *Server {
	if o.Protocol != "pop3" && o.Protocol != "imap" {
		panic(fmt.Sprintf("mailproxy: unknown protocol %q", o.Protocol))
	}
	if o.Hostname == "" {
		o.Hostname = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" {
			o.Hostname = h
		}
	}
	if o.Log == nil {
		o.Log = audit.Discard()
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.LoginTimeout <= 0 {
		o.LoginTimeout = 30 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 30 * time.Minute
	}
	if o.MaxBadCommands <= 0 {
		o.MaxBadCommands = 10
	}
	s := &Server{o: o}
	s.tls.Store(o.TLSConfig)
	s.SetRoute(o.Route)
	return s
}

// SetTLSConfig replaces the client-side TLS configuration (a certificate
// reload) for new connections and STLS/STARTTLS; nil turns TLS off.
func (s *Server) SetTLSConfig(c *tls.Config) { s.tls.Store(c) }

// SetRoute replaces the routing of logins to upstreams (a configuration
// reload); nil: no upstream for anybody.
func (s *Server) SetRoute(r func(string) (Upstream, bool)) {
	if r == nil {
		r = func(string) (Upstream, bool) { return Upstream{}, false }
	}
	s.route.Store(&r)
}

// Serve accepts connections on ln until Shutdown (then it returns
// ErrServerClosed) or until ln fails for good. It closes ln.
func (s *Server) Serve(ln net.Listener, l Listener) error {
	if l.Name == "" {
		l.Name = ln.Addr().String()
	}
	err := s.sessions.Serve(ln, l.Name, ErrServerClosed,
		func(c net.Conn) *session { return newSession(s, c, l) },
		func(err error) {
			s.o.Log.Error(s.o.Protocol+".error", zap.String("moat.operation", "accept"),
				zap.String("moat.listener", l.Name), zap.String("error.message", err.Error()))
		})
	if err != nil && !errors.Is(err, ErrServerClosed) {
		return fmt.Errorf("mailproxy: %w", err)
	}
	return err
}

// Shutdown stops accepting connections and ends the sessions that have not
// logged in at once. Spliced sessions go on until they end or ctx ends:
// then they are cut off and Shutdown returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error { return s.sessions.Shutdown(ctx) }

// startSplice marks sess as logged in, unless the server is shutting down.
func (s *Server) startSplice(sess *session) bool {
	return s.sessions.IfOpen(func() { sess.spliced = true })
}
