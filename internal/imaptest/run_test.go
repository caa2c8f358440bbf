package imaptest

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"moat/internal/tlsutil"
)

var testMessages = [][]byte{
	[]byte("From: a@example.org\r\nSubject: one\r\n\r\nbody1\r\n"),
	[]byte("From: b@example.org\r\nSubject: two\r\n\r\nbody22\r\n"),
}

func runInline(t *testing.T, tg Target, script string) *Result {
	t.Helper()
	s, err := Parse(t.Name(), []byte(script))
	if err != nil {
		t.Fatal(err)
	}
	if tg.Mailbox == "" {
		tg.Mailbox = "box"
	}
	if tg.Messages == nil {
		tg.Messages = testMessages
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	res, err := Run(ctx, s, tg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestRunInline checks pass, fail and skip on small scripts; each wrong
// expectation must fail at its line, so the runner cannot pass everything.
func TestRunInline(t *testing.T) {
	tests := []struct {
		name, script string
		want         Status
		line         int    // Fail: line of the mismatch
		reason       string // substring of Result.Reason
	}{
		{name: "captures and reuses variables", want: Pass, script: "messages: 2\n\n" +
			"ok fetch 1:2 uid\n* 1 fetch (uid $uid1)\n* 2 fetch (uid $uid2)\n" +
			"ok uid fetch $uid2 (flags)\n* 2 fetch (flags ())\n! 1 fetch (uid $uid1)\n"},
		{name: "wrong untagged count", want: Fail, line: 5, reason: "missing 1 untagged", script: "state: created\n\n" +
			"ok append\nok select $mailbox\n* 5 exists\n"},
		{name: "wrong captured value", want: Fail, line: 7, reason: "missing 1 untagged", script: "messages: 2\n\n" +
			"ok fetch 1 uid\n* 1 fetch (uid $uid1)\n\nok fetch 2 uid\n* 2 fetch (uid $uid1)\n"},
		{name: "wrong tagged status", want: Fail, line: 2, reason: "unexpected tagged reply", script: "\nno noop\n"},
		{name: "wrong response code", want: Fail, line: 3, reason: "unexpected tagged reply", script: "state: created\n\n" +
			"select $mailbox\nok [read-only]\n"},
		{name: "forbidden response", want: Fail, line: 4, reason: "forbidden", script: "state: created\n\n" +
			"ok select $mailbox\n! 0 exists\n"},
		{name: "extra untagged when not ignored", want: Fail, line: 4, reason: "unexpected untagged", script: "state: created\n" +
			"ignore_extra_untagged: no\n\nok select $mailbox\n* 0 exists\n"},
		{name: "literal round trip", want: Pass, script: "state: created\n\n" +
			"ok append $mailbox {{{\nSubject: lit\n\nline1\nline2\n}}}\nok select $mailbox\n" +
			"ok fetch 1 body.peek[text]\n* 1 fetch (body[text] {{{\nLINE1\nline2\n}}})\n"},
		{name: "literal content mismatch", want: Fail, line: 10, script: "state: created\n\n" +
			"ok append $mailbox {{{\nSubject: lit\n\nline1\n}}}\nok select $mailbox\n" +
			"ok fetch 1 body.peek[text]\n* 1 fetch (body[text] {{{\nline2\n}}})\n"},
		{name: "pipelined append with literal", want: Pass, script: "state: created\n\n" +
			"tag1 append $mailbox {{{\nSubject: p\n\nx\n}}}\ntag2 status $mailbox (messages)\n" +
			"* status $mailbox (messages $n)\ntag2 ok\ntag1 ok\n"},
		{name: "two connections and relative sequences", want: Pass, script: "connections: 2\nmessages: 4\n\n" +
			"1 ok store 1,3 +flags \\deleted\n1 ok expunge\n2 ok noop\n* $1 expunge\n* $3 expunge\n! $2 expunge\n"},
		{name: "missing capability", want: Skip, reason: "XYZZY", script: "capabilities: IMAP4rev1 XYZZY\n\nok noop\n"},
		{name: "uninitialized variable", want: Fail, line: 2, reason: "uninitialized variable $nothing", script: "\nok fetch $nothing uid\n"},
		{name: "command on a logged-out connection", want: Fail, line: 4, reason: "closed", script: "state: auth\n\n" +
			"ok logout\nok noop\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := runInline(t, startMemServer(t), tt.script)
			if res.Status != tt.want || (tt.want == Fail && res.Line != tt.line) ||
				!strings.Contains(res.Reason, tt.reason) {
				t.Fatalf("got %s (line %d), want %s line %d reason %q:\n%s", res.Status, res.Line, tt.want,
					tt.line, tt.reason, res)
			}
		})
	}
}

// TestBrokenScriptFails changes one expected value of a copied script and
// requires the run to fail there.
func TestBrokenScriptFails(t *testing.T) {
	s, msgs, err := Load(filepath.Join(ScriptsDir(), "fetch"))
	if err != nil {
		t.Fatal(err)
	}
	tg := startMemServer(t)
	tg.Mailbox, tg.Messages = "broken", msgs
	res, err := Run(t.Context(), s, tg)
	if err != nil || res.Status != Pass {
		t.Fatalf("unchanged script: %v %v", res, err)
	}
	for gi := range s.Groups {
		for ui := range s.Groups[gi].Untagged {
			u := &s.Groups[gi].Untagged[ui]
			if u.Text != "3 fetch (uid $uid3)" {
				continue
			}
			u.args, err = parseExpectArgs("3 fetch (uid $uid2)")
			if err != nil {
				t.Fatal(err)
			}
			tg := startMemServer(t)
			tg.Mailbox, tg.Messages = "broken", msgs
			res, err := Run(t.Context(), s, tg)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != Fail || res.Line != u.Line {
				t.Fatalf("got %s at line %d, want fail at line %d", res.Status, res.Line, u.Line)
			}
			return
		}
	}
	t.Fatal("pattern to break not found")
}

func TestRunTLS(t *testing.T) {
	cert, _, err := tlsutil.SelfSigned(filepath.Join(t.TempDir(), "tls"), "imap.test")
	if err != nil {
		t.Fatal(err)
	}
	mem := imapmemserver.New()
	mem.AddUser(imapmemserver.NewUser(memUser, memPassword))
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:   memCaps,
		Logger: testLogger{t},
	})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	tg := Target{Addr: ln.Addr().String(), User: memUser, Password: memPassword,
		TLS: &tls.Config{InsecureSkipVerify: true}} // self-signed test certificate
	res := runInline(t, tg, "messages: 1\n\nok fetch 1 (body.peek[header.fields (subject)])\n"+
		"* 1 fetch (body[header.fields (subject)] {{{\nSubject: one\n\n\n}}})\n")
	if res.Status != Pass {
		t.Fatal(res)
	}
}

