package proxy

import (
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"moat/internal/smtptest"
)

// connEvents waits for n smtp.connection events and returns their fields.
func connEvents(t *testing.T, logs *observer.ObservedLogs, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out []map[string]any
		for _, e := range logs.FilterMessage("smtp.connection").All() {
			out = append(out, e.ContextMap())
		}
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connection events, want %d", len(out), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConnectionEvent: one smtp.connection event per connection, with
// the counts of the session and how it ended, also for clients that never
// began a transaction.
func TestConnectionEvent(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	tests := []struct {
		name    string
		session func(t *testing.T)
		want    map[string]any
	}{
		{"delivered, then quit", func(t *testing.T) {
			c := dial(t, ts.addr)
			c.cmd("EHLO client.example.net", "250")
			c.cmd("BOGUS", "500 ")
			c.cmd("MAIL FROM:<a@example.net>", "250")
			c.cmd("RCPT TO:<b@example.com>", "250")
			c.cmd("DATA", "354")
			c.send(stuffed + ".\r\n")
			c.expect("250 ")
			c.cmd("MAIL FROM:<a@example.net>", "250")
			c.cmd("RCPT TO:<x@elsewhere.example>", "554 ")
			c.cmd("QUIT", "221")
		}, map[string]any{"event.outcome": "success", "moat.reason": "quit", "moat.helo": "client.example.net",
			"moat.transactions": int64(2), "moat.accepted": int64(1), "moat.errors": int64(1)}},
		{"HTTP probe", func(t *testing.T) {
			dial(t, ts.addr).cmd("POST / HTTP/1.1", "421 ")
		}, map[string]any{"event.outcome": "failure", "moat.reason": "http", "moat.helo": "",
			"moat.transactions": int64(0), "moat.accepted": int64(0), "moat.errors": int64(0)}},
		{"client hangs up", func(t *testing.T) {
			c := dial(t, ts.addr)
			c.cmd("HELO relay.example", "250")
			c.cmd("MAIL FROM:<a@example.net>", "250")
			c.conn.Close()
		}, map[string]any{"event.outcome": "failure", "moat.reason": "client_error", "moat.helo": "relay.example",
			"moat.transactions": int64(1), "moat.accepted": int64(0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := withObserver(ts)
			tt.session(t)
			ev := connEvents(t, logs, 1)[0]
			for _, k := range []string{"event.outcome", "event.duration", "moat.session_id", "moat.listener", "source.ip",
				"source.port", "source.domain", "moat.helo", "tls.version", "user.name", "moat.transactions",
				"moat.accepted", "moat.errors", "moat.reason"} {
				if _, ok := ev[k]; !ok {
					t.Errorf("event lacks %s", k)
				}
			}
			for k, v := range tt.want {
				if ev[k] != v {
					t.Errorf("%s = %#v, want %#v", k, ev[k], v)
				}
			}
			if ev["moat.listener"] != "mx" || ev["source.ip"] != "127.0.0.1" || ev["tls.version"] != "" {
				t.Errorf("event %v", ev)
			}
			if d, _ := ev["event.duration"].(int64); d <= 0 {
				t.Errorf("event.duration = %v", ev["event.duration"])
			}
			// The transactions' events come first and share the session id.
			if all := logs.All(); all[len(all)-1].Message != "smtp.connection" {
				t.Errorf("last event %s, want smtp.connection", all[len(all)-1].Message)
			}
			for _, tx := range txnEvents(logs) {
				if tx["moat.session_id"] != ev["moat.session_id"] {
					t.Errorf("transaction event of session %v, connection %v", tx["moat.session_id"], ev["moat.session_id"])
				}
			}
			if n := tt.want["moat.transactions"].(int64); int64(len(txnEvents(logs))) != n {
				t.Errorf("%d transaction events, want %d", len(txnEvents(logs)), n)
			}
		})
	}
}
