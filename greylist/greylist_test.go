package greylist

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	clientA = netip.MustParseAddr("192.0.2.10")
	clientB = netip.MustParseAddr("192.0.2.200") // same /24 as clientA
	clientC = netip.MustParseAddr("198.51.100.7")
)

const (
	day      = 24 * time.Hour
	sender   = "alice@example.org"
	rcpt     = "bob@example.com"
	lifetime = 36 * day
)

// countingStore counts the Updates whose fn wrote.
type countingStore struct {
	Store
	writes atomic.Int64
}

func (s *countingStore) Update(ctx context.Context, key string, fn UpdateFunc) error {
	return s.counted(fn, func(fn UpdateFunc) error { return s.Store.Update(ctx, key, fn) })
}

// getMany and updateFrom pass the batch reads of a Redis store through
// (Check uses them when the store has them), counting writes as Update
// does.
func (s *countingStore) getMany(ctx context.Context, keys []string) ([][]byte, error) {
	return getMany(ctx, s.Store, keys)
}

func (s *countingStore) updateFrom(ctx context.Context, key string, cur []byte, fn UpdateFunc) error {
	return s.counted(fn, func(fn UpdateFunc) error { return updateFrom(ctx, s.Store, key, cur, fn) })
}

// counted runs update with fn and counts a write when fn's last call
// wrote.
func (s *countingStore) counted(fn UpdateFunc, update func(UpdateFunc) error) error {
	wrote := false
	err := update(func(cur []byte) ([]byte, time.Duration, bool, error) {
		next, ttl, write, err := fn(cur)
		wrote = write && err == nil
		return next, ttl, write, err
	})
	if wrote {
		s.writes.Add(1)
	}
	return err
}

type fixture struct {
	g     *Greylister
	clock *fakeClock
	store *countingStore
}

// eachStore runs f against a Greylister with default params over each
// store, the store and the Greylister on one fake clock.
func eachStore(t *testing.T, f func(t *testing.T, x *fixture)) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			clock := newFakeClock()
			s := &countingStore{Store: st.open(t, clock)}
			t.Cleanup(func() { s.Close() })
			f(t, &fixture{g: &Greylister{Store: s, Params: DefaultParams(), Now: clock.Now}, clock: clock, store: s})
		})
	}
}

func (x *fixture) check(t *testing.T, client netip.Addr, from, to string, want Verdict) Result {
	t.Helper()
	return x.checkHash(t, client, from, to, "", want)
}

func (x *fixture) checkHash(t *testing.T, client netip.Addr, from, to, hash string, want Verdict) Result {
	t.Helper()
	res, err := x.g.Check(context.Background(), client, from, to, hash)
	if err != nil {
		t.Fatalf("Check(%v, %q, %q): %v", client, from, to, err)
	}
	if res.Verdict != want {
		t.Fatalf("Check(%v, %q, %q) at +%v = %q, want %q", client, from, to, x.elapsed(), res.Verdict, want)
	}
	return res
}

var epoch = newFakeClock().Now()

func (x *fixture) elapsed() time.Duration { return x.clock.Now().Sub(epoch) }

// pass takes a new triplet through greylisting.
func (x *fixture) pass(t *testing.T, client netip.Addr, from, to string) {
	t.Helper()
	x.check(t, client, from, to, New)
	x.clock.Advance(x.g.Params.Delay)
	x.check(t, client, from, to, Passed)
}

func TestCheckFirstSight(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		now := x.clock.Now()
		res := x.check(t, clientA, sender, rcpt, New)
		want := Result{Verdict: New, Key: "t|192.0.2.0/24|alice@example.org|bob@example.com", FirstSeen: now, RetryAfter: now.Add(5 * time.Minute)}
		if !res.FirstSeen.Equal(want.FirstSeen) || !res.RetryAfter.Equal(want.RetryAfter) || res.Key != want.Key {
			t.Fatalf("Check = %+v, want %+v", res, want)
		}
		if !res.Verdict.Greylisted() || Passed.Greylisted() {
			t.Error("Greylisted() wrong")
		}
	})
}

