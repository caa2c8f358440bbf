package tests

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"moat/internal/dovecottest"
	"moat/internal/redistest"
)

// proxyTo returns the config of a moat whose POP3 and IMAP listeners
// proxy logins to upstream's (a moat serving its store) in clear: the
// TLS towards upstreams is tested against Dovecot, whose certificate
// names its address.
func proxyTo(upstream *Moat, extra map[string]any) Config {
	doc := map[string]any{
		"imap": map[string]any{"upstream": upstream.IMAPAddr, "upstream_tls": "none"},
		"pop3": map[string]any{"upstream": upstream.POP3Addr, "upstream_tls": "none"},
	}
	merge(doc, extra)
	return Config{Mailboxes: true, Extra: doc}
}

// startStoreUpstream runs a moat with the built-in store and one user,
// taking passwords in clear from loopback (it stands for the internal
// server behind the proxy), with one message for the user.
func startStoreUpstream(t *testing.T, user string) (*Moat, []byte) {
	t.Helper()
	a := StartMoat(t, Config{Mailboxes: true, Routes: map[string]Route{"local.test": {Upstream: "local"}},
		Extra: map[string]any{"auth": map[string]any{"allow_plaintext_auth": true}}})
	addUser(t, a, user, mailboxPassword)
	msg := NewMessage(sender, user, "read through the proxy")
	MustSend(t, a.Addr, Envelope{From: sender, To: []string{user}, Data: msg.Bytes()})
	files := storedMessages(t, a, "local.test", strings.Split(user, "@")[0])
	if len(files) != 1 {
		t.Fatalf("stored: %v", files)
	}
	stored, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	return a, stored
}

// TestMailProxyToStore: a moat in proxy mode in front of another moat's
// store gives curl and Python's clients the same bytes as the store
// directly; a wrong password is refused and counted at the proxy, and
// after max_failures_per_ip the right one is refused too without reaching
// the upstream.
func TestMailProxyToStore(t *testing.T) {
	t.Parallel()
	const user = "erin@local.test"
	a, stored := startStoreUpstream(t, user)
	// A second internal server for another domain: logins are routed by
	// their domain (imap.upstreams / pop3.upstreams).
	const other = "olga@other.test"
	a2 := StartMoat(t, Config{Mailboxes: true, Routes: map[string]Route{"other.test": {Upstream: "local"}},
		Extra: map[string]any{"auth": map[string]any{"allow_plaintext_auth": true}}})
	addUser(t, a2, other, mailboxPassword)
	MustSend(t, a2.Addr, Envelope{From: sender, To: []string{other}, Data: NewMessage(sender, other, "routed by domain").Bytes()})
	b := StartMoat(t, proxyTo(a, map[string]any{
		"auth": map[string]any{"max_failures_per_ip": 3, "lockout": "1h"},
		"imap": map[string]any{"upstreams": map[string]any{"other.test": a2.IMAPAddr}},
		"pop3": map[string]any{"upstreams": map[string]any{"other.test": a2.POP3Addr}},
	}))
	b.ForbidInLog(mailboxPassword)
	for _, url := range []string{"imaps://" + b.IMAPSAddr + "/INBOX;UID=1", "pop3s://" + b.POP3SAddr + "/1"} {
		r := curl(t, other, mailboxPassword, url)
		if r.code != 0 || !bytes.Contains(r.stdout, []byte("routed by domain")) {
			t.Errorf("a login of other.test through the proxy: %s", r)
		}
	}
	b.WaitEvent("routed login", func(e Event) bool {
		return e.Action() == "imap.login" && e.Outcome() == "success" && e.Str("moat.upstream") == a2.IMAPAddr
	})

	for _, tc := range []struct{ name, direct, proxied string }{
		{"imaps", "imaps://" + a.IMAPSAddr + "/INBOX;UID=1", "imaps://" + b.IMAPSAddr + "/INBOX;UID=1"},
		{"imap STARTTLS", "imap://" + a.IMAPAddr + "/INBOX;UID=1", "imap://" + b.IMAPAddr + "/INBOX;UID=1"},
		{"pop3s", "pop3s://" + a.POP3SAddr + "/1", "pop3s://" + b.POP3SAddr + "/1"},
		{"pop3 STLS", "pop3://" + a.POP3Addr + "/1", "pop3://" + b.POP3Addr + "/1"},
		{"pop3s LIST", "pop3s://" + a.POP3SAddr + "/", "pop3s://" + b.POP3SAddr + "/"},
	} {
		d := curl(t, user, mailboxPassword, "--ssl-reqd", tc.direct)
		p := curl(t, user, mailboxPassword, "--ssl-reqd", tc.proxied)
		if d.code != 0 || p.code != 0 || !bytes.Equal(d.stdout, p.stdout) {
			t.Errorf("%s: direct and through the proxy differ:\ndirect %s\nproxied %s", tc.name, d, p)
		}
	}
	if r := curl(t, user, mailboxPassword, "--ssl-reqd", "imaps://"+b.IMAPSAddr+"/INBOX;UID=1"); !bytes.Equal(r.stdout, stored) {
		t.Errorf("through the proxy: %s", r)
	}
	host, port := hostPort(b.IMAPSAddr)
	if facts := python(t, "imap-flag", host, port, user, mailboxPassword); facts["fetch_sha256"] != sha(stored) || facts["store"] != "OK" {
		t.Errorf("imaplib through the proxy: %v", facts)
	}
	host, port = hostPort(b.POP3SAddr)
	if facts := python(t, "pop3-retr", host, port, user, mailboxPassword); facts["retr_sha256"] != sha(stored) {
		t.Errorf("poplib through the proxy: %v", facts)
	}
	ev := b.WaitEvent("imap.login through the proxy", func(e Event) bool {
		return e.Action() == "imap.login" && e.Outcome() == "success" && e.Str("user.name") == user
	})
	if ev.Str("moat.upstream") != a.IMAPAddr || ev.Str("user.name") != user {
		t.Errorf("login event: %v", ev)
	}

	upstreamLogins := func() int {
		return len(filterEvents(a.Events(), func(e Event) bool { return e.Action() == "imap.login" }))
	}
	for i := 0; i < 3; i++ {
		if r := curl(t, user, "wrong", "imaps://"+b.IMAPSAddr+"/INBOX;UID=1"); r.code == 0 {
			t.Fatalf("a wrong password went through: %s", r)
		}
	}
	b.WaitEvent("the third failure", func(e Event) bool {
		return e.Action() == "imap.login" && e.Str("moat.reason") == "bad_credentials" && e.Str("moat.lockout") != ""
	})
	before := upstreamLogins()
	for _, url := range []string{"imaps://" + b.IMAPSAddr + "/INBOX;UID=1", "pop3s://" + b.POP3SAddr + "/1"} {
		if r := curl(t, user, mailboxPassword, url); r.code == 0 {
			t.Errorf("locked out at the proxy, yet the right password went through: %s", r)
		}
	}
	b.WaitEvent("locked", func(e Event) bool { return e.Action() == "pop3.login" && e.Str("moat.reason") == "locked_ip" })
	if n := upstreamLogins(); n != before {
		t.Errorf("a locked-out login reached the upstream (%d → %d logins there)", before, n)
	}
}

