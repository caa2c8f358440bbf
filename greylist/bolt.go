package greylist

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Bolt is a Store in one bbolt file (greylist.db in data_dir, the
// default store). It survives restarts; one process at a time opens it.
//
// Each value is an 8-byte big-endian expiry (Unix nanoseconds, 0: never)
// followed by the record. Reads are bbolt read transactions, which never
// wait for writers. An Update whose fn does not write is served by a read
// transaction alone; one that writes runs fn again on the current value
// in a write transaction, batched (bbolt's Batch) when other writes are
// under way, so the first sights of many concurrent sessions share one
// commit and fsync (a batch waits at most 2ms for more). A background sweeper deletes expired records in small
// transactions.
type Bolt struct {
	db   *bolt.DB
	path string
	now  func() time.Time

	writers atomic.Int32 // Updates and Deletes writing now

	stop      chan struct{}
	sweeper   sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

var boltBucket = []byte("greylist")

// boltBatchDelay is how long a batch of writes waits for more before it
// commits (bbolt's default, 10ms, suits disks with a slow fsync; with an
// SSD, 2ms gives four times the first sights per second at 32 concurrent
// sessions and still shares each commit among many writes).
const boltBatchDelay = 2 * time.Millisecond

// boltLockTimeout is how long OpenBolt waits for a file another process
// holds.
const boltLockTimeout = time.Second

// Sweep sizes: a sweep deletes at most sweepBatch records per write
// transaction and looks at most sweepScan records per read transaction,
// so neither lookups nor Updates wait long behind it.
const (
	sweepBatch = 1000
	sweepScan  = 10 * sweepBatch
	scanChunk  = 1000 // records looked at per read transaction in Scan
)

// OpenBolt opens (creating it, mode 0600) the bbolt file at path. A file
// that another process holds (another moat serve) fails within a second
// with an error naming it.
func OpenBolt(path string, opts ...Option) (*Bolt, error) {
	o := makeOptions(opts)
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        boltLockTimeout,
		NoFreelistSync: true, // faster commits; the freelist is rebuilt at open
		FreelistType:   bolt.FreelistMapType,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("greylist: %s is in use by another process (is moat serve running?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("greylist: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(boltBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("greylist: %s: %w", path, err)
	}
	db.MaxBatchDelay = boltBatchDelay
	b := &Bolt{db: db, path: path, now: o.now, stop: make(chan struct{})}
	if o.sweepEvery > 0 {
		b.sweeper.Add(1)
		go b.sweep(o.sweepEvery)
	}
	return b, nil
}

// Path is the file's path.
func (b *Bolt) Path() string { return b.path }

func (b *Bolt) fail(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, b.path, err)
}

// live returns the record in a stored value, or nil when it has expired
// (or is too short to hold an expiry).
func live(v []byte, now time.Time) []byte {
	if len(v) < 8 || expired(int64(binary.BigEndian.Uint64(v)), now) {
		return nil
	}
	return v[8:]
}

func boltValue(now time.Time, ttl time.Duration, record []byte) []byte {
	v := make([]byte, 8, 8+len(record))
	binary.BigEndian.PutUint64(v, uint64(expiryOf(now, ttl)))
	return append(v, record...)
}

// Update implements Store: fn first runs in a read transaction; only when
// it writes does it run again, on the current value, in a (batched) write
// transaction.
func (b *Bolt) Update(ctx context.Context, key string, fn UpdateFunc) error {
	if err := ctx.Err(); err != nil {
		return unavailable(err)
	}
	k := []byte(key)
	now := b.now()
	var fnErr error
	write := false
	err := b.db.View(func(tx *bolt.Tx) error {
		var cur []byte
		if v := live(tx.Bucket(boltBucket).Get(k), now); v != nil {
			cur = clone(v)
		}
		_, _, write, fnErr = fn(cur)
		return nil
	})
	if err != nil {
		return b.fail(err)
	}
	if fnErr != nil || !write {
		return fnErr
	}
	err = b.write(func(tx *bolt.Tx) error {
		fnErr = nil
		bk := tx.Bucket(boltBucket)
		var cur []byte
		if v := live(bk.Get(k), now); v != nil {
			cur = clone(v)
		}
		next, ttl, write, err := fn(cur)
		switch {
		case err != nil:
			fnErr = err
			return err
		case !write:
			return nil
		case next == nil:
			return bk.Delete(k)
		}
		return bk.Put(k, boltValue(now, ttl, next))
	})
	if fnErr != nil {
		return fnErr
	}
	return b.fail(err)
}

// Get implements Store.
func (b *Bolt) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, unavailable(err)
	}
	now := b.now()
	var out []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		if v := live(tx.Bucket(boltBucket).Get([]byte(key)), now); v != nil {
			out = clone(v)
		}
		return nil
	})
	return out, b.fail(err)
}

