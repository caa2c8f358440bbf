package imaptest

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParse: Parse never panics, fails only with a *ParseError, and a
// parsed script is internally consistent.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		s, err := Parse("fuzz", data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			return
		}
		if s.Connections < 1 || s.Connections > maxConnections || len(s.Groups) == 0 {
			t.Fatalf("connections=%d groups=%d", s.Connections, len(s.Groups))
		}
		for _, g := range s.Groups {
			if g.Conn < 1 || g.Conn > s.Connections {
				t.Fatalf("group on connection %d of %d", g.Conn, s.Connections)
			}
			for _, c := range g.Commands {
				if len(c.reply) == 0 || len(c.parts) == 0 {
					t.Fatalf("command at line %d: reply %v parts %d", c.Line, c.reply, len(c.parts))
				}
			}
		}
		_ = describe(s)
	})
}

// FuzzResponse: the response tokenizer never panics, and a response
// without variables or directives matches itself.
func FuzzResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		r := parseResponse(data)
		_, _ = trailingLiteral(data)
		_ = isStatusLine(data)
		if r.err != nil || r.tag == "+" {
			return
		}
		_ = formatArgs(r.args)
		if bytes.IndexByte(data, '$') >= 0 {
			return
		}
		if n := newMatcher().matchArgs(r.args, r.args, 1<<30, false); n != matchFull {
			t.Fatalf("%q does not match itself (%d)", data, n)
		}
	})
}

// FuzzLoadMbox: messages are never empty and end every line with CRLF.
func FuzzLoadMbox(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs, err := LoadMbox(data)
		if err != nil {
			return
		}
		for _, m := range msgs {
			if len(m) == 0 {
				t.Fatal("empty message")
			}
			for i := bytes.IndexByte(m, '\n'); i >= 0; {
				if i == 0 || m[i-1] != '\r' {
					t.Fatalf("bare LF in %q", m)
				}
				next := bytes.IndexByte(m[i+1:], '\n')
				if next < 0 {
					break
				}
				i += next + 1
			}
		}
	})
}
