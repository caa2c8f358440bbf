package greylist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Redis defaults.
const (
	// DefaultRedisKeyPrefix starts every key the Redis store writes, so
	// that it can share a Redis database with other users.
	DefaultRedisKeyPrefix = "moat:greylist:"
	// DefaultRedisTimeout bounds each dial, read and write: a dead or hung
	// Redis costs a greylist check about this much, then the check
	// answers temperror.
	DefaultRedisTimeout = 500 * time.Millisecond
	// DefaultRedisTxAttempts is how many optimistic transactions one
	// Update tries before it gives up on a key that others keep changing.
	DefaultRedisTxAttempts = 32
)

// Redis is a Store kept in a Redis server, shared by several gateways. A
// record is one string value under prefix+key whose expiry is Redis's own
// (SET with PX, or EX for whole seconds; none for a ttl <= 0, as in the
// other stores), so Redis drops expired records itself. Update is an
// optimistic transaction (WATCH, GET, MULTI, SET or DEL, EXEC), retried
// while another client changes the key in between.
//
// Every failure to talk to Redis (refused, timed out, closed, an error
// reply) is returned wrapped so that errors.Is(err, ErrUnavailable) holds;
// the message says which server and which command failed. Each dial,
// read and write is bounded by the timeout (WithRedisTimeout); a deadline
// on the context bounds a whole call.
type Redis struct {
	client     *redis.Client
	addr       string
	prefix     string
	txAttempts int
}

// RedisOption configures NewRedis.
type RedisOption func(*redisConfig)

type redisConfig struct {
	prefix     string
	timeout    time.Duration
	txAttempts int
	client     []func(*redis.Options)
	hooks      []redis.Hook
}

// WithRedisKeyPrefix sets the prefix of every key the store writes
// (default DefaultRedisKeyPrefix). Gateways that share greylist state must
// use the same prefix.
func WithRedisKeyPrefix(prefix string) RedisOption {
	return func(c *redisConfig) { c.prefix = prefix }
}

// WithRedisTimeout sets the dial, read and write timeout (default
// DefaultRedisTimeout).
func WithRedisTimeout(d time.Duration) RedisOption {
	return func(c *redisConfig) { c.timeout = d }
}

// WithRedisTxAttempts sets how many optimistic transactions one Update
// tries (default DefaultRedisTxAttempts).
func WithRedisTxAttempts(n int) RedisOption {
	return func(c *redisConfig) { c.txAttempts = n }
}

// WithRedisClientOptions lets f adjust the go-redis client options after
// NewRedis has filled them in (password, TLS, database, pool size).
func WithRedisClientOptions(f func(*redis.Options)) RedisOption {
	return func(c *redisConfig) { c.client = append(c.client, f) }
}

// WithRedisHook adds h to the go-redis client (metrics.RedisHook counts
// its round trips).
func WithRedisHook(h redis.Hook) RedisOption {
	return func(c *redisConfig) { c.hooks = append(c.hooks, h) }
}

// NewRedis returns a Store in the Redis server at addr ("host:port", or a
// Unix socket path starting with "/"). It does not connect: a Redis that
// is down at start makes the first checks answer temperror, not the
// gateway fail; call Ping to know.
func NewRedis(addr string, opts ...RedisOption) (*Redis, error) {
	if addr == "" {
		return nil, errors.New("greylist: redis: no address")
	}
	c := redisConfig{
		prefix:     DefaultRedisKeyPrefix,
		timeout:    DefaultRedisTimeout,
		txAttempts: DefaultRedisTxAttempts,
	}
	for _, o := range opts {
		o(&c)
	}
	if c.timeout <= 0 {
		return nil, fmt.Errorf("greylist: redis %s: timeout %v: want > 0", addr, c.timeout)
	}
	if c.txAttempts < 1 {
		return nil, fmt.Errorf("greylist: redis %s: %d transaction attempts: want >= 1", addr, c.txAttempts)
	}
	o := &redis.Options{
		Addr:         addr,
		DialTimeout:  c.timeout,
		ReadTimeout:  c.timeout,
		WriteTimeout: c.timeout,
		PoolTimeout:  c.timeout,
		// One dial per attempt and no command retries: a refused or timed
		// out command fails at once, and the next check tries again.
		// Connections that Redis closed are dropped when taken from the
		// pool, so a restarted Redis needs no retry either.
		DialerRetries: 1,
		MaxRetries:    -1,
		// A deadline on ctx shortens the socket deadlines.
		ContextTimeoutEnabled: true,
		// No CLIENT SETINFO or CLIENT MAINT_NOTIFICATIONS on each new
		// connection: nothing here uses them.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	for _, f := range c.client {
		f(o)
	}
	client := redis.NewClient(o)
	for _, h := range c.hooks {
		client.AddHook(h)
	}
	return &Redis{
		client:     client,
		addr:       addr,
		prefix:     c.prefix,
		txAttempts: c.txAttempts,
	}, nil
}

