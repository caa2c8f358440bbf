package pop3

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSession follows the example sessions of RFC 1939 sections 4-11 and
// checks the exact bytes of every reply.
func TestSession(t *testing.T) {
	env := startServer(t, envOptions{plaintext: true})
	c := env.dial(t)
	total := len(msg1) + len(msg2) + len(msg3)
	steps := []struct{ send, want string }{
		{"CAPA", "+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n" +
			"PIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION moat\r\n.\r\n"},
		{"user alice", "+OK send PASS\r\n"},
		{"PASS secret", fmt.Sprintf("+OK maildrop has 3 messages (%d octets)\r\n", total)},
		{"CAPA", "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION moat\r\n.\r\n"},
		{"STAT", fmt.Sprintf("+OK 3 %d\r\n", total)},
		{"LIST", fmt.Sprintf("+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n", total, len(msg1), len(msg2), len(msg3))},
		{"LIST 2", fmt.Sprintf("+OK 2 %d\r\n", len(msg2))},
		{"LIST 4", "-ERR no such message\r\n"},
		{"UIDL", "+OK unique-id listing follows\r\n1 uid1\r\n2 uid2\r\n3 uid3\r\n.\r\n"},
		{"UIDL 3", "+OK 3 uid3\r\n"},
		{"RETR 1", fmt.Sprintf("+OK %d octets\r\n%s.\r\n", len(msg1), msg1)},
		{"RETR 2", fmt.Sprintf("+OK %d octets\r\nSubject: dots\r\n\r\n..\r\n...x\r\n..end\r\n.\r\n", len(msg2))},
		{"RETR 3", fmt.Sprintf("+OK %d octets\r\n%s\r\n.\r\n", len(msg3), msg3)},
		{"TOP 1 0", "+OK top of message follows\r\nFrom: bob@example.test\r\nSubject: first\r\n\r\n.\r\n"},
		{"TOP 1 1", "+OK top of message follows\r\nFrom: bob@example.test\r\nSubject: first\r\n\r\nline one\r\n.\r\n"},
		{"top 1 99", "+OK top of message follows\r\n" + msg1 + ".\r\n"},
		{"TOP 3 5", "+OK top of message follows\r\n" + msg3 + "\r\n.\r\n"},
		{"DELE 1", "+OK message 1 deleted\r\n"},
		{"DELE 1", "-ERR message 1 already deleted\r\n"},
		{"RETR 1", "-ERR no such message\r\n"},
		{"TOP 1 0", "-ERR no such message\r\n"},
		{"LIST 1", "-ERR no such message\r\n"},
		{"UIDL 1", "-ERR no such message\r\n"},
		{"STAT", fmt.Sprintf("+OK 2 %d\r\n", len(msg2)+len(msg3))},
		{"LIST", fmt.Sprintf("+OK 2 messages (%d octets)\r\n2 %d\r\n3 %d\r\n.\r\n", len(msg2)+len(msg3), len(msg2), len(msg3))},
		{"UIDL", "+OK unique-id listing follows\r\n2 uid2\r\n3 uid3\r\n.\r\n"},
		{"RSET", fmt.Sprintf("+OK maildrop has 3 messages (%d octets)\r\n", total)},
		{"RETR 1", fmt.Sprintf("+OK %d octets\r\n%s.\r\n", len(msg1), msg1)},
		{"NOOP", "+OK\r\n"},
		{"DELE 2", "+OK message 2 deleted\r\n"},
		{"USER alice", "-ERR command not valid after login\r\n"},
		{"STLS", "-ERR command not valid after login\r\n"},
		{"QUIT", "+OK pop.test POP3 server signing off (2 messages left)\r\n"},
	}
	for _, s := range steps {
		c.expect(s.send, s.want)
	}
	c.eof()
	env.back.waitClosed(t)
	if got := env.back.commitsOf("alice@example.test"); !slices.EqualFunc(got, [][]int{{1}}, slices.Equal) {
		t.Errorf("commits %v, want [[1]]", got)
	}
	reqs := env.auth.requests()
	if len(reqs) != 1 || reqs[0].Protocol != "pop3" || reqs[0].Mechanism != "USER" || reqs[0].TLS ||
		reqs[0].User != "alice" || reqs[0].Password != "secret" || !reqs[0].Remote.Addr().IsLoopback() ||
		reqs[0].Listener != env.addr {
		t.Errorf("login requests %+v", reqs)
	}
	if ops := env.errorEvents(); len(ops) > 0 {
		t.Errorf("error events %v", ops)
	}
}

