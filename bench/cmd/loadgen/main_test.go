package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
)

// The messages loadgen builds verify against the record -genkey writes,
// and come out at about the size asked for.
func TestBuildSignedVerifies(t *testing.T) {
	dir := t.TempDir()
	if err := genKey(dir); err != nil {
		t.Fatal(err)
	}
	signer, err := readKey(filepath.Join(dir, "dkim.pem"))
	if err != nil {
		t.Fatal(err)
	}
	txt, err := os.ReadFile(filepath.Join(dir, "dkim.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1024, 10240, 102400} {
		msg, err := build(1, size, "s@bench.example", "r@example.com", "bench.example", "bench", signer)
		if err != nil {
			t.Fatal(err)
		}
		if d := len(msg) - size; d < -200 || d > 200 {
			t.Errorf("size %d: message is %d bytes", size, len(msg))
		}
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
			LookupTXT: func(domain string) ([]string, error) {
				if domain != "bench._domainkey.bench.example" {
					t.Errorf("lookup of %q", domain)
				}
				return []string{strings.TrimSpace(string(txt))}, nil
			},
		})
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			t.Fatalf("size %d: verify: %v %+v", size, err, vs)
		}
	}
}

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

func TestQuantile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i + 1)
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one value", []time.Duration{7}, 0.999, 7},
		{"median of two is the lower", []time.Duration{1, 2}, 0.5, 1},
		{"p50 of 100", hundred, 0.5, 50},
		{"p99 of 100", hundred, 0.99, 99},
		{"p999 of 100 is the max", hundred, 0.999, 100},
		{"max", hundred, 1, 100},
		{"tiny q is the min", hundred, 0.0001, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := quantile(tt.sorted, tt.q); got != tt.want {
				t.Errorf("quantile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestSchedule(t *testing.T) {
	if got, want := schedule(4, 4, false, 1), []time.Duration{0, ms(250), ms(500), ms(750)}; !slices.Equal(got, want) {
		t.Errorf("even slots: %v, want %v", got, want)
	}
	const n, rate = 20000, 500.0
	a, b := schedule(n, rate, true, 1), schedule(n, rate, true, 1)
	if !slices.Equal(a, b) {
		t.Error("Poisson arrivals differ between two runs of one seed")
	}
	if slices.Equal(a, schedule(n, rate, true, 2)) {
		t.Error("Poisson arrivals of seeds 1 and 2 are the same")
	}
	if a[0] != 0 || !slices.IsSorted(a) {
		t.Errorf("Poisson arrivals start at %v, sorted %t", a[0], slices.IsSorted(a))
	}
	// The mean gap is 1/rate (2 ms); 20,000 gaps put it within ±3 %.
	if mean := a[n-1] / (n - 1); mean < ms(1.94) || mean > ms(2.06) {
		t.Errorf("mean gap %v, want about 2ms", mean)
	}
}

// openLoop in a synctest bubble: the clock is fake and moves only when
// every goroutine waits, so the latencies come out exact. Slots are 10 ms
// apart (100 msg/s); send takes service[i] of fake time.
func TestOpenLoop(t *testing.T) {
	tests := []struct {
		name     string
		c        int
		service  []time.Duration
		wantLat  []time.Duration
		wantLate []bool
		wantTook time.Duration
	}{
		{
			name:     "enough sessions: latency is the service time",
			c:        3,
			service:  []time.Duration{ms(25), ms(25), ms(25), ms(25), ms(25)},
			wantLat:  []time.Duration{ms(25), ms(25), ms(25), ms(25), ms(25)},
			wantLate: []bool{false, false, false, false, false},
			wantTook: ms(65),
		},
		{
			// Each message waits for the one before: its latency counts
			// from its slot, so the queue shows (no coordinated omission).
			name:     "one session, slower than the rate: the queue is in the latency",
			c:        1,
			service:  []time.Duration{ms(25), ms(25), ms(25), ms(25), ms(25)},
			wantLat:  []time.Duration{ms(25), ms(40), ms(55), ms(70), ms(85)},
			wantLate: []bool{false, true, true, true, true},
			wantTook: ms(125),
		},
		{
			name:     "one slow message does not hold the others back",
			c:        2,
			service:  []time.Duration{ms(35), ms(5), ms(5), ms(5)},
			wantLat:  []time.Duration{ms(35), ms(5), ms(5), ms(5)},
			wantLate: []bool{false, false, false, false},
			wantTook: ms(35),
		},
		{
			name:     "two sessions both busy: the third message waits 5 ms",
			c:        2,
			service:  []time.Duration{ms(25), ms(25), ms(10)},
			wantLat:  []time.Duration{ms(25), ms(25), ms(15)},
			wantLate: []bool{false, false, true},
			wantTook: ms(35),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				slots := schedule(len(tt.service), 100, false, 0)
				out, took := openLoop(slots, tt.c, func(i int) error {
					time.Sleep(tt.service[i])
					return nil
				})
				for i, o := range out {
					if o.lat != tt.wantLat[i] || o.late != tt.wantLate[i] || o.err != nil {
						t.Errorf("message %d: latency %v late %t err %v, want %v late %t", i, o.lat, o.late, o.err, tt.wantLat[i], tt.wantLate[i])
					}
				}
				if took != tt.wantTook {
					t.Errorf("took %v, want %v", took, tt.wantTook)
				}
			})
		})
	}
}

