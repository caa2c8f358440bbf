package greylist

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"moat/internal/redistest"
)

// openRedis opens a Redis store on addr, closed at t's cleanup.
func openRedis(t testing.TB, addr string, opts ...RedisOption) *Redis {
	t.Helper()
	r, err := NewRedis(addr, opts...)
	if err != nil {
		t.Fatalf("NewRedis(%q): %v", addr, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// rawRedis is a plain go-redis client, to look at what the store wrote.
func rawRedis(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// redisIncr is an UpdateFunc that counts in decimal.
func redisIncr(cur []byte) ([]byte, time.Duration, bool, error) {
	n := 0
	if cur != nil {
		var err error
		if n, err = strconv.Atoi(string(cur)); err != nil {
			return nil, 0, false, err
		}
	}
	return []byte(strconv.Itoa(n + 1)), time.Minute, true, nil
}

// set returns an UpdateFunc that writes v.
func redisSet(v string, ttl time.Duration) UpdateFunc {
	return func([]byte) ([]byte, time.Duration, bool, error) { return []byte(v), ttl, true, nil }
}

func redisMustGet(t *testing.T, s Store, key string) []byte {
	t.Helper()
	v, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return v
}

func redisMustUpdate(t *testing.T, s Store, key string, fn UpdateFunc) {
	t.Helper()
	if err := s.Update(context.Background(), key, fn); err != nil {
		t.Fatalf("Update(%q): %v", key, err)
	}
}

// TestRedisStore runs the Store conformance suite against a real
// redis-server, a new one for each subtest.
func TestRedisStore(t *testing.T) {
	testStore(t, func(t *testing.T) Store {
		addr := redistest.Start(t)
		r, err := NewRedis(addr)
		if err != nil {
			t.Fatal(err)
		}
		return redisClock{Redis: r, raw: rawRedis(t, addr)}
	})
}

// redisClock gives testStore's expiry tests a clock to move on a real
// Redis, whose own clock cannot be moved: Advance(d) takes d off the
// remaining time to live of every key that has one (PEXPIRE; a key whose
// time is over is deleted), which is what the store sees of time passing.
// That Redis really expires keys by itself is TestRedisTTL's business.
type redisClock struct {
	*Redis
	raw *redis.Client
}

func (c redisClock) Advance(d time.Duration) {
	ctx := context.Background()
	it := c.raw.Scan(ctx, 0, redisGlobEscape(c.prefix)+"*", 256).Iterator()
	for it.Next(ctx) {
		k := it.Val()
		pttl, err := c.raw.PTTL(ctx, k).Result()
		if err != nil {
			panic(fmt.Sprintf("redisClock: PTTL %s: %v", k, err))
		}
		switch {
		case pttl < 0: // no expiry (-1), or gone meanwhile (-2)
		case pttl <= d:
			err = c.raw.Del(ctx, k).Err()
		default:
			err = c.raw.PExpire(ctx, k, pttl-d).Err()
		}
		if err != nil {
			panic(fmt.Sprintf("redisClock: advance %s: %v", k, err))
		}
	}
	if err := it.Err(); err != nil {
		panic(fmt.Sprintf("redisClock: SCAN: %v", err))
	}
}

// What the suite does not cover: empty records, Ping, the raw keys.
func TestRedisBasics(t *testing.T) {
	addr := redistest.Start(t)
	s := openRedis(t, addr)
	ctx := context.Background()

	// An empty value is a record, not an absent one.
	redisMustUpdate(t, s, "empty", redisSet("", time.Minute))
	if v := redisMustGet(t, s, "empty"); v == nil || len(v) != 0 {
		t.Errorf("Get of an empty record = %#v, want []byte{}", v)
	}
	var got []byte
	redisMustUpdate(t, s, "empty", func(cur []byte) ([]byte, time.Duration, bool, error) {
		got = cur
		return nil, 0, false, nil
	})
	if got == nil {
		t.Error("fn got nil for an empty record")
	}

	// A read-only Update is one GET: no WATCH, no transaction.
	raw := rawRedis(t, addr)
	before, err := raw.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	redisMustUpdate(t, s, "empty", func([]byte) ([]byte, time.Duration, bool, error) { return nil, 0, false, nil })
	after, err := raw.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"get", "watch", "exec"} {
		want := redisCalls(before, cmd)
		if cmd == "get" {
			want++
		}
		if n := redisCalls(after, cmd); n != want {
			t.Errorf("%s calls: %d after a read-only Update, want %d", cmd, n, want)
		}
	}

	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

// redisCalls reads a command's call count from INFO commandstats.
func redisCalls(info, cmd string) int {
	for line := range strings.Lines(info) {
		rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		return n
	}
	return 0
}

func TestRedisKeyPrefix(t *testing.T) {
	addr := redistest.Start(t)
	raw := rawRedis(t, addr)
	ctx := context.Background()

	def := openRedis(t, addr)
	redisMustUpdate(t, def, "k", redisSet("v", time.Minute))
	if v, err := raw.Get(ctx, DefaultRedisKeyPrefix+"k").Result(); err != nil || v != "v" {
		t.Errorf("raw GET %sk = %q, %v; want v", DefaultRedisKeyPrefix, v, err)
	}

	other := openRedis(t, addr, WithRedisKeyPrefix("other:"))
	if v := redisMustGet(t, other, "k"); v != nil {
		t.Errorf("a store with another prefix sees %q", v)
	}
	redisMustUpdate(t, other, "k", redisSet("w", time.Minute))
	if v := redisMustGet(t, def, "k"); string(v) != "v" {
		t.Errorf("default prefix store: %q, want v", v)
	}
	n := 0
	if err := other.Scan(ctx, "", func(string, []byte) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("Scan with prefix other: found %d records, want 1", n)
	}
}

// Glob characters in Scan's prefix, and in the key prefix, are literal.
func TestRedisScanGlob(t *testing.T) {
	ctx := context.Background()
	addr := redistest.Start(t)
	s := openRedis(t, addr)
	// Glob characters in keys and prefixes are literal.
	for _, k := range []string{"g*x", "g?y", "g[ab]", `g\z`, "gab"} {
		redisMustUpdate(t, s, k, redisSet(k, time.Minute))
	}

	for prefix, want := range map[string][]string{
		"g*":   {"g*x"},
		"g?":   {"g?y"},
		"g[":   {"g[ab]"},
		`g\`:   {`g\z`},
		"ga":   {"gab"},
		"g[ab": {"g[ab]"},
	} {
		var keys []string
		if err := s.Scan(ctx, prefix, func(k string, _ []byte) bool { keys = append(keys, k); return true }); err != nil {
			t.Fatal(err)
		}
		if strings.Join(keys, ",") != strings.Join(want, ",") {
			t.Errorf("Scan(%q) = %q, want %q", prefix, keys, want)
		}
	}

	// A key prefix with glob characters matches only itself: "p?:" must
	// not see the keys of "px:".
	globby := openRedis(t, addr, WithRedisKeyPrefix("p?:"))
	plain := openRedis(t, addr, WithRedisKeyPrefix("px:"))
	redisMustUpdate(t, plain, "k", redisSet("plain", time.Minute))
	redisMustUpdate(t, globby, "k", redisSet("globby", time.Minute))
	var vals []string
	if err := globby.Scan(ctx, "", func(_ string, v []byte) bool { vals = append(vals, string(v)); return true }); err != nil {
		t.Fatal(err)
	}
	if len(vals) != 1 || vals[0] != "globby" {
		t.Errorf("Scan of the store with prefix p?: = %q, want [globby]", vals)
	}
}

// Redis itself expires records: PX is set, and the key is gone from Redis
// (not only hidden by the store) once the ttl is over.
func TestRedisTTL(t *testing.T) {
	addr := redistest.Start(t)
	s := openRedis(t, addr)
	raw := rawRedis(t, addr)
	ctx := context.Background()
	rk := DefaultRedisKeyPrefix + "short"

	start := time.Now()
	redisMustUpdate(t, s, "short", redisSet("v", 100*time.Millisecond))
	pttl, err := raw.PTTL(ctx, rk).Result()
	if err != nil {
		t.Fatal(err)
	}
	if pttl <= 0 || pttl > 100*time.Millisecond {
		t.Errorf("PTTL after Update with ttl 100ms = %v", pttl)
	}
	redisMustUpdate(t, s, "long", redisSet("v", time.Hour))
	if pttl, _ := raw.PTTL(ctx, DefaultRedisKeyPrefix+"long").Result(); pttl <= 59*time.Minute || pttl > time.Hour {
		t.Errorf("PTTL after Update with ttl 1h = %v", pttl)
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := raw.Exists(ctx, rk).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still in Redis %v after an Update with ttl 100ms", rk, time.Since(start))
		}
		time.Sleep(10 * time.Millisecond) // polling Redis: no event to wait on
	}
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Errorf("record gone after %v, before its ttl of 100ms", el)
	}
	if v := redisMustGet(t, s, "short"); v != nil {
		t.Errorf("Get after expiry = %q", v)
	}
	// A ttl <= 0 means no expiry, as in the other stores.
	redisMustUpdate(t, s, "long", redisSet("x", 0))
	if pttl, err := raw.PTTL(ctx, DefaultRedisKeyPrefix+"long").Result(); err != nil || pttl != -1 {
		t.Errorf("PTTL after Update with ttl 0 = %v, %v; want -1 (no expiry)", pttl, err)
	}
	// The core's "forever" (100 years) is a valid expiry too.
	redisMustUpdate(t, s, "forever", redisSet("v", 100*365*24*time.Hour))
	if pttl, _ := raw.PTTL(ctx, DefaultRedisKeyPrefix+"forever").Result(); pttl < 99*365*24*time.Hour {
		t.Errorf("PTTL after Update with ttl 100 years = %v", pttl)
	}
	// An Update renews the ttl.
	redisMustUpdate(t, s, "long", redisSet("w", time.Minute))
	if pttl, _ := raw.PTTL(ctx, DefaultRedisKeyPrefix+"long").Result(); pttl <= 59*time.Second || pttl > time.Minute {
		t.Errorf("PTTL after an Update with ttl 1m = %v", pttl)
	}
}

// Two gateways share one Redis: 2 × 50 concurrent increments of one key
// lose none.
func TestRedisTwoGateways(t *testing.T) {
	addr := redistest.Start(t)
	a, b := openRedis(t, addr), openRedis(t, addr)
	const perGateway = 50
	var wg sync.WaitGroup
	var calls, most atomic.Int64 // fn calls in all, and in one Update
	errs := make(chan error, 2*perGateway)
	for _, s := range []*Redis{a, b} {
		for range perGateway {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mine := int64(0)
				errs <- s.Update(context.Background(), "counter", func(cur []byte) ([]byte, time.Duration, bool, error) {
					calls.Add(1)
					mine++
					return redisIncr(cur)
				})
				for {
					m := most.Load()
					if mine <= m || most.CompareAndSwap(m, mine) {
						break
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Update: %v", err)
		}
	}
	if v := redisMustGet(t, a, "counter"); string(v) != strconv.Itoa(2*perGateway) {
		t.Errorf("counter = %q after %d increments from two gateways", v, 2*perGateway)
	}
	t.Logf("%d fn calls for %d increments, at most %d in one Update (the limit is %d transactions)",
		calls.Load(), 2*perGateway, most.Load(), DefaultRedisTxAttempts)
}

// A key that keeps changing under the transaction makes Update give up
// after WithRedisTxAttempts attempts, as unavailable.
func TestRedisTxAttempts(t *testing.T) {
	addr := redistest.Start(t)
	s := openRedis(t, addr, WithRedisTxAttempts(3))
	other := openRedis(t, addr)
	ctx := context.Background()
	calls := 0
	err := s.Update(ctx, "hot", func(cur []byte) ([]byte, time.Duration, bool, error) {
		calls++
		// Another gateway writes between this transaction's WATCH and
		// EXEC (a side effect no real fn has).
		if err := other.Update(ctx, "hot", redisIncr); err != nil {
			t.Error(err)
		}
		return []byte("mine"), time.Minute, true, nil
	})
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, redis.TxFailedErr) {
		t.Fatalf("Update of a key that keeps changing = %v, want ErrUnavailable and TxFailedErr", err)
	}
	if !strings.Contains(err.Error(), "3 transactions failed") {
		t.Errorf("error %q does not say how many transactions failed", err)
	}
	// One plain read, then one call per transaction.
	if calls != 1+3 {
		t.Errorf("fn ran %d times, want 4", calls)
	}
	if v := redisMustGet(t, s, "hot"); string(v) != "4" {
		t.Errorf("record = %q, want the other gateway's 4", v)
	}

	// fn failing on the value it reads inside the transaction: its error
	// comes back as it is, and nothing is written.
	errBoom := errors.New("boom")
	calls = 0
	err = s.Update(ctx, "hot", func(cur []byte) ([]byte, time.Duration, bool, error) {
		calls++
		if calls > 1 {
			return nil, 0, false, errBoom
		}
		if err := other.Update(ctx, "hot", redisIncr); err != nil {
			t.Error(err)
		}
		return []byte("mine"), time.Minute, true, nil
	})
	if err != errBoom {
		t.Errorf("Update with fn failing in the transaction = %v, want %v", err, errBoom)
	}
	if v := redisMustGet(t, s, "hot"); string(v) != "5" {
		t.Errorf("record = %q, want the other gateway's 5", v)
	}
}

// A stopped Redis makes every call fail quickly with ErrUnavailable; once
// it is back, the same store works again.
func TestRedisDownAndBack(t *testing.T) {
	srv := redistest.StartServer(t)
	addr := srv.Addr()
	const timeout = 300 * time.Millisecond
	s := openRedis(t, addr, WithRedisTimeout(timeout))
	ctx := context.Background()
	redisMustUpdate(t, s, "k", redisSet("v", time.Minute))

	srv.Stop()
	start := time.Now()
	err := s.Update(ctx, "k", redisIncr)
	if el := time.Since(start); el > timeout {
		t.Errorf("Update with Redis down took %v, more than the timeout %v", el, timeout)
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Update with Redis down = %v, want ErrUnavailable", err)
	}
	wantPrefix := fmt.Sprintf("greylist: redis %s: GET %q: ", addr, DefaultRedisKeyPrefix+"k")
	if !strings.HasPrefix(err.Error(), wantPrefix) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q, want %q...connection refused", err, wantPrefix)
	}
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Errorf("error %q does not carry the *net.OpError", err)
	}

	checks := map[string]func() error{
		"Get":    func() error { _, err := s.Get(ctx, "k"); return err },
		"Delete": func() error { return s.Delete(ctx, "k") },
		"Scan":   func() error { return s.Scan(ctx, "", func(string, []byte) bool { return true }) },
		"Ping":   func() error { return s.Ping(ctx) },
	}
	for name, f := range checks {
		start := time.Now()
		err := f()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s with Redis down = %v, want ErrUnavailable", name, err)
		}
		if el := time.Since(start); el > timeout {
			t.Errorf("%s with Redis down took %v", name, el)
		}
	}

	// Enough failures to exhaust go-redis's dial error budget (one per
	// pool connection): from then on it fails without dialling and a
	// background probe redials about once a second.
	for range 50 {
		if _, err := s.Get(ctx, "k"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Get with Redis down = %v, want ErrUnavailable", err)
		}
	}

	srv.Restart()
	// go-redis probes a dead server about once a second after its dials
	// failed, so the store may need a moment to notice.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.Update(ctx, "k", redisIncr)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Update after Restart = %v, want nil or ErrUnavailable", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("store still failing 10s after Redis came back: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // waiting for go-redis's own redial
	}
	t.Logf("store usable again %v after Restart", time.Since(deadline.Add(-10*time.Second)))
	// The restarted Redis is empty (no persistence): the increment started
	// from nothing.
	if v := redisMustGet(t, s, "k"); string(v) != "1" {
		t.Errorf("record after Restart = %q, want 1", v)
	}
	for name, f := range checks {
		if err := f(); err != nil {
			t.Errorf("%s after Restart: %v", name, err)
		}
	}
}

// A hung Redis (connections accepted, nothing answered) costs about one
// timeout, and a context deadline cuts it shorter.
func TestRedisHung(t *testing.T) {
	srv := redistest.StartServer(t)
	const timeout = 200 * time.Millisecond
	s := openRedis(t, srv.Addr(), WithRedisTimeout(timeout))
	ctx := context.Background()
	redisMustUpdate(t, s, "k", redisSet("v", time.Minute))

	srv.Pause()
	start := time.Now()
	err := s.Update(ctx, "k", redisIncr)
	el := time.Since(start)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Update with Redis hung = %v, want ErrUnavailable", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Update with Redis hung = %v, want a timeout", err)
	}
	if el < timeout/2 || el > timeout+300*time.Millisecond {
		t.Errorf("Update with Redis hung took %v, want about %v", el, timeout)
	}

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = s.Get(short, "k")
	if el := time.Since(start); el > timeout {
		t.Errorf("Get with a 50ms context deadline took %v", el)
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Get with Redis hung = %v, want ErrUnavailable", err)
	}

	srv.Resume()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := s.Get(ctx, "k")
		if err == nil {
			if string(v) != "v" {
				t.Errorf("record after Resume = %q, want v", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store still failing 5s after Redis resumed: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling for recovery
	}
}

func TestRedisClosed(t *testing.T) {
	s := openRedis(t, redistest.Start(t))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(context.Background(), "k"); !errors.Is(err, ErrUnavailable) || !errors.Is(err, redis.ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrUnavailable wrapping redis.ErrClosed", err)
	}
}

func TestNewRedisOptions(t *testing.T) {
	for name, c := range map[string]struct {
		addr string
		opts []RedisOption
		want string
	}{
		"no address":   {"", nil, "no address"},
		"zero timeout": {"127.0.0.1:6379", []RedisOption{WithRedisTimeout(0)}, "timeout 0s"},
		"no attempts":  {"127.0.0.1:6379", []RedisOption{WithRedisTxAttempts(0)}, "0 transaction attempts"},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := NewRedis(c.addr, c.opts...)
			if err == nil {
				r.Close()
				t.Fatalf("NewRedis succeeded, want an error with %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("NewRedis: %v, want %q", err, c.want)
			}
		})
	}
	// NewRedis does not connect: nothing listens here.
	r, err := NewRedis("127.0.0.1:1", WithRedisClientOptions(func(o *redis.Options) { o.DB = 1 }))
	if err != nil {
		t.Fatalf("NewRedis to a closed port: %v", err)
	}
	defer r.Close()
	if err := r.Ping(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ping of a closed port = %v, want ErrUnavailable", err)
	}
}

// BenchmarkRedisUpdate measures Update against a local redis-server: the
// read path (a known record, fn writes nothing: one GET) and the write
// path (GET, then WATCH/GET/MULTI/SET/EXEC).
func BenchmarkRedisUpdate(b *testing.B) {
	s := openRedis(b, redistest.Start(b))
	ctx := context.Background()
	known := func(cur []byte) ([]byte, time.Duration, bool, error) {
		if cur == nil {
			return nil, 0, false, errors.New("record missing")
		}
		return nil, 0, false, nil
	}
	if err := s.Update(ctx, "known", redisSet("v", time.Hour)); err != nil {
		b.Fatal(err)
	}
	b.Run("read", func(b *testing.B) {
		for b.Loop() {
			if err := s.Update(ctx, "known", known); err != nil {
				b.Fatal(err)
			}
		}
		redisReportOps(b)
	})
	b.Run("write", func(b *testing.B) {
		for b.Loop() {
			if err := s.Update(ctx, "w", redisIncr); err != nil {
				b.Fatal(err)
			}
		}
		redisReportOps(b)
	})
	b.Run("read-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := s.Update(ctx, "known", known); err != nil {
					b.Error(err)
					return
				}
			}
		})
		redisReportOps(b)
	})
	var id atomic.Int64
	b.Run("write-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			key := fmt.Sprintf("w%d", id.Add(1)) // one key per goroutine: no conflicts
			for pb.Next() {
				if err := s.Update(ctx, key, redisIncr); err != nil {
					b.Error(err)
					return
				}
			}
		})
		redisReportOps(b)
	})
}

func redisReportOps(b *testing.B) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, "ops/s")
	}
}

// tripCounter counts a go-redis client's round trips (as
// metrics.RedisHook does): a command, or a pipeline/MULTI block.
type tripCounter struct{ n atomic.Int64 }

func (c *tripCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *tripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *tripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(1); return next(ctx, cmds) }
}

// TestRedisCheckRoundTrips: a known triplet (the common case) costs one
// round trip to Redis, one MGET of the allow list, the triplet and the
// network; and two gateways seeing new triplets at the same moment record
// each once (one new, one early), then pass each at either gateway.
func TestRedisCheckRoundTrips(t *testing.T) {
	addr := redistest.Start(t)
	trips := &tripCounter{}
	clock := newFakeClock()
	a := &Greylister{Store: openRedis(t, addr, WithRedisHook(trips)), Params: DefaultParams(), Now: clock.Now}
	b := &Greylister{Store: openRedis(t, addr), Params: DefaultParams(), Now: clock.Now}
	ctx := context.Background()

	const n = 40
	// One network each, so that none is auto-allowed.
	client := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i), 0, 1}) }
	verdicts := make([][2]Verdict, n)
	var wg sync.WaitGroup
	for i := range n {
		for j, g := range []*Greylister{a, b} {
			wg.Go(func() {
				res, err := g.Check(ctx, client(i), sender, rcpt, "")
				if err != nil {
					t.Error(err)
				}
				verdicts[i][j] = res.Verdict
			})
		}
	}
	wg.Wait()
	for i, v := range verdicts {
		if !(v == [2]Verdict{New, Early} || v == [2]Verdict{Early, New}) {
			t.Errorf("triplet %d seen at once by two gateways: %v, want one new and one early", i, v)
		}
	}
	clock.Advance(5 * time.Minute)
	for i := range n {
		for _, g := range []*Greylister{b, a} {
			res, err := g.Check(ctx, client(i), sender, rcpt, "")
			if err != nil || res.Verdict != Passed {
				t.Fatalf("triplet %d after the delay: %v %v", i, res.Verdict, err)
			}
		}
	}
	before := trips.n.Load()
	for i := range n {
		if res, err := a.Check(ctx, client(i), sender, rcpt, ""); err != nil || res.Verdict != Passed {
			t.Fatalf("known triplet %d: %v %v", i, res.Verdict, err)
		}
	}
	if got := trips.n.Load() - before; got != n {
		t.Errorf("%d checks of known triplets: %d round trips, want %d", n, got, n)
	}
}
