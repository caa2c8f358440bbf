package greylist

import (
	"context"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// benchStores are the stores as moat serve opens them (real clock, the
// bolt sweeper on).
var benchStores = []struct {
	name string
	open func(b *testing.B) Store
}{
	{"memory", func(*testing.B) Store { return NewMemory(0) }},
	{"bolt", func(b *testing.B) Store {
		s, err := OpenBolt(filepath.Join(b.TempDir(), "greylist.db"))
		if err != nil {
			b.Fatal(err)
		}
		return s
	}},
}

func reportOpsPerSec(b *testing.B, n int) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(n)/s, "decisions/s")
	}
}

// BenchmarkCheckKnown is the check of a known, passed triplet: the common
// case, served by reads alone (allow list, network record, triplet). Run
// with -cpu 1 for the one-core figure.
func BenchmarkCheckKnown(b *testing.B) {
	for _, st := range benchStores {
		b.Run(st.name, func(b *testing.B) {
			s := st.open(b)
			defer s.Close()
			ctx := context.Background()
			g := &Greylister{Store: s, Params: DefaultParams()}
			// Passed a minute ago, so the hourly last-seen refresh is not due.
			t0 := time.Now()
			g.Now = func() time.Time { return t0.Add(-6 * time.Minute) }
			client := netip.MustParseAddr("192.0.2.10")
			if res, err := g.Check(ctx, client, "prvs=0123456789=alice@example.org", "bob@example.com", ""); err != nil || res.Verdict != New {
				b.Fatalf("first sight: %+v, %v", res, err)
			}
			g.Now = func() time.Time { return t0.Add(-time.Minute) }
			if res, err := g.Check(ctx, client, "alice@example.org", "bob@example.com", ""); err != nil || res.Verdict != Passed {
				b.Fatalf("retry: %+v, %v", res, err)
			}
			g.Now = time.Now
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				res, err := g.Check(ctx, client, "prvs=0123456789=alice@example.org", "bob@example.com", "")
				if err != nil || res.Verdict != Passed {
					b.Fatalf("known triplet: %+v, %v", res, err)
				}
				n++
			}
			reportOpsPerSec(b, n)
		})
	}
}

// BenchmarkCheckNew is first sights from many sessions at once: every
// check writes, and the bolt store batches the writes into shared
// commits.
func BenchmarkCheckNew(b *testing.B) {
	for _, st := range benchStores {
		b.Run(st.name, func(b *testing.B) {
			s := st.open(b)
			defer s.Close()
			ctx := context.Background()
			g := &Greylister{Store: s, Params: DefaultParams()}
			client := netip.MustParseAddr("198.51.100.20")
			var seq, n atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(16) // sessions per CPU waiting on commits
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					rcpt := "user" + strconv.FormatInt(seq.Add(1), 10) + "@example.com"
					res, err := g.Check(ctx, client, "alice@example.org", rcpt, "")
					if err != nil || res.Verdict != New {
						b.Errorf("first sight: %+v, %v", res, err)
						return
					}
					n.Add(1)
				}
			})
			reportOpsPerSec(b, int(n.Load()))
		})
	}
}