func TestCheckEarlyThenPassed(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		first := x.check(t, clientA, sender, rcpt, New)
		x.clock.Advance(time.Minute)
		early := x.check(t, clientA, sender, rcpt, Early)
		if !early.FirstSeen.Equal(first.FirstSeen) || !early.RetryAfter.Equal(first.RetryAfter) {
			t.Fatalf("early retry %+v, first %+v", early, first)
		}
		x.clock.Advance(4*time.Minute - time.Nanosecond)
		x.check(t, clientA, sender, rcpt, Early)
		x.clock.Advance(time.Nanosecond) // exactly the delay
		passed := x.check(t, clientA, sender, rcpt, Passed)
		if !passed.FirstSeen.Equal(first.FirstSeen) || !passed.RetryAfter.IsZero() {
			t.Fatalf("passed %+v", passed)
		}
		entries, err := x.g.List(context.Background(), Filter{})
		if err != nil {
			t.Fatal(err)
		}
		var tr *Entry
		for i := range entries {
			if entries[i].Kind == KindTriplet {
				tr = &entries[i]
			}
		}
		if tr == nil || tr.Attempts != 4 || tr.State != StatePassed || !tr.PassedAt.Equal(x.clock.Now()) {
			t.Fatalf("List = %+v", entries)
		}
	})
}

func TestCheckPassAtEndOfRetryWindow(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		x.check(t, clientA, sender, rcpt, New)
		x.clock.Advance(2*day - time.Nanosecond)
		x.check(t, clientA, sender, rcpt, Passed)
	})
}

func TestCheckRetryWindowExpires(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		first := x.check(t, clientA, sender, rcpt, New)
		x.clock.Advance(2 * day)
		again := x.check(t, clientA, sender, rcpt, New)
		if !again.FirstSeen.Equal(x.clock.Now()) || again.FirstSeen.Equal(first.FirstSeen) {
			t.Fatalf("restart %+v after %+v", again, first)
		}
		x.clock.Advance(time.Minute)
		x.check(t, clientA, sender, rcpt, Early)
		x.clock.Advance(4 * time.Minute)
		x.check(t, clientA, sender, rcpt, Passed)
	})
}

func TestCheckKnownTripletWithinLifetime(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		x.pass(t, clientA, sender, rcpt)
		// Known triplet checks within the hour only read.
		writes := x.store.writes.Load()
		for range 10 {
			x.clock.Advance(5 * time.Minute)
			x.check(t, clientA, sender, rcpt, Passed)
		}
		if got := x.store.writes.Load() - writes; got != 0 {
			t.Fatalf("%d writes for known-triplet checks within an hour", got)
		}
		// Past the hour, last-seen is rewritten once.
		x.clock.Advance(time.Hour)
		x.check(t, clientA, sender, rcpt, Passed)
		x.check(t, clientA, sender, rcpt, Passed)
		if got := x.store.writes.Load() - writes; got != 1 {
			t.Fatalf("%d writes, want 1 refresh of last-seen", got)
		}
		// The lifetime counts from last seen: 30 days, then 30 more.
		x.clock.Advance(30 * day)
		x.check(t, clientA, sender, rcpt, Passed)
		x.clock.Advance(30 * day)
		x.check(t, clientA, sender, rcpt, Passed)
		// Another client network, sender or recipient is another triplet.
		x.check(t, clientC, sender, rcpt, New)
		x.check(t, clientA, "carol@example.org", rcpt, New)
		x.check(t, clientA, sender, "dave@example.com", New)
		// Another address of the same /24 is the same triplet.
		x.check(t, clientB, sender, rcpt, Passed)
	})
}

func TestCheckLifetimeExpires(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		x.pass(t, clientA, sender, rcpt)
		x.clock.Advance(lifetime)
		x.check(t, clientA, sender, rcpt, New)
	})
}

func TestCheckLifetimeBoundary(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		x.pass(t, clientA, sender, rcpt)
		x.clock.Advance(lifetime - time.Nanosecond)
		x.check(t, clientA, sender, rcpt, Passed)
	})
}

