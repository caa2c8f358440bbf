package greylist

import "time"

// Option configures a store made by NewMemory or OpenBolt.
type Option func(*storeOptions)

type storeOptions struct {
	now        func() time.Time
	sweepEvery time.Duration
}

// WithClock makes the store expire records by now instead of time.Now
// (tests). A store computes a record's expiry as its own now() plus the
// ttl that Update's fn returns, and treats the record as absent from that
// instant on. The Greylister never relies on it: its records carry their
// own times.
func WithClock(now func() time.Time) Option {
	return func(o *storeOptions) { o.now = now }
}

// WithSweepInterval sets how often the bolt store deletes expired records
// (default 5 minutes); 0 or less turns the background sweeper off (Sweep
// still works). The memory store has no sweeper: its LRU bound drops the
// oldest records.
func WithSweepInterval(d time.Duration) Option {
	return func(o *storeOptions) { o.sweepEvery = d }
}

func makeOptions(opts []Option) storeOptions {
	o := storeOptions{now: time.Now, sweepEvery: 5 * time.Minute}
	for _, opt := range opts {
		opt(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	return o
}

// expiryOf is the Unix-nanosecond expiry of a record written at now with
// ttl; 0 (never) for ttl <= 0.
func expiryOf(now time.Time, ttl time.Duration) int64 {
	if ttl <= 0 {
		return 0
	}
	return now.Add(ttl).UnixNano()
}

// expired reports whether a record with that expiry is gone at now.
func expired(exp int64, now time.Time) bool {
	return exp != 0 && now.UnixNano() >= exp
}