// Update implements Store. It first reads the record with a plain GET and
// calls fn; when fn does not write, that is all. Otherwise it runs fn
// again inside WATCH/GET/MULTI/EXEC on the value read there (reusing the
// first result when the value is the same), and repeats with a short
// random backoff while other clients change the key, at most
// WithRedisTxAttempts times.
func (r *Redis) Update(ctx context.Context, key string, fn UpdateFunc) error {
	cur, err := r.get(ctx, r.prefix+key)
	if err != nil {
		return err
	}
	return r.updateFrom(ctx, key, cur, fn)
}

// updateFrom is Update once the record was read (cur, nil when absent):
// a Check that read it with getMany starts here, saving a GET.
func (r *Redis) updateFrom(ctx context.Context, key string, cur []byte, fn UpdateFunc) error {
	rk := r.prefix + key
	memo := redisUpdateMemo{fn: fn}
	res, err := memo.call(cur)
	if err != nil || !res.write {
		return err
	}

	for attempt := 1; ; attempt++ {
		step := "WATCH"
		err := r.client.Watch(ctx, func(tx *redis.Tx) error {
			step = "GET"
			cur, err := tx.Get(ctx, rk).Bytes()
			switch {
			case errors.Is(err, redis.Nil):
				cur = nil
			case err != nil:
				return err
			}
			res, err := memo.call(cur)
			if err != nil {
				return redisFnError{err}
			}
			if !res.write {
				return nil
			}
			step = "MULTI/EXEC"
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				switch {
				case res.next == nil:
					step = "MULTI/DEL/EXEC"
					p.Del(ctx, rk)
				case res.ttl <= 0:
					// Never expires, as in the other stores; a plain SET
					// also drops an expiry the key had.
					step = "MULTI/SET/EXEC"
					p.Set(ctx, rk, res.next, 0)
				default:
					step = "MULTI/SET/EXEC"
					p.Set(ctx, rk, res.next, max(res.ttl, time.Millisecond))
				}
				return nil
			})
			return err
		}, rk)
		var fe redisFnError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &fe):
			return fe.err
		case !errors.Is(err, redis.TxFailedErr):
			return r.fail(step, rk, err)
		case attempt >= r.txAttempts:
			return r.fail("update", rk, fmt.Errorf("%d transactions failed: the key kept changing (%w)", attempt, err))
		}
		if err := redisTxBackoff(ctx, attempt); err != nil {
			return r.fail("update", rk, err)
		}
	}
}

// redisUpdateMemo calls an UpdateFunc, reusing its last result when the
// record it reads is the same again (fn has no side effects, so calling it
// once more on equal input would give the same answer).
type redisUpdateMemo struct {
	fn     UpdateFunc
	called bool
	in     []byte // a copy: fn may change the slice it gets
	out    redisUpdateResult
}

type redisUpdateResult struct {
	next  []byte
	ttl   time.Duration
	write bool
}

func (m *redisUpdateMemo) call(cur []byte) (redisUpdateResult, error) {
	if m.called && (cur == nil) == (m.in == nil) && bytes.Equal(cur, m.in) {
		return m.out, nil
	}
	in := bytes.Clone(cur)
	next, ttl, write, err := m.fn(cur)
	if err != nil {
		return redisUpdateResult{}, err
	}
	m.called, m.in, m.out = true, in, redisUpdateResult{next, ttl, write}
	return m.out, nil
}

// redisFnError carries the UpdateFunc's own error out of a transaction,
// unwrapped: it is not a Redis failure.
type redisFnError struct{ err error }

