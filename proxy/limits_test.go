package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"moat/config"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock           { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func ip(s string) netip.Addr             { return netip.MustParseAddr(s) }
func strReply(r *Reply) string {
	if r == nil {
		return "ok"
	}
	return strings.TrimSpace(r.String())
}

func TestConnLimiter(t *testing.T) {
	type step struct {
		advance time.Duration
		ip      string
		exempt  bool
		release string // release one connection of this address instead
		want    string // "ok" or the refusal's text
	}
	const (
		fromIP = "421 4.7.0 Too many connections from your address, try again later"
		total  = "421 4.7.0 Too many connections, try again later"
		rateX  = "421 4.7.0 Connection rate limit exceeded, try again later"
	)
	tests := []struct {
		name  string
		lim   config.Limits
		steps []step
	}{
		{"per ip", config.Limits{ConnectionsPerIP: 2}, []step{
			{ip: "192.0.2.1", want: "ok"}, {ip: "192.0.2.1", want: "ok"}, {ip: "192.0.2.1", want: fromIP},
			{ip: "192.0.2.2", want: "ok"},
			{release: "192.0.2.1"}, {ip: "192.0.2.1", want: "ok"},
		}},
		{"IPv6 counts by /64", config.Limits{ConnectionsPerIP: 2}, []step{
			{ip: "2001:db8::1", want: "ok"}, {ip: "2001:db8::ffff:2", want: "ok"}, {ip: "2001:db8::3", want: fromIP},
			{ip: "2001:db8:0:1::1", want: "ok"},
			{ip: "::ffff:192.0.2.9", want: "ok"}, {ip: "192.0.2.9", want: "ok"}, {ip: "192.0.2.9", want: fromIP},
		}},
		{"total", config.Limits{Connections: 2}, []step{
			{ip: "192.0.2.1", want: "ok"}, {ip: "192.0.2.2", want: "ok"}, {ip: "192.0.2.3", want: total},
			{ip: "192.0.2.4", exempt: true, want: "ok"},
			{release: "192.0.2.1"}, {release: "192.0.2.4"}, {ip: "192.0.2.3", want: "ok"},
		}},
		{"rate", config.Limits{ConnectionRatePerIP: "3/1m"}, []step{
			{ip: "192.0.2.1", want: "ok"}, {release: "192.0.2.1"},
			{ip: "192.0.2.1", want: "ok"}, {release: "192.0.2.1"},
			{ip: "192.0.2.1", want: "ok"}, {release: "192.0.2.1"},
			{ip: "192.0.2.1", want: rateX},
			{ip: "192.0.2.2", want: "ok"},
			{ip: "192.0.2.1", exempt: true, want: "ok"},
			{advance: 20 * time.Second, ip: "192.0.2.1", want: "ok"},
			{ip: "192.0.2.1", want: rateX},
			{advance: 10 * time.Minute, ip: "192.0.2.1", want: "ok"}, {ip: "192.0.2.1", want: "ok"},
			{ip: "192.0.2.1", want: "ok"}, {ip: "192.0.2.1", want: rateX},
		}},
		{"off", config.Limits{ConnectionRatePerIP: "0"}, []step{
			{ip: "192.0.2.1", want: "ok"}, {ip: "192.0.2.1", want: "ok"}, {ip: "192.0.2.1", want: "ok"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			l := newConnLimiter(clk.now)
			for i, st := range tt.steps {
				clk.add(st.advance)
				if st.release != "" {
					l.release(ip(st.release))
					continue
				}
				if got := strReply(l.admit(ip(st.ip), &tt.lim, st.exempt)); got != st.want {
					t.Errorf("step %d (%s): got %q, want %q", i, st.ip, got, st.want)
				}
			}
		})
	}
}

// TestConnLimiterForgets: the table holds only clients with open
// connections or a bucket not yet full again.
func TestConnLimiterForgets(t *testing.T) {
	clk := newFakeClock()
	l := newConnLimiter(clk.now)
	lim := &config.Limits{ConnectionsPerIP: 5, ConnectionRatePerIP: "10/1m"}
	for i := range 100 {
		a := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		if r := l.admit(a, lim, false); r != nil {
			t.Fatal(r)
		}
		if i%2 == 0 {
			l.release(a)
		}
	}
	if n := l.size(); n != 100 {
		t.Fatalf("size %d, want 100", n)
	}
	clk.add(2 * time.Minute)
	l.admit(ip("192.0.2.1"), lim, false)
	if n := l.size(); n != 51 {
		t.Errorf("after the sweep: size %d, want 51 (50 open + the new one)", n)
	}
}

func TestParseRate(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want rate
	}{
		{"120/1m", rate{120, time.Minute}}, {" 5 / 10s", rate{5, 10 * time.Second}},
		{"0", rate{}}, {"", rate{}}, {"0/1m", rate{}}, {"x/1m", rate{}}, {"5/0s", rate{}},
	} {
		if got := parseRate(tt.in); got != tt.want {
			t.Errorf("parseRate(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// BenchmarkConnLimiter is the cost each connection pays at accept.
func BenchmarkConnLimiter(b *testing.B) {
	l := newConnLimiter(time.Now)
	lim := &config.Limits{Connections: 5000, ConnectionsPerIP: 20, ConnectionRatePerIP: "1000000000/1s"}
	a := ip("192.0.2.1")
	b.ReportAllocs()
	for b.Loop() {
		if l.admit(a, lim, false) == nil {
			l.release(a)
		}
	}
}
