package auth

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// counters keeps failed-login counts and lockouts by key (a client
// network or a user name). memCounters keeps them in this process;
// sharedCounters (redis.go, WithRedis) keeps them in Redis so that every
// node of a cluster sees the same counts, hence the context and the errors
// that the in-memory one never returns.
type counters interface {
	// locked reports whether key is locked out at now.
	locked(ctx context.Context, key string, now time.Time) (bool, error)
	// fail records one failure of key at now and returns the failures
	// within the window, this one included. When they reach l.max, key
	// is locked out until now+l.lockout (lockedNow) and its count starts
	// over, so the first failure after the lockout waits the first delay.
	fail(ctx context.Context, key string, now time.Time, l limit) (n int, lockedNow bool, err error)
	// reset forgets key's failures; a lockout in force stays.
	reset(ctx context.Context, key string) error
	// resize changes how many keys are kept (see Settings.MaxTracked).
	resize(n int)
}

// limit is one table's rule: max failures within window lock out for
// lockout.
type limit struct {
	max     int
	window  time.Duration
	lockout time.Duration
}

// entry is one key's state. The window is fixed: it opens at the first
// failure and the count starts over once it has passed.
type entry struct {
	n     int
	first time.Time // the window's start
	until time.Time // locked out before this instant; zero: not locked
}

// memCounters bounds its memory with an LRU of at most size keys: an
// attacker who spreads over many addresses or user names pushes out the
// least recently seen keys instead of growing the table. golang-lru's
// simplelru is used under our own mutex because every operation is a
// read-modify-write of one entry.
type memCounters struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, *entry]
}

func newMemCounters(size int) *memCounters {
	l, err := simplelru.NewLRU[string, *entry](size, nil)
	if err != nil {
		panic(err) // only for size <= 0, which Settings.withDefaults rules out
	}
	return &memCounters{lru: l}
}

func (m *memCounters) locked(_ context.Context, key string, now time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.lru.Peek(key)
	return ok && now.Before(e.until), nil
}

func (m *memCounters) fail(_ context.Context, key string, now time.Time, l limit) (int, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.lru.Get(key)
	if !ok {
		e = &entry{}
		m.lru.Add(key, e)
	}
	if e.n == 0 || now.Sub(e.first) >= l.window {
		e.n, e.first = 0, now
	}
	e.n++
	n := e.n
	if n >= l.max {
		e.until = now.Add(l.lockout)
		e.n = 0
		return n, true, nil
	}
	return n, false, nil
}

func (m *memCounters) reset(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.lru.Peek(key)
	if !ok {
		return nil
	}
	if e.until.IsZero() {
		m.lru.Remove(key)
		return nil
	}
	e.n = 0
	return nil
}

func (m *memCounters) resize(n int) {
	m.mu.Lock()
	m.lru.Resize(n)
	m.mu.Unlock()
}

func (m *memCounters) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Len()
}

// clientKey is the key of a client address: the address itself for IPv4,
// its /64 for IPv6, since one IPv6 host commonly holds a whole /64 and
// would otherwise get a fresh count with every address it picks.
func clientKey(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}
