package syslog

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"moat/internal/tlsutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// collector is a fake syslog collector on 127.0.0.1: it reads
// octet-counted frames from each connection and keeps the MSG parts.
type collector struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	msgs []string // MSG of each message, in arrival order
	all  []string // whole messages
	// conns gets every accepted connection; handle decides what to do.
	conns  []net.Conn
	handle func(n int, c net.Conn) // n counts connections from 1
	times  []time.Time             // accept times
	// readers keeps each connection's buffered reader across read
	// calls: a new one would lose what the old one had buffered.
	readers map[net.Conn]*bufio.Reader
}

func newCollector(t *testing.T, tlsConf *tls.Config, handle func(*collector, int, net.Conn)) *collector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	c := &collector{ln: ln}
	if handle == nil {
		handle = func(c *collector, _ int, nc net.Conn) { c.read(nc) }
	}
	c.handle = func(n int, nc net.Conn) { handle(c, n, nc) }
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for n := 1; ; n++ {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.conns = append(c.conns, nc)
			c.times = append(c.times, time.Now())
			c.mu.Unlock()
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				defer nc.Close()
				c.handle(n, nc)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		c.mu.Lock()
		for _, nc := range c.conns {
			nc.Close()
		}
		c.mu.Unlock()
		c.wg.Wait()
	})
	return c
}

func (c *collector) addr() string { return c.ln.Addr().String() }

// read takes frames until EOF (or limit frames, when limit > 0).
func (c *collector) read(nc net.Conn, limit ...int) {
	c.mu.Lock()
	if c.readers == nil {
		c.readers = map[net.Conn]*bufio.Reader{}
	}
	r := c.readers[nc]
	if r == nil {
		r = bufio.NewReader(nc)
		c.readers[nc] = r
	}
	c.mu.Unlock()
	for i := 0; len(limit) == 0 || i < limit[0]; i++ {
		lenStr, err := r.ReadString(' ')
		if err != nil {
			return
		}
		n, err := strconv.Atoi(strings.TrimSuffix(lenStr, " "))
		if err != nil || n <= 0 || n > 1<<20 {
			return
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(r, msg); err != nil {
			return // a frame cut by the sender's timeout
		}
		m := rfc5424.FindSubmatchIndex(msg)
		c.mu.Lock()
		c.all = append(c.all, string(msg))
		if m != nil {
			c.msgs = append(c.msgs, string(msg[m[1]:]))
		} else {
			c.msgs = append(c.msgs, "BAD:"+string(msg))
		}
		c.mu.Unlock()
	}
}

func (c *collector) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.msgs...)
}

func (c *collector) connCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.conns)
}

// waitFor polls cond every few milliseconds until it holds or timeout
// passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not a wait for an event
	}
}

func newShipper(t *testing.T, c Config) *Shipper {
	t.Helper()
	if c.Network == "" {
		c.Network = "tcp"
	}
	c.Hostname = "test"
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

func testEvent(i int) string {
	return fmt.Sprintf(`{"log.level":"info","@timestamp":"2024-01-02T03:04:05.678Z","event.action":"test.event","id":%d}`, i)
}

// ids counts each "id" among the JSON messages (syslog.dropped reports
// aside) and returns the counts and the report sum.
func ids(t testing.TB, msgs []string) (count map[int]int, dropped uint64) {
	t.Helper()
	count = map[int]int{}
	for _, m := range msgs {
		var v struct {
			Action  string  `json:"event.action"`
			ID      *int    `json:"id"`
			Dropped *uint64 `json:"moat.dropped"`
		}
		if err := json.Unmarshal([]byte(m), &v); err != nil {
			t.Fatalf("message is not JSON: %q: %v", m, err)
		}
		switch {
		case v.Action == "syslog.dropped" && v.Dropped != nil:
			dropped += *v.Dropped
		case v.ID != nil:
			count[*v.ID]++
		default:
			t.Fatalf("unexpected message %q", m)
		}
	}
	return count, dropped
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		err  string
	}{
		{"bad network", Config{Network: "tcp6", Addr: "127.0.0.1:1"}, "network"},
		{"no port", Config{Network: "tcp", Addr: "127.0.0.1"}, "address"},
		{"facility", Config{Network: "udp", Addr: "127.0.0.1:1", Facility: 24}, "facility"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.c)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("New: %v, want an error about %s", err, tc.err)
			}
		})
	}
}

