package resolver

import (
	"context"
	"sync"
	"testing"
	"time"

	"moat/internal/dnstest"
)

// BenchmarkCacheHit is a LookupTXT answered from the cache.
func BenchmarkCacheHit(b *testing.B) {
	s := dnstest.New(b, `example.test. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`)
	r, _ := newResolver(b, []string{s.Addr}, nil)
	ctx := context.Background()
	if _, err := r.LookupTXT(ctx, "example.test"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.LookupTXT(ctx, "example.test"); err != nil {
			b.Fatal(err)
		}
	}
	if st := r.Stats(); st.Queries != 1 {
		b.Fatalf("%d queries, want 1", st.Queries)
	}
}

// BenchmarkCacheHitParallel is BenchmarkCacheHit from all CPUs at once,
// on one name: the cache's lock is the contended part.
func BenchmarkCacheHitParallel(b *testing.B) {
	s := dnstest.New(b, `example.test. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`)
	r, _ := newResolver(b, []string{s.Addr}, nil)
	ctx := context.Background()
	if _, err := r.LookupTXT(ctx, "example.test"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.LookupTXT(ctx, "example.test"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkMissLoopback is a LookupTXT that misses the cache and asks
// dnstest on loopback: the clock jumps past the TTL before each lookup.
func BenchmarkMissLoopback(b *testing.B) {
	s := dnstest.New(b, `example.test. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`)
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r, _ := newResolver(b, []string{s.Addr}, func(c *Config) {
		c.Now = func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			now = now.Add(time.Hour)
			return now
		}
	})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.LookupTXT(ctx, "example.test"); err != nil {
			b.Fatal(err)
		}
	}
	if st := r.Stats(); st.Hits != 0 {
		b.Fatalf("%d cache hits, want none", st.Hits)
	}
}
