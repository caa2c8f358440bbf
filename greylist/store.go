// Package greylist delays mail from unknown (client network, sender,
// recipient) triplets: a legitimate MTA retries, most spamware does not.
//
// The decision logic is written once, in Go (greylist.go); the stores only
// offer an atomic read-modify-write of one record (Store.Update), so the
// memory, bolt and Redis stores behave the same, and two gateways sharing
// one Redis cannot both count one triplet's first sight.
package greylist

import (
	"context"
	"errors"
	"time"
)

// Store keeps greylist records: small byte values under string keys, each
// with its own expiry. Implementations: memory (bounded LRU), bolt (a file
// in data_dir, the default), redis (shared by several gateways).
type Store interface {
	// Update reads the record under key (nil when absent or expired), calls
	// fn with it and stores what fn returns, atomically with respect to
	// every other Update of the same key, in this process and (for shared
	// stores) in others. fn may run more than once (optimistic retries), so
	// it must have no side effects. (The Greylister's fns only note what
	// they decided, trusting that the result of the last call made is the
	// one stored: a store may skip calling fn again only when the record is
	// the same as at that last call.) When fn returns write == false
	// nothing is written (a store may then serve the call from a read-only
	// path).
	// next == nil with write == true deletes the record. ttl is the
	// record's new time to live, counted from the store's own clock
	// (memory and bolt: time.Now unless WithClock; Redis: the server's);
	// the Greylister always passes ttl > 0 when it writes a record, and
	// memory and bolt keep a record with ttl <= 0 forever. When fn does not
	// write, the record keeps its old ttl. fn must not modify or keep cur.
	// An error from fn is returned as is, and nothing is written.
	//
	// Every record carries its own times, so a store expiring a record
	// late changes no decision: expiry only reclaims space.
	Update(ctx context.Context, key string, fn UpdateFunc) error
	// Get returns the record under key, or nil when absent or expired. The
	// caller owns the returned slice.
	Get(ctx context.Context, key string) ([]byte, error)
	// Delete removes the record under key; absent is not an error.
	Delete(ctx context.Context, key string) error
	// Scan calls fn for every live record whose key starts with prefix,
	// in no particular order, until fn returns false. Records written
	// during a scan may or may not be seen. (List and Delete use it; the
	// decision path never scans.)
	Scan(ctx context.Context, prefix string, fn func(key string, value []byte) bool) error
	// Close releases the store.
	Close() error
}

// UpdateFunc computes a record's next value from its current one.
type UpdateFunc func(cur []byte) (next []byte, ttl time.Duration, write bool, err error)

// ErrUnavailable wraps store failures that mean "cannot tell now" (Redis
// down, a timeout): the check answers temperror and the policy decides
// (by default greylisting fails open). Greylister methods wrap every store
// error in it (errors.Is works), so a store need not, though memory and
// bolt do.
var ErrUnavailable = errors.New("greylist store unavailable")
