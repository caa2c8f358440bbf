package greylist

import (
	"context"
	"hash/maphash"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultMemorySize is the number of records NewMemory keeps when asked
// for 0 or less.
const DefaultMemorySize = 100_000

// memoryStripes is the number of Update locks: Updates of different keys
// mostly run in parallel, those of one key one at a time.
const memoryStripes = 64

// Memory is a Store in this process's memory: a bounded LRU (the least
// recently used record goes first when it is full), lost on restart.
type Memory struct {
	cache *lru.Cache[string, memEntry]
	now   func() time.Time
	seed  maphash.Seed
	locks [memoryStripes]sync.Mutex
}

type memEntry struct {
	value   []byte
	expires int64 // Unix nanoseconds; 0: never
}

// NewMemory returns a memory store of at most size records
// (DefaultMemorySize for 0 or less).
func NewMemory(size int, opts ...Option) Store {
	if size <= 0 {
		size = DefaultMemorySize
	}
	cache, err := lru.New[string, memEntry](size)
	if err != nil {
		panic(err) // only for size <= 0, excluded above
	}
	o := makeOptions(opts)
	return &Memory{cache: cache, now: o.now, seed: maphash.MakeSeed()}
}

func (m *Memory) lock(key string) *sync.Mutex {
	return &m.locks[maphash.String(m.seed, key)%memoryStripes]
}

// Update implements Store.
func (m *Memory) Update(ctx context.Context, key string, fn UpdateFunc) error {
	if err := ctx.Err(); err != nil {
		return unavailable(err)
	}
	mu := m.lock(key)
	mu.Lock()
	defer mu.Unlock()
	now := m.now()
	var cur []byte
	if e, ok := m.cache.Get(key); ok && !expired(e.expires, now) {
		cur = clone(e.value)
	}
	next, ttl, write, err := fn(cur)
	if err != nil || !write {
		return err
	}
	if next == nil {
		m.cache.Remove(key)
		return nil
	}
	m.cache.Add(key, memEntry{value: clone(next), expires: expiryOf(now, ttl)})
	return nil
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, unavailable(err)
	}
	e, ok := m.cache.Get(key)
	if !ok || expired(e.expires, m.now()) {
		return nil, nil
	}
	return clone(e.value), nil
}

// Delete implements Store.
func (m *Memory) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return unavailable(err)
	}
	mu := m.lock(key)
	mu.Lock()
	defer mu.Unlock()
	m.cache.Remove(key)
	return nil
}

// Scan implements Store. It sees the keys present when it starts.
func (m *Memory) Scan(ctx context.Context, prefix string, fn func(key string, value []byte) bool) error {
	now := m.now()
	for _, k := range m.cache.Keys() {
		if err := ctx.Err(); err != nil {
			return unavailable(err)
		}
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		e, ok := m.cache.Peek(k)
		if !ok || expired(e.expires, now) {
			continue
		}
		if !fn(k, clone(e.value)) {
			return nil
		}
	}
	return nil
}

// Close implements Store; the records are dropped.
func (m *Memory) Close() error {
	m.cache.Purge()
	return nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

var _ Store = (*Memory)(nil)