// getMany reads the records under keys in one read transaction (a
// Check reads three).
func (b *Bolt) getMany(ctx context.Context, keys []string) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, unavailable(err)
	}
	now := b.now()
	out := make([][]byte, len(keys))
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(boltBucket)
		for i, k := range keys {
			if v := live(bk.Get([]byte(k)), now); v != nil {
				out[i] = clone(v)
			}
		}
		return nil
	})
	if err != nil {
		return nil, b.fail(err)
	}
	return out, nil
}

// updateFrom is Update: a bolt Update reads the record in its own
// transaction, which costs no more than using cur.
func (b *Bolt) updateFrom(ctx context.Context, key string, _ []byte, fn UpdateFunc) error {
	return b.Update(ctx, key, fn)
}

// Delete implements Store.
func (b *Bolt) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return unavailable(err)
	}
	return b.fail(b.write(func(tx *bolt.Tx) error {
		return tx.Bucket(boltBucket).Delete([]byte(key))
	}))
}

// write runs fn in a write transaction: a transaction of its own when no
// other write is under way (no batching delay for a lone writer), else
// through db.Batch, which gathers the writes that arrive meanwhile into
// one commit (at most boltBatchDelay later). fn may run more than once.
func (b *Bolt) write(fn func(*bolt.Tx) error) error {
	defer b.writers.Add(-1)
	if b.writers.Add(1) == 1 {
		return b.db.Update(fn)
	}
	return b.db.Batch(fn)
}

// Scan implements Store. It reads scanChunk records per read transaction
// and calls fn outside of it, so fn may use the store, and a long scan
// holds no transaction open (which would keep freed pages from reuse).
func (b *Bolt) Scan(ctx context.Context, prefix string, fn func(key string, value []byte) bool) error {
	p := []byte(prefix)
	var after []byte // the last key seen; nil: start at prefix
	type kv struct {
		k string
		v []byte
	}
	for {
		if err := ctx.Err(); err != nil {
			return unavailable(err)
		}
		now := b.now()
		var chunk []kv
		done := false
		err := b.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(boltBucket).Cursor()
			k, v := seekAfter(c, p, after)
			for scanned := 0; k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
				if scanned == scanChunk {
					return nil
				}
				scanned++
				after = clone(k)
				if r := live(v, now); r != nil {
					chunk = append(chunk, kv{string(k), clone(r)})
				}
			}
			done = true
			return nil
		})
		if err != nil {
			return b.fail(err)
		}
		for _, e := range chunk {
			if !fn(e.k, e.v) {
				return nil
			}
		}
		if done {
			return nil
		}
	}
}

// seekAfter positions c at the first key after the key after, or at the
// first key from start when after is nil.
func seekAfter(c *bolt.Cursor, start, after []byte) ([]byte, []byte) {
	if after == nil {
		return c.Seek(start)
	}
	k, v := c.Seek(after)
	if bytes.Equal(k, after) {
		k, v = c.Next()
	}
	return k, v
}

// Sweep deletes the records expired at now and returns how many, in
// write transactions of at most 1000 deletions; it stops early when the
// store closes. The background sweeper calls it; it is exported for
// tests and tools.
func (b *Bolt) Sweep(now time.Time) (int, error) {
	deleted := 0
	var after []byte
	for {
		select {
		case <-b.stop:
			return deleted, nil
		default:
		}
		var keys [][]byte
		done := false
		err := b.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(boltBucket).Cursor()
			k, v := seekAfter(c, nil, after)
			for scanned := 0; k != nil; k, v = c.Next() {
				if len(keys) == sweepBatch || scanned == sweepScan {
					return nil
				}
				scanned++
				after = clone(k)
				if live(v, now) == nil {
					keys = append(keys, clone(k))
				}
			}
			done = true
			return nil
		})
		if err != nil {
			return deleted, b.fail(err)
		}
		if len(keys) > 0 {
			n := 0
			err := b.db.Update(func(tx *bolt.Tx) error {
				n = 0
				bk := tx.Bucket(boltBucket)
				for _, k := range keys {
					// An Update may have renewed it since the read.
					if live(bk.Get(k), now) != nil {
						continue
					}
					if err := bk.Delete(k); err != nil {
						return err
					}
					n++
				}
				return nil
			})
			if err != nil {
				return deleted, b.fail(err)
			}
			deleted += n
		}
		if done {
			return deleted, nil
		}
	}
}

func (b *Bolt) sweep(every time.Duration) {
	defer b.sweeper.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			// An error (a full disk) is tried again at the next tick.
			_, _ = b.Sweep(b.now())
		}
	}
}

// Close stops the sweeper, waits for it, and closes the file. Calling it
// again returns the first result.
func (b *Bolt) Close() error {
	b.closeOnce.Do(func() {
		close(b.stop)
		b.sweeper.Wait()
		if err := b.db.Close(); err != nil {
			b.closeErr = fmt.Errorf("greylist: close %s: %w", b.path, err)
		}
	})
	return b.closeErr
}

var _ Store = (*Bolt)(nil)
