package auth

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Errors of ParsePlain.
var (
	ErrPlainSyntax  = errors.New("auth: malformed PLAIN message")
	ErrPlainAuthzid = errors.New("auth: PLAIN authorization identity differs from the user (no impersonation)")
)

// ParsePlain splits a SASL PLAIN message (RFC 4616: [authzid] NUL authcid
// NUL passwd, UTF-8). An authorization identity other than the user
// itself (compared without case) is refused: moat lets nobody act as
// somebody else. Written by hand because go-sasl's PLAIN server only
// hands the fields to a callback, and POP3 and IMAP need them bare.
func ParsePlain(b []byte) (authzid, user, password string, err error) {
	f := bytes.Split(b, []byte{0})
	if len(f) != 3 {
		return "", "", "", ErrPlainSyntax
	}
	for _, x := range f {
		if !utf8.Valid(x) {
			return "", "", "", ErrPlainSyntax
		}
	}
	authzid, user, password = string(f[0]), string(f[1]), string(f[2])
	if user == "" || password == "" {
		return "", "", "", fmt.Errorf("%w: empty user or password", ErrPlainSyntax)
	}
	if authzid != "" && !strings.EqualFold(authzid, user) {
		return "", "", "", ErrPlainAuthzid
	}
	return authzid, user, password, nil
}
