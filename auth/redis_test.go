package auth

import (
	"context"
	"errors"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"

	"moat/audit"
	"moat/internal/redistest"
)

// redisClient is a client set up as a gateway's should be: every call
// bounded by its context, no retries, so that a dead Redis fails fast.
func redisClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	quietRedis.Do(func() { redis.SetLogger(discardRedisLog{}) })
	c := redis.NewClient(&redis.Options{
		Addr:                     addr,
		DialTimeout:              redisTimeout,
		ReadTimeout:              redisTimeout,
		WriteTimeout:             redisTimeout,
		PoolTimeout:              redisTimeout,
		DialerRetries:            1,
		MaxRetries:               -1,
		ContextTimeoutEnabled:    true,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// quietRedis silences go-redis's own logging (failed dials, to stderr)
// in the tests, as cmd/moat routes it to the log.
var quietRedis sync.Once

type discardRedisLog struct{}

func (discardRedisLog) Printf(context.Context, string, ...any) {}

// gateways returns n Services (each with its own clock and sleeps) that
// share their failure counters through rdb, as moat processes behind one
// load balancer do.
func gateways(t *testing.T, n int, set Settings, rdb redis.UniversalClient) []*harness {
	t.Helper()
	hs := make([]*harness, n)
	for i := range hs {
		hs[i] = newHarness(t, set, nil)
		hs[i].svc.apply([]Option{WithRedis(rdb)})
	}
	return hs
}

// redisEvents returns the auth.redis_error events h wrote.
func redisEvents(h *harness) []map[string]any {
	var out []map[string]any
	for _, e := range h.logs.FilterMessage("auth.redis_error").All() {
		out = append(out, e.ContextMap())
	}
	return out
}

// waitFor polls cond every 10ms until it holds, for at most 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after 10s", what)
		}
		<-tick.C
	}
}

func TestRedisKeys(t *testing.T) {
	ips := &redisCounters{prefix: DefaultRedisPrefix + "ip:"}
	users := &redisCounters{prefix: DefaultRedisPrefix + "user:"}
	for _, tc := range []struct {
		c         *redisCounters
		key       string
		fails     string
		lock      string
		different string // a key that must not share its Redis keys
	}{
		{ips, "192.0.2.1", "moat:auth:ip:{192.0.2.1}:fails", "moat:auth:ip:{192.0.2.1}:lock", "192.0.2.10"},
		{ips, "2001:db8::/64", "moat:auth:ip:{2001:db8::%2F64}:fails", "moat:auth:ip:{2001:db8::%2F64}:lock", "2001:db8::%2F64"},
		{users, "alice@example.com", "moat:auth:user:{alice@example.com}:fails", "moat:auth:user:{alice@example.com}:lock", "alice@example.com}:lock"},
		{users, "{x}@example.com", "moat:auth:user:{%7Bx%7D@example.com}:fails", "moat:auth:user:{%7Bx%7D@example.com}:lock", "%7Bx%7D@example.com"},
		{users, "*?[]@example.com", "moat:auth:user:{%2A%3F%5B%5D@example.com}:fails", "moat:auth:user:{%2A%3F%5B%5D@example.com}:lock", "%2A%3F%5B%5D@example.com"},
		{users, "ünï@example.com", "moat:auth:user:{%C3%BCn%C3%AF@example.com}:fails", "moat:auth:user:{%C3%BCn%C3%AF@example.com}:lock", "unï@example.com"},
	} {
		fails, lock := tc.c.keys(tc.key)
		if fails != tc.fails || lock != tc.lock {
			t.Errorf("keys(%q) = %q, %q; want %q, %q", tc.key, fails, lock, tc.fails, tc.lock)
		}
		f2, l2 := tc.c.keys(tc.different)
		if f2 == fails || l2 == lock || f2 == lock || l2 == fails {
			t.Errorf("keys(%q) and keys(%q) collide: %q %q", tc.key, tc.different, f2, l2)
		}
	}
}

