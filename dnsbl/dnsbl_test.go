package dnsbl

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"moat/filters"
	"moat/internal/dnstest"
	"moat/resolver"
)

func TestReverseName(t *testing.T) {
	for _, tc := range []struct{ ip, want string }{
		{"192.0.2.99", "99.2.0.192"},
		{"::ffff:192.0.2.99", "99.2.0.192"},
		{"2001:db8::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"},
	} {
		if got := ReverseName(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("ReverseName(%s) = %s, want %s", tc.ip, got, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	dns := dnstest.New(t,
		"2.0.0.127.bl.test. 300 IN A 127.0.0.2",
		"2.0.0.127.zen.test. 300 IN A 127.0.0.4",
		"2.0.0.127.zen.test. 300 IN A 127.0.0.10",
		"3.0.0.127.zen.test. 300 IN A 127.255.255.254", // an error code, not a listing
		"4.0.0.127.wl.test. 300 IN A 127.0.15.0",
		"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test. 300 IN A 127.0.0.2",
		"spammy.example.dbl.test. 300 IN A 127.0.1.2",
		"bad-helo.example.dbl.test. 300 IN A 127.0.1.2",
	)
	dns.ServFail("5.0.0.127.bl.test.")
	zones := []Zone{
		{Zone: "bl.test", Score: 3},
		{Zone: "zen.test", Score: 6, Match: []Range{{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.11")}}},
		{Zone: "wl.test", Score: -4},
		{Zone: "dbl.test", Score: 2, Lookup: LookupSender},
		{Zone: "dbl.test", Score: 1, Lookup: LookupHELO},
	}
	c := NewCheck(zones)
	// moat's resolver twice: the second pass answers from its cache,
	// without a goroutine per zone.
	cache, err := resolver.New(resolver.Config{Servers: []string{dns.Addr}, Timeout: time.Second, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range []struct {
		name string
		r    filters.Resolver
	}{{"net.Resolver", dns.Resolver()}, {"moat resolver", cache}, {"moat resolver, cached", cache}} {
		t.Run(res.name, func(t *testing.T) { checkCases(t, c, res.r) })
	}
}

func checkCases(t *testing.T, c *Check, dnsr filters.Resolver) {
	for _, tc := range []struct {
		name, ip, helo, from string
		value                string
		score                float64
		zones                []string
	}{
		{"clean", "127.0.0.9", "mail.example", "a@example.net", filters.None, 0, nil},
		{"two lists", "127.0.0.2", "mail.example", "a@example.net", filters.Fail, 9, []string{"bl.test", "zen.test"}},
		{"error code ignored", "127.0.0.3", "mail.example", "a@example.net", filters.None, 0, nil},
		{"allowlist", "127.0.0.4", "mail.example", "a@example.net", filters.Pass, -4, []string{"wl.test"}},
		{"ipv6", "2001:db8::1", "mail.example", "a@example.net", filters.Fail, 3, []string{"bl.test"}},
		{"sender domain", "127.0.0.9", "mail.example", "a@spammy.example", filters.Fail, 2, []string{"dbl.test"}},
		{"helo name", "127.0.0.9", "bad-helo.example", "", filters.Fail, 1, []string{"dbl.test"}},
		{"dns failure", "127.0.0.5", "[127.0.0.5]", "", filters.TempError, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			txn := &filters.Txn{ClientIP: netip.MustParseAddr(tc.ip), Helo: tc.helo, From: tc.from, DNS: dnsr}
			r, ok := c.Run(ctx, filters.StageMail, txn)
			if !ok {
				t.Fatal("no result")
			}
			if r.Value != tc.value || r.Score != tc.score {
				t.Errorf("got %s score %g (%s), want %s score %g", r.Value, r.Score, r.Reason, tc.value, tc.score)
			}
			var got []string
			if l, ok := r.Fields["listed"].([]Listing); ok {
				for _, x := range l {
					got = append(got, x.Zone)
					if x.Code == "" || x.Query == "" {
						t.Errorf("listing without code or query: %+v", x)
					}
				}
			}
			if !reflect.DeepEqual(got, tc.zones) {
				t.Errorf("listed on %v, want %v", got, tc.zones)
			}
		})
	}
}

// TestDeadDNS: a list server that never answers costs the check no more
// than its context allows, and gives temperror without a score.
func TestDeadDNS(t *testing.T) {
	dns := dnstest.New(t)
	dns.Silent("9.0.0.127.bl.test.")
	c := NewCheck([]Zone{{Zone: "bl.test", Score: 5}})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	r, _ := c.Run(ctx, filters.StageMail, &filters.Txn{ClientIP: netip.MustParseAddr("127.0.0.9"), DNS: dns.Resolver()})
	if r.Value != filters.TempError || r.Score != 0 {
		t.Errorf("got %s score %g", r.Value, r.Score)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}
