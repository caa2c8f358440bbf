package syslog

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// A typical smtp.transaction event, as zap writes it.
var benchLine = []byte(`{"log.level":"info","@timestamp":"2024-01-02T03:04:05.678Z","event.action":"smtp.transaction",` +
	`"source.ip":"192.0.2.7","smtp.helo":"mail.example.net","email.from.address":"alice@example.net",` +
	`"email.to.address":["bob@example.org"],"email.message_id":"<1234@example.net>","moat.verdict":"accept",` +
	`"moat.score":1.5,"dnsbl.listed":[],"spf.result":"pass","dkim.result":"pass","dmarc.result":"pass","event.duration":123456789}` + "\n")

// BenchmarkWrite is the cost Write adds to the SMTP path: copy one line,
// enqueue it. The queue is drained by a shipper to a discarding collector.
func BenchmarkWrite(b *testing.B) {
	s := discardShipper(b)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s.Write(benchLine)
	}
}

// BenchmarkWriteParallel is Write from many sessions at once.
func BenchmarkWriteParallel(b *testing.B) {
	s := discardShipper(b)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Write(benchLine)
		}
	})
}

// BenchmarkThroughput is events per second through the shipper to a TCP
// collector that reads and discards.
func BenchmarkThroughput(b *testing.B) {
	var got atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				n, _ := io.Copy(io.Discard, c)
				got.Add(n)
				c.Close()
			}()
		}
	}()
	s, err := New(Config{Network: "tcp", Addr: ln.Addr().String(), QueueSize: 1 << 20, Hostname: "h"})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		pace(s, 1<<19)
		s.Write(benchLine)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	if st := s.Stats(); st.Dropped != 0 {
		b.Fatalf("Stats %+v", st)
	}
}

// pace keeps the producer of a throughput benchmark from overflowing the
// queue: it measures the shipper's rate, not how fast drops are counted.
func pace(s *Shipper, limit uint64) {
	for s.Stats().Queued > limit {
		runtime.Gosched()
	}
}

func discardShipper(b *testing.B) *Shipper {
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
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	s, err := New(Config{Network: "tcp", Addr: ln.Addr().String(), Hostname: "h"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// BenchmarkFormat is the shipper goroutine's cost per event: scan and
// format one octet-counted frame.
func BenchmarkFormat(b *testing.B) {
	h := &header{facility: 16, hostname: "mx1", appName: "moat", procID: "42"}
	line := benchLine[:len(benchLine)-1]
	var dst, scratch []byte
	now := time.Now()
	b.ReportAllocs()
	for range b.N {
		dst, scratch = h.appendFrame(dst[:0], scratch, line, now)
	}
}

// BenchmarkScanEvent compares the hand-written scan with encoding/json
// into a three-field struct.
func BenchmarkScanEvent(b *testing.B) {
	line := benchLine[:len(benchLine)-1]
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if e := scanEvent(line); len(e.action) == 0 {
				b.Fatal("no action")
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var v struct {
				Level  string `json:"log.level"`
				Action string `json:"event.action"`
				TS     string `json:"@timestamp"`
			}
			if json.Unmarshal(line, &v) != nil || v.Action == "" {
				b.Fatal("no action")
			}
		}
	})
}