// TestRedisShared runs login sequences spread over two gateways that
// share one Redis.
func TestRedisShared(t *testing.T) {
	addr := redistest.Start(t)
	rdb := redisClient(t, addr)
	set := Settings{MaxFailures: 4, MaxUserFailures: 3, Window: time.Minute, Lockout: 10 * time.Minute}
	type step struct {
		gw      int // which gateway gets the login
		ip      string
		user    string
		pass    string
		want    error  // nil: success
		reason  string // the event's moat.reason
		lockout string // the event's moat.lockout, if any
	}
	bad := func(gw int, ip, user string) step {
		return step{gw: gw, ip: ip, user: user, pass: "wrong", want: ErrFailed, reason: "bad_credentials"}
	}
	good := func(gw int, ip, user string) step {
		return step{gw: gw, ip: ip, user: user, pass: secret, reason: "ok"}
	}
	locked := func(gw int, ip, user, reason string) step {
		return step{gw: gw, ip: ip, user: user, pass: secret, want: ErrLocked, reason: reason}
	}
	began := func(s step, what string) step { s.lockout = what; return s }
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"client failures add up over both", []step{
			bad(0, "192.0.2.1", "a1@example.com"), bad(1, "192.0.2.1", "a2@example.com"),
			bad(0, "192.0.2.1", "a3@example.com"),
			began(bad(1, "192.0.2.1", "a4@example.com"), "ip"),
			locked(0, "192.0.2.1", "alice@example.com", "locked_ip"),
			locked(1, "192.0.2.1", "alice@example.com", "locked_ip"),
			good(0, "192.0.2.2", "alice@example.com"),
		}},
		{"IPv6 by /64 over both", []step{
			bad(0, "2001:db8::1", "a1@example.com"), bad(1, "2001:db8::2", "a2@example.com"),
			bad(1, "2001:db8::3", "a3@example.com"),
			began(bad(0, "2001:db8::4", "a4@example.com"), "ip"),
			locked(1, "2001:db8::ffff", "alice@example.com", "locked_ip"),
			good(1, "2001:db8:1::1", "alice@example.com"),
		}},
		{"user failures add up over both", []step{
			bad(0, "192.0.2.1", "alice@example.com"), bad(1, "192.0.2.2", "alice@example.com"),
			began(bad(0, "192.0.2.3", "Alice@Example.com"), "user"),
			locked(1, "192.0.2.4", "alice@example.com", "locked_user"),
			locked(0, "192.0.2.5", "alice@example.com", "locked_user"),
			good(1, "192.0.2.4", "bob@example.com"),
		}},
		{"success on one resets the user on the other", []step{
			bad(0, "192.0.2.1", "alice@example.com"), bad(1, "192.0.2.2", "alice@example.com"),
			good(1, "192.0.2.3", "alice@example.com"),
			bad(0, "192.0.2.4", "alice@example.com"), bad(1, "192.0.2.5", "alice@example.com"),
			good(0, "192.0.2.6", "alice@example.com"),
		}},
		{"success does not reset the client", []step{
			bad(0, "192.0.2.1", "a1@example.com"), bad(1, "192.0.2.1", "a2@example.com"),
			good(0, "192.0.2.1", "alice@example.com"),
			bad(1, "192.0.2.1", "a3@example.com"),
			began(bad(0, "192.0.2.1", "a4@example.com"), "ip"),
			locked(1, "192.0.2.1", "alice@example.com", "locked_ip"),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := rdb.FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			gws := gateways(t, 2, set, rdb)
			for i, st := range tc.steps {
				h := gws[st.gw]
				calls := h.users.calls.Load()
				_, err := h.login(st.ip, st.user, st.pass)
				if !errors.Is(err, st.want) || (st.want == nil) != (err == nil) {
					t.Fatalf("step %d (gw%d %s %s): err = %v, want %v", i, st.gw, st.ip, st.user, err, st.want)
				}
				verified := h.users.calls.Load() > calls
				if wantVerify := st.want != ErrLocked; verified != wantVerify {
					t.Errorf("step %d: password checked = %v, want %v", i, verified, wantVerify)
				}
				_, ev := h.lastEvent(t)
				if ev["moat.reason"] != st.reason {
					t.Errorf("step %d: reason %v, want %s", i, ev["moat.reason"], st.reason)
				}
				if got, _ := ev["moat.lockout"].(string); got != st.lockout {
					t.Errorf("step %d: moat.lockout %q, want %q", i, got, st.lockout)
				}
				if d := h.sleeps.take(); st.want == ErrLocked && !equalDurations(d, durations(15)) {
					t.Errorf("step %d: locked-out login waited %v, want the longest delay", i, d)
				}
			}
			for i, h := range gws {
				if evs := redisEvents(h); len(evs) != 0 {
					t.Errorf("gateway %d: Redis errors %v", i, evs)
				}
				if n := h.svc.ips.(*sharedCounters).local.len() + h.svc.names.(*sharedCounters).local.len(); n != 0 {
					t.Errorf("gateway %d counted %d keys in memory while Redis was up", i, n)
				}
			}
		})
	}
}

