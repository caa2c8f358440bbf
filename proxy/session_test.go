package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"moat/audit"
	"moat/config"
	"moat/internal/smtptest"
	"moat/internal/tlsutil"
	"moat/policies"
	"moat/store/users"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type testServer struct {
	srv  *Server
	addr string
	dir  string
}

// startServer runs an in-process server with the YAML config text (a
// listener and data_dir are added) and the policy YAML, if any.
func startServer(t *testing.T, cfgYAML, policyYAML string) *testServer {
	t.Helper()
	return startServerTB(t, cfgYAML, policyYAML)
}

func startServerTB(t testing.TB, cfgYAML, policyYAML string) *testServer {
	t.Helper()
	return startServerLog(t, cfgYAML, policyYAML, audit.Discard())
}

// startObserved is startServer with a logger that records events, set
// before the first connection (withObserver swaps it in later, racily).
func startObserved(t *testing.T, cfgYAML, policyYAML string) (*testServer, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	return startServerLog(t, cfgYAML, policyYAML, audit.NewZap(zap.New(core))), logs
}

func startServerLog(t testing.TB, cfgYAML, policyYAML string, log *audit.Logger) *testServer {
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
	if !strings.Contains(cfgYAML, "listeners") {
		text += "smtp: { listeners: [ { addr: \"127.0.0.1:1\" } ], trusted_networks: [192.0.2.0/24] }\n"
	}
	cfg, errs := config.Parse(filepath.Join(dir, "moat.yaml"), []byte(text))
	if errs.Err() != nil {
		t.Fatalf("config: %v", errs)
	}
	cfg.SMTP.Listeners[0].Addr = "127.0.0.1:0" // port 1 above only passes validation
	if !strings.Contains(cfgYAML, "limits:") {
		// Tests dial from 127.0.0.1 again and again: the per-client limits
		// stay on (their cost is measured) but far from reach.
		cfg.SMTP.Limits.ConnectionsPerIP, cfg.SMTP.Limits.ConnectionRatePerIP = 100000, "1000000/1s"
	}
	set, perrs := policies.Load(cfg.Policies)
	if perrs.Err() != nil {
		t.Fatalf("policies: %v", perrs)
	}
	cert, _, err := tlsutil.SelfSigned(filepath.Join(dir, "tls"), "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(&Runtime{Cfg: cfg, Policies: set, Cert: cert}, log)
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
	return &testServer{srv: srv, addr: srv.Addrs()[0].String(), dir: dir}
}

// client is a raw SMTP dialogue for exact reply checks.
type client struct {
	t    *testing.T
	conn net.Conn
	tp   *textproto.Conn
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	cl := &client{t: t, conn: c, tp: textproto.NewConn(c)}
	t.Cleanup(func() { c.Close() })
	cl.expect("220 ")
	return cl
}

// reply reads one reply and returns its lines joined by "\n".
func (c *client) reply() string {
	c.t.Helper()
	var lines []string
	for {
		l, err := c.tp.ReadLine()
		if err != nil {
			c.t.Fatalf("reading reply: %v (so far %q)", err, lines)
		}
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

func (c *client) expect(prefix string) string {
	c.t.Helper()
	r := c.reply()
	if !strings.HasPrefix(r, prefix) {
		c.t.Fatalf("got reply %q, want prefix %q", r, prefix)
	}
	return r
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) cmd(line, want string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.expect(want)
}

func routeTo(addr string, extra string) string {
	return fmt.Sprintf("routes:\n  example.com: { upstream: %q%s }\n  local.test: { upstream: local }\n", addr, extra)
}

// stuffed is msg as a client sends it, dot-stuffed.
var stuffed = strings.ReplaceAll(msg, "\r\n.line", "\r\n..line")

const msg = "From: a@example.net\r\nTo: b@example.com\r\nSubject: hi\r\nMessage-ID: <m1@example.net>\r\n\r\nhello\r\n.line\r\n"

func TestDeliveryRelaysVerbatimAndReusesConnection(t *testing.T) {
	sink := smtptest.NewSink(t, smtptest.WithDataReply("250-2.0.0 first line\r\n250-second line without code\r\n250 2.0.0 Ok: queued as ABC123"))
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	for i := 0; i < 3; i++ {
		c := dial(t, ts.addr)
		c.cmd("EHLO client.example.net", "250-mx.test")
		c.cmd("MAIL FROM:<a@example.net>", "250 2.1.0")
		c.cmd("RCPT TO:<b@example.com>", "250 2.1.5")
		c.cmd("DATA", "354 ")
		c.send(stuffed + ".\r\n")
		got := c.reply()
		want := "250-2.0.0 first line\n250-second line without code\n250 2.0.0 Ok: queued as ABC123"
		if got != want {
			t.Fatalf("end of data reply %q, want %q", got, want)
		}
		c.cmd("QUIT", "221 ")
	}
	txs := sink.WaitTransactions(3, 5*time.Second)
	if len(txs) != 3 {
		t.Fatalf("sink got %d transactions", len(txs))
	}
	if n := sink.Connections(); n != 1 {
		t.Errorf("sink saw %d connections for 3 messages, want 1 (pooled)", n)
	}
	body := string(txs[0].Message)
	if !strings.HasPrefix(body, "Received: from client.example.net ([127.0.0.1])\r\n\tby mx.test (moat) with ESMTP id ") {
		t.Errorf("message does not start with moat's Received header:\n%s", body)
	}
	if !strings.HasSuffix(body, msg) {
		t.Errorf("message body changed:\n%q", body)
	}
	if !strings.Contains(string(txs[0].Data), "\r\n..line\r\n") {
		t.Errorf("dot-stuffing not redone on the way out: %q", txs[0].Data)
	}
}

func TestUpstreamRefusesRecipientAtRcpt(t *testing.T) {
	sink := smtptest.NewSink(t, smtptest.WithRcptReply("nobody@example.com", "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"))
	ts := startServer(t, routeTo(sink.Addr(), ", verify_recipients: true"), "")
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	if r := c.cmd("RCPT TO:<nobody@example.com>", "550"); r != "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown" {
		t.Errorf("RCPT reply %q", r)
	}
	c.cmd("RCPT TO:<b@example.com>", "250 2.1.5")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("250 ")
	txs := sink.WaitTransactions(1, 5*time.Second)
	if len(txs) != 1 || len(txs[0].Rcpts) != 1 {
		t.Fatalf("sink transactions %v", txs)
	}
}

func TestUpstreamRefusesRecipientAtDelivery(t *testing.T) {
	sink := smtptest.NewSink(t, smtptest.WithRcptReply("nobody@example.com", "550 5.1.1 unknown user"))
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<b@example.com>", "250")
	c.cmd("RCPT TO:<nobody@example.com>", "250")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	// All or nothing: no data went upstream, the sender bounces the lot.
	if r := c.reply(); r != "550 5.1.1 unknown user" {
		t.Errorf("reply %q", r)
	}
	if n := len(sink.Accepted()); n != 0 {
		t.Errorf("sink accepted %d messages", n)
	}
}

func TestUpstreamFaults(t *testing.T) {
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := closed.Addr().String()
	closed.Close()
	for _, tc := range []struct {
		name string
		addr func(t *testing.T) (string, *smtptest.Sink)
	}{
		{"refused", func(t *testing.T) (string, *smtptest.Sink) { return deadAddr, nil }},
		{"drops in data", func(t *testing.T) (string, *smtptest.Sink) {
			s := smtptest.NewSink(t, smtptest.WithDropInData(10))
			return s.Addr(), s
		}},
		{"stalls at data end", func(t *testing.T) (string, *smtptest.Sink) {
			s := smtptest.NewSink(t, smtptest.WithStall(smtptest.StageEndOfData))
			return s.Addr(), s
		}},
		{"refuses at greeting", func(t *testing.T) (string, *smtptest.Sink) {
			s := smtptest.NewSink(t, smtptest.RefuseAtGreeting())
			return s.Addr(), s
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, sink := tc.addr(t)
			ts := startServer(t, routeTo(addr, "")+"smtp:\n  listeners: [ { addr: \"127.0.0.1:1\" } ]\n  trusted_networks: [192.0.2.0/24]\n  timeouts: { upstream_connect: 2s, upstream_command: 2s, upstream_data: 1s }\n", "")
			c := dial(t, ts.addr)
			c.cmd("EHLO client.example.net", "250")
			c.cmd("MAIL FROM:<a@example.net>", "250")
			c.cmd("RCPT TO:<b@example.com>", "250")
			c.cmd("DATA", "354")
			c.send(stuffed + ".\r\n")
			c.expect("451 4.4.1 ")
			if sink != nil {
				if n := len(sink.Accepted()); n != 0 {
					t.Errorf("sink accepted %d", n)
				}
			}
		})
	}
}

func TestLimitsAndRelay(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), "")+"smtp:\n  listeners: [ { addr: \"127.0.0.1:1\" } ]\n  trusted_networks: [192.0.2.0/24]\n  max_recipients: 2\n  max_message_size: 1000\n", "")
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net> SIZE=5000", "552 5.3.4 ")
	c.cmd("MAIL FROM:<a@example.net> SIZE=500", "250")
	c.cmd("RCPT TO:<x@elsewhere.example>", "554 5.7.1 Relay access denied")
	c.cmd("RCPT TO:<a@example.com>", "250")
	c.cmd("RCPT TO:<b@example.com>", "250")
	c.cmd("RCPT TO:<c@example.com>", "452 4.5.3 ")
	c.cmd("DATA", "354")
	c.send("Subject: big\r\n\r\n" + strings.Repeat("x", 2000) + "\r\n.\r\n")
	c.expect("552 5.3.4 ")
	c.cmd("NOOP", "250")
	c.cmd("TURN", "502 ")
	c.cmd("RCPT TO:<a@example.com>", "503 5.5.1 ")
	c.cmd("MAIL FROM:<jörg@example.net>", "553 5.6.7 ")
	c.cmd("QUIT", "221")
	if n := sink.Connections(); n != 0 {
		t.Errorf("upstream contacted %d times", n)
	}
}

