package proxy

import (
	"context"
	"fmt"
	"net/url"
	"strings"
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
// expiring one period after it was last taken from, when it is full again
// and forgetting it changes nothing: Redis needs no sweep. <key> (a
// network or a lower-cased sender) is percent-escaped (url.PathEscape).
// Taking the tokens of one MAIL (the message buckets and a recipient
// token) is one EVALSHA of rateScript over all of them, so it is atomic
// and one round trip; giving unused tokens back is another, only when
// there are some. The script touches several keys: it needs one Redis
// server (with replicas if wanted), not Redis Cluster. The time is the
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

// rateScript takes (ARGV[1] "take") or gives back (ARGV[1] "give") one
// token of each token bucket in KEYS at ARGV[2] (Unix ms). Bucket i's rate
// is ARGV[3i] per ARGV[3i+1] ms; ARGV[3i+2] is "r" when its token is
// required, "o" when optional. A missing bucket is full.
//
// take: when a required bucket is empty it takes nothing and returns
// {0, i}; else it takes from every required bucket and from each
// optional one that has a token, and returns {1, 1} when an optional
// token was taken, {1, 0} when not. give: adds a token to each bucket
// that exists, up to its rate, and returns {1, 0}.
var rateScript = redis.NewScript(`
local op, now = ARGV[1], tonumber(ARGV[2])
local b = {}
for i = 1, #KEYS do
	local count, per = tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
	local v = redis.call('HMGET', KEYS[i], 't', 'l')
	local t, l = tonumber(v[1]), tonumber(v[2])
	local absent = (t == nil or l == nil)
	if absent then t, l = count, now end
	if now > l then
		t = math.min(count, t + count * (now - l) / per)
		l = now
	end
	b[i] = {t, l, count, per, ARGV[3*i+2] == 'r', absent}
end
local function put(k, x, t)
	redis.call('HSET', k, 't', string.format('%.17g', t), 'l', string.format('%d', x[2]))
end
if op == 'give' then
	for i = 1, #KEYS do
		local x = b[i]
		if not x[6] then put(KEYS[i], x, math.min(x[3], x[1] + 1)) end
	end
	return {1, 0}
end
for i = 1, #KEYS do
	if b[i][5] and b[i][1] < 1 then return {0, i} end
end
local opt = 0
for i = 1, #KEYS do
	local x = b[i]
	if x[5] or x[1] >= 1 then
		if not x[5] then opt = 1 end
		put(KEYS[i], x, x[1] - 1)
		redis.call('PEXPIRE', KEYS[i], x[4])
	end
end
return {1, opt}
`)

// sharedBucketRef names one shared bucket: the limit (its config key),
// the key it counts by, its rate, and whether a take needs its token.
type sharedBucketRef struct {
	limit    string
	key      string
	rate     rate
	required bool
}

// takeShared takes a token of each bucket (see rateScript): failed is the
// index of the required bucket that had none (and nothing was taken), or
// -1; optTaken reports whether an optional bucket's token was taken.
func takeShared(ctx context.Context, rdb redis.UniversalClient, bs []sharedBucketRef, now time.Time) (failed int, optTaken bool, err error) {
	res, err := runRateScript(ctx, rdb, "take", bs, now)
	if err != nil {
		return -1, false, err
	}
	if res[0] == 0 {
		if i := int(res[1]) - 1; i >= 0 && i < len(bs) {
			return i, false, nil
		}
		return -1, false, fmt.Errorf("redis rate script: bucket %d out of range", res[1])
	}
	return -1, res[1] == 1, nil
}

// giveShared gives a token back to each bucket.
func giveShared(ctx context.Context, rdb redis.UniversalClient, bs []sharedBucketRef, now time.Time) error {
	if len(bs) == 0 {
		return nil
	}
	_, err := runRateScript(ctx, rdb, "give", bs, now)
	return err
}

func runRateScript(ctx context.Context, rdb redis.UniversalClient, op string, bs []sharedBucketRef, now time.Time) ([]int64, error) {
	keys := make([]string, len(bs))
	args := make([]any, 0, 2+3*len(bs))
	args = append(args, op, now.UnixMilli())
	for i, b := range bs {
		keys[i] = rateRedisPrefix + b.limit + ":{" + url.PathEscape(b.key) + "}"
		need := "o"
		if b.required {
			need = "r"
		}
		args = append(args, b.rate.Count, max(b.rate.Per.Milliseconds(), 1), need)
	}
	ctx, cancel := context.WithTimeout(ctx, rateRedisTimeout)
	defer cancel()
	res, err := rateScript.Run(ctx, rdb, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("redis rate buckets %s: %w", strings.Join(keys, " "), err)
	}
	if len(res) != 2 {
		return nil, fmt.Errorf("redis rate buckets %s: script answered %v", strings.Join(keys, " "), res)
	}
	return res, nil
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
