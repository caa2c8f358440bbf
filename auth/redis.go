package auth

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"moat/audit"
)

// Shared failure counters.
//
// With WithRedis, the failure counts and lockouts of every moat process
// that uses the same Redis (and key prefix) are one: failures spread over
// the gateways behind a load balancer add up, and a lockout begun on one
// is in force on all. Redis keeps, per client network and per user name:
//
//	<prefix>ip:{<key>}:fails    the failures of the current window (INCR),
//	                            expiring Window after the first of them
//	<prefix>ip:{<key>}:lock     present while locked out, expiring after Lockout
//	<prefix>user:{<name>}:...   the same for a canonical user name
//
// so Redis forgets old failures itself. The braces make both keys of one
// client or user a Redis Cluster hash tag (one slot, as a script needs);
// <key> and <name> are percent-escaped (url.PathEscape), so that a name
// with braces, '%', glob characters or other odd bytes can neither break
// the layout nor collide with another one. The password is never sent.
//
// Cost: checking a lockout is one EXISTS; counting a failure is one
// EVALSHA of a small Lua script (EVAL once more after Redis lost its
// script cache); a successful login deletes the user's count (one DEL).
//
// Redis being down or slow never refuses logins: each call is bounded by
// redisTimeout, and when it fails this process's own in-memory counters
// decide that attempt (a per-node lockout meanwhile), and an
// auth.redis_error event is written, at most once per redisErrorEvery. A
// lockout begun in memory during an outage stays in force after Redis
// answers again.

// DefaultRedisPrefix starts every key that the shared counters write.
const DefaultRedisPrefix = "moat:auth:"

const (
	// redisTimeout bounds each Redis call of a login: a hung Redis costs a
	// call this much, then memory decides.
	redisTimeout = 500 * time.Millisecond
	// redisErrorEvery is the least time between two auth.redis_error
	// events, so that an outage under a login storm logs a line, not a
	// flood.
	redisErrorEvery = 30 * time.Second
)

// Option configures New.
type Option func(*options)

type options struct {
	rdb    redis.UniversalClient
	prefix string
}

// WithRedis shares the failure counters and lockouts through rdb with
// every other moat process that uses the same Redis and key prefix (see
// WithRedisPrefix). The caller keeps rdb and closes it.
//
// Each call is bounded by a 500 ms deadline on its context, which go-redis
// obeys only with ContextTimeoutEnabled; otherwise set short Dial, Read and
// Write timeouts on rdb, and preferably MaxRetries -1 (a failed call falls
// back to memory at once rather than being retried).
func WithRedis(rdb redis.UniversalClient) Option {
	return func(o *options) { o.rdb = rdb }
}

// WithRedisPrefix sets the prefix of the Redis keys (default
// DefaultRedisPrefix); it has no effect without WithRedis.
func WithRedisPrefix(prefix string) Option {
	return func(o *options) { o.prefix = prefix }
}

// apply installs what opts ask for; New calls it.
func (s *Service) apply(opts []Option) {
	o := options{prefix: DefaultRedisPrefix}
	for _, f := range opts {
		f(&o)
	}
	if o.rdb == nil {
		return
	}
	alarm := &redisAlarm{log: s.log, now: func() time.Time { return s.now() }, every: redisErrorEvery}
	s.ips = &sharedCounters{
		shared:  &redisCounters{rdb: o.rdb, prefix: o.prefix + "ip:"},
		local:   s.ips.(*memCounters),
		alarm:   alarm,
		timeout: redisTimeout,
	}
	s.names = &sharedCounters{
		shared:  &redisCounters{rdb: o.rdb, prefix: o.prefix + "user:"},
		local:   s.names.(*memCounters),
		alarm:   alarm,
		timeout: redisTimeout,
	}
}

// sharedCounters asks Redis and falls back to this process's memory for
// a call that Redis fails.
type sharedCounters struct {
	shared  *redisCounters
	local   *memCounters
	alarm   *redisAlarm
	timeout time.Duration
}