func TestSMTPUTF8NeedsUpstreamSupport(t *testing.T) {
	sink := smtptest.NewSink(t, smtptest.WithoutExtensions("SMTPUTF8"))
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<jörg@example.net> SMTPUTF8", "250")
	c.cmd("RCPT TO:<b@example.com>", "553 5.6.7 ")
	// Local delivery takes internationalised mail.
	c.cmd("RCPT TO:<jörg@local.test>", "250")
}

func TestBDAT(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<b@example.com>", "250")
	part1 := "Subject: chunked\r\n\r\n"
	part2 := ".starts with a dot\r\n"
	c.send(fmt.Sprintf("BDAT %d\r\n%s", len(part1), part1))
	c.expect("250 2.0.0 ")
	c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(part2), part2))
	c.expect("250 ")
	txs := sink.WaitTransactions(1, 5*time.Second)
	if len(txs) != 1 || !strings.HasSuffix(string(txs[0].Message), part1+part2) {
		t.Fatalf("sink got %v", txs)
	}
	if !strings.Contains(string(txs[0].Data), "\r\n..starts with a dot") {
		t.Errorf("BDAT content not dot-stuffed for DATA upstream: %q", txs[0].Data)
	}
	// A bare LF in a chunk is refused like in DATA.
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<b@example.com>", "250")
	bad := "Subject: x\r\n\r\nbare\nlf\r\n"
	c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(bad), bad))
	c.expect("550 5.6.0 ")
	// A chunk without a transaction is read and dropped, not run as commands.
	inj := "MAIL FROM:<x@y>\r\n"
	c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(inj), inj))
	c.expect("503 ")
	c.cmd("NOOP", "250")
}

