package quarantine

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testMsg = "Received: from client\r\nSubject: hello\r\n\r\nbody\r\n"

// clock is an injected time source the tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func open(t *testing.T, lifetime time.Duration) (*Store, *clock) {
	t.Helper()
	c := &clock{t: time.Now()}
	s, err := Open(t.TempDir(), lifetime, WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, c
}

func put(t *testing.T, s *Store, from string, rcpts ...string) string {
	t.Helper()
	id, err := s.Put(Meta{
		Envelope: Envelope{From: from, Rcpts: rcpts, ClientIP: "203.0.113.5", Helo: "mail.example.net", SessionID: "S1", Transaction: "S1-1"},
		Verdict:  Verdict{Policy: "default", Action: "quarantine", Score: 8, Reason: "score 8 >= 8", Checks: map[string]map[string]any{"size": {"result": "fail"}}},
	}, strings.NewReader(testMsg))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func readAll(t *testing.T, open func() (io.ReadCloser, error)) string {
	t.Helper()
	r, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPutGetList(t *testing.T) {
	s, c := open(t, 30*24*time.Hour)
	a := put(t, s, "a@example.net", "bob@example.com")
	c.add(time.Minute)
	b := put(t, s, "other@example.org", "carol@example.com", "dave@example.com")

	m, err := s.Get(a)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != a || m.State != StateQuarantined || m.Envelope.From != "a@example.net" || m.Size != int64(len(testMsg)) ||
		m.Verdict.Score != 8 || m.Verdict.Checks["size"]["result"] != "fail" || !m.Expires.Equal(m.Received.Add(30*24*time.Hour)) {
		t.Errorf("Get = %+v", m)
	}
	r, size, err := s.OpenMessage(strings.ToLower(a)) // ids are case-insensitive
	if err != nil || size != int64(len(testMsg)) {
		t.Fatalf("OpenMessage: %v, %d", err, size)
	}
	if got := readAll(t, func() (io.ReadCloser, error) { return r, nil }); got != testMsg {
		t.Errorf("message %q", got)
	}
	if h, err := s.Header(a, 1<<20); err != nil || string(h) != "Received: from client\r\nSubject: hello\r\n\r\n" {
		t.Errorf("Header = %q, %v", h, err)
	}

	tests := []struct {
		name string
		f    Filter
		want []string
	}{
		{"all, newest first", Filter{}, []string{b, a}},
		{"recipient substring", Filter{Rcpt: "DAVE@"}, []string{b}},
		{"sender substring", Filter{Sender: "example.net"}, []string{a}},
		{"since", Filter{Since: m.Received.Add(time.Second)}, []string{b}},
		{"nothing", Filter{Rcpt: "nobody"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := s.List(tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range ms {
				got = append(got, m.ID)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("List = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIDs(t *testing.T) {
	s, _ := open(t, time.Hour)
	id := put(t, s, "a@example.net", "b@example.com")
	if c, err := CheckID(id); err != nil || c != id || len(id) != 26 {
		t.Errorf("CheckID(%q) = %q, %v", id, c, err)
	}
	if other := put(t, s, "a@example.net", "b@example.com"); other == id {
		t.Error("two entries got the same id")
	}
	// A file planted next to the directory must stay out of reach.
	outside := filepath.Join(filepath.Dir(s.Dir()), "secret.json")
	os.WriteFile(outside, []byte(`{"id":"x"}`), 0o600)
	bad := []string{
		"", "..", ".", "../secret", "..%2fsecret", "a/b", `a\b`, id + "/x", "../" + id[3:],
		id[:25] + ".", id + ".json", strings.Repeat("I", 26), strings.Repeat("0", 25), strings.Repeat("0", 27),
		id[:25] + "\x00",
	}
	for _, b := range bad {
		if _, err := s.Get(b); !errors.Is(err, ErrBadID) {
			t.Errorf("Get(%q) = %v, want ErrBadID", b, err)
		}
		if err := s.Delete(b); !errors.Is(err, ErrBadID) {
			t.Errorf("Delete(%q) = %v, want ErrBadID", b, err)
		}
		if _, _, err := s.OpenMessage(b); !errors.Is(err, ErrBadID) {
			t.Errorf("OpenMessage(%q) = %v, want ErrBadID", b, err)
		}
		err := s.Release(context.Background(), b, func(Meta, func() (io.ReadCloser, error), int64) error { return nil })
		if !errors.Is(err, ErrBadID) {
			t.Errorf("Release(%q) = %v, want ErrBadID", b, err)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("the file outside the directory is gone: %v", err)
	}
	if _, err := s.Get(strings.Repeat("0", 26)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of an unknown id = %v, want ErrNotFound", err)
	}
}

// TestHalfWrittenEntry: a crash during Put leaves a message without
// metadata (or a file in tmp/): it is not an entry, and it is cleaned up
// once old enough.
func TestHalfWrittenEntry(t *testing.T) {
	s, c := open(t, 30*24*time.Hour)
	good := put(t, s, "a@example.net", "b@example.com")
	orphan := newID()
	if err := os.WriteFile(filepath.Join(s.Dir(), orphan+extMessage), []byte(testMsg), 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(s.Dir(), "tmp", newID()+extMeta)
	if err := os.WriteFile(tmp, []byte(`{"id":`), 0o600); err != nil {
		t.Fatal(err)
	}
	ms, err := s.List(Filter{})
	if err != nil || len(ms) != 1 || ms[0].ID != good {
		t.Fatalf("List = %+v, %v; want only %s", ms, err, good)
	}
	if _, err := s.Get(orphan); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(orphan) = %v", err)
	}
	if _, _, err := s.OpenMessage(orphan); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenMessage(orphan) = %v", err)
	}
	// Young leftovers may be a Put in progress: kept.
	if n, err := s.Expire(c.now()); n != 0 || err != nil {
		t.Errorf("Expire = %d, %v", n, err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), orphan+extMessage)); err != nil {
		t.Errorf("a young orphan was removed: %v", err)
	}
	c.add(2 * time.Hour)
	if n, err := s.Expire(c.now()); n != 0 || err != nil {
		t.Errorf("Expire = %d, %v", n, err)
	}
	for _, p := range []string{filepath.Join(s.Dir(), orphan+extMessage), tmp} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not cleaned: %v", p, err)
		}
	}
	if _, err := s.Get(good); err != nil {
		t.Errorf("the complete entry went too: %v", err)
	}

	// Damaged metadata is listed as such and can be deleted.
	bad := newID()
	os.WriteFile(filepath.Join(s.Dir(), bad+extMessage), []byte(testMsg), 0o600)
	os.WriteFile(filepath.Join(s.Dir(), bad+extMeta), []byte("{not json"), 0o600)
	ms, _ = s.List(Filter{})
	if len(ms) != 2 || ms[0].ID != bad || ms[0].State != StateDamaged {
		t.Errorf("List with damaged metadata = %+v", ms)
	}
	if err := s.Delete(bad); err != nil {
		t.Errorf("Delete(damaged) = %v", err)
	}
}

func TestRelease(t *testing.T) {
	s, _ := open(t, time.Hour)
	id := put(t, s, "a@example.net", "b@example.com")
	var got string
	err := s.Release(context.Background(), id, func(m Meta, open func() (io.ReadCloser, error), size int64) error {
		if m.State != StateReleasing || m.Envelope.Rcpts[0] != "b@example.com" || size != int64(len(testMsg)) {
			t.Errorf("deliver got %+v, size %d", m, size)
		}
		if ms, _ := s.List(Filter{}); len(ms) != 1 || ms[0].State != StateReleasing {
			t.Errorf("during the release List = %+v", ms)
		}
		if err := s.Delete(id); !errors.Is(err, ErrReleasing) {
			t.Errorf("Delete during the release = %v", err)
		}
		got = readAll(t, open)
		return nil
	})
	if err != nil || got != testMsg {
		t.Fatalf("Release = %v, delivered %q", err, got)
	}
	if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("after the release Get = %v", err)
	}
	if ents, _ := os.ReadDir(s.Dir()); len(ents) != 1 { // tmp/
		t.Errorf("files left: %v", ents)
	}
	err = s.Release(context.Background(), id, func(Meta, func() (io.ReadCloser, error), int64) error {
		t.Error("delivered a second time")
		return nil
	})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("second Release = %v", err)
	}
}

func TestConcurrentReleaseDeliversOnce(t *testing.T) {
	s, _ := open(t, time.Hour)
	id := put(t, s, "a@example.net", "b@example.com")
	var delivered atomic.Int32
	entered, proceed := make(chan struct{}), make(chan struct{})
	deliver := func(Meta, func() (io.ReadCloser, error), int64) error {
		if delivered.Add(1) == 1 {
			close(entered)
			<-proceed
		}
		return nil
	}
	first := make(chan error, 1)
	go func() { first <- s.Release(context.Background(), id, deliver) }()
	<-entered
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Release(context.Background(), id, deliver)
		}()
	}
	wg.Wait()
	close(proceed)
	if err := <-first; err != nil {
		t.Fatalf("first Release: %v", err)
	}
	for i, err := range errs {
		if !errors.Is(err, ErrReleasing) || !strings.Contains(err.Error(), "already being released") {
			t.Errorf("concurrent Release %d = %v, want ErrReleasing", i, err)
		}
	}
	if d := delivered.Load(); d != 1 {
		t.Errorf("delivered %d times", d)
	}
}

func TestFailedDeliveryKeepsEntry(t *testing.T) {
	s, _ := open(t, time.Hour)
	id := put(t, s, "a@example.net", "b@example.com")
	refused := errors.New("451 4.4.1 Upstream unavailable")
	err := s.Release(context.Background(), id, func(Meta, func() (io.ReadCloser, error), int64) error { return refused })
	if !errors.Is(err, refused) {
		t.Fatalf("Release = %v, want the delivery error", err)
	}
	m, err := s.Get(id)
	if err != nil || m.State != StateQuarantined {
		t.Fatalf("after a failed delivery Get = %+v, %v", m, err)
	}
	var got string
	if err := s.Release(context.Background(), id, func(_ Meta, open func() (io.ReadCloser, error), _ int64) error {
		got = readAll(t, open)
		return nil
	}); err != nil || got != testMsg {
		t.Errorf("retry = %v, %q", err, got)
	}
}

// TestInterruptedRelease: an entry a crash left claimed is not released
// again by Release, is listed as releasing, and goes with ForceRelease or
// Delete.
func TestInterruptedRelease(t *testing.T) {
	s, _ := open(t, time.Hour)
	id := put(t, s, "a@example.net", "b@example.com")
	other := put(t, s, "a@example.net", "b@example.com")
	for _, x := range []string{id, other} { // what a crash after the claim leaves
		if err := os.Rename(s.path(x, extMeta), s.path(x, extReleasing)); err != nil {
			t.Fatal(err)
		}
	}
	// A restart does not undo it.
	s2, err := Open(s.Dir(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	nope := func(Meta, func() (io.ReadCloser, error), int64) error {
		t.Error("delivered an interrupted release")
		return nil
	}
	if err := s2.Release(context.Background(), id, nope); !errors.Is(err, ErrInterrupted) {
		t.Errorf("Release = %v, want ErrInterrupted", err)
	}
	if m, err := s2.Get(id); err != nil || m.State != StateReleasing {
		t.Errorf("Get = %+v, %v", m, err)
	}
	fresh := put(t, s2, "a@example.net", "b@example.com")
	ok := func(Meta, func() (io.ReadCloser, error), int64) error { return nil }
	if err := s2.ForceRelease(context.Background(), fresh, ok); !errors.Is(err, ErrNotReleasing) {
		t.Errorf("ForceRelease of a quarantined entry = %v", err)
	}
	if err := s2.ForceRelease(context.Background(), id, ok); err != nil {
		t.Errorf("ForceRelease = %v", err)
	}
	if _, err := s2.Get(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("after ForceRelease Get = %v", err)
	}
	if err := s2.Delete(other); err != nil {
		t.Errorf("Delete of an interrupted release = %v", err)
	}
	if err := s2.Delete(other); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete = %v", err)
	}
}

func TestExpire(t *testing.T) {
	s, c := open(t, 24*time.Hour)
	old := put(t, s, "a@example.net", "b@example.com")
	c.add(12 * time.Hour)
	young := put(t, s, "a@example.net", "b@example.com")
	if n, err := s.Expire(c.now()); n != 0 || err != nil {
		t.Errorf("Expire before any expiry = %d, %v", n, err)
	}
	c.add(12 * time.Hour)
	if n, err := s.Expire(c.now()); n != 1 || err != nil {
		t.Errorf("Expire = %d, %v; want 1", n, err)
	}
	if _, err := s.Get(old); !errors.Is(err, ErrNotFound) {
		t.Errorf("expired entry: %v", err)
	}
	if _, err := os.Stat(s.path(old, extMessage)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("expired message file: %v", err)
	}
	if _, err := s.Get(young); err != nil {
		t.Errorf("young entry: %v", err)
	}
	// A lifetime change applies to new entries.
	s.SetLifetime(time.Hour)
	short := put(t, s, "a@example.net", "b@example.com")
	c.add(2 * time.Hour)
	if n, err := s.Expire(c.now()); n != 1 || err != nil {
		t.Errorf("Expire = %d, %v; want 1 (the short-lived entry)", n, err)
	}
	if _, err := s.Get(short); !errors.Is(err, ErrNotFound) {
		t.Errorf("short-lived entry: %v", err)
	}
	if _, err := s.Get(young); err != nil {
		t.Errorf("young entry: %v", err)
	}
}

func TestSweeper(t *testing.T) {
	c := &clock{t: time.Now()}
	reports := make(chan int, 16)
	dir := t.TempDir()
	s, err := Open(dir, time.Hour, WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "a@example.net", "b@example.com")
	s.Close()
	c.add(2 * time.Hour)
	s, err = Open(dir, time.Hour, WithClock(c.now), WithSweeper(10*time.Millisecond, func(n int, err error) {
		if err != nil {
			t.Errorf("sweep: %v", err)
		}
		reports <- n
	}))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-reports:
		if n != 1 {
			t.Errorf("sweep removed %d", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sweeper did not run")
	}
	s.Close()
	s.Close() // idempotent
}

func TestOpenRefusesNoLifetime(t *testing.T) {
	if _, err := Open(t.TempDir(), 0); err == nil {
		t.Error("Open with lifetime 0 succeeded")
	}
}

func TestCount(t *testing.T) {
	s, _ := open(t, time.Hour)
	count := func() int {
		t.Helper()
		n, err := s.Count()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("empty store: Count = %d", n)
	}
	a := put(t, s, "a@example.net", "b@example.com")
	b := put(t, s, "a@example.net", "b@example.com")
	// Neither an orphan message nor a stray file is an entry; one in the
	// releasing state is.
	if err := os.WriteFile(s.path(strings.Repeat("0", idLen), extMessage), []byte(testMsg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir(), "notes.json"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(s.path(b, extMeta), s.path(b, extReleasing)); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Errorf("Count = %d, want 2", n)
	}
	if err := s.Delete(a); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Errorf("after Delete: Count = %d, want 1", n)
	}
}
