package proxy

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"moat/audit"
	"moat/config"
	"moat/internal/redistest"
	"moat/metrics"
)

// quietRedis silences go-redis's own logging (failed dials, to stderr).
var quietRedis sync.Once

type discardRedisLog struct{}

func (discardRedisLog) Printf(context.Context, string, ...any) {}

// rateRedisClient is set up as a gateway's should be: every call bounded
// by its context, no retries, so that a dead Redis fails fast.
func rateRedisClient(t *testing.T, addr string) *redis.Client {
	t.Helper()
	quietRedis.Do(func() { redis.SetLogger(discardRedisLog{}) })
	c := redis.NewClient(&redis.Options{
		Addr: addr, DialTimeout: rateRedisTimeout, ReadTimeout: rateRedisTimeout,
		WriteTimeout: rateRedisTimeout, PoolTimeout: rateRedisTimeout,
		DialerRetries: 1, MaxRetries: -1, ContextTimeoutEnabled: true, DisableIdentity: true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// TestMailRatesShared: two gateways on one Redis enforce the rates
// together; buckets expire in Redis; a dead Redis falls back to memory
// with one smtp.redis_error event.
func TestMailRatesShared(t *testing.T) {
	srv := redistest.StartServer(t)
	if srv == nil {
		return
	}
	rdb := rateRedisClient(t, srv.Addr())
	ctx := context.Background()
	clk := newFakeClock()
	core, logs := observer.New(zapcore.DebugLevel)
	a := newMailLimiter(clk.now, audit.NewZap(zap.New(core)))
	b := newMailLimiter(clk.now, audit.Discard())
	lim := &config.Limits{MessagesPerNetwork: "2/1m", RecipientsPerNetwork: "1/1h", MessagesPerSender: "1/1h"}

	a.countMessage(ctx, rdb, ip("192.0.2.1"), "", lim)
	if r, _ := b.checkMail(ctx, rdb, ip("192.0.2.2"), "", lim); r != nil {
		t.Fatalf("one message of two: %v", r)
	}
	b.countMessage(ctx, rdb, ip("192.0.2.2"), "Bulk@Example.test", lim)
	if r, why := a.checkMail(ctx, rdb, ip("192.0.2.3"), "", lim); r != replyMessageRate || why != "rate_limit: messages_per_network" {
		t.Errorf("third message on the other gateway: %v %q", r, why)
	}
	if r, why := a.checkMail(ctx, rdb, ip("198.51.100.1"), "bulk@example.test", lim); r != replySenderRate || why != "rate_limit: messages_per_sender" {
		t.Errorf("sender on the other gateway: %v %q", r, why)
	}
	a.countRcpt(ctx, rdb, ip("2001:db8::1"), lim)
	if r := b.checkRcpt(ctx, rdb, ip("2001:db8::ffff"), lim); r != replyRecipientRate {
		t.Errorf("recipient: %v", r)
	}
	if a.messages.size()+b.messages.size()+a.senders.size() != 0 {
		t.Error("memory used while Redis answers")
	}
	// A bucket lives one period after it was last counted.
	ttl, err := rdb.PTTL(ctx, rateRedisPrefix+"messages_per_network:{192.0.2.0%2F24}").Result()
	if err != nil || ttl <= 0 || ttl > time.Minute {
		t.Errorf("PTTL %v %v", ttl, err)
	}
	// Half a period later (gateway time) one message is back.
	clk.add(30 * time.Second)
	if r, _ := b.checkMail(ctx, rdb, ip("192.0.2.9"), "", lim); r != nil {
		t.Errorf("after refill: %v", r)
	}

	srv.Stop()
	for range 2 {
		a.countMessage(ctx, rdb, ip("203.0.113.1"), "", lim)
	}
	if r, _ := a.checkMail(ctx, rdb, ip("203.0.113.1"), "", lim); r != replyMessageRate {
		t.Errorf("memory fallback: %v", r)
	}
	if n := len(logs.FilterMessage("smtp.redis_error").All()); n != 1 {
		t.Errorf("%d smtp.redis_error events, want 1 (rate-limited)", n)
	}
}

// TestMailRatesReserved: two gateways on one Redis, 40 MAILs at once from
// one sender whose rate is 10: exactly 10 get their tokens (a check now
// and a count later would let all 40 through); transactions that end
// without a message give them back. A one-recipient message costs one
// round trip to Redis, at MAIL, when every rate is on.
func TestMailRatesReserved(t *testing.T) {
	srv := redistest.StartServer(t)
	if srv == nil {
		return
	}
	rdb := rateRedisClient(t, srv.Addr())
	rdb.AddHook(metrics.RedisHook("rate-test"))
	trips := metrics.RedisRoundTrips.WithLabelValues("rate-test")
	ctx := context.Background()
	clk := newFakeClock()
	gws := []*mailLimiter{newMailLimiter(clk.now, audit.Discard()), newMailLimiter(clk.now, audit.Discard())}
	lim := &config.Limits{MessagesPerNetwork: "1000/1h", RecipientsPerNetwork: "1000/1h", MessagesPerSender: "10/1h"}

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		held []*reservation
	)
	for i := range 40 {
		wg.Go(func() {
			l := gws[i%2]
			res, r, why := l.reserveMail(ctx, rdb, ip("192.0.2.1"), "Bulk@example.test", lim)
			if r != nil {
				if why != "rate_limit: messages_per_sender" {
					t.Errorf("refusal %v %q", r, why)
				}
				return
			}
			mu.Lock()
			held = append(held, res)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(held) != 10 {
		t.Fatalf("%d of 40 concurrent MAILs got tokens, want exactly 10", len(held))
	}
	// Five transactions end without a message (RSET, greylisted, ...):
	// their tokens go back, the others' messages were accepted.
	for i, res := range held {
		gws[i%2].release(ctx, rdb, res, i >= 5, lim)
	}
	for i := range 6 {
		r, _ := gws[i%2].checkMail(ctx, rdb, ip("192.0.2.1"), "bulk@example.test", lim)
		if want := i < 5; (r == nil) != want {
			t.Errorf("MAIL %d after the releases: %v", i, r)
		}
		if r == nil {
			gws[i%2].countMessage(ctx, rdb, ip("192.0.2.1"), "bulk@example.test", lim)
		}
	}

	// The round trips of one accepted one-recipient message.
	l := gws[0]
	before := testutil.ToFloat64(trips)
	res, r, _ := l.reserveMail(ctx, rdb, ip("198.51.100.7"), "one@example.test", lim)
	if r != nil {
		t.Fatal(r)
	}
	if r := l.takeRcpt(ctx, rdb, res, lim); r != nil {
		t.Fatal(r)
	}
	l.rcptDone(ctx, rdb, res, true, lim)
	l.release(ctx, rdb, res, true, lim)
	if got := testutil.ToFloat64(trips) - before; got != 1 {
		t.Errorf("one message, one recipient: %v round trips to Redis, want 1", got)
	}
	// A refused recipient's token serves the next RCPT; the spare goes
	// back at the end (one more round trip, off the accepted path).
	before = testutil.ToFloat64(trips)
	res, _, _ = l.reserveMail(ctx, rdb, ip("198.51.100.7"), "one@example.test", lim)
	_ = l.takeRcpt(ctx, rdb, res, lim)
	l.rcptDone(ctx, rdb, res, false, lim)
	_ = l.takeRcpt(ctx, rdb, res, lim)
	l.rcptDone(ctx, rdb, res, false, lim)
	l.release(ctx, rdb, res, false, lim)
	if got := testutil.ToFloat64(trips) - before; got != 2 {
		t.Errorf("two refused recipients, no message: %v round trips, want 2 (MAIL, release)", got)
	}
	tokens, err := rdb.HGet(ctx, rateRedisPrefix+"recipients_per_network:{198.51.100.0%2F24}", "t").Float64()
	if err != nil || tokens < 998.9 || tokens > 999.1 {
		t.Errorf("recipient tokens left %v %v, want 999 (one accepted recipient)", tokens, err)
	}
}