func TestAutoAllow(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		ctx := context.Background()
		rcpts := []string{"r1@example.com", "r2@example.com", "r3@example.com", "r4@example.com", "r5@example.com"}
		for i, r := range rcpts[:4] {
			x.pass(t, clientA, sender, r)
			// A known triplet passing again is no new distinct triplet.
			x.clock.Advance(2 * time.Hour)
			x.check(t, clientA, sender, r, Passed)
			if i == 3 {
				x.check(t, clientB, "new@example.net", rcpt, New)
			}
		}
		x.pass(t, clientB, sender, rcpts[4]) // the fifth, from another address of the /24
		res := x.check(t, clientA, "someone@else.example", "new@example.com", AutoAllowed)
		if res.Key == "" || !res.FirstSeen.IsZero() {
			t.Fatalf("auto-allowed result %+v", res)
		}
		x.check(t, clientC, "someone@else.example", "new@example.com", New)

		entries, err := x.g.List(ctx, Filter{Client: netip.MustParsePrefix("192.0.2.0/24")})
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) == 0 || entries[0].Kind != KindNetwork || entries[0].State != StateAutoAllowed || entries[0].Passed != 5 {
			t.Fatalf("List = %+v", entries)
		}

		// Active, it stays auto-allowed past the first lifetime.
		for range 3 {
			x.clock.Advance(20 * day)
			x.check(t, clientA, "x@y.example", "z@example.com", AutoAllowed)
		}
		// Silent for a lifetime, it is greylisted again.
		x.clock.Advance(lifetime)
		x.check(t, clientA, "x@y.example", "z@example.com", New)
	})
}

func TestAutoAllowOff(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		x.g.Params.AutoAllowAfter = 0
		for _, r := range []string{"r1@example.com", "r2@example.com", "r3@example.com", "r4@example.com", "r5@example.com", "r6@example.com"} {
			x.pass(t, clientA, sender, r)
		}
		x.check(t, clientA, sender, "new@example.com", New)
	})
}

func TestManualAllows(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		ctx := WithBy(context.Background(), "alice (cli)")
		now := x.clock.Now()
		if err := x.g.AllowNetwork(ctx, netip.MustParsePrefix("198.51.100.0/22"), now.Add(day)); err != nil {
			t.Fatal(err)
		}
		x.check(t, netip.MustParseAddr("198.51.103.9"), "any@one.example", rcpt, Allowed)
		x.check(t, netip.MustParseAddr("::ffff:198.51.101.1"), "any@one.example", rcpt, Allowed)
		x.check(t, netip.MustParseAddr("198.51.104.1"), "any@one.example", rcpt, New)

		if err := x.g.AllowSender(ctx, "Newsletter+X@Shop.Example", time.Time{}); err != nil {
			t.Fatal(err)
		}
		x.check(t, clientA, "prvs=0123456789=newsletter@shop.example", rcpt, Allowed)
		x.check(t, clientA, "other@shop.example", rcpt, New)
		if err := x.g.AllowSender(ctx, "partner.example", time.Time{}); err != nil {
			t.Fatal(err)
		}
		x.check(t, clientA, "anyone@partner.example", rcpt, Allowed)
		x.check(t, clientA, "anyone@sub.partner.example", rcpt, New)
		x.check(t, clientA, "", rcpt, New)
		if err := x.g.AllowSender(ctx, "<>", now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		x.check(t, clientA, "<>", rcpt, Allowed)

		entries, err := x.g.List(ctx, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		var allows []string
		for _, e := range entries {
			if e.Kind == KindAllow {
				allows = append(allows, e.Key+" by "+e.By)
			}
		}
		want := "a|n|198.51.100.0/22 by alice (cli),a|s| by alice (cli),a|s|@partner.example by alice (cli),a|s|newsletter@shop.example by alice (cli)"
		if strings.Join(allows, ",") != want {
			t.Fatalf("allows %q, want %q", strings.Join(allows, ","), want)
		}

		// Allows end.
		x.clock.Advance(day)
		x.check(t, netip.MustParseAddr("198.51.103.9"), "any@one.example", rcpt, New)
		x.check(t, clientA, "anyone@partner.example", rcpt, Allowed) // no end

		// Re-allowing replaces; a past end is refused.
		if err := x.g.AllowNetwork(ctx, netip.MustParsePrefix("198.51.100.0/22"), x.clock.Now().Add(-time.Minute)); err == nil {
			t.Error("an allow ending in the past was accepted")
		}
		if err := x.g.AllowSender(ctx, "", time.Time{}); err == nil {
			t.Error("an empty sender allow was accepted")
		}
	})
}