// TestMailProxySharedLockout: two moats in front of one Dovecot, sharing
// one Redis, lock a client out together: failures at one make the other
// refuse the right password without asking Dovecot.
func TestMailProxySharedLockout(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t)
	if rdb == "" {
		return
	}
	dc := dovecottest.Start(t, dovecottest.Options{Users: map[string]string{dovecotUser: dovecotPassword}, TLS: true})
	dc.Deliver(t, dovecotUser, NewMessage(sender, dovecotUser, "shared lockout").Bytes())
	ca := filepath.Join(t.TempDir(), "dovecot-ca.pem")
	if err := os.WriteFile(ca, dc.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Mailboxes: true, Extra: map[string]any{
		"imap":  map[string]any{"upstream": dc.IMAPSAddr, "upstream_tls": "implicit", "ca_file": ca},
		"pop3":  map[string]any{"upstream": dc.POP3SAddr, "upstream_tls": "implicit", "ca_file": ca},
		"redis": map[string]any{"addr": rdb},
		"auth":  map[string]any{"max_failures_per_ip": 3, "lockout": "1h", "failure_delays": []string{"10ms"}},
	}}
	b1, b2 := StartMoat(t, cfg), StartMoat(t, cfg)
	if r := curl(t, dovecotUser, dovecotPassword, "imaps://"+b2.IMAPSAddr+"/INBOX;UID=1"); r.code != 0 {
		t.Fatalf("the right password before any failure: %s", r)
	}
	for i := 0; i < 3; i++ {
		if r := curl(t, dovecotUser, "wrong", "imaps://"+b1.IMAPSAddr+"/INBOX;UID=1"); r.code == 0 {
			t.Fatalf("a wrong password went through: %s", r)
		}
	}
	dovecotLogins := strings.Count(dc.Log(), "imap-login: Info: Login:")
	for _, url := range []string{"imaps://" + b2.IMAPSAddr + "/INBOX;UID=1", "pop3s://" + b2.POP3SAddr + "/1"} {
		if r := curl(t, dovecotUser, dovecotPassword, url); r.code == 0 {
			t.Errorf("locked out at the first moat, yet the second let the right password through: %s", r)
		}
	}
	b2.WaitEvent("locked at the second moat", func(e Event) bool {
		return e.Action() == "pop3.login" && e.Str("moat.reason") == "locked_ip"
	})
	if n := strings.Count(dc.Log(), "imap-login: Info: Login:"); n != dovecotLogins {
		t.Errorf("a locked-out login reached Dovecot")
	}
}
