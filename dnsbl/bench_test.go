package dnsbl

import (
	"context"
	"net/netip"
	"testing"

	"moat/filters"
	"moat/internal/dnstest"
	"moat/resolver"
)

// BenchmarkCheckWarm is the DNSBL check of three zones for a listed
// client, answered from the shared resolver's cache (the common case: the
// lookups started at connect).
func BenchmarkCheckWarm(b *testing.B) {
	srv := dnstest.New(b, "2.0.0.127.zen.test. 300 IN A 127.0.0.2", "2.0.0.127.bl.test. 300 IN A 127.0.0.2")
	r, err := resolver.New(resolver.Config{Servers: []string{srv.Addr}})
	if err != nil {
		b.Fatal(err)
	}
	c := NewCheck([]Zone{{Zone: "zen.test", Score: 6}, {Zone: "bl.test", Score: 3}, {Zone: "wl.test", Score: -4}})
	txn := &filters.Txn{ClientIP: netip.MustParseAddr("127.0.0.2"), DNS: r}
	ctx := context.Background()
	if res, _ := c.Run(ctx, filters.StageMail, txn); res.Score != 9 {
		b.Fatalf("warm-up: %+v", res)
	}
	queries := srv.Queries()
	b.ReportAllocs()
	for b.Loop() {
		c.Run(ctx, filters.StageMail, txn)
	}
	if srv.Queries() != queries {
		b.Fatalf("%d queries reached the server during the benchmark", srv.Queries()-queries)
	}
}
