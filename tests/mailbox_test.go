package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"moat/internal/smtptest"
)

const mailboxPassword = "correct horse battery staple"

// addUser runs `moat user add` against m's config, the password on stdin.
func addUser(t testing.TB, m *Moat, addr, password string) {
	t.Helper()
	cmd := exec.Command(requireMoat(t), "user", "add", addr, "--config", m.ConfigPath)
	cmd.Stdin = strings.NewReader(password + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("moat user add %s: %v\n%s", addr, err, out)
	}
}

// toolResult is one run of an external client.
type toolResult struct {
	args   []string
	stdout []byte
	stderr string
	code   int
}

func (r toolResult) String() string {
	return fmt.Sprintf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", r.args, r.code, abbrev(string(r.stdout)), r.stderr)
}

// runTool runs a required external program (skipped without it on a
// developer machine, failed under CI) with a deadline.
func runTool(t testing.TB, name string, args ...string) toolResult {
	t.Helper()
	bin := smtptest.RequireTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := toolResult{args: args, stdout: stdout.Bytes(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("running %s %v: %v", name, args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish within a minute", name, args)
	}
	return r
}

// curl runs curl with TLS certificates unchecked (moat's is self-signed
// here) and the user's credentials.
func curl(t testing.TB, user, password string, args ...string) toolResult {
	t.Helper()
	return runTool(t, "curl", append([]string{"-sS", "-k", "--max-time", "30", "-u", user + ":" + password}, args...)...)
}

// python runs tests/testdata/mailclient.py (poplib and imaplib) and
// returns its "key: value" lines.
func python(t testing.TB, args ...string) map[string]string {
	t.Helper()
	r := runTool(t, "python3", append([]string{filepath.Join("testdata", "mailclient.py")}, args...)...)
	if r.code != 0 {
		t.Fatalf("python3 %s", r)
	}
	facts := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(r.stdout)), "\n") {
		if k, v, ok := strings.Cut(l, ": "); ok {
			facts[k] = strings.TrimSpace(v)
		}
	}
	return facts
}

