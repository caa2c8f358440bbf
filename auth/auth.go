// Package auth decides mailbox logins for POP3, IMAP4 and SMTP AUTH: it
// checks the password against the built-in store's users, refuses cleartext
// passwords where they are not allowed, slows down and locks out password
// guessing per client IP and per user, and writes one event per attempt
// (`pop3.login`, `imap.login`, `smtp.login`) that never carries the password.
package auth

import (
	"context"
	"errors"
	"net/netip"
)

// Request is one login attempt.
type Request struct {
	Protocol  string         // "pop3", "imap" or "smtp": the event is Protocol+".login"
	Mechanism string         // "USER", "LOGIN", "PLAIN", ...: for the event
	Listener  string         // the listener's name or address, for the event
	Remote    netip.AddrPort // the client
	TLS       bool           // whether the connection is encrypted
	User      string         // as the client gave it
	Password  string

	// Verify, when set, checks the password instead of the user list:
	// in proxy mode it is the login at the internal server. It gets the
	// canonical user@domain and says whether the credentials are good;
	// an error means the check could not be made (ErrUnavailable, not
	// counted as a failure).
	Verify func(ctx context.Context, user, password string) (bool, error)
	// Upstream names the server Verify asked, for the event.
	Upstream string
}

// Errors a Login returns; every protocol maps them to its own reply.
var (
	// ErrFailed: unknown user or wrong password (the two are not told
	// apart to the client).
	ErrFailed = errors.New("auth: authentication failed")
	// ErrLocked: too many failures from this client or for this user;
	// even the right password is refused until the lockout ends.
	ErrLocked = errors.New("auth: temporarily locked out after repeated failures")
	// ErrPlaintext: a password over an unencrypted connection from a
	// client outside trusted_networks while allow_plaintext_auth is off.
	ErrPlaintext = errors.New("auth: cleartext login refused, use TLS first")
	// ErrUnavailable: the user list could not be read.
	ErrUnavailable = errors.New("auth: user database unavailable")
)

// Authenticator is what the protocol servers call; *Service implements it.
type Authenticator interface {
	// Login checks one attempt and returns the canonical user@domain on
	// success. On failure it has already waited the failure delay (or
	// until ctx ends) and returns one of the errors above, wrapped.
	Login(ctx context.Context, r Request) (string, error)
	// PlaintextAllowed reports whether a password may be sent over this
	// connection now: always on TLS, otherwise only for trusted networks
	// or with allow_plaintext_auth.
	PlaintextAllowed(remote netip.Addr, tls bool) bool
}
