package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"strings"

	"moat/auth"
)

// SMTP AUTH (RFC 4954) on submission listeners, with the PLAIN (RFC 4616)
// and LOGIN (draft-murchison-sasl-login) mechanisms. Written by hand like
// the rest of the session: go-sasl's servers expect go-smtp's server loop,
// and go-sasl has no LOGIN server. The password check, delays and lockouts
// are the auth package's; this file only speaks the protocol.

var (
	replyAuthUnavailable   = reply(503, "5.5.1", "Authentication not available")
	replyEncryptionNeeded  = reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
	replyAuthOK            = reply(235, "2.7.0", "Authentication successful")
	replyAuthFailed        = reply(535, "5.7.8", "Authentication credentials invalid")
	replyAuthLocked        = reply(454, "4.7.0", "Too many failed authentications, try again later")
	replyAuthTempFail      = reply(454, "4.7.0", "Temporary authentication failure")
	replyAuthCancelled     = reply(501, "5.0.0", "Authentication cancelled")
	replyAuthBadBase64     = reply(501, "5.5.2", "Invalid base64 data")
	replyAuthLineTooLong   = reply(500, "5.5.6", "Authentication exchange line is too long")
	replyAuthMalformed     = reply(501, "5.5.2", "Malformed PLAIN response")
	replyAuthUnknownMech   = reply(504, "5.5.4", "Unrecognized authentication type")
	replyAuthSyntax        = reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
	replyAuthAlready       = reply(503, "5.5.1", "Already authenticated")
	replyAuthInTransaction = reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
)

// authAvailable reports whether this listener takes AUTH at all: a
// submission listener of a moat with a login authority.
func (s *session) authAvailable() bool {
	return s.rt.Auth != nil && s.l.conf.Mode == "submission"
}

// authOffered reports whether EHLO lists AUTH now: where it is available,
// over TLS or from where a password may travel in clear.
func (s *session) authOffered() bool {
	return s.authAvailable() && s.rt.Auth.PlaintextAllowed(s.remote.Addr(), s.tlsState != nil)
}

// unfiltered reports whether the session's mail skips the inbound checks:
// clients in smtp.trusted_networks, and authenticated users, who send
// their own mail rather than the internet's. Both still only reach routed
// domains.
func (s *session) unfiltered() bool { return s.trusted || s.user != "" }

func (s *session) cmdAuth(ctx context.Context, arg string) {
	switch {
	case !s.authAvailable():
		s.bad(replyAuthUnavailable)
		return
	case !s.esmtp:
		s.bad(reply(503, "5.5.1", "Send EHLO first"))
		return
	case s.tx != nil:
		s.bad(replyAuthInTransaction)
		return
	case s.user != "":
		s.bad(replyAuthAlready)
		return
	}
	f := strings.Fields(arg)
	if len(f) != 1 && len(f) != 2 {
		s.bad(replyAuthSyntax)
		return
	}
	mech := strings.ToUpper(f[0])
	if mech != "PLAIN" && mech != "LOGIN" {
		s.bad(replyAuthUnknownMech)
		return
	}
	if !s.rt.Auth.PlaintextAllowed(s.remote.Addr(), s.tlsState != nil) {
		s.bad(replyEncryptionNeeded)
		return
	}
	var initial *string
	if len(f) == 2 {
		initial = &f[1]
	}
	var user, password string
	var ok bool
	if mech == "PLAIN" {
		user, password, ok = s.authPlain(initial)
	} else {
		user, password, ok = s.authLogin(initial)
	}
	if !ok {
		return // the exchange ended and its reply is queued
	}
	name, err := s.rt.Auth.Login(ctx, auth.Request{
		Protocol:  "smtp",
		Mechanism: mech,
		Listener:  s.l.name,
		Remote:    s.remote,
		TLS:       s.tlsState != nil,
		User:      user,
		Password:  password,
	})
	switch {
	case err == nil:
		s.user = name
		s.send(replyAuthOK)
	case errors.Is(err, auth.ErrFailed):
		s.bad(replyAuthFailed) // failures spend the session's error budget
	case errors.Is(err, auth.ErrLocked):
		s.bad(replyAuthLocked)
	case errors.Is(err, auth.ErrPlaintext):
		s.bad(replyEncryptionNeeded)
	default: // ErrUnavailable: our fault, not the client's; the auth event says why
		s.send(replyAuthTempFail)
	}
}

// authPlain runs the PLAIN exchange: the initial response, or one empty
// challenge for it.
func (s *session) authPlain(initial *string) (user, password string, ok bool) {
	var msg []byte
	if initial != nil {
		msg, ok = s.authResponse(*initial)
	} else {
		msg, ok = s.authChallenge("")
	}
	if !ok {
		return "", "", false
	}
	_, user, password, err := auth.ParsePlain(msg)
	switch {
	case errors.Is(err, auth.ErrPlainAuthzid):
		s.bad(replyAuthFailed)
		return "", "", false
	case err != nil:
		s.bad(replyAuthMalformed)
		return "", "", false
	}
	return user, password, true
}

// authLogin runs the LOGIN exchange: "Username:" (unless the client gave
// it as the initial response, as go-sasl's client does), then "Password:".
func (s *session) authLogin(initial *string) (user, password string, ok bool) {
	var u []byte
	if initial != nil {
		u, ok = s.authResponse(*initial)
	} else {
		u, ok = s.authChallenge("Username:")
	}
	if !ok {
		return "", "", false
	}
	p, ok := s.authChallenge("Password:")
	if !ok {
		return "", "", false
	}
	return string(u), string(p), true
}

// authChallenge sends a 334 challenge and returns the client's decoded
// answer. ok is false when the exchange ended instead (cancelled, bad
// base64, connection lost); the reply, if any, is queued.
func (s *session) authChallenge(challenge string) ([]byte, bool) {
	s.send(&Reply{Code: 334, Text: base64.StdEncoding.EncodeToString([]byte(challenge))})
	if !s.flush() {
		s.end("client_error")
		return nil, false
	}
	s.dc.set(0, s.cfg().SMTP.Timeouts.Command.D())
	line, err := s.readLine() // bounded by max_line_length like a command
	if err != nil {
		if errors.Is(err, errLineTooLong) {
			s.bad(replyAuthLineTooLong)
			return nil, false
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			s.send(replyTimeout)
			s.flush()
			s.end("timeout")
		}
		s.end("client_error")
		return nil, false
	}
	return s.authResponse(line)
}

// authResponse decodes one client response: base64, "=" for an empty
// one, "*" to cancel.
func (s *session) authResponse(r string) ([]byte, bool) {
	switch r = strings.TrimSpace(r); r {
	case "*":
		s.bad(replyAuthCancelled)
		return nil, false
	case "=":
		return []byte{}, true
	}
	b, err := base64.StdEncoding.DecodeString(r)
	if err != nil {
		s.bad(replyAuthBadBase64)
		return nil, false
	}
	return b, true
}