func TestQuitEmptiesMaildrop(t *testing.T) {
	env := startServer(t, envOptions{plaintext: true})
	c := env.dial(t)
	c.login()
	for _, cmd := range []string{"DELE 3", "DELE 1", "DELE 2"} {
		c.cmd(cmd)
	}
	c.expect("STAT", "+OK 0 0\r\n")
	c.expect("LIST", "+OK 0 messages (0 octets)\r\n.\r\n")
	c.expect("QUIT", "+OK pop.test POP3 server signing off (maildrop empty)\r\n")
	c.eof()
	env.back.waitClosed(t)
	if got := env.back.commitsOf("alice@example.test"); !slices.EqualFunc(got, [][]int{{0, 1, 2}}, slices.Equal) {
		t.Errorf("commits %v", got)
	}
}

// TestDeleteAtQuitOnly checks that deletions are only applied by QUIT.
func TestDeleteAtQuitOnly(t *testing.T) {
	tests := []struct {
		name  string
		cmds  []string
		quit  bool
		want  [][]int // Commit calls
		reply string  // to QUIT
	}{
		{name: "dropped connection", cmds: []string{"DELE 1", "DELE 2"}, want: nil},
		{name: "quit", cmds: []string{"DELE 3", "DELE 1"}, quit: true, want: [][]int{{0, 2}},
			reply: "+OK pop.test POP3 server signing off (1 messages left)"},
		{name: "rset", cmds: []string{"DELE 1", "RSET", "DELE 2"}, quit: true, want: [][]int{{1}},
			reply: "+OK pop.test POP3 server signing off (2 messages left)"},
		{name: "no deletions", cmds: []string{"RETR 1"}, quit: true, want: [][]int{nil},
			reply: "+OK pop.test POP3 server signing off (3 messages left)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startServer(t, envOptions{plaintext: true})
			c := env.dial(t)
			c.login()
			for _, cmd := range tt.cmds {
				c.send(cmd)
			}
			if tt.quit {
				c.send("QUIT")
			}
			// Read every reply first: RETR's is multi-line.
			for range tt.cmds {
				if got := c.line(); strings.HasPrefix(got, "+OK ") && strings.HasSuffix(got, "octets") {
					for c.line() != "." {
					}
				}
			}
			if tt.quit {
				if got := c.line(); got != tt.reply {
					t.Errorf("QUIT: %q, want %q", got, tt.reply)
				}
				c.eof()
			} else {
				c.conn.Close()
			}
			env.back.waitClosed(t)
			if got := env.back.commitsOf("alice@example.test"); !slices.EqualFunc(got, tt.want, slices.Equal) {
				t.Errorf("commits %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCommitFailure(t *testing.T) {
	env := startServer(t, envOptions{plaintext: true})
	env.back.failCommit = true
	c := env.dial(t)
	c.login()
	c.cmd("DELE 1")
	c.expect("QUIT", "-ERR [SYS/TEMP] some deleted messages not removed\r\n")
	c.eof()
	env.back.waitClosed(t)
	if ops := env.errorEvents(); !slices.Equal(ops, []string{"commit"}) {
		t.Errorf("error events %v", ops)
	}
}

func TestStoreFailures(t *testing.T) {
	env := startServer(t, envOptions{plaintext: true, boxes: map[string][]string{
		"alice@example.test": {failOpen, failRead, msg1},
	}})
	c := env.dial(t)
	c.login()
	c.expect("RETR 1", "-ERR [SYS/TEMP] Unable to read message\r\n")
	c.expect("TOP 1 0", "-ERR [SYS/TEMP] Unable to read message\r\n")
	// A read failure after the status line: the session ends, no UPDATE.
	c.cmd("DELE 3")
	c.expect("RETR 2", fmt.Sprintf("+OK %d octets\r\nSubject: x\r\n", len(failRead)))
	c.eof()
	env.back.waitClosed(t)
	if got := env.back.commitsOf("alice@example.test"); len(got) != 0 {
		t.Errorf("commits %v", got)
	}
	if ops := env.errorEvents(); !slices.Equal(ops, []string{"open message", "open message", "read message"}) {
		t.Errorf("error events %v", ops)
	}
}

func TestMaildropInUse(t *testing.T) {
	env := startServer(t, envOptions{plaintext: true})
	first := env.dial(t)
	first.login()
	second := env.dial(t)
	second.expect("USER alice", "+OK send PASS\r\n")
	second.expect("PASS secret", "-ERR [IN-USE] Mailbox already locked\r\n")
	second.expect("PASS secret", "-ERR USER first\r\n")
	first.expect("QUIT", "+OK pop.test POP3 server signing off (3 messages left)\r\n")
	first.eof()
	env.back.waitClosed(t)
	second.expect("USER alice", "+OK send PASS\r\n")
	second.expect("PASS secret", "+OK maildrop has 3 messages ("+fmt.Sprint(len(msg1)+len(msg2)+len(msg3))+" octets)\r\n")
}

func TestLoginFailures(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		want  string // all replies after the greeting
		quit  bool   // the server closes the connection
		noop  string // the reply to a NOOP afterwards, if not quit
	}{
		{name: "wrong password", lines: []string{"USER alice", "PASS wrong"},
			want: "+OK send PASS\r\n-ERR [AUTH] Authentication failed\r\n"},
		{name: "unknown user", lines: []string{"USER nobody", "PASS x"},
			want: "+OK send PASS\r\n-ERR [AUTH] Authentication failed\r\n"},
		{name: "locked out", lines: []string{"USER locked", "PASS x"}, quit: true,
			want: "+OK send PASS\r\n-ERR [SYS/TEMP] Too many failed logins, try again later\r\n"},
		{name: "user database down", lines: []string{"USER broken", "PASS x"},
			want: "+OK send PASS\r\n-ERR [SYS/TEMP] Authentication temporarily unavailable\r\n"},
		{name: "password with spaces", lines: []string{"USER carol", "PASS pass word"},
			want: "+OK send PASS\r\n+OK maildrop has 0 messages (0 octets)\r\n", noop: "+OK\r\n"},
		{name: "PASS first", lines: []string{"PASS secret"}, want: "-ERR USER first\r\n"},
		{name: "USER without name", lines: []string{"USER"}, want: "-ERR missing user name\r\n"},
		{name: "repeated failures", quit: true,
			lines: []string{"USER alice", "PASS a", "USER alice", "PASS b", "USER alice", "PASS c"},
			want: "+OK send PASS\r\n-ERR [AUTH] Authentication failed\r\n+OK send PASS\r\n-ERR [AUTH] Authentication failed\r\n" +
				"+OK send PASS\r\n-ERR too many bad commands\r\n"},
		{name: "APOP", lines: []string{"APOP alice 0123456789abcdef"}, want: "-ERR APOP not supported\r\n"},
		{name: "quit", lines: []string{"QUIT"}, quit: true, want: "+OK pop.test POP3 server signing off\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startServer(t, envOptions{plaintext: true, o: Options{MaxBadCommands: 3}})
			c := env.dial(t)
			c.write(strings.Join(tt.lines, "\r\n") + "\r\n") // pipelined
			c.expect("", tt.want)
			if tt.quit {
				c.eof()
			} else {
				if tt.noop == "" {
					tt.noop = "-ERR command not valid before login\r\n"
				}
				c.expect("NOOP", tt.noop)
			}
		})
	}
}

func TestAuthPlain(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	ok := fmt.Sprintf("+OK maildrop has 3 messages (%d octets)\r\n", len(msg1)+len(msg2)+len(msg3))
	long := b64("\x00alice\x00" + strings.Repeat("x", 400))
	tests := []struct {
		name  string
		lines []string
		want  string
	}{
		{"initial response", []string{"AUTH PLAIN " + b64("\x00alice\x00secret")}, ok},
		{"lower case", []string{"auth plain " + b64("\x00alice\x00secret")}, ok},
		{"continuation", []string{"AUTH PLAIN", b64("\x00alice\x00secret")}, "+ \r\n" + ok},
		{"authzid equal", []string{"AUTH PLAIN " + b64("alice\x00alice\x00secret")}, ok},
		{"authzid other", []string{"AUTH PLAIN " + b64("bob\x00alice\x00secret")},
			"-ERR [AUTH] authorization identity not permitted\r\n"},
		{"wrong password", []string{"AUTH PLAIN " + b64("\x00alice\x00nope")}, "-ERR [AUTH] Authentication failed\r\n"},
		{"cancel", []string{"AUTH PLAIN", "*"}, "+ \r\n-ERR authentication cancelled\r\n"},
		{"bad base64", []string{"AUTH PLAIN !!!!"}, "-ERR invalid base64 in response\r\n"},
		{"bad base64 continuation", []string{"AUTH PLAIN", "AGFsaWNlAHNlY3JldA"}, "+ \r\n-ERR invalid base64 in response\r\n"},
		{"empty initial response", []string{"AUTH PLAIN ="}, "-ERR [AUTH] malformed PLAIN response\r\n"},
		{"no NULs", []string{"AUTH PLAIN " + b64("alicesecret")}, "-ERR [AUTH] malformed PLAIN response\r\n"},
		{"long continuation", []string{"AUTH PLAIN", long}, "+ \r\n-ERR [AUTH] Authentication failed\r\n"},
		{"long initial response", []string{"AUTH PLAIN " + long}, "-ERR [AUTH] Authentication failed\r\n"},
		{"other mechanism", []string{"AUTH CRAM-MD5"}, "-ERR unsupported authentication mechanism\r\n"},
		{"list", []string{"AUTH"}, "+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n"},
		{"too many arguments", []string{"AUTH PLAIN a b"}, "-ERR too many arguments\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startServer(t, envOptions{plaintext: true})
			c := env.dial(t)
			for _, l := range tt.lines {
				c.send(l)
			}
			c.expect("", tt.want)
			if tt.want == ok {
				reqs := env.auth.requests()
				if len(reqs) != 1 || reqs[0].Mechanism != "PLAIN" || reqs[0].User != "alice" {
					t.Errorf("login requests %+v", reqs)
				}
			}
		})
	}
}

func TestSTLS(t *testing.T) {
	t.Run("cleartext refused", func(t *testing.T) {
		env := startServer(t, envOptions{})
		c := env.dial(t)
		c.expect("CAPA", "+OK Capability list follows\r\nTOP\r\nUIDL\r\nSTLS\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"+
			"PIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION moat\r\n.\r\n")
		refused := "-ERR [AUTH] Cleartext authentication not allowed, use STLS first\r\n"
		c.expect("USER alice", refused)
		c.expect("PASS secret", "-ERR USER first\r\n")
		c.expect("AUTH PLAIN AGFsaWNlAHNlY3JldA==", refused)
		c.expect("AUTH PLAIN", refused) // no continuation: the password is never asked for
		c.expect("AUTH", "+OK SASL mechanisms follow\r\n.\r\n")
		c.startTLS(env)
		c.expect("CAPA", "+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"+
			"PIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION moat\r\n.\r\n")
		c.expect("STLS", "-ERR STLS not available\r\n")
		c.login()
		c.expect("QUIT", "+OK pop.test POP3 server signing off (3 messages left)\r\n")
		// The refused USER in clear went to the authority without a
		// password (so that it is an event); the login over TLS did too.
		reqs := env.auth.requests()
		if len(reqs) != 2 || reqs[0].TLS || reqs[0].Password != "" || reqs[0].User != "alice" ||
			!reqs[1].TLS || reqs[1].Mechanism != "USER" {
			t.Errorf("login requests %+v", reqs)
		}
	})
	t.Run("pipelined command discarded", func(t *testing.T) {
		env := startServer(t, envOptions{plaintext: true})
		c := env.dial(t)
		c.write("STLS\r\nUSER alice\r\n") // as a man in the middle would inject
		c.expect("", "+OK Begin TLS negotiation\r\n")
		c.handshake(env)
		c.expect("PASS secret", "-ERR USER first\r\n")
	})
	t.Run("state reset", func(t *testing.T) {
		env := startServer(t, envOptions{plaintext: true})
		c := env.dial(t)
		c.expect("USER alice", "+OK send PASS\r\n")
		c.startTLS(env)
		c.expect("PASS secret", "-ERR USER first\r\n")
	})
	t.Run("not configured, then reloaded", func(t *testing.T) {
		env := startServer(t, envOptions{noTLS: true})
		c := env.dial(t)
		c.expect("CAPA", "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"+
			"PIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION moat\r\n.\r\n")
		c.expect("STLS", "-ERR STLS not available\r\n")
		c.expect("USER alice", "-ERR [AUTH] Cleartext authentication not allowed\r\n")
		env.srv.SetTLSConfig(env.tls)
		c.startTLS(env)
		c.login()
	})
	t.Run("implicit TLS", func(t *testing.T) {
		env := startServer(t, envOptions{listener: Listener{Name: "pop3s", ImplicitTLS: true}})
		c := env.dialRaw(t)
		c.handshake(env)
		c.expect("", "+OK pop.test POP3 ready\r\n")
		c.expect("CAPA", "+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"+
			"PIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION moat\r\n.\r\n")
		c.login()
		if reqs := env.auth.requests(); len(reqs) != 1 || !reqs[0].TLS || reqs[0].Listener != "pop3s" {
			t.Errorf("login requests %+v", reqs)
		}
	})
	t.Run("implicit TLS without a certificate", func(t *testing.T) {
		env := startServer(t, envOptions{noTLS: true, listener: Listener{ImplicitTLS: true}})
		c := env.dialRaw(t)
		c.eof()
		if ops := env.errorEvents(); !slices.Equal(ops, []string{"tls"}) {
			t.Errorf("error events %v", ops)
		}
	})
	t.Run("failed handshake", func(t *testing.T) {
		env := startServer(t, envOptions{})
		c := env.dial(t)
		c.expect("STLS", "+OK Begin TLS negotiation\r\n")
		c.write("this is not TLS\r\n")
		if _, err := c.r.ReadByte(); err == nil {
			// An alert may come back; then the connection must close.
			c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.r.ReadString(0); err == nil {
				t.Fatal("connection not closed")
			}
		}
	})
}

func TestMessageNumbers(t *testing.T) {
	tests := []struct{ cmd, want string }{
		{"RETR 0", "-ERR no such message"},
		{"RETR 4", "-ERR no such message"},
		{"RETR -1", "-ERR invalid message number"},
		{"RETR +1", "-ERR invalid message number"},
		{"RETR 1x", "-ERR invalid message number"},
		{"RETR abc", "-ERR invalid message number"},
		{"RETR 99999999999999999999", "-ERR invalid message number"},
		{"RETR 0000000001", "-ERR invalid message number"},
		{"RETR", "-ERR wrong number of arguments"},
		{"RETR 1 2", "-ERR wrong number of arguments"},
		{"DELE 0", "-ERR no such message"},
		{"DELE x", "-ERR invalid message number"},
		{"LIST 0", "-ERR no such message"},
		{"LIST 1 2", "-ERR wrong number of arguments"},
		{"UIDL -3", "-ERR invalid message number"},
		{"TOP 1", "-ERR wrong number of arguments"},
		{"TOP 1 -1", "-ERR invalid line count"},
		{"TOP 1 x", "-ERR invalid line count"},
		{"TOP 9 1", "-ERR no such message"},
		{"STAT 1", "-ERR wrong number of arguments"},
		{"LIST  2", fmt.Sprintf("+OK 2 %d", len(msg2))}, // runs of spaces are one separator
		{"LIST 002", fmt.Sprintf("+OK 2 %d", len(msg2))},
		{"AUTH PLAIN", "-ERR command not valid after login"},
		{"XYZZY", "-ERR unknown command"},
	}
	env := startServer(t, envOptions{plaintext: true, o: Options{MaxBadCommands: 100}})
	c := env.dial(t)
	c.login()
	for _, tt := range tests {
		if got := c.cmd(tt.cmd); got != tt.want {
			t.Errorf("%q: %q, want %q", tt.cmd, got, tt.want)
		}
	}
}

func TestDotStuffing(t *testing.T) {
	tests := []struct {
		name, stored, want string // want: RETR's body with the terminator
	}{
		{"dot line", "a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
		{"dot first", ".\r\n", "..\r\n.\r\n"},
		{"double dot", "..x\r\n", "...x\r\n.\r\n"},
		{"dot without newline", "a\r\n.", "a\r\n..\r\n.\r\n"},
		{"no final CRLF", "a\r\nb", "a\r\nb\r\n.\r\n"},
		{"bare LF", "a\n.\nb\n", "a\r\n..\r\nb\r\n.\r\n"},
		{"bare CR", "a\r.\rb", "a\r\n..\r\nb\r\n.\r\n"},
		{"CR CR LF", "a\r\r\n.", "a\r\n\r\n..\r\n.\r\n"},
		{"terminator inside", "a\r\n.\r\n\r\nRETR 1\r\n", "a\r\n..\r\n\r\nRETR 1\r\n.\r\n"},
		{"empty", "", ".\r\n"},
		{"blank line", "\r\n", "\r\n.\r\n"},
	}
	var box []string
	for _, tt := range tests {
		box = append(box, tt.stored)
	}
	env := startServer(t, envOptions{plaintext: true, boxes: map[string][]string{"alice@example.test": box}})
	c := env.dial(t)
	c.login()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.t = t
			c.expect(fmt.Sprintf("RETR %d", i+1), fmt.Sprintf("+OK %d octets\r\n%s", len(tt.stored), tt.want))
		})
	}
}