func (e redisFnError) Error() string { return e.err.Error() }

// redisTxBackoff waits before transaction attempt+1: a random time up to 1ms,
// doubling with each attempt up to 32ms, so that clients that collided
// spread out.
func redisTxBackoff(ctx context.Context, attempt int) error {
	d := rand.N(time.Millisecond << min(attempt-1, 5))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Get implements Store.
func (r *Redis) Get(ctx context.Context, key string) ([]byte, error) {
	return r.get(ctx, r.prefix+key)
}

func (r *Redis) get(ctx context.Context, rk string) ([]byte, error) {
	v, err := r.client.Get(ctx, rk).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case err != nil:
		return nil, r.fail("GET", rk, err)
	}
	return v, nil
}

// getMany reads the records under keys (nil for those absent) in one
// round trip: MGET.
func (r *Redis) getMany(ctx context.Context, keys []string) ([][]byte, error) {
	rks := make([]string, len(keys))
	for i, k := range keys {
		rks[i] = r.prefix + k
	}
	vs, err := r.client.MGet(ctx, rks...).Result()
	if err != nil {
		return nil, r.fail("MGET", strings.Join(rks, " "), err)
	}
	out := make([][]byte, len(keys))
	for i, v := range vs {
		if s, ok := v.(string); ok {
			out[i] = []byte(s)
		}
	}
	return out, nil
}

// Delete implements Store.
func (r *Redis) Delete(ctx context.Context, key string) error {
	rk := r.prefix + key
	if err := r.client.Del(ctx, rk).Err(); err != nil {
		return r.fail("DEL", rk, err)
	}
	return nil
}

// redisScanCount is the COUNT hint of each SCAN.
const redisScanCount = 256

// Scan implements Store with SCAN ... MATCH prefix* (never KEYS, which
// blocks Redis) and an MGET per batch. A key that SCAN returns twice (it
// may, while Redis resizes its table) is reported once; a record that
// expires between SCAN and MGET is left out.
func (r *Redis) Scan(ctx context.Context, prefix string, fn func(key string, value []byte) bool) error {
	match := redisGlobEscape(r.prefix+prefix) + "*"
	seen := make(map[string]struct{})
	var cursor uint64
	for {
		keys, next, err := r.client.Scan(ctx, cursor, match, redisScanCount).Result()
		if err != nil {
			return r.fail("SCAN", match, err)
		}
		fresh := keys[:0]
		for _, k := range keys {
			if _, dup := seen[k]; !dup && strings.HasPrefix(k, r.prefix+prefix) {
				seen[k] = struct{}{}
				fresh = append(fresh, k)
			}
		}
		if len(fresh) > 0 {
			vals, err := r.client.MGet(ctx, fresh...).Result()
			if err != nil {
				return r.fail("MGET", match, err)
			}
			for i, v := range vals {
				s, ok := v.(string)
				if !ok { // expired or deleted since SCAN
					continue
				}
				if !fn(strings.TrimPrefix(fresh[i], r.prefix), []byte(s)) {
					return nil
				}
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// redisGlobEscape quotes the characters that Redis's MATCH patterns treat
// specially.
func redisGlobEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Ping checks that Redis answers, for health checks.
func (r *Redis) Ping(ctx context.Context) error {
	if err := r.client.Ping(ctx).Err(); err != nil {
		return r.fail("PING", "", err)
	}
	return nil
}

// Close closes the client and its connections; the Redis data stays.
func (r *Redis) Close() error {
	return r.client.Close()
}

// fail wraps a Redis failure as ErrUnavailable, saying what failed.
func (r *Redis) fail(op, key string, err error) error {
	if key != "" {
		op = fmt.Sprintf("%s %q", op, key)
	}
	return &redisError{addr: r.addr, op: op, err: err}
}

// redisError is a failed Redis command. It is ErrUnavailable and also
// the underlying error (errors.Is/As reach both).
type redisError struct {
	addr, op string
	err      error
}

func (e *redisError) Error() string {
	return "greylist: redis " + e.addr + ": " + e.op + ": " + e.err.Error()
}

func (e *redisError) Unwrap() []error { return []error{ErrUnavailable, e.err} }

var _ Store = (*Redis)(nil)