func TestAllowTriplet(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		ctx := context.Background()
		x.check(t, clientA, sender, rcpt, New)
		if err := x.g.AllowTriplet(ctx, clientB, "Alice@Example.org", "BOB@example.com"); err != nil {
			t.Fatal(err)
		}
		x.check(t, clientA, sender, rcpt, Passed)
		// Also for a triplet never seen.
		if err := x.g.AllowTriplet(ctx, clientC, sender, rcpt); err != nil {
			t.Fatal(err)
		}
		x.check(t, clientC, sender, rcpt, Passed)
	})
}

func TestBATVBounceSenderIsOneTriplet(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		first := x.check(t, clientA, "prvs=4068eb2540=alice@example.org", rcpt, New)
		x.clock.Advance(10 * time.Minute)
		// The retry carries a fresh BATV tag (and the next message too).
		again := x.check(t, clientA, "prvs=5071ab9931=alice@example.org", rcpt, Passed)
		if first.Key != again.Key || first.Key != "t|192.0.2.0/24|alice@example.org|bob@example.com" {
			t.Fatalf("keys %q and %q", first.Key, again.Key)
		}
		x.check(t, clientA, "SRS0=Q4JT=33=example.org=alice@fwd.example.net", rcpt, Passed)
	})
}

func TestIPv6Grouping(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		res := x.check(t, netip.MustParseAddr("2001:db8:1:2::1"), sender, rcpt, New)
		if res.Key != "t|2001:db8:1:2::/64|alice@example.org|bob@example.com" {
			t.Fatalf("key %q", res.Key)
		}
		x.clock.Advance(5 * time.Minute)
		x.check(t, netip.MustParseAddr("2001:db8:1:2:ffff:1:2:3"), sender, rcpt, Passed)
		x.check(t, netip.MustParseAddr("2001:db8:1:3::1"), sender, rcpt, New)
		// IPv4-mapped addresses are IPv4.
		x.check(t, netip.MustParseAddr("::ffff:192.0.2.10"), sender, rcpt, New)
		x.clock.Advance(5 * time.Minute)
		x.check(t, clientB, sender, rcpt, Passed)
	})
}

func TestBodyHashInKey(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		res := x.checkHash(t, clientA, sender, rcpt, "9f86d081884c7d65", New)
		if res.Key != "t|192.0.2.0/24|alice@example.org|bob@example.com|9f86d081884c7d65" {
			t.Fatalf("key %q", res.Key)
		}
		x.clock.Advance(5 * time.Minute)
		x.checkHash(t, clientA, sender, rcpt, "0000aaaa1111bbbb", New)
		x.checkHash(t, clientA, sender, rcpt, "", New)
		x.checkHash(t, clientA, sender, rcpt, "9f86d081884c7d65", Passed)
	})
}

func TestUnreadableRecordStartsOver(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		ctx := context.Background()
		key := MakeTriplet(clientA, sender, rcpt, x.g.Params).Key()
		for _, junk := range []string{"garbage", "\x02t future version", "\x01t\xff"} {
			err := x.store.Update(ctx, key, func([]byte) ([]byte, time.Duration, bool, error) { return []byte(junk), time.Hour, true, nil })
			if err != nil {
				t.Fatal(err)
			}
			x.check(t, clientA, sender, rcpt, New)
		}
	})
}

