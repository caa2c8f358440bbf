// Package pop3 is moat's POP3 server for the built-in store: RFC 1939 with
// CAPA (RFC 2449), STLS (RFC 2595), AUTH PLAIN (RFC 5034) and the response
// codes of RFC 2449 and RFC 3206.
//
// It is written by hand because no maintained Go POP3 server library exists
// (go-imap covers IMAP only). Mailboxes are reached through Backend, logins
// through moat/auth, which applies failure delays and lockouts and writes the
// pop3.login event; this package only logs its own internal errors.
//
// Beyond the RFCs it defends against cross-protocol use of the port: an
// HTTP request or a TLS ClientHello on a cleartext connection ends the
// session at once (the ALPACA attack class), other non-POP3 input counts
// towards MaxBadCommands, and input pipelined after STLS is discarded (the
// STARTTLS command injection class, CVE-2011-0411).
package pop3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"moat/audit"
	"moat/auth"
	"moat/internal/accept"
)

// Backend opens users' maildrops.
type Backend interface {
	// OpenMaildrop locks and opens the maildrop of user (the canonical
	// name auth.Authenticator.Login returned). It returns an error wrapping
	// ErrInUse when another POP3 session holds the user's maildrop.
	OpenMaildrop(user string) (Maildrop, error)
}

// ErrInUse is what OpenMaildrop wraps when the maildrop is already locked.
var ErrInUse = errors.New("pop3: maildrop already locked")

// Maildrop is one user's locked INBOX for the length of a session.
type Maildrop interface {
	// Messages returns the snapshot of INBOX taken at open, in arrival
	// order; message numbers in the session are indexes into it plus one.
	Messages() ([]Message, error)
	// Open returns message i (0-based) as stored, with CRLF line endings.
	Open(i int) (io.ReadCloser, error)
	// Commit is the UPDATE state: it removes the messages at these indexes
	// (ascending, possibly none). It is called once, only when the client
	// sends QUIT in the TRANSACTION state.
	Commit(deleted []int) error
	// Close releases the maildrop lock. It is called once at the end of
	// every session that opened the maildrop, after Commit if any.
	Close() error
}

// Message is one entry of a maildrop's listing.
type Message struct {
	UID  string // the UIDL unique-id: 1 to 70 printable ASCII characters 0x21-0x7E
	Size int64  // octets as stored, for STAT and LIST
}

// Options configure a Server. Backend and Auth are required.
type Options struct {
	Backend   Backend
	Auth      auth.Authenticator
	TLSConfig *tls.Config   // nil: no STLS (implicit-TLS listeners then refuse connections)
	Hostname  string        // in the greeting; default os.Hostname()
	Log       *audit.Logger // internal errors only (pop3.error); default discard
	// IdleTimeout ends a session that sends no command for this long,
	// without UPDATE. Default 10 minutes, RFC 1939's autologout minimum.
	IdleTimeout time.Duration
	// MaxBadCommands ends a session after this many unknown, malformed or
	// misplaced commands or failed logins. Default 10.
	MaxBadCommands int
}

// Listener describes where a connection came in.
type Listener struct {
	Name        string // for the pop3.login event; default the listening address
	ImplicitTLS bool   // POP3S: the TLS handshake comes first
}

// ErrServerClosed is what Serve returns after Shutdown.
var ErrServerClosed = errors.New("pop3: server closed")

// handshakeTimeout bounds a TLS handshake, implicit or after STLS.
const handshakeTimeout = 30 * time.Second

// Server serves POP3 on any number of listeners.
type Server struct {
	o   Options
	tls atomic.Pointer[tls.Config]

	sessions accept.Sessions[*session]
}

// New returns a server with o's defaults filled in.
func New(o Options) *Server {
	if o.Hostname == "" {
		o.Hostname = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" {
			o.Hostname = h
		}
	}
	if o.Log == nil {
		o.Log = audit.Discard()
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Minute
	}
	if o.MaxBadCommands <= 0 {
		o.MaxBadCommands = 10
	}
	s := &Server{o: o}
	s.tls.Store(o.TLSConfig)
	return s
}

// SetTLSConfig replaces the TLS configuration (a certificate reload) for
// connections and STLS commands from now on; nil turns STLS off. It is safe
// to call while serving.
func (s *Server) SetTLSConfig(c *tls.Config) { s.tls.Store(c) }

// Serve accepts connections on ln until Shutdown (then it returns
// ErrServerClosed) or until ln fails for good. It closes ln.
func (s *Server) Serve(ln net.Listener, l Listener) error {
	if l.Name == "" {
		l.Name = ln.Addr().String()
	}
	err := s.sessions.Serve(ln, l.Name, ErrServerClosed,
		func(c net.Conn) *session { return newSession(s, c, l) },
		func(err error) {
			s.o.Log.Error("pop3.error", zap.String("moat.operation", "accept"),
				zap.String("moat.listener", l.Name), zap.String("error.message", err.Error()))
		})
	if err != nil && !errors.Is(err, ErrServerClosed) {
		return fmt.Errorf("pop3: %w", err)
	}
	return err
}

// Shutdown stops accepting connections and ends the sessions that have not
// logged in at once. Sessions in the TRANSACTION state may go on until
// their client's QUIT, or until ctx ends: then they are cut off without
// UPDATE (nothing is deleted) and Shutdown returns ctx's error once their
// maildrops are closed.
func (s *Server) Shutdown(ctx context.Context) error { return s.sessions.Shutdown(ctx) }

// enterTransaction moves sess to the TRANSACTION state unless the server is
// shutting down.
func (s *Server) enterTransaction(sess *session) bool {
	return s.sessions.IfOpen(func() { sess.state = stateTransaction })
}