// fakeServer serves one connection with handle, for byte-level checks the
// real servers cannot make fail on purpose.
func fakeServer(t *testing.T, handle func(r *bufio.Reader, w io.Writer) error) Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		errc <- handle(bufio.NewReader(c), c)
	}()
	t.Cleanup(func() {
		ln.Close()
		if err := <-errc; err != nil {
			t.Errorf("fake server: %v", err)
		}
	})
	return Target{Addr: ln.Addr().String(), User: "u", Password: "p", Timeout: 10 * time.Second}
}

// expectLine reads one line and compares it with want.
func expectLine(r *bufio.Reader, want string) error {
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading %q: %w", want, err)
	}
	if line != want+"\r\n" {
		return fmt.Errorf("got %q, want %q", line, want)
	}
	return nil
}

// serveCapability answers the CAPABILITY a nonauth script starts with.
func serveCapability(r *bufio.Reader, w io.Writer) error {
	if _, err := io.WriteString(w, "* OK fake ready\r\n"); err != nil {
		return err
	}
	if err := expectLine(r, "1.1 CAPABILITY"); err != nil {
		return err
	}
	_, err := io.WriteString(w, "* CAPABILITY IMAP4rev1\r\n1.1 OK done\r\n")
	return err
}

func serveLogout(r *bufio.Reader, w io.Writer, tag string) error {
	if err := expectLine(r, tag+" logout"); err != nil {
		return err
	}
	_, err := io.WriteString(w, "* BYE bye\r\n"+tag+" OK done\r\n")
	return err
}

