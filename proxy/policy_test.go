package proxy

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"moat/audit"
	"moat/internal/smtptest"
	"moat/store/quarantine"
)

// withObserver swaps the server's logger for one that records events.
func withObserver(ts *testServer) *observer.ObservedLogs {
	core, logs := observer.New(zapcore.DebugLevel)
	ts.srv.log = audit.NewZap(zap.New(core))
	return logs
}

func txnEvents(logs *observer.ObservedLogs) []map[string]any {
	var out []map[string]any
	for _, e := range logs.FilterMessage("smtp.transaction").All() {
		out = append(out, e.ContextMap())
	}
	return out
}

func waitEvents(t *testing.T, logs *observer.ObservedLogs, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ev := txnEvents(logs)
		if len(ev) >= n || time.Now().After(deadline) {
			if len(ev) < n {
				t.Fatalf("%d transaction events, want %d", len(ev), n)
			}
			return ev
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTagAddsHeadersAndSubjectPrefix(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""),
		"policy: default\nchecks:\n  size: { max: 10, action: tag }\ntag: { subject_prefix: \"[SPAM] \", header: true }\n")
	logs := withObserver(ts)
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<b@example.com>", "250")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("250 ")
	txs := sink.WaitTransactions(1, 5*time.Second)
	m := string(txs[0].Message)
	if !strings.Contains(m, "\r\nX-Spam-Flag: YES\r\n") || !strings.Contains(m, "\r\nSubject: [SPAM] hi\r\n") {
		t.Errorf("tagged message:\n%s", m)
	}
	ev := waitEvents(t, logs, 1)[0]
	if ev["moat.action"] != "tag" || ev["event.outcome"] != "success" {
		t.Errorf("event %v", ev)
	}
}

func TestDenyListAndObserveMode(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""),
		"policy: default\ndeny: { senders: [\"*@spammer.example\"] }\nchecks:\n  size: { max: 10 }\n---\npolicy: watch\napplies_to: { recipients: [\"watch@example.com\"] }\nextends: default\nmode: observe\n")
	logs := withObserver(ts)
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<x@spammer.example>", "250")
	c.cmd("RCPT TO:<b@example.com>", "554 5.7.1 ")
	c.cmd("RSET", "250")
	// Observe mode: the size check fails, the message is still delivered.
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<watch@example.com>", "250")
	c.cmd("RCPT TO:<b@example.com>", "452 4.5.3 ")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("250 ")
	ev := waitEvents(t, logs, 2)
	if ev[0]["event.outcome"] != "failure" || ev[0]["moat.action"] != "reject" || !strings.HasPrefix(ev[0]["moat.reply"].(string), "554 5.7.1") {
		t.Errorf("deny event %v", ev[0])
	}
	if ev[1]["moat.action"] != "accept" || ev[1]["moat.would_action"] != "reject" || ev[1]["moat.policy"] != "watch" {
		t.Errorf("observe event %v", ev[1])
	}
}

// TestTransactionEventFields checks the event against the field list of
// the product contract.
func TestTransactionEventFields(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	logs := withObserver(ts)
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<nobody@elsewhere.example>", "554")
	c.cmd("RCPT TO:<b@example.com>", "250")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("250 ")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<nobody@elsewhere.example>", "554")
	c.cmd("QUIT", "221")
	evs := waitEvents(t, logs, 2)
	ev := evs[0]
	for _, k := range []string{"event.outcome", "event.duration", "moat.session_id", "moat.transaction", "moat.listener",
		"source.ip", "source.port", "source.domain", "moat.helo", "tls.version", "user.name", "email.from.address",
		"email.to.address", "email.message_id", "moat.size", "moat.checks", "moat.score", "moat.policy", "moat.action",
		"moat.reply", "moat.upstream"} {
		if _, ok := ev[k]; !ok {
			t.Errorf("event lacks %s", k)
		}
	}
	want := map[string]any{"event.outcome": "success", "moat.listener": "mx", "source.ip": "127.0.0.1",
		"moat.helo": "client.example.net", "email.from.address": "a@example.net", "email.message_id": "<m1@example.net>",
		"moat.action": "accept", "moat.policy": "default", "moat.upstream": sink.Addr()}
	for k, v := range want {
		if ev[k] != v {
			t.Errorf("%s = %v, want %v", k, ev[k], v)
		}
	}
	if to, _ := json.Marshal(ev["email.to.address"]); string(to) != `["b@example.com"]` {
		t.Errorf("email.to.address = %s", to)
	}
	if !strings.HasPrefix(ev["moat.reply"].(string), "250 2.0.0 Ok: queued as ") {
		t.Errorf("moat.reply = %v", ev["moat.reply"])
	}
	if refused, _ := json.Marshal(ev["moat.refused_recipients"]); !strings.Contains(string(refused), "nobody@elsewhere.example") {
		t.Errorf("refused recipients %s", refused)
	}
	// A transaction refused at RCPT has its own event, outcome failure.
	if evs[1]["event.outcome"] != "failure" || evs[1]["moat.reply"] != "554 5.7.1 Relay access denied" {
		t.Errorf("refused transaction event %v", evs[1])
	}
	for _, e := range evs {
		b, _ := json.Marshal(e)
		if strings.Contains(string(b), "hello") {
			t.Errorf("event carries the body: %s", b)
		}
	}
}

