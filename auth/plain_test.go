package auth

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestParsePlain(t *testing.T) {
	for _, tc := range []struct {
		name, in             string
		authzid, user, passw string
		err                  error
	}{
		{"no authzid", "\x00alice@example.com\x00secret", "", "alice@example.com", "secret", nil},
		{"authzid is the user", "alice@example.com\x00alice@example.com\x00secret", "alice@example.com", "alice@example.com", "secret", nil},
		{"authzid differs in case only", "Alice@Example.com\x00alice@example.com\x00secret", "Alice@Example.com", "alice@example.com", "secret", nil},
		{"password with spaces and UTF-8", "\x00jörg@example.com\x00 pass wörd ", "", "jörg@example.com", " pass wörd ", nil},
		{"impersonation", "boss@example.com\x00alice@example.com\x00secret", "", "", "", ErrPlainAuthzid},
		{"two fields", "alice@example.com\x00secret", "", "", "", ErrPlainSyntax},
		{"four fields", "\x00alice@example.com\x00sec\x00ret", "", "", "", ErrPlainSyntax},
		{"empty", "", "", "", "", ErrPlainSyntax},
		{"empty user", "\x00\x00secret", "", "", "", ErrPlainSyntax},
		{"empty password", "\x00alice@example.com\x00", "", "", "", ErrPlainSyntax},
		{"invalid UTF-8", "\x00alice@example.com\x00\xff", "", "", "", ErrPlainSyntax},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, u, p, err := ParsePlain([]byte(tc.in))
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if a != tc.authzid || u != tc.user || p != tc.passw {
				t.Errorf("got %q %q %q, want %q %q %q", a, u, p, tc.authzid, tc.user, tc.passw)
			}
		})
	}
}

func FuzzParsePlain(f *testing.F) {
	for _, s := range []string{
		"\x00alice@example.com\x00secret",
		"alice@example.com\x00alice@example.com\x00secret",
		"boss@example.com\x00alice@example.com\x00secret",
		"\x00\x00",
		"\xff\x00\xfe\x00\xfd",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, u, p, err := ParsePlain(b)
		if err != nil {
			if a != "" || u != "" || p != "" {
				t.Fatalf("fields %q %q %q returned with error %v", a, u, p, err)
			}
			return
		}
		if u == "" || p == "" || strings.ContainsRune(u+p+a, 0) {
			t.Fatalf("accepted %q as %q %q %q", b, a, u, p)
		}
		if a != "" && !strings.EqualFold(a, u) {
			t.Fatalf("authzid %q accepted for user %q", a, u)
		}
		if !bytes.Equal(b, []byte(a+"\x00"+u+"\x00"+p)) {
			t.Fatalf("fields %q %q %q do not make up %q", a, u, p, b)
		}
	})
}