// TestRedisDelaysShared: the failure delay grows with the failures seen
// by every gateway.
func TestRedisDelaysShared(t *testing.T) {
	rdb := redisClient(t, redistest.Start(t))
	gws := gateways(t, 2, Settings{}, rdb)
	for i := range 5 {
		gws[i%2].login("192.0.2.1", "alice@example.com", "wrong")
	}
	got := append(gws[0].sleeps.take(), gws[1].sleeps.take()...)
	if want := durations(2, 8, 15, 4, 15); !equalDurations(got, want) {
		t.Errorf("delays (gw0's, then gw1's) %v, want %v", got, want)
	}
}

// TestRedisExpiry: Redis forgets the window and ends the lockout by
// itself, with the TTLs that Settings give.
func TestRedisExpiry(t *testing.T) {
	addr := redistest.Start(t)
	rdb := redisClient(t, addr)
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	gws := gateways(t, 2, Settings{MaxFailures: 2, MaxUserFailures: 100, Window: ttl, Lockout: ttl}, rdb)
	ips := gws[0].svc.ips.(*sharedCounters).shared
	fails, lock := ips.keys("192.0.2.1")
	// The user's count is written just after the address's: both must be
	// gone before a failure starts a new window (the delay follows the
	// larger count).
	userFails, _ := gws[0].svc.names.(*sharedCounters).shared.keys("alice@example.com")

	gws[0].login("192.0.2.1", "alice@example.com", "wrong")
	if d, err := rdb.PTTL(ctx, fails).Result(); err != nil || d <= 0 || d > ttl {
		t.Fatalf("PTTL %s = %v, %v; want in (0, %v]", fails, d, err, ttl)
	}
	if n := rdb.Exists(ctx, userFails).Val(); n != 1 {
		t.Fatalf("the user's failure count %s is not in Redis", userFails)
	}
	waitFor(t, "failure counts expired", func() bool { return rdb.Exists(ctx, fails, userFails).Val() == 0 })
	gws[1].sleeps.take()
	gws[1].login("192.0.2.1", "alice@example.com", "wrong")
	if got := gws[1].sleeps.take(); !equalDurations(got, durations(2)) {
		t.Errorf("first failure of a new window waited %v, want the first delay", got)
	}

	gws[0].login("192.0.2.1", "alice@example.com", "wrong") // the second: lockout
	if d, err := rdb.PTTL(ctx, lock).Result(); err != nil || d <= 0 || d > ttl {
		t.Fatalf("PTTL %s = %v, %v; want in (0, %v]", lock, d, err, ttl)
	}
	if _, err := gws[1].login("192.0.2.1", "alice@example.com", secret); !errors.Is(err, ErrLocked) {
		t.Fatalf("right password during the lockout: %v, want ErrLocked", err)
	}
	waitFor(t, "lockout over", func() bool {
		_, err := gws[1].login("192.0.2.1", "alice@example.com", secret)
		if err != nil && !errors.Is(err, ErrLocked) {
			t.Fatalf("login: %v", err)
		}
		return err == nil
	})
}

