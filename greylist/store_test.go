package greylist

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock that tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// advancer is what testStore needs, beside Store, to test expiry: a way
// to move the store's clock. Stores whose open func returns a Store
// without it skip the expiry tests.
type advancer interface{ Advance(time.Duration) }

// clockedStore is a store made with WithClock(clock.Now), with the clock
// at hand for testStore.
type clockedStore struct {
	Store
	clock *fakeClock
}

func (s clockedStore) Advance(d time.Duration) { s.clock.Advance(d) }

// testStore is the Store conformance suite. open returns a fresh, empty
// store for each subtest; testStore closes it (open must not). When the
// store returned also has an Advance(time.Duration) method that moves the
// clock its expiry is judged by (memory and bolt: WithClock; Redis: for
// instance miniredis' FastForward), the expiry tests run too.
func testStore(t *testing.T, open func(t *testing.T) Store) {
	ctx := context.Background()
	fresh := func(t *testing.T) Store {
		t.Helper()
		s := open(t)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	}
	put := func(t *testing.T, s Store, key, value string, ttl time.Duration) {
		t.Helper()
		err := s.Update(ctx, key, func([]byte) ([]byte, time.Duration, bool, error) {
			return []byte(value), ttl, true, nil
		})
		if err != nil {
			t.Fatalf("Update(%q): %v", key, err)
		}
	}
	get := func(t *testing.T, s Store, key string) []byte {
		t.Helper()
		v, err := s.Get(ctx, key)
		if err != nil {
			t.Fatalf("Get(%q): %v", key, err)
		}
		return v
	}
	wantValue := func(t *testing.T, s Store, key, want string) {
		t.Helper()
		if got := get(t, s, key); string(got) != want || got == nil {
			t.Fatalf("Get(%q) = %q (nil %v), want %q", key, got, got == nil, want)
		}
	}
	wantAbsent := func(t *testing.T, s Store, key string) {
		t.Helper()
		if got := get(t, s, key); got != nil {
			t.Fatalf("Get(%q) = %q, want nil", key, got)
		}
	}
	scan := func(t *testing.T, s Store, prefix string) map[string]string {
		t.Helper()
		got := map[string]string{}
		err := s.Scan(ctx, prefix, func(k string, v []byte) bool {
			if _, dup := got[k]; dup {
				t.Errorf("Scan(%q) returned %q twice", prefix, k)
			}
			got[k] = string(v)
			return true
		})
		if err != nil {
			t.Fatalf("Scan(%q): %v", prefix, err)
		}
		return got
	}

	t.Run("GetAbsent", func(t *testing.T) {
		s := fresh(t)
		wantAbsent(t, s, "t|192.0.2.0/24|a@example.org|b@example.com")
	})

	t.Run("UpdateCreatesThenSeesCurrent", func(t *testing.T) {
		s := fresh(t)
		key := "t|2001:db8::/64|a@example.org|b@example.com"
		seen := make([][]byte, 3) // what the last run of each fn saw
		for i := range 3 {
			err := s.Update(ctx, key, func(cur []byte) ([]byte, time.Duration, bool, error) {
				seen[i] = clone(cur)
				return []byte("v" + strconv.Itoa(i)), time.Hour, true, nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if seen[0] != nil || string(seen[1]) != "v0" || string(seen[2]) != "v1" {
			t.Fatalf("fn saw %q", seen)
		}
		wantValue(t, s, key, "v2")
	})

	t.Run("NoWriteKeepsValue", func(t *testing.T) {
		s := fresh(t)
		put(t, s, "k", "old", time.Hour)
		err := s.Update(ctx, "k", func(cur []byte) ([]byte, time.Duration, bool, error) {
			return []byte("ignored"), time.Hour, false, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		wantValue(t, s, "k", "old")
		err = s.Update(ctx, "absent", func(cur []byte) ([]byte, time.Duration, bool, error) {
			return []byte("ignored"), time.Hour, false, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		wantAbsent(t, s, "absent")
	})

	t.Run("NilNextDeletes", func(t *testing.T) {
		s := fresh(t)
		put(t, s, "k", "v", time.Hour)
		err := s.Update(ctx, "k", func(cur []byte) ([]byte, time.Duration, bool, error) {
			return nil, 0, true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		wantAbsent(t, s, "k")
		// Deleting what is absent is no error either.
		err = s.Update(ctx, "k", func(cur []byte) ([]byte, time.Duration, bool, error) {
			return nil, 0, true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("FnErrorReturnedNothingWritten", func(t *testing.T) {
		s := fresh(t)
		put(t, s, "k", "v", time.Hour)
		boom := errors.New("boom")
		err := s.Update(ctx, "k", func(cur []byte) ([]byte, time.Duration, bool, error) {
			return []byte("w"), time.Hour, true, boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Update = %v, want %v", err, boom)
		}
		wantValue(t, s, "k", "v")
	})

	t.Run("Delete", func(t *testing.T) {
		s := fresh(t)
		put(t, s, "k", "v", time.Hour)
		put(t, s, "k2", "v2", time.Hour)
		if err := s.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		wantAbsent(t, s, "k")
		wantValue(t, s, "k2", "v2")
		if err := s.Delete(ctx, "never-there"); err != nil {
			t.Fatalf("Delete of an absent key: %v", err)
		}
	})

	t.Run("ValuesAreCopies", func(t *testing.T) {
		s := fresh(t)
		put(t, s, "k", "value", time.Hour)
		v := get(t, s, "k")
		v[0] = 'X'
		wantValue(t, s, "k", "value")
		next := []byte("other")
		err := s.Update(ctx, "k", func([]byte) ([]byte, time.Duration, bool, error) { return next, time.Hour, true, nil })
		if err != nil {
			t.Fatal(err)
		}
		next[0] = 'X'
		wantValue(t, s, "k", "other")
	})

	t.Run("Scan", func(t *testing.T) {
		s := fresh(t)
		want := map[string]string{}
		for i := range 1200 { // more than one chunk of a chunked scan
			k := fmt.Sprintf("t|198.51.100.0/24|s%04d@example.org|r@example.com", i)
			want[k] = "v" + strconv.Itoa(i)
			put(t, s, k, want[k], time.Hour)
		}
		put(t, s, "n|198.51.100.0/24", "net", time.Hour)
		put(t, s, "a", "allows", time.Hour)
		put(t, s, "u|after", "x", time.Hour)
		got := scan(t, s, "t|")
		if len(got) != len(want) {
			t.Fatalf("Scan(t|) returned %d records, want %d", len(got), len(want))
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("Scan(t|)[%q] = %q, want %q", k, got[k], v)
			}
		}
		if got := scan(t, s, "n|"); len(got) != 1 || got["n|198.51.100.0/24"] != "net" {
			t.Fatalf("Scan(n|) = %v", got)
		}
		if got := scan(t, s, ""); len(got) != len(want)+3 {
			t.Fatalf("Scan(\"\") returned %d records, want %d", len(got), len(want)+3)
		}
		if got := scan(t, s, "zzz"); len(got) != 0 {
			t.Fatalf("Scan(zzz) = %v", got)
		}
		// fn returning false stops the scan.
		calls := 0
		err := s.Scan(ctx, "t|", func(string, []byte) bool { calls++; return calls < 7 })
		if err != nil || calls != 7 {
			t.Fatalf("Scan stopped after %d calls (%v), want 7", calls, err)
		}
		// fn may use the store.
		err = s.Scan(ctx, "n|", func(k string, _ []byte) bool {
			if err := s.Delete(ctx, k); err != nil {
				t.Errorf("Delete inside Scan: %v", err)
			}
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		wantAbsent(t, s, "n|198.51.100.0/24")
	})

	t.Run("Expiry", func(t *testing.T) {
		s := fresh(t)
		clock, ok := s.(advancer)
		if !ok {
			t.Skip("the store's clock cannot be moved")
		}
		put(t, s, "short", "s", time.Minute)
		put(t, s, "long", "l", time.Hour)
		put(t, s, "p|short", "s", time.Minute)
		clock.Advance(30 * time.Second)
		wantValue(t, s, "short", "s")
		// A read-only Update leaves the ttl alone.
		err := s.Update(ctx, "short", func(cur []byte) ([]byte, time.Duration, bool, error) {
			return cur, 24 * time.Hour, false, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		clock.Advance(31 * time.Second)
		wantAbsent(t, s, "short")
		wantValue(t, s, "long", "l")
		if got := scan(t, s, "p|"); len(got) != 0 {
			t.Fatalf("Scan returned expired records: %v", got)
		}
		err = s.Update(ctx, "short", func(cur []byte) ([]byte, time.Duration, bool, error) {
			if cur != nil {
				t.Errorf("fn saw the expired value %q", cur)
			}
			return []byte("again"), time.Minute, true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		wantValue(t, s, "short", "again")
		// A write sets a new ttl.
		put(t, s, "long", "l2", 2*time.Hour)
		clock.Advance(90 * time.Minute)
		wantValue(t, s, "long", "l2")
		wantAbsent(t, s, "short")
		clock.Advance(31 * time.Minute)
		wantAbsent(t, s, "long")
	})

	t.Run("ConcurrentIncrements", func(t *testing.T) {
		s := fresh(t)
		const n = 100
		incr := func(cur []byte) ([]byte, time.Duration, bool, error) {
			v := 0
			if cur != nil {
				var err error
				if v, err = strconv.Atoi(string(cur)); err != nil {
					return nil, 0, false, err
				}
			}
			return []byte(strconv.Itoa(v + 1)), time.Hour, true, nil
		}
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		for i := range n {
			wg.Go(func() {
				errs <- s.Update(ctx, "counter", incr)
				// Other keys at the same time do not disturb it.
				errs <- s.Update(ctx, "other"+strconv.Itoa(i%10), incr)
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		wantValue(t, s, "counter", strconv.Itoa(n))
		total := 0
		for k, v := range scan(t, s, "other") {
			c, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s = %q", k, v)
			}
			total += c
		}
		if total != n {
			t.Fatalf("other* sum to %d, want %d", total, n)
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		s := fresh(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		called := false
		err := s.Update(cctx, "k", func([]byte) ([]byte, time.Duration, bool, error) {
			called = true
			return []byte("v"), time.Hour, true, nil
		})
		if err == nil {
			t.Fatal("Update with a canceled context succeeded")
		}
		if called {
			t.Error("fn ran with a canceled context")
		}
		if _, err := s.Get(cctx, "k"); err == nil {
			t.Error("Get with a canceled context succeeded")
		}
	})
}

// stores are the stores in this package, each opened with the clock.
var stores = []struct {
	name string
	open func(t *testing.T, clock *fakeClock) Store
}{
	{"memory", func(t *testing.T, clock *fakeClock) Store {
		return NewMemory(10_000, WithClock(clock.Now))
	}},
	{"bolt", func(t *testing.T, clock *fakeClock) Store {
		b, err := OpenBolt(filepath.Join(t.TempDir(), "greylist.db"), WithClock(clock.Now), WithSweepInterval(0))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}},
}

func TestStores(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			testStore(t, func(t *testing.T) Store {
				clock := newFakeClock()
				return clockedStore{Store: st.open(t, clock), clock: clock}
			})
		})
	}
}

func TestMemoryIsBounded(t *testing.T) {
	ctx := context.Background()
	s := NewMemory(100)
	defer s.Close()
	for i := range 1000 {
		k := "k" + strconv.Itoa(i)
		if err := s.Update(ctx, k, func([]byte) ([]byte, time.Duration, bool, error) { return []byte("v"), time.Hour, true, nil }); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	if err := s.Scan(ctx, "", func(k string, _ []byte) bool { keys = append(keys, k); return true }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 100 || !slices.Contains(keys, "k999") || slices.Contains(keys, "k0") {
		t.Fatalf("a memory store of 100 keeps %d keys (k999 %v, k0 %v)", len(keys), slices.Contains(keys, "k999"), slices.Contains(keys, "k0"))
	}
}