func (c *sharedCounters) locked(ctx context.Context, key string, now time.Time) (bool, error) {
	// A lockout begun in memory while Redis was away still holds; and it
	// saves the round trip.
	if locked, _ := c.local.locked(ctx, key, now); locked {
		return true, nil
	}
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	locked, err := c.shared.locked(rctx, key)
	if err != nil {
		c.alarm.raise(ctx, err)
		return false, nil // memory said no
	}
	return locked, nil
}

func (c *sharedCounters) fail(ctx context.Context, key string, now time.Time, l limit) (int, bool, error) {
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	n, locked, err := c.shared.fail(rctx, key, l)
	if err != nil {
		c.alarm.raise(ctx, err)
		return c.local.fail(ctx, key, now, l)
	}
	return n, locked, nil
}

func (c *sharedCounters) reset(ctx context.Context, key string) error {
	c.local.reset(ctx, key) // failures counted here during an outage
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.shared.reset(rctx, key); err != nil {
		c.alarm.raise(ctx, err)
	}
	return nil
}

// resize bounds the fallback table; Redis is bounded by its expiries.
func (c *sharedCounters) resize(n int) { c.local.resize(n) }

// redisCounters keeps one table (clients or users) in Redis; its expiries
// are Redis's own, so it takes no clock.
type redisCounters struct {
	rdb    redis.UniversalClient
	prefix string // DefaultRedisPrefix + "ip:" or "user:"
}

// keys returns the Redis keys of key's failure count and lockout.
func (r *redisCounters) keys(key string) (fails, lock string) {
	tag := r.prefix + "{" + url.PathEscape(key) + "}"
	return tag + ":fails", tag + ":lock"
}

func (r *redisCounters) locked(ctx context.Context, key string) (bool, error) {
	_, lock := r.keys(key)
	n, err := r.rdb.Exists(ctx, lock).Result()
	if err != nil {
		return false, fmt.Errorf("redis EXISTS %s: %w", lock, err)
	}
	return n > 0, nil
}

// failScript counts one failure of KEYS[1] and locks out with KEYS[2],
// atomically, so that concurrent failures on several gateways reach the
// maximum exactly once. ARGV: the maximum, the window and the lockout in
// milliseconds. It returns {failures, 1 if this one began a lockout}. The
// window's expiry is set on the first failure (or if the key somehow has
// none, so that it cannot live for ever); reaching the maximum sets the
// lockout key and starts the count over, as memCounters does.
var failScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if n >= tonumber(ARGV[1]) then
	redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
	redis.call('DEL', KEYS[1])
	return {n, 1}
end
return {n, 0}
`)

func (r *redisCounters) fail(ctx context.Context, key string, l limit) (int, bool, error) {
	fails, lock := r.keys(key)
	res, err := failScript.Run(ctx, r.rdb, []string{fails, lock},
		l.max, max(l.window.Milliseconds(), 1), max(l.lockout.Milliseconds(), 1)).Int64Slice()
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("script answered %v", res)
	}
	if err != nil {
		return 0, false, fmt.Errorf("redis failure count %s: %w", fails, err)
	}
	return int(res[0]), res[1] == 1, nil
}

func (r *redisCounters) reset(ctx context.Context, key string) error {
	fails, _ := r.keys(key)
	if err := r.rdb.Del(ctx, fails).Err(); err != nil {
		return fmt.Errorf("redis DEL %s: %w", fails, err)
	}
	return nil
}

// redisAlarm writes the auth.redis_error event, at most once per every.
type redisAlarm struct {
	log   *audit.Logger
	now   func() time.Time
	every time.Duration

	mu         sync.Mutex
	last       time.Time // of the last event; zero: none yet
	suppressed int       // errors since then not logged
}

// raise reports err, which made a call fall back to memory, unless the
// login's own context ended (the client left: not Redis's fault).
func (a *redisAlarm) raise(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	now := a.now()
	a.mu.Lock()
	if !a.last.IsZero() && now.Sub(a.last) < a.every {
		a.suppressed++
		a.mu.Unlock()
		return
	}
	n := a.suppressed
	a.last, a.suppressed = now, 0
	a.mu.Unlock()
	a.log.Warn("auth.redis_error",
		zap.String("message", "shared failure counters unavailable: this gateway counts failures and locks out on its own until Redis answers"),
		zap.String("error.message", err.Error()),
		zap.Int("moat.suppressed", n))
}