func TestTop(t *testing.T) {
	tests := []struct {
		name, stored string
		lines        int
		want         string
	}{
		{"headers only", "A: 1\r\nB: 2\r\n\r\nx\r\ny\r\n", 0, "A: 1\r\nB: 2\r\n\r\n.\r\n"},
		{"two lines", "A: 1\r\n\r\nx\r\n.y\r\nz\r\n", 2, "A: 1\r\n\r\nx\r\n..y\r\n.\r\n"},
		{"more than there are", "A: 1\r\n\r\nx", 5, "A: 1\r\n\r\nx\r\n.\r\n"},
		{"no body", "A: 1\r\nB: 2\r\n", 3, "A: 1\r\nB: 2\r\n.\r\n"},
		{"bare LF", "A: 1\n\nx\ny\n", 1, "A: 1\r\n\r\nx\r\n.\r\n"},
		{"long header line", "A: " + strings.Repeat("h", 9000) + "\r\n\r\nx\r\n", 0, "A: " + strings.Repeat("h", 9000) + "\r\n\r\n.\r\n"},
		{"long body line", "A: 1\r\n\r\n" + strings.Repeat("b", 9000) + "\r\ny\r\n", 1, "A: 1\r\n\r\n" + strings.Repeat("b", 9000) + "\r\n.\r\n"},
	}
	var box []string
	for _, tt := range tests {
		box = append(box, tt.stored)
	}
	env := startServer(t, envOptions{plaintext: true, boxes: map[string][]string{"alice@example.test": box}})
	c := env.dial(t)
	c.login()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.t = t
			c.expect(fmt.Sprintf("TOP %d %d", i+1, tt.lines), "+OK top of message follows\r\n"+tt.want)
		})
	}
}

