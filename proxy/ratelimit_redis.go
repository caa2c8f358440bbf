package proxy

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"moat/audit"
)

// Shared mail rates.
//
// With Runtime.Redis set, the buckets of smtp.limits.messages_per_network,
// recipients_per_network and messages_per_sender are kept in Redis, so
// that every moat behind one load balancer enforces them together. One
// bucket is one hash,
//
//	moat:rate:<limit>:{<key>}   t: tokens left, l: when (Unix ms) counted
//
// expiring one period after it was last counted, when it is full again
// and forgetting it changes nothing: Redis needs no sweep. <key> (a
// network or a lower-cased sender) is percent-escaped (url.PathEscape).
// Each check or count is one EVALSHA of bucketScript. The time is the
// gateway's, passed in (the injected clock of the tests; gateways are
// NTP-synchronised, and the script never moves a bucket back in time).
//
// Redis being down or slow never refuses mail: each call is bounded by
// rateRedisTimeout, and when it fails this process's memory decides that
// call, with an smtp.redis_error event at most once per rateRedisErrorEvery.

const (
	rateRedisPrefix     = "moat:rate:"
	rateRedisTimeout    = 500 * time.Millisecond
	rateRedisErrorEvery = 30 * time.Second
)

// bucketScript checks (ARGV[4] "0") or counts one (ARGV[4] "1") in the
// token bucket KEYS[1] of ARGV[1] per ARGV[2] ms, at ARGV[3] (Unix ms).
// It returns 1 when the bucket has a token left (for a count: always 1).
// A missing bucket is full.
var bucketScript = redis.NewScript(`
local count, per, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'l')
local tokens, last = tonumber(b[1]), tonumber(b[2])
if tokens == nil or last == nil then
	if ARGV[4] ~= '1' then return 1 end
	tokens, last = count, now
end
if now > last then
	tokens = math.min(count, tokens + count * (now - last) / per)
	last = now
end
if ARGV[4] ~= '1' then
	if tokens >= 1 then return 1 end
	return 0
end
tokens = math.max(tokens - 1, 0)
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'l', string.format('%d', last))
redis.call('PEXPIRE', KEYS[1], per)
return 1
`)

// sharedBucket runs bucketScript on the bucket of limit and key.
func sharedBucket(ctx context.Context, rdb redis.UniversalClient, limit, key string, r rate, now time.Time, take bool) (bool, error) {
	k := rateRedisPrefix + limit + ":{" + url.PathEscape(key) + "}"
	op := "0"
	if take {
		op = "1"
	}
	ctx, cancel := context.WithTimeout(ctx, rateRedisTimeout)
	defer cancel()
	n, err := bucketScript.Run(ctx, rdb, []string{k}, r.Count, max(r.Per.Milliseconds(), 1), now.UnixMilli(), op).Int64()
	if err != nil {
		return false, fmt.Errorf("redis rate bucket %s: %w", k, err)
	}
	return n == 1, nil
}

// rateAlarm writes the smtp.redis_error event, at most once per every.
type rateAlarm struct {
	mu         sync.Mutex
	last       time.Time // of the last event; zero: none yet
	suppressed int       // errors since then not logged
}

// raise reports err, which made a call fall back to memory, unless the
// session's own context ended (the client left: not Redis's fault).
func (a *rateAlarm) raise(ctx context.Context, log *audit.Logger, now time.Time, err error) {
	if ctx.Err() != nil {
		return
	}
	a.mu.Lock()
	if !a.last.IsZero() && now.Sub(a.last) < rateRedisErrorEvery {
		a.suppressed++
		a.mu.Unlock()
		return
	}
	n := a.suppressed
	a.last, a.suppressed = now, 0
	a.mu.Unlock()
	log.Warn("smtp.redis_error",
		zap.String("message", "shared mail rates unavailable: this gateway enforces smtp.limits rates on its own until Redis answers"),
		zap.String("error.message", err.Error()),
		zap.Int("moat.suppressed", n))
}

// keyString is the text of a rate key, for Redis.
func keyString[K comparable](k K) string {
	switch v := any(k).(type) {
	case string:
		return v
	case fmt.Stringer:
		return v.String()
	case int:
		return strconv.Itoa(v)
	}
	return fmt.Sprint(k)
}