// TestRedisDown: with Redis gone, logins go on with this process's
// counters, the error is logged once per 30s, and sharing resumes when
// Redis is back.
func TestRedisDown(t *testing.T) {
	srv := redistest.StartServer(t)
	rdb := redisClient(t, srv.Addr())
	gws := gateways(t, 2, Settings{MaxFailures: 3, MaxUserFailures: 100}, rdb)
	gw0, gw1 := gws[0], gws[1]
	mustLogin := func(h *harness, ip string, want error) {
		t.Helper()
		pass := secret
		if want == ErrFailed {
			pass = "wrong"
		}
		_, err := h.login(ip, "alice@example.com", pass)
		if !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("login from %s: %v, want %v", ip, err, want)
		}
	}

	mustLogin(gw0, "192.0.2.1", ErrFailed) // counted in Redis
	srv.Stop()
	mustLogin(gw0, "192.0.2.2", nil)
	mustLogin(gw1, "192.0.2.2", nil)
	// Per node meanwhile: gw0 locks 192.0.2.3 out on its own count ...
	mustLogin(gw0, "192.0.2.3", ErrFailed)
	mustLogin(gw0, "192.0.2.3", ErrFailed)
	mustLogin(gw0, "192.0.2.3", ErrFailed)
	if _, ev := gw0.lastEvent(t); ev["moat.lockout"] != "ip" {
		t.Errorf("third failure in memory: moat.lockout %v, want ip", ev["moat.lockout"])
	}
	mustLogin(gw0, "192.0.2.3", ErrLocked)
	// ... which gw1 does not know.
	mustLogin(gw1, "192.0.2.3", nil)

	evs := redisEvents(gw0)
	if len(evs) != 1 {
		t.Fatalf("gw0 wrote %d auth.redis_error events over 12 failed calls, want 1: %v", len(evs), evs)
	}
	if msg, _ := evs[0]["error.message"].(string); !strings.Contains(msg, "redis") || strings.Contains(msg, secret) {
		t.Errorf("error.message %q", msg)
	}
	gw0.clock.advance(29 * time.Second)
	mustLogin(gw0, "192.0.2.2", nil)
	if n := len(redisEvents(gw0)); n != 1 {
		t.Fatalf("%d events within 30s, want 1", n)
	}
	gw0.clock.advance(time.Second)
	mustLogin(gw0, "192.0.2.2", nil)
	evs = redisEvents(gw0)
	if len(evs) != 2 {
		t.Fatalf("%d events after 30s, want 2", len(evs))
	}
	if n, _ := evs[1]["moat.suppressed"].(int64); n <= 0 {
		t.Errorf("second event: moat.suppressed %v, want the errors left out since the first", evs[1]["moat.suppressed"])
	}

	srv.Restart() // empty: what Redis counted is gone
	// go-redis fails fast, without dialling, for up to a second after
	// many failed dials; a gateway falls back to memory meanwhile.
	waitFor(t, "client reconnected", func() bool { return rdb.Ping(context.Background()).Err() == nil })
	// The lockout gw0 began in memory stays in force.
	mustLogin(gw0, "192.0.2.3", ErrLocked)
	// Shared again: two failures on gw1 and one on gw0 lock out on both.
	mustLogin(gw1, "192.0.2.9", ErrFailed)
	mustLogin(gw1, "192.0.2.9", ErrFailed)
	mustLogin(gw0, "192.0.2.9", ErrFailed)
	mustLogin(gw1, "192.0.2.9", ErrLocked)
	mustLogin(gw0, "192.0.2.9", ErrLocked)
	if n := len(redisEvents(gw0)) + len(redisEvents(gw1)); n != 3 {
		t.Errorf("%d auth.redis_error events in all after Redis came back, want 3 (2 on gw0, 1 on gw1)", n)
	}
}