// TestBadInput sends what no POP3 client sends and checks every reply and
// that the server hangs up.
func TestBadInput(t *testing.T) {
	tests := []struct {
		name, send, want string
	}{
		{"too many bad commands", "FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n",
			"-ERR unknown command\r\n-ERR unknown command\r\n-ERR too many bad commands\r\n"},
		{"commands of the other state", "STAT\r\nNOOP\r\nRETR 1\r\n",
			"-ERR command not valid before login\r\n-ERR command not valid before login\r\n-ERR too many bad commands\r\n"},
		{"over-long line", "NOOP " + strings.Repeat("x", 300) + "\r\nQUIT\r\n", "-ERR line too long\r\n"},
		{"over-long unknown line", strings.Repeat("x", 300) + "\r\n", "-ERR line too long\r\n"},
		{"endless line", strings.Repeat("x", 5000), "-ERR line too long\r\n"},
		{"over-long AUTH line", "AUTH PLAIN " + strings.Repeat("A", 3000) + "\r\n", "-ERR line too long\r\n"},
		{"HTTP request", "GET / HTTP/1.1\r\nHost: pop.test\r\n\r\n", ""},
		{"HTTP POST", "POST /login HTTP/1.0\r\n", ""},
		{"long HTTP request", "GET /" + strings.Repeat("a", 1000) + " HTTP/1.1\r\n", ""},
		{"HTTP lower case", "options * HTTP/1.1\r\n", ""},
		{"HTTP/1 anywhere", "FOO /x HTTP/1.1\r\n", ""},
		{"HTTP after commands", "CAPX\r\nGET / HTTP/1.1\r\n", "-ERR unknown command\r\n"},
		{"TLS ClientHello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ""},
		{"NUL bytes", "US\x00ER alice\r\n\x00\r\n\r\n", "-ERR invalid characters in command line\r\n" +
			"-ERR invalid characters in command line\r\n-ERR too many bad commands\r\n"},
		{"empty lines", "\r\n\n\r\n", "-ERR empty command line\r\n-ERR empty command line\r\n-ERR too many bad commands\r\n"},
		{"binary keyword", "\xff\xfe\r\nC4PA\r\n", "-ERR invalid command keyword\r\n-ERR invalid command keyword\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startServer(t, envOptions{plaintext: true, o: Options{MaxBadCommands: 3}})
			c := env.dial(t)
			c.write(tt.send)
			if tt.name == "binary keyword" {
				c.expect("", tt.want)
				c.expect("QUIT", "+OK pop.test POP3 server signing off\r\n")
			} else if tt.want != "" {
				c.expect("", tt.want)
			}
			c.eof()
		})
	}
}

