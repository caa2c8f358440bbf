package tests

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"moat/internal/dovecottest"
	"moat/internal/imaptest"
)

const (
	dovecotUser     = "gina@corp.test"
	dovecotPassword = "dovecot's own password"
)

// startDovecotProxy runs a real Dovecot holding one message for
// dovecotUser and a moat proxying to it: IMAP over implicit TLS and POP3
// with STLS, both verified against Dovecot's certificate (ca_file).
func startDovecotProxy(t testing.TB, authExtra map[string]any) (*dovecottest.Server, *Moat, []byte) {
	t.Helper()
	dc := dovecottest.Start(t, dovecottest.Options{Users: map[string]string{dovecotUser: dovecotPassword}, TLS: true})
	msg := NewMessage("someone@example.net", dovecotUser, "kept by Dovecot").Bytes()
	dc.Deliver(t, dovecotUser, msg)
	ca := filepath.Join(t.TempDir(), "dovecot-ca.pem")
	if err := os.WriteFile(ca, dc.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	extra := map[string]any{
		"imap": map[string]any{"upstream": dc.IMAPSAddr, "upstream_tls": "implicit", "ca_file": ca},
		"pop3": map[string]any{"upstream": dc.POP3Addr, "upstream_tls": "starttls", "ca_file": ca},
	}
	if authExtra != nil {
		extra["auth"] = authExtra
	}
	m := StartMoat(t, Config{Mailboxes: true, Extra: extra})
	m.ForbidInLog(dovecotPassword)
	return dc, m, msg
}

// TestProxyDovecot: curl and Python's poplib/imaplib get the same answers
// from Dovecot through moat as directly; the client's address reaches
// Dovecot in IMAP ID; a wrong password is refused and counted; after
// max_failures_per_ip even the right one is refused until the lockout
// ends.
func TestProxyDovecot(t *testing.T) {
	t.Parallel()
	dc, m, msg := startDovecotProxy(t, map[string]any{"max_failures_per_ip": 3, "lockout": "3s"})

	for _, tc := range []struct{ name, direct, proxied string }{
		{"imaps", "imaps://" + dc.IMAPSAddr + "/INBOX;UID=1", "imaps://" + m.IMAPSAddr + "/INBOX;UID=1"},
		{"imap STARTTLS", "imap://" + dc.IMAPAddr + "/INBOX;UID=1", "imap://" + m.IMAPAddr + "/INBOX;UID=1"},
		{"imap LIST", "imaps://" + dc.IMAPSAddr + "/", "imaps://" + m.IMAPSAddr + "/"},
		{"pop3s RETR", "pop3s://" + dc.POP3SAddr + "/1", "pop3s://" + m.POP3SAddr + "/1"},
		{"pop3 STLS RETR", "pop3://" + dc.POP3Addr + "/1", "pop3://" + m.POP3Addr + "/1"},
		{"pop3s LIST", "pop3s://" + dc.POP3SAddr + "/", "pop3s://" + m.POP3SAddr + "/"},
	} {
		d := curl(t, dovecotUser, dovecotPassword, "--ssl-reqd", tc.direct)
		p := curl(t, dovecotUser, dovecotPassword, "--ssl-reqd", tc.proxied)
		if d.code != 0 || p.code != 0 || !bytes.Equal(d.stdout, p.stdout) {
			t.Errorf("%s: direct and through moat differ:\ndirect %s\nthrough moat %s", tc.name, d, p)
		}
	}
	if r := curl(t, dovecotUser, dovecotPassword, "imaps://"+m.IMAPSAddr+"/INBOX;UID=1"); !bytes.Equal(r.stdout, msg) {
		t.Errorf("the message through moat:\n%s", r)
	}

	// Python's clients, the same script directly and through moat.
	for _, cmd := range []string{"pop3-retr", "imap-flag", "imap-flags"} {
		addr := func(s string) []string { h, p := hostPort(s); return []string{h, p} }
		direct, proxied := dc.IMAPSAddr, m.IMAPSAddr
		if strings.HasPrefix(cmd, "pop3") {
			direct, proxied = dc.POP3SAddr, m.POP3SAddr
		}
		d := python(t, append(append([]string{cmd}, addr(direct)...), dovecotUser, dovecotPassword)...)
		p := python(t, append(append([]string{cmd}, addr(proxied)...), dovecotUser, dovecotPassword)...)
		if fmt.Sprint(d) != fmt.Sprint(p) {
			t.Errorf("%s: direct %v, through moat %v", cmd, d, p)
		}
	}

	ev := m.WaitEvent("imap.login", func(e Event) bool { return e.Action() == "imap.login" && e.Outcome() == "success" })
	if ev.Str("moat.upstream") != dc.IMAPSAddr || ev.Str("user.name") != dovecotUser {
		t.Errorf("login event: %v", ev)
	}
	if log := dc.Log(); !strings.Contains(log, "x-originating-ip") {
		t.Errorf("Dovecot's log shows no ID with the client's address:\n%s", lastLines(log, 30))
	}

	// Wrong passwords: refused, counted, then a lockout that ends.
	for i := 0; i < 3; i++ {
		if r := curl(t, dovecotUser, "wrong", "imaps://"+m.IMAPSAddr+"/INBOX;UID=1"); r.code == 0 {
			t.Fatalf("a wrong password went through: %s", r)
		}
	}
	fails := filterEvents(m.Events(), func(e Event) bool {
		return e.Action() == "imap.login" && e.Str("moat.reason") == "bad_credentials" && e.Str("moat.upstream") == dc.IMAPSAddr
	})
	if len(fails) != 3 {
		t.Errorf("%d bad_credentials events, want 3", len(fails))
	}
	lockedAt := time.Now()
	if r := curl(t, dovecotUser, dovecotPassword, "pop3s://"+m.POP3SAddr+"/1"); r.code == 0 {
		t.Errorf("locked out, yet the right password went through: %s", r)
	}
	m.WaitEvent("locked_ip", func(e Event) bool { return e.Action() == "pop3.login" && e.Str("moat.reason") == "locked_ip" })
	deadline := time.Now().Add(waitTimeout)
	for {
		r := curl(t, dovecotUser, dovecotPassword, "imaps://"+m.IMAPSAddr+"/INBOX;UID=1")
		if r.code == 0 {
			if waited := time.Since(lockedAt); waited < 2*time.Second {
				t.Errorf("the lockout of 3s ended after %v", waited)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lockout did not end within %v: %s", waitTimeout, r)
		}
		time.Sleep(250 * time.Millisecond) // polling for the lockout's end
	}
}

// TestProxyDovecotImapTest: Dovecot's own ImapTest scripts give the same
// result through moat as directly: the proxy is transparent to literals,
// pipelining, multi-line responses and several connections.
func TestProxyDovecotImapTest(t *testing.T) {
	t.Parallel()
	dc, m, _ := startDovecotProxy(t, nil)
	direct := imaptest.Target{Addr: dc.IMAPSAddr, User: dovecotUser, Password: dovecotPassword, TLS: dc.ClientTLS()}
	proxied := imaptest.Target{Addr: m.IMAPSAddr, User: dovecotUser, Password: dovecotPassword,
		TLS: &tls.Config{InsecureSkipVerify: true}}
	// The one script Dovecot itself fails through the runner (see
	// internal/dovecottest), pinned for both.
	expect := map[string]string{"append-binary": "line 36: the runner's literal8 handling (Dovecot fails it directly too)"}
	var n int
	target := func(base imaptest.Target) func(t *testing.T) imaptest.Target {
		return func(t *testing.T) imaptest.Target {
			n++
			tg := base
			tg.Mailbox = fmt.Sprintf("imaptest%02dx", n) // distinct, none a prefix of another
			return tg
		}
	}
	// Where moat differs on purpose, pinned: before login it takes lines
	// of at most 8 KB (a pre-authentication memory bound); the id script
	// sends a 30 KB ID, which Dovecot truncates and moat refuses.
	proxiedExpect := maps.Clone(expect)
	proxiedExpect["id"] = "line 4: a 30 KB ID line before login is over moat's 8 KB pre-login line limit"
	var d, p map[string]*imaptest.Result
	t.Run("direct", func(t *testing.T) { d = imaptest.RunDir(t, imaptest.ScriptsDir(), target(direct), expect) })
	t.Run("through moat", func(t *testing.T) { p = imaptest.RunDir(t, imaptest.ScriptsDir(), target(proxied), proxiedExpect) })
	pass := 0
	for name, r := range d {
		if _, differs := proxiedExpect[name]; differs && expect[name] == "" {
			continue
		}
		if q := p[name]; q == nil || q.Status != r.Status {
			t.Errorf("%s: %v directly, %v through moat", name, r.Status, q)
		}
		if r.Status == imaptest.Pass {
			pass++
		}
	}
	t.Logf("%d scripts, %d pass both ways", len(d), pass)
}