// TestRedisHung: a Redis that accepts connections but never answers costs
// each call its timeout, then memory decides.
func TestRedisHung(t *testing.T) {
	srv := redistest.StartServer(t)
	rdb := redisClient(t, srv.Addr())
	h := gateways(t, 1, Settings{}, rdb)[0]
	const timeout = 100 * time.Millisecond
	h.svc.ips.(*sharedCounters).timeout = timeout
	h.svc.names.(*sharedCounters).timeout = timeout
	if _, err := h.login("192.0.2.1", "alice@example.com", secret); err != nil { // a connection in the pool
		t.Fatal(err)
	}
	srv.Pause()
	defer srv.Resume()
	start := time.Now()
	if _, err := h.login("192.0.2.1", "alice@example.com", secret); err != nil {
		t.Fatalf("login with Redis hung: %v", err)
	}
	// Three calls (two lockout checks, one reset) of at most 100ms each.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("login with Redis hung took %v", d)
	}
	if _, err := h.login("192.0.2.1", "alice@example.com", "wrong"); !errors.Is(err, ErrFailed) {
		t.Fatalf("failure with Redis hung: %v", err)
	}
	if n := len(redisEvents(h)); n != 1 {
		t.Errorf("%d auth.redis_error events, want 1", n)
	}
}

// TestRedisConcurrent: failures racing on two gateways reach the maximum
// exactly once (the script is atomic).
func TestRedisConcurrent(t *testing.T) {
	rdb := redisClient(t, redistest.Start(t))
	const maxFails, attempts = 10, 15
	gws := gateways(t, 2, Settings{MaxFailures: maxFails, MaxUserFailures: 100}, rdb)
	var wg sync.WaitGroup
	var failed, lockedOut atomic.Int64
	for i := range attempts {
		wg.Go(func() {
			_, err := gws[i%2].login("192.0.2.1", "alice@example.com", "wrong")
			switch {
			case errors.Is(err, ErrFailed):
				failed.Add(1)
			case errors.Is(err, ErrLocked):
				lockedOut.Add(1)
			default:
				t.Errorf("login: %v", err)
			}
		})
	}
	wg.Wait()
	began := 0
	for _, h := range gws {
		began += h.logs.FilterField(zap.String("moat.lockout", "ip")).Len()
	}
	if began != 1 {
		t.Errorf("%d failures began %d lockouts, want 1", failed.Load(), began)
	}
	if failed.Load() < maxFails || failed.Load()+lockedOut.Load() != attempts {
		t.Errorf("%d failed and %d refused as locked of %d", failed.Load(), lockedOut.Load(), attempts)
	}
	for i, h := range gws {
		if _, err := h.login("192.0.2.1", "alice@example.com", secret); !errors.Is(err, ErrLocked) {
			t.Errorf("gateway %d after the race: %v, want ErrLocked", i, err)
		}
	}
}

// TestRedisNoPassword: Redis holds counts and flags under the prefix,
// never a password, whatever the user name.
func TestRedisNoPassword(t *testing.T) {
	rdb := redisClient(t, redistest.Start(t))
	ctx := context.Background()
	// New with the options, as the gateway calls it.
	log := audit.Discard()
	users := &fakeUsers{}
	svc := New(users, Settings{MaxFailures: 3, MaxUserFailures: 2}, log, WithRedis(rdb), WithRedisPrefix("t:auth:"))
	svc.sleep = func(context.Context, time.Duration) error { return nil }
	passwords := []string{secret, "hunter2-not-it", "{x}*?%"}
	names := []string{"alice@example.com", "{x}@example.com", "%7Bx%7D@example.com", "*@example.com", "ünï@example.com", "not a name"}
	for i, name := range names {
		for j, pass := range passwords {
			svc.Login(ctx, Request{
				Protocol: "imap", TLS: true, User: name, Password: pass,
				Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10*i + j)}), 993),
			})
		}
	}
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	layout := regexp.MustCompile(`^t:auth:(ip|user):\{[^{}]+\}:(fails|lock)$`)
	userKeys := map[string]bool{}
	for _, k := range keys {
		if !layout.MatchString(k) {
			t.Errorf("key %q outside the layout", k)
		}
		if strings.HasPrefix(k, "t:auth:user:") {
			userKeys[strings.TrimSuffix(strings.TrimSuffix(k, ":fails"), ":lock")] = true
		}
		v, err := rdb.Get(ctx, k).Result()
		if err != nil {
			t.Errorf("GET %s: %v", k, err)
		}
		for _, p := range passwords {
			if strings.Contains(k, p) || strings.Contains(v, p) {
				t.Errorf("the password %q is in Redis: %s = %q", p, k, v)
			}
		}
	}
	// One key set per well-formed name: the odd ones do not collide.
	if len(userKeys) != len(names)-1 {
		t.Errorf("%d user key sets %v, want %d", len(userKeys), userKeys, len(names)-1)
	}
}

