package greylist

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"
)

func TestBoltFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "greylist.db")
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	if b.Path() != path {
		t.Fatalf("Path() = %q", b.Path())
	}
}

func TestBoltLockedFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "greylist.db")
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// bbolt's lock is flock(2): a second open file description conflicts,
	// in this process as in another.
	start := time.Now()
	b2, err := OpenBolt(path)
	took := time.Since(start)
	if err == nil {
		b2.Close()
		t.Fatal("a second OpenBolt of a held file succeeded")
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("error %q does not name the file and the cause", err)
	}
	if took > 1500*time.Millisecond {
		t.Errorf("failing took %v, want about a second", took)
	}
}

func TestBoltOpenErrorNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing-dir", "greylist.db")
	if _, err := OpenBolt(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("OpenBolt(%s) = %v", path, err)
	}
}

func TestBoltSweep(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "greylist.db"), WithClock(clock.Now), WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	put := func(key string, ttl time.Duration) {
		t.Helper()
		if err := b.Update(ctx, key, func([]byte) ([]byte, time.Duration, bool, error) { return []byte("v"), ttl, true, nil }); err != nil {
			t.Fatal(err)
		}
	}
	// 2500 expiring and 700 lasting records, interleaved, so that a sweep
	// spans several transactions with live records between the dead.
	for i := range 3200 {
		ttl := time.Minute
		if i%32 >= 25 {
			ttl = time.Hour
		}
		put(fmt.Sprintf("t|%05d", i), ttl)
	}
	put("forever", 0)
	if n, err := b.Sweep(clock.Now()); err != nil || n != 0 {
		t.Fatalf("Sweep before expiry = %d, %v", n, err)
	}
	clock.Advance(2 * time.Minute)
	put("t|00000", time.Hour) // renewed: not swept
	n, err := b.Sweep(clock.Now())
	if err != nil || n != 2499 {
		t.Fatalf("Sweep = %d, %v; want 2499", n, err)
	}
	live := 0
	err = b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(boltBucket).ForEach(func(k, v []byte) error { live++; return nil })
	})
	if err != nil || live != 702 {
		t.Fatalf("%d records left in the file (%v), want 702", live, err)
	}
	if v, err := b.Get(ctx, "forever"); err != nil || string(v) != "v" {
		t.Fatalf("Get(forever) = %q, %v", v, err)
	}
	clock.Advance(time.Hour)
	if n, err := b.Sweep(clock.Now()); err != nil || n != 701 {
		t.Fatalf("second Sweep = %d, %v; want 701", n, err)
	}
}

func TestBoltCloseStopsSweeper(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	clock := newFakeClock()
	b, err := OpenBolt(filepath.Join(t.TempDir(), "greylist.db"), WithClock(clock.Now), WithSweepInterval(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Update(ctx, "k", func([]byte) ([]byte, time.Duration, bool, error) { return []byte("v"), time.Minute, true, nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := b.Get(ctx, "k"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get after Close = %v, want ErrUnavailable", err)
	}
	if n, err := b.Sweep(clock.Now()); n != 0 || err != nil {
		t.Fatalf("Sweep after Close = %d, %v", n, err)
	}
}