func hostPort(addr string) (string, string) {
	i := strings.LastIndexByte(addr, ':')
	return addr[:i], addr[i+1:]
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// storedMessages returns the files of a user's INBOX (new/ and cur/).
func storedMessages(t testing.TB, m *Moat, domain, local string) []string {
	t.Helper()
	var files []string
	for _, sub := range []string{"new", "cur"} {
		matches, _ := filepath.Glob(filepath.Join(m.DataDir, "mail", domain, local, sub, "*"))
		files = append(files, matches...)
	}
	return files
}

// TestMailboxClients: mail accepted over SMTP is read back, byte for byte,
// by real clients over every POP3 and IMAP listener: curl (pop3 with STLS,
// pop3s, imap with STARTTLS, imaps), Python's poplib and imaplib, and
// go-imap's client; flags set over IMAP are there after reconnecting; POP3
// deletions happen only at QUIT; a cleartext password from an untrusted
// client is refused; every login is an event without the password.
func TestMailboxClients(t *testing.T) {
	t.Parallel()
	m := StartMoat(t, Config{Mailboxes: true, Routes: map[string]Route{"local.test": {Upstream: "local"}}})
	m.ForbidInLog(mailboxPassword)
	const user = "alice@local.test"
	addUser(t, m, user, mailboxPassword)

	msg := NewMessage(sender, user, "read me over POP3 and IMAP")
	MustSend(t, m.Addr, Envelope{From: sender, To: []string{user}, Data: msg.Bytes()})
	files := storedMessages(t, m, "local.test", "alice")
	if len(files) != 1 {
		t.Fatalf("stored: %v", files)
	}
	stored, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(stored, []byte(msg.Marker)) {
		t.Fatalf("stored message lacks the marker:\n%s", stored)
	}

	t.Run("curl", func(t *testing.T) {
		for _, tc := range []struct{ name, url string }{
			{"pop3 STLS", "pop3://" + m.POP3Addr + "/1"},
			{"pop3s", "pop3s://" + m.POP3SAddr + "/1"},
			{"imap STARTTLS", "imap://" + m.IMAPAddr + "/INBOX;UID=1"},
			{"imaps", "imaps://" + m.IMAPSAddr + "/INBOX;UID=1"},
		} {
			r := curl(t, user, mailboxPassword, "--ssl-reqd", tc.url)
			if r.code != 0 {
				t.Errorf("%s: %s", tc.name, r)
				continue
			}
			if !bytes.Equal(r.stdout, stored) {
				t.Errorf("%s: curl got %d bytes, want the %d stored:\n%s", tc.name, len(r.stdout), len(stored), r)
			}
		}
		// The POP3 listing over implicit TLS.
		r := curl(t, user, mailboxPassword, "pop3s://"+m.POP3SAddr+"/")
		if want := fmt.Sprintf("1 %d\r\n", len(stored)); r.code != 0 || string(r.stdout) != want {
			t.Errorf("pop3s LIST: want %q: %s", want, r)
		}
	})

	t.Run("cleartext refused", func(t *testing.T) {
		// Loopback is not in this config's trusted_networks, and
		// allow_plaintext_auth is off: no password in clear.
		for _, url := range []string{"pop3://" + m.POP3Addr + "/1", "imap://" + m.IMAPAddr + "/INBOX;UID=1"} {
			if r := curl(t, user, mailboxPassword, url); r.code == 0 {
				t.Errorf("a cleartext login was accepted: %s", r)
			}
		}
		// curl does not even try (CAPA lists neither USER nor SASL); a
		// client that sends USER anyway is refused before its password.
		c, err := net.DialTimeout("tcp", m.POP3Addr, waitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitTimeout))
		br := bufio.NewReader(c)
		if greeting, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(greeting, "+OK") {
			t.Fatalf("POP3 greeting %q: %v", greeting, err)
		}
		fmt.Fprintf(c, "USER %s\r\n", user)
		if r, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(r, "-ERR [AUTH] Cleartext authentication not allowed") {
			t.Errorf("USER in clear: %q %v", r, err)
		}
		host, port := hostPort(m.IMAPAddr)
		facts := python(t, "imap-plain", host, port, user, mailboxPassword)
		if !strings.Contains(facts["caps"], "LOGINDISABLED") || !strings.HasPrefix(facts["login"], "refused") {
			t.Errorf("imaplib in clear: %v", facts)
		}
	})

	t.Run("python", func(t *testing.T) {
		host, port := hostPort(m.POP3SAddr)
		facts := python(t, "pop3-retr", host, port, user, mailboxPassword)
		if facts["stat"] != fmt.Sprintf("1 %d", len(stored)) || facts["retr_sha256"] != sha(stored) {
			t.Errorf("poplib: %v (stored %d bytes, sha256 %s)", facts, len(stored), sha(stored))
		}
		host, port = hostPort(m.POP3Addr)
		facts = python(t, "pop3-stls", host, port, user, mailboxPassword)
		if !strings.Contains(facts["capa_before"], "STLS") || strings.Contains(facts["capa_before"], "USER") || facts["stat"] != fmt.Sprintf("1 %d", len(stored)) {
			t.Errorf("poplib with STLS: %v", facts)
		}
		host, port = hostPort(m.IMAPAddr)
		facts = python(t, "imap-starttls", host, port, user, mailboxPassword)
		if !strings.Contains(facts["caps_before"], "STARTTLS") || !strings.Contains(facts["caps_before"], "LOGINDISABLED") ||
			strings.Contains(facts["caps_after"], "LOGINDISABLED") || facts["exists"] != "1" {
			t.Errorf("imaplib with STARTTLS: %v", facts)
		}
		host, port = hostPort(m.IMAPSAddr)
		facts = python(t, "imap-flag", host, port, user, mailboxPassword)
		if facts["fetch_sha256"] != sha(stored) || facts["store"] != "OK" {
			t.Errorf("imaplib: %v", facts)
		}
		// A new connection sees the flag.
		facts = python(t, "imap-flags", host, port, user, mailboxPassword)
		if !strings.Contains(facts["flags"], `\Flagged`) {
			t.Errorf("flags after reconnecting: %v", facts)
		}
	})

	t.Run("go-imap IDLE", func(t *testing.T) {
		exists := make(chan uint32, 8)
		c, err := imapclient.DialTLS(m.IMAPSAddr, &imapclient.Options{
			TLSConfig: &tls.Config{InsecureSkipVerify: true},
			UnilateralDataHandler: &imapclient.UnilateralDataHandler{Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					exists <- *d.NumMessages
				}
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login(user, mailboxPassword).Wait(); err != nil {
			t.Fatal(err)
		}
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		idle, err := c.Idle()
		if err != nil {
			t.Fatal(err)
		}
		second := NewMessage(sender, user, "arrives during IDLE")
		MustSend(t, m.Addr, Envelope{From: sender, To: []string{user}, Data: second.Bytes()})
		select {
		case n := <-exists:
			if n != sel.NumMessages+1 {
				t.Errorf("IDLE: EXISTS %d, want %d", n, sel.NumMessages+1)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("no EXISTS during IDLE within %v of the SMTP delivery", waitTimeout)
		}
		if err := idle.Close(); err != nil {
			t.Fatal(err)
		}
		if err := idle.Wait(); err != nil {
			t.Fatal(err)
		}
		sec := &imap.FetchItemBodySection{Peek: true}
		msgs, err := c.Fetch(imap.SeqSetNum(sel.NumMessages+1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{sec}}).Collect()
		if err != nil || len(msgs) != 1 || !bytes.Contains(msgs[0].FindBodySection(sec), []byte(second.Marker)) {
			t.Fatalf("fetching the new message: %v %v", err, msgs)
		}
		if err := c.Logout().Wait(); err != nil {
			t.Error(err)
		}
	})

	t.Run("POP3 DELE only at QUIT", func(t *testing.T) {
		before := len(storedMessages(t, m, "local.test", "alice"))
		host, port := hostPort(m.POP3SAddr)
		python(t, "pop3-dele", host, port, user, mailboxPassword, "drop")
		if n := len(storedMessages(t, m, "local.test", "alice")); n != before {
			t.Fatalf("a session dropped without QUIT deleted mail: %d → %d messages", before, n)
		}
		// The maildrop lock is released when the dropped session ends;
		// poll until a new session can take it.
		deadline := time.Now().Add(waitTimeout)
		for {
			r := runTool(t, "python3", filepath.Join("testdata", "mailclient.py"), "pop3-dele", host, port, user, mailboxPassword, "quit")
			if r.code == 0 {
				break
			}
			if !strings.Contains(r.stderr, "IN-USE") || time.Now().After(deadline) {
				t.Fatalf("DELE and QUIT: %s", r)
			}
			time.Sleep(50 * time.Millisecond) // the server notices the dropped connection on its own
		}
		if n := len(storedMessages(t, m, "local.test", "alice")); n != before-1 {
			t.Errorf("after DELE and QUIT: %d messages, want %d", n, before-1)
		}
	})

	t.Run("events", func(t *testing.T) {
		for _, proto := range []string{"pop3", "imap"} {
			ev := m.WaitEvent(proto+".login success", func(e Event) bool {
				return e.Action() == proto+".login" && e.Outcome() == "success"
			})
			if ev.Str("user.name") != user || ev.Str("source.ip") != "127.0.0.1" {
				t.Errorf("%s.login: %v", proto, ev)
			}
		}
		// POP3's USER in clear is an event. IMAP's LOGIN under
		// LOGINDISABLED is answered by go-imap itself (NO
		// [PRIVACYREQUIRED]) before moat sees it, so it is not.
		m.WaitEvent("pop3.login refused in clear", func(e Event) bool {
			return e.Action() == "pop3.login" && e.Outcome() == "failure" && e.Str("moat.reason") == "plaintext_refused"
		})
	})
}

// TestLoginLockout: after max_failures_per_ip wrong passwords from one
// client, even the right password is refused, over IMAP and POP3 alike,
// and the events say why.
func TestLoginLockout(t *testing.T) {
	t.Parallel()
	m := StartMoat(t, Config{Mailboxes: true, Routes: map[string]Route{"local.test": {Upstream: "local"}},
		Extra: map[string]any{"auth": map[string]any{"failure_delays": []string{"10ms", "20ms"}, "max_failures_per_ip": 3, "lockout": "1h"}}})
	m.ForbidInLog(mailboxPassword)
	const user = "bob@local.test"
	addUser(t, m, user, mailboxPassword)
	MustSend(t, m.Addr, Envelope{From: sender, To: []string{user}, Data: NewMessage(sender, user, "locked").Bytes()})

	if r := curl(t, user, mailboxPassword, "imaps://"+m.IMAPSAddr+"/INBOX;UID=1"); r.code != 0 {
		t.Fatalf("the right password before any failure: %s", r)
	}
	for i := 0; i < 3; i++ {
		if r := curl(t, user, "wrong password", "imaps://"+m.IMAPSAddr+"/INBOX;UID=1"); r.code == 0 {
			t.Fatalf("a wrong password was accepted: %s", r)
		}
	}
	for _, url := range []string{"imaps://" + m.IMAPSAddr + "/INBOX;UID=1", "pop3s://" + m.POP3SAddr + "/1"} {
		if r := curl(t, user, mailboxPassword, url); r.code == 0 {
			t.Errorf("locked out, yet the right password was accepted: %s", r)
		}
	}
	fails := filterEvents(m.Events(), func(e Event) bool {
		return e.Action() == "imap.login" && e.Str("moat.reason") == "bad_credentials"
	})
	if len(fails) != 3 {
		t.Errorf("%d bad_credentials events, want 3:\n%s", len(fails), eventsText(m.Events()))
	}
	for _, proto := range []string{"imap", "pop3"} {
		m.WaitEvent(proto+".login locked", func(e Event) bool {
			return e.Action() == proto+".login" && e.Outcome() == "failure" && e.Str("moat.reason") == "locked_ip"
		})
	}
}

// TestSubmissionAuth: swaks authenticates on the submission listener
// (STARTTLS, then AUTH PLAIN and LOGIN) as a store user, and the
// transaction event names the user; without TLS AUTH is not offered.
func TestSubmissionAuth(t *testing.T) {
	t.Parallel()
	m := StartMoat(t, Config{Mailboxes: true, Routes: map[string]Route{"local.test": {Upstream: "local"}}})
	m.ForbidInLog(mailboxPassword)
	const user = "carol@local.test"
	addUser(t, m, user, mailboxPassword)
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		res := RunSwaks(t, SwaksOptions{Server: m.SubmissionAddr, From: user, To: user, TLS: true,
			Extra: []string{"--auth", mech, "--auth-user", user, "--auth-password", mailboxPassword}})
		if res.ExitCode != 0 || !strings.Contains(res.Transcript, "235 2.7.0") {
			t.Errorf("AUTH %s: exit %d\n%s", mech, res.ExitCode, res.Transcript)
		}
	}
	evs := m.WaitTransactionEvents(2)
	for _, ev := range evs {
		if ev.Outcome() != "success" || ev.Str("user.name") != user || ev.Str("moat.listener") != "submission" {
			t.Errorf("event: %v", ev)
		}
	}
	res := RunSwaks(t, SwaksOptions{Server: m.SubmissionAddr, From: user, To: user,
		Extra: []string{"--auth", "PLAIN", "--auth-user", user, "--auth-password", mailboxPassword}})
	if res.ExitCode == 0 || strings.Contains(res.Transcript, "235 ") {
		t.Errorf("AUTH in clear from an untrusted client:\n%s", res.Transcript)
	}
	res = RunSwaks(t, SwaksOptions{Server: m.SubmissionAddr, From: user, To: user, TLS: true,
		Extra: []string{"--auth", "PLAIN", "--auth-user", user, "--auth-password", "wrong"}})
	if !strings.Contains(res.Transcript, "535 5.7.8") {
		t.Errorf("a wrong password:\n%s", res.Transcript)
	}
}
