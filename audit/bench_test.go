package audit

import (
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"moat/config"
)

// transactionFields are the fields of a typical smtp.transaction event.
func transactionFields() []zap.Field {
	return []zap.Field{
		zap.String("event.outcome", "success"), zap.Int64("event.duration", 35000000),
		zap.String("moat.session_id", "PW2SBCXJEX9PCT06"), zap.Int("moat.transaction", 1),
		zap.String("moat.listener", "mx"), zap.String("source.ip", "203.0.113.5"), zap.Uint16("source.port", 51234),
		zap.String("source.domain", "mail.example.net"), zap.String("moat.helo", "mail.example.net"),
		zap.String("tls.version", "1.3"), zap.String("user.name", ""),
		zap.String("email.from.address", "a@example.net"), zap.Strings("email.to.address", []string{"b@example.com"}),
		zap.String("email.message_id", "<20261126.1234@example.net>"), zap.Int64("moat.size", 10240),
		zap.Any("moat.checks", map[string]map[string]any{
			"dnsbl": {"result": "none", "score": 0}, "spf": {"result": "pass", "score": 0},
			"dkim":  {"result": "pass", "domain": "example.net", "score": 0},
			"dmarc": {"result": "pass", "policy": "none", "score": 0}, "greylist": {"result": "passed"},
		}),
		zap.Float64("moat.score", 0), zap.String("moat.policy", "default"), zap.String("moat.action", "accept"),
		zap.String("moat.reply", "250 2.0.0 Ok: queued as PW2SBCXJEX9PCT06-1"), zap.String("moat.upstream", "exchange.corp.internal:25"),
	}
}

// discardCollector accepts syslog connections and reads everything.
func discardCollector(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c)
		}
	}()
	return ln.Addr().String()
}

// BenchmarkTransactionEvent is the cost of logging one transaction as
// the SMTP session pays it: encoding the event for a local file and, with
// syslog, again for the shipper's queue (the writes themselves happen on
// other goroutines).
func BenchmarkTransactionEvent(b *testing.B) {
	for _, tc := range []struct {
		name   string
		syslog bool
	}{{"file", false}, {"file+syslog", true}} {
		b.Run(tc.name, func(b *testing.B) {
			lc := config.Log{Format: "json", Output: filepath.Join(b.TempDir(), "moat.log"), Level: "info"}
			if tc.syslog {
				lc.Syslog = &config.Syslog{Network: "tcp", Addr: discardCollector(b), Facility: "local0", AppName: "moat", QueueSize: 1 << 20}
			}
			l, err := New(lc)
			if err != nil {
				b.Fatal(err)
			}
			fields := transactionFields()
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				l.Event("smtp.transaction", fields...)
			}
			elapsed := time.Since(start)
			l.Close()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
			if st, ok := l.SyslogStats(); ok && st.Dropped > 0 {
				b.ReportMetric(float64(st.Dropped), "dropped")
			}
		})
	}
}