// TestLiteralRefused: when the server answers a synchronising literal with
// a tagged NO instead of "+", the literal must not be sent.
func TestLiteralRefused(t *testing.T) {
	tg := fakeServer(t, func(r *bufio.Reader, w io.Writer) error {
		if err := serveCapability(r, w); err != nil {
			return err
		}
		if err := expectLine(r, "1.2 x {3}"); err != nil {
			return err
		}
		if _, err := io.WriteString(w, "1.2 NO too big\r\n"); err != nil {
			return err
		}
		return serveLogout(r, w, "1.3") // not "abc"
	})
	if res := runInline(t, tg, "state: nonauth\n\nno x {{{\nabc\n}}}\n"); res.Status != Pass {
		t.Fatal(res)
	}
}

// TestLiteralResponses: untagged responses with literals may arrive while
// the runner waits for a continuation, and are matched for the command.
func TestLiteralResponses(t *testing.T) {
	tg := fakeServer(t, func(r *bufio.Reader, w io.Writer) error {
		if err := serveCapability(r, w); err != nil {
			return err
		}
		if err := expectLine(r, "1.2 x {3}"); err != nil {
			return err
		}
		if _, err := io.WriteString(w, "* 1 FETCH (BODY[] {4}\r\na\r\nb UID 7)\r\n+ go\r\n"); err != nil {
			return err
		}
		if err := expectLine(r, "abc"); err != nil {
			return err
		}
		if _, err := io.WriteString(w, "* LIST () \"/\" {3}\r\nx y\r\n1.2 OK [X-CODE 1] done\r\n"); err != nil {
			return err
		}
		return serveLogout(r, w, "1.3")
	})
	script := "state: nonauth\n\nx {{{\nabc\n}}}\n* 1 fetch (uid $uid body[] {{{\na\nb\n}}})\n* list () / \"x y\"\nok [x-code $n]\n"
	if res := runInline(t, tg, script); res.Status != Pass {
		t.Fatal(res)
	}
}

// TestByeDisconnect: a BYE followed by a disconnection ends a group whose
// commands accept any reply, and fails one that wants OK.
func TestByeDisconnect(t *testing.T) {
	for _, tt := range []struct {
		reply string
		want  Status
	}{{`""`, Pass}, {"ok", Fail}} {
		t.Run(tt.reply, func(t *testing.T) {
			tg := fakeServer(t, func(r *bufio.Reader, w io.Writer) error {
				if err := serveCapability(r, w); err != nil {
					return err
				}
				if err := expectLine(r, "1.2 shutdown"); err != nil {
					return err
				}
				_, err := io.WriteString(w, "* BYE going away\r\n")
				return err
			})
			res := runInline(t, tg, "state: nonauth\n\n"+tt.reply+" shutdown\n* bye\n")
			if res.Status != tt.want {
				t.Fatalf("got %s, want %s:\n%s", res.Status, tt.want, res)
			}
		})
	}
}

// TestTimeout: a server that never answers fails the script (it is the
// server's fault) instead of hanging.
func TestTimeout(t *testing.T) {
	tg := fakeServer(t, func(r *bufio.Reader, w io.Writer) error {
		if err := serveCapability(r, w); err != nil {
			return err
		}
		_, err := r.ReadString('\n') // the command, never answered
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, r) // until the runner gives up
		return nil
	})
	tg.Timeout = 100 * time.Millisecond
	res := runInline(t, tg, "state: nonauth\n\nok noop\n")
	if res.Status != Fail || !strings.Contains(res.Reason, "no response within") {
		t.Fatal(res)
	}
}

// TestCanceled: cancelling the context ends Run with the context's error.
func TestCanceled(t *testing.T) {
	ready := make(chan struct{})
	tg := fakeServer(t, func(r *bufio.Reader, w io.Writer) error {
		if err := serveCapability(r, w); err != nil {
			return err
		}
		if _, err := r.ReadString('\n'); err != nil {
			return err
		}
		close(ready)
		_, _ = io.Copy(io.Discard, r)
		return nil
	})
	s, err := Parse("cancel", []byte("state: nonauth\n\nok noop\n"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-ready
		cancel()
	}()
	tg.Mailbox = "box"
	if res, err := Run(ctx, s, tg); err == nil {
		t.Fatalf("got %v, want context error", res)
	}
}
