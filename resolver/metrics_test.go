package resolver

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"moat/internal/dnstest"
	"moat/metrics"
)

// TestMetrics checks what one lookup of each kind adds to the DNS
// counters (the registry is the process's, so the test compares deltas).
func TestMetrics(t *testing.T) {
	s := dnstest.New(t, `a.test. 300 IN TXT "x"`)
	s.ServFail("broken.test")
	s.Silent("silent.test")
	r, _ := newResolver(t, []string{s.Addr}, func(c *Config) { c.Timeout = 100 * time.Millisecond })
	dead, _ := newResolver(t, []string{deadAddr(t)}, nil)
	ctx := context.Background()
	tests := []struct {
		name   string
		lookup func()
		want   map[prometheus.Counter]float64
	}{
		{"miss, answered", func() { r.LookupTXT(ctx, "a.test") },
			map[prometheus.Counter]float64{metrics.DNS.CacheMiss: 1, metrics.DNS.Success: 1}},
		{"hit", func() { r.LookupTXT(ctx, "a.test") },
			map[prometheus.Counter]float64{metrics.DNS.CacheHit: 1}},
		{"nxdomain", func() { r.LookupTXT(ctx, "nothing.test") },
			map[prometheus.Counter]float64{metrics.DNS.CacheMiss: 1, metrics.DNS.NXDomain: 1}},
		{"servfail", func() { r.LookupTXT(ctx, "broken.test") },
			map[prometheus.Counter]float64{metrics.DNS.CacheMiss: 1, metrics.DNS.ServFail: 1}},
		{"failure cached", func() { r.LookupTXT(ctx, "broken.test") },
			map[prometheus.Counter]float64{metrics.DNS.CacheHit: 1}},
		{"timeout", func() { r.LookupTXT(ctx, "silent.test") },
			map[prometheus.Counter]float64{metrics.DNS.CacheMiss: 1, metrics.DNS.Timeout: 1}},
		{"network error", func() { dead.LookupTXT(ctx, "a.test") },
			map[prometheus.Counter]float64{metrics.DNS.CacheMiss: 1, metrics.DNS.Error: 1}},
		{"invalid name: nothing", func() { r.LookupTXT(ctx, "") }, nil},
	}
	all := []prometheus.Counter{metrics.DNS.Success, metrics.DNS.NXDomain, metrics.DNS.ServFail, metrics.DNS.Refused,
		metrics.DNS.Timeout, metrics.DNS.Error, metrics.DNS.CacheHit, metrics.DNS.CacheMiss, metrics.DNS.Coalesced}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := make([]float64, len(all))
			for i, c := range all {
				before[i] = testutil.ToFloat64(c)
			}
			tt.lookup()
			for i, c := range all {
				if got := testutil.ToFloat64(c) - before[i]; got != tt.want[c] {
					t.Errorf("%s went up by %v, want %v", c.Desc(), got, tt.want[c])
				}
			}
		})
	}
}