func TestListAndDelete(t *testing.T) {
	eachStore(t, func(t *testing.T, x *fixture) {
		ctx := context.Background()
		x.pass(t, clientA, sender, rcpt)
		x.check(t, clientA, "carol@example.org", rcpt, New)
		x.check(t, clientC, sender, rcpt, New)
		x.check(t, clientC, "", rcpt, New)
		if err := x.g.AllowNetwork(ctx, netip.MustParsePrefix("192.0.2.128/25"), time.Time{}); err != nil {
			t.Fatal(err)
		}
		if err := x.g.AllowSender(ctx, "@example.org", time.Time{}); err != nil {
			t.Fatal(err)
		}
		keys := func(f Filter) string {
			t.Helper()
			entries, err := x.g.List(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			var ks []string
			for _, e := range entries {
				ks = append(ks, e.Key)
			}
			return strings.Join(ks, " ")
		}
		all := "a|n|192.0.2.128/25 a|s|@example.org n|192.0.2.0/24 t|192.0.2.0/24|alice@example.org|bob@example.com t|192.0.2.0/24|carol@example.org|bob@example.com t|198.51.100.0/24|alice@example.org|bob@example.com t|198.51.100.0/24||bob@example.com"
		if got := keys(Filter{}); got != all {
			t.Fatalf("List all:\n%s\nwant\n%s", got, all)
		}
		tests := []struct {
			f    Filter
			want string
		}{
			{Filter{Client: netip.MustParsePrefix("192.0.2.10/32")}, "n|192.0.2.0/24 t|192.0.2.0/24|alice@example.org|bob@example.com t|192.0.2.0/24|carol@example.org|bob@example.com"},
			{Filter{Client: netip.MustParsePrefix("::ffff:192.0.2.200/128")}, "a|n|192.0.2.128/25 n|192.0.2.0/24 t|192.0.2.0/24|alice@example.org|bob@example.com t|192.0.2.0/24|carol@example.org|bob@example.com"},
			{Filter{Sender: "Alice@Example.org"}, "t|192.0.2.0/24|alice@example.org|bob@example.com t|198.51.100.0/24|alice@example.org|bob@example.com"},
			{Filter{Sender: "example.org"}, "a|s|@example.org t|192.0.2.0/24|alice@example.org|bob@example.com t|192.0.2.0/24|carol@example.org|bob@example.com t|198.51.100.0/24|alice@example.org|bob@example.com"},
			{Filter{Sender: "<>"}, "t|198.51.100.0/24||bob@example.com"},
			{Filter{Client: netip.MustParsePrefix("198.51.100.0/24"), Sender: "alice@example.org"}, "t|198.51.100.0/24|alice@example.org|bob@example.com"},
		}
		for _, tt := range tests {
			if got := keys(tt.f); got != tt.want {
				t.Errorf("List(%+v):\n%s\nwant\n%s", tt.f, got, tt.want)
			}
		}
		if _, err := x.g.List(ctx, Filter{Sender: "@"}); err == nil {
			t.Error("List with sender @ succeeded")
		}

		n, err := x.g.Delete(ctx, Filter{Client: netip.MustParsePrefix("192.0.2.0/24")})
		if err != nil || n != 4 {
			t.Fatalf("Delete(192.0.2.0/24) = %d, %v; want 4", n, err)
		}
		x.check(t, clientA, "dave@example.net", rcpt, New)
		x.check(t, clientA, sender, rcpt, Allowed) // the sender allow stays
		n, err = x.g.Delete(ctx, Filter{})
		if err != nil || n != 4 {
			t.Fatalf("Delete(all) = %d, %v; want 4", n, err)
		}
		if got := keys(Filter{}); got != "" {
			t.Fatalf("after Delete(all): %s", got)
		}
	})
}

// failingStore fails every call.
type failingStore struct{ err error }

func (s failingStore) Update(context.Context, string, UpdateFunc) error { return s.err }
func (s failingStore) Get(context.Context, string) ([]byte, error)      { return nil, s.err }
func (s failingStore) Delete(context.Context, string) error             { return s.err }
func (s failingStore) Scan(context.Context, string, func(string, []byte) bool) error {
	return s.err
}
func (s failingStore) Close() error { return nil }

// failAfter passes the first gets Gets and updates Updates through, then
// fails.
type failAfter struct {
	Store
	gets, updates int64
	nGet, nUpdate atomic.Int64
}

func (s *failAfter) Get(ctx context.Context, key string) ([]byte, error) {
	if s.nGet.Add(1) > s.gets {
		return nil, errors.New("connection reset")
	}
	return s.Store.Get(ctx, key)
}

func (s *failAfter) Update(ctx context.Context, key string, fn UpdateFunc) error {
	if s.nUpdate.Add(1) > s.updates {
		return errors.New("connection reset")
	}
	return s.Store.Update(ctx, key, fn)
}

func TestStoreFailure(t *testing.T) {
	ctx := context.Background()
	down := errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
	g := &Greylister{Store: failingStore{down}, Params: DefaultParams()}
	res, err := g.Check(ctx, clientA, sender, rcpt, "")
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, down) {
		t.Fatalf("Check error %v, want ErrUnavailable wrapping %v", err, down)
	}
	if res.Verdict != "" || res.Key != "t|192.0.2.0/24|alice@example.org|bob@example.com" {
		t.Fatalf("Check result %+v", res)
	}
	// Already wrapped errors are not wrapped twice.
	g.Store = failingStore{ErrUnavailable}
	if _, err := g.Check(ctx, clientA, sender, rcpt, ""); err != ErrUnavailable {
		t.Fatalf("Check error %v", err)
	}
	for name, f := range map[string]func() error{
		"List":         func() error { _, err := g.List(ctx, Filter{}); return err },
		"Delete":       func() error { _, err := g.Delete(ctx, Filter{}); return err },
		"AllowNetwork": func() error { return g.AllowNetwork(ctx, netip.MustParsePrefix("192.0.2.0/24"), time.Time{}) },
		"AllowSender":  func() error { return g.AllowSender(ctx, sender, time.Time{}) },
		"AllowTriplet": func() error { return g.AllowTriplet(ctx, clientA, sender, rcpt) },
	} {
		if err := f(); !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s error %v, want ErrUnavailable", name, err)
		}
	}

	// Failing at each step of Check: the reads of the allow list, the
	// triplet and the network, the triplet update, the network count.
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			clock := newFakeClock()
			inner := st.open(t, clock)
			defer inner.Close()
			check := func(s *failAfter) (Result, error) {
				s.nGet.Store(0)
				s.nUpdate.Store(0)
				g := &Greylister{Store: s, Params: DefaultParams(), Now: clock.Now}
				return g.Check(ctx, clientA, sender, rcpt, "")
			}
			for _, f := range []*failAfter{{gets: 0, updates: 9}, {gets: 1, updates: 9}, {gets: 2, updates: 9}, {gets: 3, updates: 0}} {
				f.Store = inner
				if res, err := check(f); !errors.Is(err, ErrUnavailable) || res.Verdict != "" {
					t.Fatalf("gets %d, updates %d: %+v, %v", f.gets, f.updates, res, err)
				}
			}
			f := &failAfter{Store: inner, gets: 3, updates: 1}
			if res, err := check(f); err != nil || res.Verdict != New {
				t.Fatalf("first sight: %+v, %v", res, err)
			}
			clock.Advance(5 * time.Minute)
			// The triplet passes, its count for the network fails.
			if res, err := check(f); !errors.Is(err, ErrUnavailable) || res.Verdict != "" {
				t.Fatalf("pass with the count failing: %+v, %v", res, err)
			}
			if res, err := check(f); err != nil || res.Verdict != Passed {
				t.Fatalf("after: %+v, %v", res, err)
			}
		})
	}
}

