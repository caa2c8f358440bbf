package proxy

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"moat/audit"
	"moat/internal/smtptest"
)

// BenchmarkRelay10KB measures moat relaying 10 KB messages from 20
// concurrent clients (one connection per message, as smtp-source sends) to
// a recording sink. bench/run.sh measures the same against Postfix's
// smtp-sink with the real binary; this one is for profiles:
//
//	go test -run=^$ -bench=Relay -cpuprofile=cpu.out ./proxy
func BenchmarkRelay10KB(b *testing.B) {
	sink := smtptest.NewSink(b, smtptest.WithoutFaults())
	ts := startServerTB(b, routeTo(sink.Addr(), ""), "")
	body := "From: a@example.net\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 128) + ".\r\n"
	b.SetBytes(int64(len(body)))
	b.SetParallelism(10) // 2 cores x 10 = 20 clients
	var failed atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := sendOne(ts.addr, body); err != nil {
				failed.Add(1)
			}
		}
	})
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d messages failed", n)
	}
}

func sendOne(addr, body string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	expect := func(code string) error {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			if !strings.HasPrefix(l, code) {
				return &net.AddrError{Err: "unexpected reply " + l}
			}
			if len(l) > 3 && l[3] == ' ' {
				return nil
			}
		}
	}
	steps := []struct{ send, want string }{
		{"", "220"}, {"EHLO bench.example\r\n", "250"}, {"MAIL FROM:<a@example.net>\r\n", "250"},
		{"RCPT TO:<b@example.com>\r\n", "250"}, {"DATA\r\n", "354"}, {body, "250"}, {"QUIT\r\n", "221"},
	}
	for _, s := range steps {
		if s.send != "" {
			if _, err := c.Write([]byte(s.send)); err != nil {
				return err
			}
		}
		if err := expect(s.want); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkConnectionEvent measures the smtp.connection event written
// as JSON (to io.Discard), the cost each connection adds.
func BenchmarkConnectionEvent(b *testing.B) {
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{MessageKey: "event.action", TimeKey: "@timestamp", EncodeTime: zapcore.RFC3339NanoTimeEncoder})
	srv := &Server{log: audit.NewZap(zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zapcore.InfoLevel)))}
	s := &session{srv: srv, l: &listener{name: "mx"}, id: newID(), start: time.Now(), remote: netip.MustParseAddrPort("203.0.113.5:51234"),
		helo: "mail.example.net", ntx: 1, accepted: 1, reason: "quit"}
	b.ReportAllocs()
	for b.Loop() {
		srv.logConnection(s)
	}
}