// roundTrips counts the commands (and pipelines) a client sends.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmds)
	}
}

// TestRedisRoundTrips pins the cost of a login: one call per check and
// per count.
func TestRedisRoundTrips(t *testing.T) {
	rdb := redisClient(t, redistest.Start(t))
	var rt roundTrips
	rdb.AddHook(&rt)
	h := gateways(t, 1, Settings{}, rdb)[0]
	h.login("192.0.2.1", "alice@example.com", "wrong") // loads the script (EVALSHA, EVAL)
	for _, tc := range []struct {
		name string
		pass string
		want int64
	}{
		{"failure: 2 EXISTS, 2 EVALSHA", "wrong", 4},
		{"success: 2 EXISTS, 1 DEL", secret, 3},
	} {
		before := rt.n.Load()
		h.login("192.0.2.1", "alice@example.com", tc.pass)
		if got := rt.n.Load() - before; got != tc.want {
			t.Errorf("%s: %d round trips", tc.name, got)
		}
	}
}

// BenchmarkLogin measures a login with the counters in memory and in
// Redis (on loopback), failure and success, without the delays; the
// round trips per login are reported.
func BenchmarkLogin(b *testing.B) {
	set := Settings{MaxFailures: 1 << 30, MaxUserFailures: 1 << 30}
	for _, store := range []string{"memory", "redis"} {
		for _, pass := range []string{"wrong", secret} {
			name := store + "/failure"
			if pass == secret {
				name = store + "/success"
			}
			b.Run(name, func(b *testing.B) {
				var opts []Option
				var rt roundTrips
				if store == "redis" {
					rdb := redisClient(b, redistest.Start(b))
					rdb.AddHook(&rt)
					opts = append(opts, WithRedis(rdb))
				}
				svc := New(&fakeUsers{}, set, audit.Discard(), opts...)
				svc.sleep = func(context.Context, time.Duration) error { return nil }
				r := Request{
					Protocol: "imap", TLS: true, User: "alice@example.com", Password: pass,
					Remote: netip.MustParseAddrPort("192.0.2.1:993"),
				}
				ctx := context.Background()
				svc.Login(ctx, r) // loads the script
				rt.n.Store(0)
				b.ResetTimer()
				for b.Loop() {
					svc.Login(ctx, r)
				}
				b.ReportMetric(float64(rt.n.Load())/float64(b.N), "roundtrips/op")
			})
		}
	}
	// Many logins at once over one client (its pool), as under a
	// password-guessing storm.
	b.Run("redis/failure/parallel", func(b *testing.B) {
		rdb := redisClient(b, redistest.Start(b))
		svc := New(&fakeUsers{}, set, audit.Discard(), WithRedis(rdb))
		svc.sleep = func(context.Context, time.Duration) error { return nil }
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			r := Request{
				Protocol: "imap", TLS: true, User: "alice@example.com", Password: "wrong",
				Remote: netip.MustParseAddrPort("192.0.2.1:993"),
			}
			for pb.Next() {
				svc.Login(context.Background(), r)
			}
		})
	})
}