func TestIdleTimeout(t *testing.T) {
	env := startServer(t, envOptions{plaintext: true, o: Options{IdleTimeout: 200 * time.Millisecond}})
	t.Run("authorization", func(t *testing.T) {
		c := env.dial(t)
		c.expect("", "-ERR autologout\r\n")
		c.eof()
	})
	t.Run("transaction", func(t *testing.T) {
		c := env.dial(t)
		c.login()
		c.expect("DELE 1", "+OK message 1 deleted\r\n")
		c.expect("", "-ERR autologout\r\n")
		c.eof()
		env.back.waitClosed(t)
		if got := env.back.commitsOf("alice@example.test"); len(got) != 0 {
			t.Errorf("commits %v", got)
		}
	})
}

func TestShutdown(t *testing.T) {
	t.Run("graceful", func(t *testing.T) {
		env := startServer(t, envOptions{plaintext: true})
		busy := env.dial(t)
		busy.login()
		idle := env.dial(t)
		done := make(chan error, 1)
		go func() { done <- env.srv.Shutdown(context.Background()) }()
		idle.eof() // not logged in: cut off at once
		busy.expect("DELE 2", "+OK message 2 deleted\r\n")
		busy.expect("QUIT", "+OK pop.test POP3 server signing off (2 messages left)\r\n")
		if err := <-done; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if got := env.back.commitsOf("alice@example.test"); !slices.EqualFunc(got, [][]int{{1}}, slices.Equal) {
			t.Errorf("commits %v", got)
		}
		if c, err := net.Dial("tcp", env.addr); err == nil {
			c.Close()
			t.Error("still accepting")
		}
	})
	t.Run("deadline", func(t *testing.T) {
		env := startServer(t, envOptions{plaintext: true})
		c := env.dial(t)
		c.login()
		c.expect("DELE 1", "+OK message 1 deleted\r\n")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- env.srv.Shutdown(ctx) }()
		c.expect("NOOP", "+OK\r\n") // still served
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Shutdown: %v", err)
		}
		c.eof()
		if got := env.back.commitsOf("alice@example.test"); len(got) != 0 {
			t.Errorf("commits %v: a session cut off must not UPDATE", got)
		}
		if u := env.back.waitClosed(t); u != "alice@example.test" {
			t.Errorf("closed %q", u)
		}
	})
	t.Run("serve after shutdown", func(t *testing.T) {
		srv := New(Options{Backend: newFakeBackend(nil), Auth: &fakeAuth{}})
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Serve(ln, Listener{}); !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
}

// TestPipelining sends a whole session in one write.
func TestPipelining(t *testing.T) {
	env := startServer(t, envOptions{plaintext: true})
	c := env.dial(t)
	c.write("USER alice\r\nPASS secret\r\nSTAT\r\nRETR 3\r\nDELE 3\r\nQUIT\r\n")
	total := len(msg1) + len(msg2) + len(msg3)
	c.expect("", fmt.Sprintf("+OK send PASS\r\n+OK maildrop has 3 messages (%d octets)\r\n+OK 3 %d\r\n+OK %d octets\r\n%s\r\n.\r\n"+
		"+OK message 3 deleted\r\n+OK pop.test POP3 server signing off (2 messages left)\r\n", total, total, len(msg3), msg3))
	c.eof()
}

func TestTLSConfigSwap(t *testing.T) {
	// SetTLSConfig races with sessions reading it: run under -race.
	env := startServer(t, envOptions{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			if i%2 == 0 {
				env.srv.SetTLSConfig(nil)
			} else {
				env.srv.SetTLSConfig(env.tls)
			}
		}
		env.srv.SetTLSConfig(env.tls)
	}()
	for range 5 {
		c := env.dial(t)
		c.send("CAPA")
		for c.line() != "." {
		}
		c.expect("QUIT", "+OK pop.test POP3 server signing off\r\n")
	}
	<-done
	c := env.dial(t)
	c.startTLS(env)
}