func TestSummarize(t *testing.T) {
	errFail := errors.New("refused")
	s := summarize([]outcome{
		{lat: ms(3)}, {lat: ms(1), late: true}, {lat: ms(9), err: errFail}, {lat: ms(2), late: true, err: errFail},
	})
	if s.ok != 2 || s.failed != 2 || s.late != 2 || !slices.Equal(s.lat, []time.Duration{ms(1), ms(3)}) {
		t.Errorf("summary %+v", s)
	}
}

// sinkBackend is an in-process SMTP server's backend: it counts sessions
// (one per EHLO) and messages.
type sinkBackend struct{ sessions, messages atomic.Int64 }

func (b *sinkBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	b.sessions.Add(1)
	return sinkSession{b}, nil
}

type sinkSession struct{ b *sinkBackend }

func (sinkSession) Reset()                               {}
func (sinkSession) Logout() error                        { return nil }
func (sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s sinkSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	s.b.messages.Add(1)
	return nil
}

func startSink(t *testing.T) (*sinkBackend, *smtp.Server, string) {
	t.Helper()
	be := &sinkBackend{}
	srv := smtp.NewServer(be)
	srv.Domain = "sink.test"
	srv.ErrorLog = log.New(io.Discard, "", 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return be, srv, l.Addr().String()
}

// The open loop with the real send, against an in-process server.
func TestOpenLoopSMTP(t *testing.T) {
	be, _, addr := startSink(t)
	msg, err := build(0, 2048, "s@bench.example", "r@example.com", "bench.example", "bench", nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	out, _ := openLoop(schedule(n, 2000, false, 0), 4, func(int) error {
		return send(addr, "client.test", "s@bench.example", "r@example.com", msg, 10*time.Second)
	})
	s := summarize(out)
	if s.ok != n || s.failed != 0 || be.messages.Load() != n {
		t.Errorf("ok %d failed %d, the server got %d; want %d", s.ok, s.failed, be.messages.Load(), n)
	}
	printErrors(out)
}

func TestOpenIdle(t *testing.T) {
	for _, ehlo := range []bool{false, true} {
		t.Run(fmt.Sprintf("ehlo=%t", ehlo), func(t *testing.T) {
			be, srv, addr := startSink(t)
			const n = 30
			conns, errs := openIdle(context.Background(), addr, n, 4, ehlo, "client.test", 10*time.Second)
			if len(conns) != n || len(errs) != 0 {
				t.Fatalf("%d open, errors %v", len(conns), errs)
			}
			var wantSessions int64
			if ehlo {
				wantSessions = n
			}
			if got := be.sessions.Load(); got != wantSessions {
				t.Errorf("%d sessions (EHLOs) on the server, want %d", got, wantSessions)
			}
			if k := stillOpen(conns); k != n {
				t.Errorf("still open: %d, want %d", k, n)
			}
			// The server closes them all: stillOpen sees it (each call
			// waits 1 ms per connection, so this loop does not spin).
			srv.Close()
			deadline := time.Now().Add(10 * time.Second)
			for k := stillOpen(conns); k != 0; k = stillOpen(conns) {
				if time.Now().After(deadline) {
					t.Fatalf("%d still open 10 s after the server closed", k)
				}
			}
			for _, c := range conns {
				c.Close()
			}
		})
	}
}
