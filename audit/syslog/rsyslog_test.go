package syslog

import (
	"context"
	"testing"
	"time"

	"moat/internal/rsyslogtest"
)

// Through a real rsyslogd: every event arrives as the JSON line it was,
// exactly once; across a stop and restart of rsyslogd what was queued
// meanwhile arrives too.
func TestRsyslog(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
	}{
		{"tcp", false},
		{"tls", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := rsyslogtest.Start(t, rsyslogtest.Options{TLS: tc.tls})
			c := Config{Network: "tcp", Addr: srv.Addr}
			if tc.tls {
				c.Network, c.TLS = "tls", srv.ClientTLS()
				c.TLS.ServerName = "" // from Addr
			}
			s := newShipper(t, c)

			const n, m = 500, 200
			for i := range n {
				s.Write([]byte(testEvent(i) + "\n"))
			}
			lines := srv.WaitLines(t, n, 20*time.Second)
			count, _ := ids(t, lines)
			for i := range n {
				if count[i] != 1 {
					t.Errorf("id %d arrived %d times", i, count[i])
				}
			}
			if len(lines) != n {
				t.Errorf("%d lines, want %d", len(lines), n)
			}

			srv.Stop()
			for i := n; i < n+m; i++ {
				s.Write([]byte(testEvent(i) + "\n"))
			}
			waitFor(t, 10*time.Second, "the shipper to notice", func() bool { return !s.Stats().Connected })
			if q := s.Stats().Queued; q == 0 {
				t.Errorf("nothing queued while rsyslogd is down")
			}
			srv.Restart()
			waitFor(t, 40*time.Second, "every id", func() bool {
				count, _ := ids(t, srv.Lines(t))
				return len(count) == n+m
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.Close(ctx); err != nil {
				t.Fatal(err)
			}
			lines = srv.Lines(t)
			count, dropped := ids(t, lines)
			dups := 0
			for i := range n + m {
				if count[i] == 0 {
					t.Errorf("id %d lost", i)
				}
				dups += count[i] - 1
			}
			st := s.Stats()
			t.Logf("%d lines for %d events: %d duplicates around the restart; Stats %+v", len(lines), n+m, dups, st)
			if st.Dropped != 0 || dropped != 0 {
				t.Errorf("dropped %d (reported %d), want none", st.Dropped, dropped)
			}
		})
	}
}

// BenchmarkRsyslog measures events per second through the shipper into
// rsyslogd over TCP, until rsyslogd has written them all.
func BenchmarkRsyslog(b *testing.B) {
	srv := rsyslogtest.Start(b, rsyslogtest.Options{})
	s, err := New(Config{Network: "tcp", Addr: srv.Addr, QueueSize: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	line := []byte(testEvent(0) + "\n")
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		pace(s, 1<<19)
		s.Write(line)
	}
	srv.WaitLines(b, b.N, time.Minute)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	if d := s.Stats().Dropped; d != 0 {
		b.Fatalf("%d dropped", d)
	}
}