func TestInvalidClient(t *testing.T) {
	g := &Greylister{Store: NewMemory(10), Params: DefaultParams()}
	if _, err := g.Check(context.Background(), netip.Addr{}, sender, rcpt, ""); err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Check(invalid client) = %v", err)
	}
}

func TestConcurrentFirstSights(t *testing.T) {
	// Many sessions see one triplet at once: exactly one is first.
	eachStore(t, func(t *testing.T, x *fixture) {
		var wg sync.WaitGroup
		var news, early atomic.Int32
		for range 50 {
			wg.Go(func() {
				res, err := x.g.Check(context.Background(), clientA, sender, rcpt, "")
				if err != nil {
					t.Error(err)
					return
				}
				switch res.Verdict {
				case New:
					news.Add(1)
				case Early:
					early.Add(1)
				}
			})
		}
		wg.Wait()
		if news.Load() != 1 || early.Load() != 49 {
			t.Fatalf("%d new, %d early; want 1 and 49", news.Load(), early.Load())
		}
	})
}

func TestBoltRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "greylist.db")
	clock := newFakeClock()
	open := func() *Bolt {
		b, err := OpenBolt(path, WithClock(clock.Now), WithSweepInterval(0))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ctx := context.Background()
	b := open()
	g := &Greylister{Store: b, Params: DefaultParams(), Now: clock.Now}
	if res, err := g.Check(ctx, clientA, sender, rcpt, ""); err != nil || res.Verdict != New {
		t.Fatalf("first sight: %+v, %v", res, err)
	}
	if err := g.AllowSender(ctx, "partner.example", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(10 * time.Minute)
	b = open()
	defer b.Close()
	g = &Greylister{Store: b, Params: DefaultParams(), Now: clock.Now}
	if res, err := g.Check(ctx, clientA, sender, rcpt, ""); err != nil || res.Verdict != Passed {
		t.Fatalf("after restart: %+v, %v", res, err)
	}
	if res, err := g.Check(ctx, clientC, "x@partner.example", rcpt, ""); err != nil || res.Verdict != Allowed {
		t.Fatalf("allow after restart: %+v, %v", res, err)
	}
}