func TestStartTLSDiscardsInjectedCommands(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	c := dial(t, ts.addr)
	r := c.cmd("EHLO client.example.net", "250")
	if !strings.Contains(r, "STARTTLS") || !strings.Contains(r, "CHUNKING") || !strings.Contains(r, "SMTPUTF8") {
		t.Errorf("EHLO reply lacks extensions: %q", r)
	}
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("STARTTLS", "503 5.5.1 ")
	c.cmd("RSET", "250")
	c.send("STARTTLS\r\nMAIL FROM:<injected@example.net>\r\n")
	c.expect("220 ")
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.conn, c.tp = tc, textproto.NewConn(tc)
	r = c.cmd("EHLO client.example.net", "250")
	if strings.Contains(r, "STARTTLS") {
		t.Error("STARTTLS offered again inside TLS")
	}
	c.cmd("RCPT TO:<b@example.com>", "503 5.5.1 ")
}

func TestBareNewlineRejectedByDefault(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
	c.expect("250")
	c.expect("250")
	c.expect("354")
	c.send("Subject: t\r\n\r\nbody\n.\nMAIL FROM:<ceo@bank.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n")
	c.expect("550 5.6.0 ")
	c.expect("221 ")
	if n := len(sink.Transactions()); n != 0 {
		t.Errorf("sink got %d transactions", n)
	}
}