func TestWriteSplitsLines(t *testing.T) {
	col := newCollector(t, nil, nil)
	s := newShipper(t, Config{Addr: col.addr()})
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{testEvent(1) + "\n", []string{testEvent(1)}},
		{testEvent(2) + "\n" + testEvent(3) + "\n", []string{testEvent(2), testEvent(3)}},
		{"\n" + testEvent(4) + "\n\n" + testEvent(5), []string{testEvent(4), testEvent(5)}},
	} {
		before := len(col.got())
		n, err := s.Write([]byte(tc.in))
		if n != len(tc.in) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		waitFor(t, 5*time.Second, "messages", func() bool { return len(col.got()) >= before+len(tc.want) })
		if got := col.got()[before:]; strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("Write(%q) sent %q", tc.in, got)
		}
	}
	if st := s.Stats(); st.Sent != 5 || st.Dropped != 0 || !st.Connected {
		t.Errorf("Stats = %+v", st)
	}
}

// A collector that takes the connection and never reads: Write must still
// return at once, and the overflow is dropped and counted.
func TestWriteNeverBlocks(t *testing.T) {
	stalled := make(chan struct{})
	col := newCollector(t, nil, func(_ *collector, _ int, nc net.Conn) { <-stalled })
	defer close(stalled)
	const queue, n = 1000, 3000 // 16 MB queued: more than loopback socket buffers take
	s := newShipper(t, Config{Addr: col.addr(), QueueSize: queue, WriteTimeout: time.Minute})
	line := []byte(`{"log.level":"info","event.action":"big","pad":"` + strings.Repeat("x", 16000) + `"}` + "\n")
	var slowest time.Duration
	for range n {
		start := time.Now()
		s.Write(line)
		slowest = max(slowest, time.Since(start))
	}
	// Generous for -race on a loaded machine; a blocked Write would
	// take the whole WriteTimeout.
	if slowest > 200*time.Millisecond {
		t.Errorf("slowest Write took %v", slowest)
	}
	st := s.Stats()
	if st.Dropped == 0 || st.Queued > queue+uint64(batchBytes/len(line))+1 {
		t.Errorf("Stats = %+v: want drops, at most the queue (and one batch) queued", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Close(ctx); err == nil {
		t.Errorf("Close with a stalled collector returned nil, want the context's error (Stats before: %+v, after %+v)", st, s.Stats())
	}
	st = s.Stats()
	if st.Sent+st.Dropped != n || st.Queued != 0 {
		t.Errorf("after Close: Stats = %+v, want Sent+Dropped = %d", st, n)
	}
	if _, err := s.Write(line); err != ErrClosed {
		t.Errorf("Write after Close: %v, want ErrClosed", err)
	}
}

// The collector closes the connection; the shipper reconnects at once and
// the next events arrive exactly once.
func TestReconnectAfterClose(t *testing.T) {
	first := make(chan struct{})
	col := newCollector(t, nil, func(c *collector, n int, nc net.Conn) {
		if n == 1 {
			c.read(nc, 3)
			<-first
			return // closes
		}
		c.read(nc)
	})
	s := newShipper(t, Config{Addr: col.addr()})
	for i := range 3 {
		s.Write([]byte(testEvent(i) + "\n"))
	}
	waitFor(t, 5*time.Second, "3 messages", func() bool { return len(col.got()) == 3 })
	close(first)
	waitFor(t, 5*time.Second, "a second connection", func() bool { return col.connCount() == 2 && s.Stats().Connected })
	for i := 3; i < 10; i++ {
		s.Write([]byte(testEvent(i) + "\n"))
	}
	waitFor(t, 5*time.Second, "10 messages", func() bool { return len(col.got()) >= 10 })
	count, _ := ids(t, col.got())
	for i := range 10 {
		if count[i] != 1 {
			t.Errorf("id %d arrived %d times", i, count[i])
		}
	}
}

// A collector that stops reading makes the write time out: the batch is
// written again on a new connection. Nothing is lost; whatever the first
// connection still delivers afterwards is a duplicate.
func TestAtLeastOnceAcrossReconnect(t *testing.T) {
	resume := make(chan struct{})
	col := newCollector(t, nil, func(c *collector, n int, nc net.Conn) {
		if n == 1 {
			c.read(nc, 5)
			<-resume // stall until the shipper gave up on us
		}
		c.read(nc)
	})
	s := newShipper(t, Config{Addr: col.addr(), WriteTimeout: 300 * time.Millisecond})
	pad := strings.Repeat("x", 4000)
	const n = 3000 // ~12 MB: more than the socket buffers hold, less than the queue
	for i := range n {
		s.Write(fmt.Appendf(nil, `{"event.action":"e","id":%d,"pad":%q}`+"\n", i, pad))
	}
	waitFor(t, 10*time.Second, "a second connection", func() bool { return col.connCount() >= 2 })
	close(resume)
	waitFor(t, 20*time.Second, "every id", func() bool {
		count, _ := ids(t, col.got())
		return len(count) == n
	})
	count, _ := ids(t, col.got())
	dups := 0
	for _, c := range count {
		dups += c - 1
	}
	st := s.Stats()
	t.Logf("%d events, %d messages received, %d duplicates, %d connections, Stats %+v", n, len(col.got()), dups, col.connCount(), st)
	if st.Dropped != 0 {
		t.Errorf("Dropped = %d, want 0", st.Dropped)
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	// The collector's certificate, and another that verifies nothing of it.
	cert, _, err := tlsutil.SelfSigned(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	good := x509.NewCertPool()
	good.AddCert(cert.Leaf)
	other, _, err := tlsutil.SelfSigned(filepath.Join(dir, "other"), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	wrong := x509.NewCertPool()
	wrong.AddCert(other.Leaf)

	t.Run("good CA", func(t *testing.T) {
		col := newCollector(t, &tls.Config{Certificates: []tls.Certificate{*cert}}, nil)
		s := newShipper(t, Config{Network: "tls", Addr: col.addr(), TLS: &tls.Config{RootCAs: good}})
		s.Write([]byte(testEvent(1) + "\n"))
		waitFor(t, 5*time.Second, "the message", func() bool { return len(col.got()) == 1 })
		if got := col.got()[0]; got != testEvent(1) {
			t.Errorf("got %q", got)
		}
	})
	t.Run("wrong CA", func(t *testing.T) {
		col := newCollector(t, &tls.Config{Certificates: []tls.Certificate{*cert}}, func(c *collector, _ int, nc net.Conn) {
			nc.(*tls.Conn).Handshake() // fails: the client rejects the certificate
			c.read(nc)
		})
		s := newShipper(t, Config{Network: "tls", Addr: col.addr(), TLS: &tls.Config{RootCAs: wrong}})
		s.Write([]byte(testEvent(1) + "\n"))
		waitFor(t, 10*time.Second, "4 attempts", func() bool { return col.connCount() >= 4 })
		col.mu.Lock()
		times := append([]time.Time(nil), col.times[:4]...)
		col.mu.Unlock()
		// Backoff: waits in [50,100), [100,200), [200,400) ms: each
		// longer than the one before.
		for i := 2; i < len(times); i++ {
			prev, gap := times[i-1].Sub(times[i-2]), times[i].Sub(times[i-1])
			if gap <= prev || gap < minBackoff/2 {
				t.Errorf("attempt gaps %v then %v: want growing backoff", prev, gap)
			}
		}
		if st := s.Stats(); st.Sent != 0 || st.Connected || len(col.got()) != 0 {
			t.Errorf("Stats %+v, received %d: want nothing sent to an unverified collector", st, len(col.got()))
		}
	})
}

func TestUDPTruncation(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	s := newShipper(t, Config{Network: "udp", Addr: pc.LocalAddr().String()})
	small := testEvent(1)
	big := `{"event.action":"big","pad":"` + strings.Repeat("é", 10000) + `"}`
	s.Write([]byte(small + "\n" + big + "\n"))
	buf := make([]byte, 65536)
	var got [][]byte
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < 2 {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, append([]byte(nil), buf[:n]...))
	}
	m := rfc5424.FindIndex(got[0])
	if m == nil || string(got[0][m[1]:]) != small {
		t.Errorf("first datagram %q", got[0])
	}
	if len(got[1]) > maxDatagram || len(got[1]) < maxDatagram-3 || !strings.HasPrefix(string(got[1]), "<134>1 ") {
		t.Errorf("big datagram: %d bytes, want %d (less a cut rune)", len(got[1]), maxDatagram)
	}
	waitFor(t, time.Second, "stats", func() bool { return s.Stats().Sent == 2 })
	if st := s.Stats(); st.Truncated != 1 {
		t.Errorf("Stats = %+v, want 1 truncated", st)
	}
}

// While the collector is down the queue overflows; after it comes back a
// syslog.dropped event tells how many, and OnDrop was told the same total.
func TestDroppedReport(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // down: connections are refused
	var told atomic.Uint64
	s := newShipper(t, Config{Addr: addr, QueueSize: 10, OnDrop: func(n uint64) { told.Add(n) }})
	for i := range 50 {
		s.Write([]byte(testEvent(i) + "\n"))
	}
	st := s.Stats()
	if st.Dropped != 40 {
		t.Fatalf("Stats = %+v, want 40 dropped", st)
	}
	// Up again, on the same port.
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	col := &collector{ln: ln2}
	col.handle = func(_ int, nc net.Conn) { col.read(nc) }
	col.wg.Add(1)
	go func() {
		defer col.wg.Done()
		for {
			nc, err := ln2.Accept()
			if err != nil {
				return
			}
			col.mu.Lock()
			col.conns = append(col.conns, nc)
			col.mu.Unlock()
			col.wg.Add(1)
			go func() { defer col.wg.Done(); defer nc.Close(); col.handle(0, nc) }()
		}
	}()
	t.Cleanup(func() {
		ln2.Close()
		col.mu.Lock()
		for _, nc := range col.conns {
			nc.Close()
		}
		col.mu.Unlock()
		col.wg.Wait()
	})
	waitFor(t, 10*time.Second, "the queued events and a report", func() bool { return len(col.got()) >= 11 })
	count, dropped := ids(t, col.got())
	if len(count) != 10 || dropped != 40 {
		t.Errorf("received %d events and reports of %d drops, want 10 and 40: %q", len(count), dropped, col.got())
	}
	if got := col.got()[0]; !strings.Contains(got, `"event.action":"syslog.dropped"`) {
		t.Errorf("first message %q, want the syslog.dropped report ahead of the rest", got)
	}
	waitFor(t, time.Second, "OnDrop", func() bool { return told.Load() == 40 })
}

func TestCloseFlushes(t *testing.T) {
	col := newCollector(t, nil, nil)
	s, err := New(Config{Network: "tcp", Addr: col.addr()})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	for i := range n {
		s.Write([]byte(testEvent(i) + "\n"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if st := s.Stats(); st.Sent != n || st.Dropped != 0 {
		t.Errorf("Stats after Close = %+v, want %d sent", st, n)
	}
	waitFor(t, 5*time.Second, "every message", func() bool { return len(col.got()) == n })
	if err := s.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