func TestQuarantineKeepsMessageWithEnvelope(t *testing.T) {
	ts := startServer(t, routeTo("127.0.0.1:1", ""), "policy: default\nchecks:\n  size: { max: 10, action: quarantine }\n")
	q, err := quarantine.Open(filepath.Join(ts.dir, "quarantine"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	rt := *ts.srv.Runtime()
	rt.Quarantine = q
	ts.srv.Reload(&rt)
	logs := withObserver(ts)
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<u@local.test>", "250")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	r := c.expect("250 2.0.0 Ok: queued as ")
	ms, err := q.List(quarantine.Filter{})
	if err != nil || len(ms) != 1 {
		t.Fatalf("quarantine holds %v (%v)", ms, err)
	}
	m := ms[0]
	if !strings.HasSuffix(r, " "+m.ID) || m.Envelope.From != "a@example.net" || len(m.Envelope.Rcpts) != 1 || m.Envelope.Rcpts[0] != "u@local.test" ||
		m.Envelope.Helo != "client.example.net" || m.Verdict.Action != "quarantine" || m.Verdict.Checks["size"]["result"] != "fail" {
		t.Errorf("reply %q, entry %+v", r, m)
	}
	f, _, err := q.OpenMessage(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if got := string(b); !strings.HasPrefix(got, "Received: from client.example.net") || !strings.Contains(got, "Authentication-Results: mx.test") || !strings.HasSuffix(got, msg) {
		t.Errorf("quarantined message:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(ts.dir, "mail", "local.test", "u")); err == nil {
		t.Error("quarantined message was also delivered")
	}
	ev := waitEvents(t, logs, 1)[0]
	if ev["moat.action"] != "quarantine" || ev["moat.upstream"] != "quarantine" || ev["event.outcome"] != "success" || ev["moat.reply"] != r {
		t.Errorf("event %v", ev)
	}

	// Without a store the client hears 452 4.3.1 and retries later.
	rt.Quarantine = nil
	ts.srv.Reload(&rt)
	c = dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<u@local.test>", "250")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("452 4.3.1 Insufficient system storage")
}

func TestImplicitTLSListener(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), "")+"smtp:\n  listeners: [ { addr: \"127.0.0.1:1\", implicit_tls: true } ]\n  trusted_networks: [192.0.2.0/24]\n", "")
	raw, err := tls.Dial("tcp", ts.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := &client{t: t, conn: raw, tp: textproto.NewConn(raw)}
	defer raw.Close()
	c.expect("220 mx.test ")
	if r := c.cmd("EHLO client.example.net", "250"); strings.Contains(r, "STARTTLS") {
		t.Error("STARTTLS offered on an implicit TLS listener")
	}
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<b@example.com>", "250")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("250 ")
	txs := sink.WaitTransactions(1, 5*time.Second)
	if !strings.Contains(string(txs[0].Message), "with ESMTPS id ") || !strings.Contains(string(txs[0].Message), "(using TLSv1.3 with cipher ") {
		t.Errorf("Received header lacks TLS details:\n%s", txs[0].Message)
	}
}

// TestSizeTempfail: `size: { action: tempfail }` answers a temporary
// refusal, as its event says (it answered 552 5.3.4 while the event
// said tempfail).
func TestSizeTempfail(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts, logs := startObserved(t, routeTo(sink.Addr(), ""), "policy: default\nchecks:\n  size: { max: 100, action: tempfail }\n")
	c := sendTo(t, ts, "a@example.net", "b@example.com", "250")
	c.cmd("DATA", "354")
	c.send("Subject: big\r\n\r\n" + strings.Repeat("x", 300) + "\r\n.\r\n")
	c.expect("452 4.3.4 Message size exceeds fixed limit")
	c.cmd("QUIT", "221")
	ev := waitEvents(t, logs, 1)[0]
	if ev["moat.action"] != "tempfail" || ev["moat.reply"] != "452 4.3.4 Message size exceeds fixed limit" {
		t.Errorf("event action %v, reply %v", ev["moat.action"], ev["moat.reply"])
	}
	if n := len(sink.Transactions()); n != 0 {
		t.Errorf("%d messages reached the sink", n)
	}
}

// TestLookalikeDomains: a full-width spelling of a domain is the domain.
// The deny list and a policy's applies_to match it, and the internal
// server is handed the canonical recipient, not the look-alike.
func TestLookalikeDomains(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts, logs := startObserved(t, routeTo(sink.Addr(), ""),
		"policy: default\ndeny: { senders: [\"*@spammer.example\"] }\n---\npolicy: ceo\napplies_to: { recipients: [\"ceo@example.com\"] }\nextends: default\n")
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<x@ｓｐａｍｍｅｒ.example> SMTPUTF8", "250")
	c.cmd("RCPT TO:<b@example.com>", "554 5.7.1 ")
	c.cmd("RSET", "250")
	c.cmd("MAIL FROM:<a@example.net> SMTPUTF8", "250")
	c.cmd("RCPT TO:<ceo@ＥＸＡＭＰＬＥ.com>", "250")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("250 ")
	c.cmd("QUIT", "221")
	evs := waitEvents(t, logs, 2)
	if evs[0]["moat.action"] != "reject" {
		t.Errorf("look-alike of a denied sender: %v", evs[0])
	}
	if evs[1]["moat.policy"] != "ceo" {
		t.Errorf("look-alike recipient got policy %v, want ceo", evs[1]["moat.policy"])
	}
	acc := sink.Accepted()
	if len(acc) != 1 || len(acc[0].Rcpts) != 1 || acc[0].Rcpts[0] != "ceo@example.com" {
		t.Fatalf("the internal server got %+v, want the recipient ceo@example.com", acc)
	}
}