func TestLocalDelivery(t *testing.T) {
	ts := startServer(t, routeTo("127.0.0.1:1", ""), "")
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<Someone@local.test>", "250")
	c.cmd("RCPT TO:<other@LOCAL.test>", "250")
	c.cmd("RCPT TO:<b@example.com>", "452 4.5.3 ")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("250 2.0.0 Ok: queued as ")
	for _, u := range []string{"someone", "other"} {
		ents, err := os.ReadDir(filepath.Join(ts.dir, "mail", "local.test", u, "new"))
		if err != nil || len(ents) != 1 {
			t.Fatalf("%s: %v %v", u, ents, err)
		}
		b, _ := os.ReadFile(filepath.Join(ts.dir, "mail", "local.test", u, "new", ents[0].Name()))
		if !strings.HasPrefix(string(b), "Received: ") || !strings.HasSuffix(string(b), msg) {
			t.Errorf("%s: stored %q", u, b)
		}
	}
}

func TestPolicySizeAndObserve(t *testing.T) {
	ts := startServer(t, routeTo("127.0.0.1:1", ""), "policy: default\nchecks:\n  size: { max: 100 }\n")
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net> SIZE=200", "250")
	c.cmd("RCPT TO:<u@local.test>", "552 5.3.4 ")
	c.cmd("RSET", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<u@local.test>", "250")
	c.cmd("DATA", "354")
	c.send("Subject: x\r\n\r\n" + strings.Repeat("y", 150) + "\r\n.\r\n")
	c.expect("552 5.3.4 ")
}

func TestShutdownLetsTransactionFinish(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	idle := dial(t, ts.addr)
	busy := dial(t, ts.addr)
	busy.cmd("EHLO client.example.net", "250")
	busy.cmd("MAIL FROM:<a@example.net>", "250")
	busy.cmd("RCPT TO:<b@example.com>", "250")
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	idle.expect("421 4.3.2 ")
	if _, err := net.DialTimeout("tcp", ts.addr, time.Second); err == nil {
		t.Error("new connections still accepted during shutdown")
	}
	busy.cmd("DATA", "354")
	busy.send(stuffed + ".\r\n")
	busy.expect("250 ")
	busy.expect("421 4.3.2 ")
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if len(sink.Accepted()) != 1 {
		t.Error("message in flight was not delivered")
	}
}

var _ = bufio.NewReader

func TestDeliveryWithoutUpstreamPipelining(t *testing.T) {
	sink := smtptest.NewSink(t, smtptest.WithoutExtensions("PIPELINING"), smtptest.WithRcptReply("nobody@example.com", "550 5.1.1 unknown user"))
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	for _, tc := range []struct {
		rcpts []string
		want  string
	}{
		{[]string{"b@example.com", "c@example.com"}, "250 "},
		{[]string{"b@example.com", "nobody@example.com"}, "550 5.1.1 unknown user"},
	} {
		c := dial(t, ts.addr)
		c.cmd("EHLO client.example.net", "250")
		c.cmd("MAIL FROM:<a@example.net>", "250")
		for _, r := range tc.rcpts {
			c.cmd("RCPT TO:<"+r+">", "250")
		}
		c.cmd("DATA", "354")
		c.send(stuffed + ".\r\n")
		c.expect(tc.want)
	}
	if n := len(sink.Accepted()); n != 1 {
		t.Errorf("sink accepted %d messages, want 1", n)
	}
}

func TestLocalUsers(t *testing.T) {
	ts := startServer(t, routeTo("127.0.0.1:1", "")+"  other.test: { upstream: local }\n", "")
	db := users.Open(filepath.Join(ts.dir, "users"))
	db.HashCost = 4 // bcrypt's minimum: this test is about RCPT, not hashing
	if err := db.Add("alice@local.test", "a long password"); err != nil {
		t.Fatal(err)
	}
	rt := *ts.srv.Runtime()
	rt.Users = db
	ts.srv.Reload(&rt)
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<Alice@local.test>", "250")
	c.cmd("RCPT TO:<nobody@local.test>", "550 5.1.1 Recipient address rejected: User unknown in local recipient table")
	c.cmd("RSET", "250")
	// A local domain without users takes any name.
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<anyone@other.test>", "250")
}
