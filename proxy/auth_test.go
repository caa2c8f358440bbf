package proxy

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"moat/audit"
	"moat/auth"
	"moat/config"
	"moat/internal/smtptest"
	"moat/internal/tlsutil"
	"moat/policies"
	"moat/store/users"
)

const alicePassword = "a long password for alice"

// submissionYAML is a submission listener on loopback, which is NOT in
// trusted_networks: passwords in clear are refused there.
const submissionYAML = "smtp:\n  listeners: [ { addr: \"127.0.0.1:1\", mode: submission } ]\n  trusted_networks: [192.0.2.0/24]\n"

type authServer struct {
	*testServer
	logs *observer.ObservedLogs // the server's and the login authority's events
	svc  *auth.Service
}

// startAuthServer runs a server whose Runtime has a login authority over
// a user list holding alice@local.test, with the settings set (failure
// delays of a millisecond unless set says otherwise). cfgYAML must name
// the listener (see submissionYAML).
func startAuthServer(t testing.TB, cfgYAML, policyYAML string, set auth.Settings) *authServer {
	t.Helper()
	dir := t.TempDir()
	pol := ""
	if policyYAML != "" {
		p := filepath.Join(dir, "policy.yaml")
		if err := os.WriteFile(p, []byte(policyYAML), 0o600); err != nil {
			t.Fatal(err)
		}
		pol = fmt.Sprintf("policies: [%q]\n", p)
	}
	text := fmt.Sprintf("hostname: mx.test\ndata_dir: %s\n%s%s", dir, pol, cfgYAML)
	cfg, errs := config.Parse(filepath.Join(dir, "moat.yaml"), []byte(text))
	if errs.Err() != nil {
		t.Fatalf("config: %v", errs)
	}
	cfg.SMTP.Listeners[0].Addr = "127.0.0.1:0"
	set2, perrs := policies.Load(cfg.Policies)
	if perrs.Err() != nil {
		t.Fatalf("policies: %v", perrs)
	}
	cert, _, err := tlsutil.SelfSigned(filepath.Join(dir, "tls"), "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	db := users.Open(filepath.Join(dir, "users"))
	db.HashCost = 4 // bcrypt's minimum: slow hashing is not under test
	if err := db.Add("alice@local.test", alicePassword); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	log := audit.NewZap(zap.New(core))
	if len(set.Delays) == 0 {
		set.Delays = []time.Duration{time.Millisecond}
	}
	svc := auth.New(db, set, log)
	srv, err := New(&Runtime{Cfg: cfg, Policies: set2, Cert: cert, Users: db, Auth: svc}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	srv.Serve(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &authServer{testServer: &testServer{srv: srv, addr: srv.Addrs()[0].String(), dir: dir}, logs: logs, svc: svc}
}

// events returns the fields of the events of one kind, in order.
func (a *authServer) events(action string) []map[string]any {
	var out []map[string]any
	for _, e := range a.logs.FilterMessage(action).All() {
		out = append(out, e.ContextMap())
	}
	return out
}

// waitEvents polls until n events of the kind are written (the
// transaction event comes after the reply).
func (a *authServer) waitEvents(t *testing.T, action string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ev := a.events(action)
		if len(ev) >= n || time.Now().After(deadline) {
			return ev
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startTLS upgrades a raw dialogue after EHLO.
func (c *client) startTLS() {
	c.t.Helper()
	c.cmd("STARTTLS", "220 ")
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.conn, c.tp = tc, textproto.NewConn(tc)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestAuthSubmitsWithGoSMTPClient(t *testing.T) {
	sink := smtptest.NewSink(t)
	// A policy that refuses anything over 100 bytes at RCPT: authenticated
	// mail skips the inbound checks, as trusted_networks' does.
	as := startAuthServer(t, routeTo(sink.Addr(), "")+submissionYAML, "policy: default\nchecks:\n  size: { max: 100 }\n", auth.Settings{})
	for i, mech := range []sasl.Client{
		sasl.NewPlainClient("", "alice@local.test", alicePassword),
		sasl.NewLoginClient("Alice@Local.test", alicePassword),
	} {
		clear, err := smtp.Dial(as.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := clear.Hello("client.example.net"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := clear.Extension("AUTH"); ok {
			t.Error("AUTH advertised before TLS to an untrusted client")
		}
		clear.Close()
		c, err := smtp.DialStartTLS(as.addr, &tls.Config{InsecureSkipVerify: true, ServerName: "mx.test"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Hello("client.example.net"); err != nil {
			t.Fatal(err)
		}
		if ok, params := c.Extension("AUTH"); !ok || params != "PLAIN LOGIN" {
			t.Errorf("after TLS: AUTH %v %q", ok, params)
		}
		if err := c.Auth(mech); err != nil {
			t.Fatalf("auth %d: %v", i, err)
		}
		if err := c.SendMail("alice@local.test", []string{"b@example.com"}, strings.NewReader(strings.Repeat("x", 200)+"\r\n")); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if err := c.Quit(); err != nil {
			t.Error(err)
		}
	}
	txs := sink.WaitTransactions(2, 5*time.Second)
	if len(txs) != 2 {
		t.Fatalf("sink got %d transactions", len(txs))
	}
	if m := string(txs[0].Message); !strings.Contains(m, " with ESMTPSA id ") {
		t.Errorf("Received does not say ESMTPSA:\n%s", m)
	}
	logins := as.events("smtp.login")
	if len(logins) != 2 || logins[0]["moat.mechanism"] != "PLAIN" || logins[1]["moat.mechanism"] != "LOGIN" {
		t.Fatalf("login events %v", logins)
	}
	for _, ev := range logins {
		if ev["event.outcome"] != "success" || ev["user.name"] != "alice@local.test" || ev["moat.listener"] != "submission" || ev["tls.established"] != true {
			t.Errorf("login event %v", ev)
		}
	}
	txEvents := as.waitEvents(t, "smtp.transaction", 2)
	for _, ev := range txEvents {
		if ev["user.name"] != "alice@local.test" || ev["event.outcome"] != "success" {
			t.Errorf("transaction event %v", ev)
		}
	}
	for _, e := range as.logs.All() {
		if strings.Contains(fmt.Sprint(e.ContextMap()), alicePassword) {
			t.Errorf("the password reached the %s event", e.Message)
		}
	}
}

func TestAuthWrongPasswordGoSMTPClient(t *testing.T) {
	as := startAuthServer(t, routeTo("127.0.0.1:1", "")+submissionYAML, "", auth.Settings{})
	c, err := smtp.DialStartTLS(as.addr, &tls.Config{InsecureSkipVerify: true, ServerName: "mx.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Auth(sasl.NewPlainClient("", "alice@local.test", "wrong"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 8}) {
		t.Fatalf("wrong password: %v", err)
	}
	err = c.Mail("alice@local.test", nil)
	if !errors.As(err, &se) || se.Code != 530 {
		t.Errorf("MAIL without login: %v", err)
	}
	if ev := as.events("smtp.login"); len(ev) != 1 || ev[0]["moat.reason"] != "bad_credentials" {
		t.Errorf("login events %v", ev)
	}
}

// TestAuthDialogue checks the exact replies of each path of the exchange.
func TestAuthDialogue(t *testing.T) {
	noErrorLimit := strings.Replace(submissionYAML, "trusted_networks", "limits: { errors_per_session: 0 }\n  trusted_networks", 1)
	as := startAuthServer(t, routeTo("127.0.0.1:1", "")+noErrorLimit, "", auth.Settings{})
	c := dial(t, as.addr)
	c.cmd("AUTH PLAIN "+b64("\x00alice@local.test\x00"+alicePassword), "503 5.5.1 Send EHLO first")
	c.cmd("EHLO client.example.net", "250")
	c.startTLS()
	c.cmd("AUTH PLAIN", "503 5.5.1 Send EHLO first") // RFC 3207: EHLO again after TLS
	if r := c.cmd("EHLO client.example.net", "250"); !strings.Contains(r, "\n250-AUTH PLAIN LOGIN\n") && !strings.HasSuffix(r, "\n250 AUTH PLAIN LOGIN") {
		t.Errorf("EHLO in TLS: %q", r)
	}
	c.cmd("MAIL FROM:<alice@local.test>", "530 5.7.0 Authentication required")
	for _, step := range [][2]string{
		{"AUTH CRAM-MD5", "504 5.5.4 "},
		{"AUTH", "501 5.5.4 "},
		{"AUTH PLAIN a b", "501 5.5.4 "},
		{"AUTH PLAIN", "334 "},
		{"*", "501 5.0.0 Authentication cancelled"},
		{"AUTH PLAIN !!!", "501 5.5.2 Invalid base64 data"},
		{"AUTH PLAIN =", "501 5.5.2 Malformed PLAIN response"},
		{"AUTH PLAIN " + b64("bob@local.test\x00alice@local.test\x00"+alicePassword), "535 5.7.8 "},
		{"AUTH LOGIN", "334 VXNlcm5hbWU6"},
		{b64("alice@local.test"), "334 UGFzc3dvcmQ6"},
		{"not base64!", "501 5.5.2 "},
		{"AUTH LOGIN " + b64("alice@local.test"), "334 UGFzc3dvcmQ6"},
		{strings.Repeat("A", 5000), "500 5.5.6 "},
		{"AUTH PLAIN " + strings.Repeat("A", 5000), "500 5.5.2 Line too long"},
	} {
		c.cmd(step[0], step[1])
	}
	c.cmd("AUTH plain", "334 ")
	c.cmd(b64("\x00alice@local.test\x00"+alicePassword), "235 2.7.0 Authentication successful")
	c.cmd("AUTH PLAIN "+b64("\x00alice@local.test\x00"+alicePassword), "503 5.5.1 Already authenticated")
	c.cmd("MAIL FROM:<alice@local.test> AUTH=<>", "250")
	c.cmd("AUTH LOGIN", "503 5.5.1 AUTH not allowed during a mail transaction")
	c.cmd("RCPT TO:<someone@elsewhere.example>", "554 5.7.1 Relay access denied")
	c.cmd("RCPT TO:<alice@local.test>", "250")
	c.cmd("RSET", "250")
	// RFC 3207 section 4.2 in the other direction is untestable here (TLS
	// is on); see TestAuthInClearFromTrusted.
	if ev := as.events("smtp.login"); len(ev) != 1 || ev[0]["event.outcome"] != "success" {
		t.Errorf("login events %v: only the one complete exchange is a login", ev)
	}
}

func TestAuthRefusedInClear(t *testing.T) {
	as := startAuthServer(t, routeTo("127.0.0.1:1", "")+submissionYAML, "", auth.Settings{Trusted: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	c := dial(t, as.addr)
	if r := c.cmd("EHLO client.example.net", "250"); strings.Contains(r, "AUTH") {
		t.Errorf("AUTH offered in clear: %q", r)
	}
	c.cmd("AUTH PLAIN "+b64("\x00alice@local.test\x00"+alicePassword), "538 5.7.11 Encryption required for requested authentication mechanism")
	c.cmd("AUTH LOGIN", "538 5.7.11 ")
	c.cmd("AUTH FOO", "504 5.5.4 ")
	c.cmd("MAIL FROM:<alice@local.test>", "530 5.7.0 Authentication required")
	if n := len(as.events("smtp.login")); n != 0 {
		t.Errorf("%d login events for refusals before any password was read", n)
	}
}

func TestAuthInClearFromTrusted(t *testing.T) {
	as := startAuthServer(t, routeTo("127.0.0.1:1", "")+submissionYAML, "", auth.Settings{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	c := dial(t, as.addr)
	if r := c.cmd("EHLO client.example.net", "250"); !strings.Contains(r, "AUTH PLAIN LOGIN") {
		t.Errorf("AUTH not offered in clear to a trusted client: %q", r)
	}
	c.cmd("AUTH PLAIN "+b64("\x00alice@local.test\x00"+alicePassword), "235 ")
	c.cmd("MAIL FROM:<alice@local.test>", "250")
	c.cmd("RSET", "250")
	c.startTLS()
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<alice@local.test>", "530 5.7.0 ") // the login made in clear is forgotten
	if ev := as.events("smtp.login"); len(ev) != 1 || ev[0]["tls.established"] != false {
		t.Errorf("login events %v", ev)
	}
}

func TestAuthNotOnMX(t *testing.T) {
	as := startAuthServer(t, routeTo("127.0.0.1:1", "")+"smtp:\n  listeners: [ { addr: \"127.0.0.1:1\" } ]\n  trusted_networks: [192.0.2.0/24]\n", "", auth.Settings{})
	c := dial(t, as.addr)
	c.cmd("EHLO client.example.net", "250")
	c.startTLS()
	if r := c.cmd("EHLO client.example.net", "250"); strings.Contains(r, "AUTH") {
		t.Errorf("AUTH offered on an MX listener: %q", r)
	}
	c.cmd("AUTH PLAIN "+b64("\x00alice@local.test\x00"+alicePassword), "503 5.5.1 Authentication not available")
	c.cmd("MAIL FROM:<a@example.net> AUTH=<>", "555 5.5.4 ")
}

func TestAuthFailuresEndSession(t *testing.T) {
	as := startAuthServer(t, routeTo("127.0.0.1:1", "")+strings.Replace(submissionYAML, "trusted_networks", "limits: { errors_per_session: 3 }\n  trusted_networks", 1), "", auth.Settings{})
	c := dial(t, as.addr)
	c.cmd("EHLO client.example.net", "250")
	c.startTLS()
	c.cmd("EHLO client.example.net", "250")
	bad := "AUTH PLAIN " + b64("\x00alice@local.test\x00guess")
	c.cmd(bad, "535 5.7.8 ")
	c.cmd(bad, "535 5.7.8 ")
	c.cmd(bad, "535 5.7.8 ")
	c.expect("421 4.7.0 Too many errors")
	if _, err := c.tp.ReadLine(); err == nil {
		t.Error("session still open after too many failed logins")
	}
}

func TestAuthLockedAndUnavailable(t *testing.T) {
	as := startAuthServer(t, routeTo("127.0.0.1:1", "")+submissionYAML, "", auth.Settings{MaxFailures: 2})
	c := dial(t, as.addr)
	c.cmd("EHLO client.example.net", "250")
	c.startTLS()
	c.cmd("EHLO client.example.net", "250")
	c.cmd("AUTH PLAIN "+b64("\x00alice@local.test\x00guess"), "535 ")
	c.cmd("AUTH PLAIN "+b64("\x00alice@local.test\x00guess"), "535 ")
	c.cmd("AUTH PLAIN "+b64("\x00alice@local.test\x00"+alicePassword), "454 4.7.0 Too many failed authentications, try again later")
	if ev := as.events("smtp.login"); len(ev) != 3 || ev[2]["moat.reason"] != "locked_ip" {
		t.Errorf("login events %v", ev)
	}

	// The user list cannot be read: a temporary failure, not the client's.
	us := startAuthServer(t, routeTo("127.0.0.1:1", "")+submissionYAML, "", auth.Settings{})
	rt := *us.srv.Runtime()
	rt.Auth = auth.New(brokenUsers{}, auth.Settings{}, audit.Discard())
	us.srv.Reload(&rt)
	c = dial(t, us.addr)
	c.cmd("EHLO client.example.net", "250")
	c.startTLS()
	c.cmd("EHLO client.example.net", "250")
	c.cmd("AUTH PLAIN "+b64("\x00alice@local.test\x00"+alicePassword), "454 4.7.0 Temporary authentication failure")
}

type brokenUsers struct{}

func (brokenUsers) Verify(string, string) bool { return false }
func (brokenUsers) VerifyErr(string, string) (bool, error) {
	return false, errors.New("users: permission denied")
}

// FuzzAuthSession replays arbitrary client bytes against a submission
// listener that takes AUTH in clear (loopback is trusted here, since the
// fuzzer cannot speak TLS): the AUTH exchange, its base64 and PLAIN
// parsing, and the authenticated paths after it must neither panic nor
// hang.
func FuzzAuthSession(f *testing.F) {
	for _, s := range []string{
		"EHLO c\r\nAUTH PLAIN " + b64("\x00alice@local.test\x00"+alicePassword) + "\r\nMAIL FROM:<alice@local.test>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
		"EHLO c\r\nAUTH LOGIN\r\n" + b64("alice@local.test") + "\r\n" + b64("guess") + "\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN =\r\nQUIT\r\n",
	} {
		f.Add([]byte(s))
	}
	as := startAuthServer(f, "routes:\n  local.test: { upstream: local }\n"+submissionYAML, "", auth.Settings{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", as.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			c.Write(in)
			c.(*net.TCPConn).CloseWrite()
		}()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("session did not end: %v", err)
		}
	})
}
