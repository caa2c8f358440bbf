package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"moat/audit"
)

const secret = "correct horse battery staple"

// fakeUsers knows alice@example.com and bob@example.com, both with secret.
type fakeUsers struct {
	calls atomic.Int64
	err   error // VerifyErr's error, when set
}

func (f *fakeUsers) Verify(addr, password string) bool {
	f.calls.Add(1)
	return (addr == "alice@example.com" || addr == "bob@example.com") && password == secret
}

// checkingUsers also implements CheckingVerifier.
type checkingUsers struct{ fakeUsers }

func (f *checkingUsers) VerifyErr(addr, password string) (bool, error) {
	if f.err != nil {
		f.calls.Add(1)
		return false, f.err
	}
	return f.Verify(addr, password), nil
}

// fakeClock is the Service's clock in tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// sleeps records the delays a Service asked for, without waiting.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) sleep(_ context.Context, d time.Duration) error {
	s.mu.Lock()
	s.d = append(s.d, d)
	s.mu.Unlock()
	return nil
}

// take returns the delays recorded since the last take.
func (s *sleeps) take() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.d
	s.d = nil
	return d
}

type harness struct {
	svc    *Service
	users  *fakeUsers
	clock  *fakeClock
	sleeps *sleeps
	logs   *observer.ObservedLogs
	json   *bytes.Buffer // the events as JSON, to look for the password
	jsonMu *sync.Mutex
}

func newHarness(t *testing.T, set Settings, v Verifier) *harness {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	var buf bytes.Buffer
	var mu sync.Mutex
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	jsonCore := zapcore.NewCore(enc, zapcore.AddSync(lockedWriter{&buf, &mu}), zapcore.InfoLevel)
	if v == nil {
		v = &fakeUsers{}
	}
	svc := New(v, set, audit.NewZap(zap.New(zapcore.NewTee(core, jsonCore))))
	h := &harness{svc: svc, clock: &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, sleeps: &sleeps{}, logs: logs, json: &buf, jsonMu: &mu}
	switch u := v.(type) {
	case *fakeUsers:
		h.users = u
	case *checkingUsers:
		h.users = &u.fakeUsers
	}
	svc.now, svc.sleep = h.clock.now, h.sleeps.sleep
	return h
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (h *harness) login(ip, user, password string) (string, error) {
	return h.svc.Login(context.Background(), Request{
		Protocol: "imap", Mechanism: "PLAIN", Listener: "imaps",
		Remote: netip.AddrPortFrom(netip.MustParseAddr(ip), 40000), TLS: true,
		User: user, Password: password,
	})
}

// lastEvent returns the fields of the last event and its action.
func (h *harness) lastEvent(t *testing.T) (string, map[string]any) {
	t.Helper()
	all := h.logs.All()
	if len(all) == 0 {
		t.Fatal("no event written")
	}
	e := all[len(all)-1]
	return e.Message, e.ContextMap()
}

func durations(ds ...int) []time.Duration {
	var out []time.Duration
	for _, d := range ds {
		out = append(out, time.Duration(d)*time.Second)
	}
	return out
}

func equalDurations(a, b []time.Duration) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func TestDelaysGrow(t *testing.T) {
	h := newHarness(t, Settings{}, nil)
	for range 5 {
		if _, err := h.login("192.0.2.1", "alice@example.com", "wrong"); !errors.Is(err, ErrFailed) {
			t.Fatalf("err = %v, want ErrFailed", err)
		}
	}
	if got, want := h.sleeps.take(), durations(2, 4, 8, 15, 15); !equalDurations(got, want) {
		t.Errorf("delays %v, want %v", got, want)
	}
	// A success is not delayed.
	if _, err := h.login("192.0.2.1", "alice@example.com", secret); err != nil {
		t.Fatal(err)
	}
	if got := h.sleeps.take(); len(got) != 0 {
		t.Errorf("success delayed %v", got)
	}
}

func TestLockout(t *testing.T) {
	set := Settings{
		MaxFailures: 4, MaxUserFailures: 3, Window: time.Minute, Lockout: 10 * time.Minute,
		Trusted: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		Allow:   []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
	}
	type step struct {
		advance time.Duration
		ip      string
		user    string
		pass    string
		want    error  // nil: success
		reason  string // the event's moat.reason
		verify  bool   // the password was checked
	}
	bad := func(ip, user string) step {
		return step{ip: ip, user: user, pass: "wrong", want: ErrFailed, reason: "bad_credentials", verify: true}
	}
	good := func(ip, user string) step {
		return step{ip: ip, user: user, pass: secret, reason: "ok", verify: true}
	}
	locked := func(ip, user, reason string) step {
		return step{ip: ip, user: user, pass: secret, want: ErrLocked, reason: reason}
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"per IP, right password refused, ends after lockout", []step{
			bad("192.0.2.1", "a1@example.com"), bad("192.0.2.1", "a2@example.com"),
			bad("192.0.2.1", "a3@example.com"), bad("192.0.2.1", "a4@example.com"),
			locked("192.0.2.1", "alice@example.com", "locked_ip"),
			good("192.0.2.2", "alice@example.com"), // another client is not concerned
			{advance: 9 * time.Minute, ip: "192.0.2.1", user: "alice@example.com", pass: secret, want: ErrLocked, reason: "locked_ip"},
			{advance: time.Minute, ip: "192.0.2.1", user: "alice@example.com", pass: secret, reason: "ok", verify: true},
		}},
		{"IPv6 counts by /64", []step{
			bad("2001:db8::1", "a1@example.com"), bad("2001:db8::2", "a2@example.com"),
			bad("2001:db8::3", "a3@example.com"), bad("2001:db8::4", "a4@example.com"),
			locked("2001:db8::ffff", "alice@example.com", "locked_ip"),
			good("2001:db8:1::1", "alice@example.com"),
		}},
		{"per user, from many clients", []step{
			bad("192.0.2.1", "alice@example.com"), bad("192.0.2.2", "alice@example.com"),
			bad("192.0.2.3", "Alice@Example.com"),
			locked("192.0.2.4", "alice@example.com", "locked_user"),
			good("192.0.2.4", "bob@example.com"),
			good("198.51.100.7", "alice@example.com"), // trusted networks may still log in
			good("203.0.113.7", "alice@example.com"),  // and so may the allow list
			{advance: 10 * time.Minute, ip: "192.0.2.4", user: "alice@example.com", pass: secret, reason: "ok", verify: true},
		}},
		{"window passes", []step{
			bad("192.0.2.1", "alice@example.com"), bad("192.0.2.1", "alice@example.com"),
			{advance: time.Minute, ip: "192.0.2.1", user: "alice@example.com", pass: "wrong", want: ErrFailed, reason: "bad_credentials", verify: true},
			bad("192.0.2.1", "alice@example.com"),
			good("192.0.2.1", "alice@example.com"),
		}},
		{"success resets the user, not the client", []step{
			bad("192.0.2.1", "alice@example.com"), bad("192.0.2.1", "alice@example.com"),
			good("192.0.2.1", "alice@example.com"),
			bad("192.0.2.1", "alice@example.com"),
			// the client's fourth failure: locked although alice has 2
			bad("192.0.2.1", "alice@example.com"),
			locked("192.0.2.1", "alice@example.com", "locked_ip"),
		}},
		{"allow list never locked nor delayed", []step{
			bad("203.0.113.1", "alice@example.com"), bad("203.0.113.1", "alice@example.com"),
			bad("203.0.113.1", "alice@example.com"), bad("203.0.113.1", "alice@example.com"),
			bad("203.0.113.1", "alice@example.com"), bad("203.0.113.1", "alice@example.com"),
			good("203.0.113.1", "alice@example.com"),
			good("192.0.2.1", "alice@example.com"), // not counted against alice either
		}},
		{"trusted networks are counted", []step{
			bad("198.51.100.1", "x@example.com"), bad("198.51.100.1", "x@example.com"),
			bad("198.51.100.1", "y@example.com"), bad("198.51.100.1", "y@example.com"),
			locked("198.51.100.1", "alice@example.com", "locked_ip"),
		}},
		{"bad user names count against the client", []step{
			{ip: "192.0.2.1", user: "alice", pass: "x", want: ErrFailed, reason: "bad_user_name"},
			{ip: "192.0.2.1", user: "alice", pass: "x", want: ErrFailed, reason: "bad_user_name"},
			{ip: "192.0.2.1", user: "", pass: "x", want: ErrFailed, reason: "bad_user_name"},
			{ip: "192.0.2.1", user: "a@b@c", pass: "x", want: ErrFailed, reason: "bad_user_name"},
			locked("192.0.2.1", "alice@example.com", "locked_ip"),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, set, nil)
			for i, st := range tc.steps {
				h.clock.advance(st.advance)
				calls := h.users.calls.Load()
				user, err := h.login(st.ip, st.user, st.pass)
				if !errors.Is(err, st.want) || (st.want == nil) != (err == nil) {
					t.Fatalf("step %d (%s %s): err = %v, want %v", i, st.ip, st.user, err, st.want)
				}
				if err == nil && user != strings.ToLower(st.user) {
					t.Errorf("step %d: user %q", i, user)
				}
				if verified := h.users.calls.Load() > calls; verified != st.verify {
					t.Errorf("step %d: password checked = %v, want %v", i, verified, st.verify)
				}
				_, ev := h.lastEvent(t)
				if ev["moat.reason"] != st.reason {
					t.Errorf("step %d: reason %v, want %s", i, ev["moat.reason"], st.reason)
				}
				d := h.sleeps.take()
				if st.want == ErrLocked && !equalDurations(d, durations(15)) {
					t.Errorf("step %d: locked-out login waited %v, want the longest delay", i, d)
				}
				if st.want == nil && len(d) != 0 {
					t.Errorf("step %d: success waited %v", i, d)
				}
				if strings.HasPrefix(st.ip, "203.0.113.") && len(d) != 0 {
					t.Errorf("step %d: allow-listed client waited %v", i, d)
				}
			}
		})
	}
}

func TestLockoutEvent(t *testing.T) {
	h := newHarness(t, Settings{MaxFailures: 2, MaxUserFailures: 2}, nil)
	h.login("192.0.2.1", "alice@example.com", "wrong")
	if _, ev := h.lastEvent(t); ev["moat.lockout"] != nil {
		t.Errorf("first failure says lockout %v", ev["moat.lockout"])
	}
	h.login("192.0.2.1", "alice@example.com", "wrong")
	if _, ev := h.lastEvent(t); ev["moat.lockout"] != "ip,user" {
		t.Errorf("second failure: moat.lockout = %v, want ip,user", ev["moat.lockout"])
	}
	if d := h.sleeps.take(); !equalDurations(d, durations(2, 15)) {
		t.Errorf("delays %v: the failure that locks waits the longest", d)
	}
}

func TestPlaintext(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	for _, tc := range []struct {
		name  string
		set   Settings
		ip    string
		tls   bool
		allow bool
	}{
		{"TLS always", Settings{}, "198.51.100.1", true, true},
		{"cleartext refused", Settings{Trusted: trusted}, "198.51.100.1", false, false},
		{"cleartext from trusted", Settings{Trusted: trusted}, "192.0.2.9", false, true},
		{"mapped trusted address", Settings{Trusted: trusted}, "::ffff:192.0.2.9", false, true},
		{"allow_plaintext_auth", Settings{AllowPlaintext: true}, "198.51.100.1", false, true},
		{"allow list is no plaintext permit", Settings{Allow: trusted}, "192.0.2.9", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.set, nil)
			ip := netip.MustParseAddr(tc.ip)
			if got := h.svc.PlaintextAllowed(ip, tc.tls); got != tc.allow {
				t.Errorf("PlaintextAllowed = %v, want %v", got, tc.allow)
			}
			_, err := h.svc.Login(context.Background(), Request{Protocol: "pop3", Mechanism: "USER",
				Remote: netip.AddrPortFrom(ip, 1), TLS: tc.tls, User: "alice@example.com", Password: secret})
			if tc.allow && err != nil {
				t.Errorf("Login: %v", err)
			}
			if !tc.allow {
				if !errors.Is(err, ErrPlaintext) {
					t.Errorf("Login: %v, want ErrPlaintext", err)
				}
				if n := h.users.calls.Load(); n != 0 {
					t.Errorf("password checked %d times", n)
				}
				if d := h.sleeps.take(); len(d) != 0 {
					t.Errorf("refusal waited %v", d)
				}
				if action, ev := h.lastEvent(t); action != "pop3.login" || ev["moat.reason"] != "plaintext_refused" || ev["tls.established"] != false {
					t.Errorf("event %s %v", action, ev)
				}
			}
		})
	}
	// Refusals count nothing: a client can still log in with TLS after many.
	h := newHarness(t, Settings{MaxFailures: 2}, nil)
	for range 5 {
		h.svc.Login(context.Background(), Request{Remote: netip.MustParseAddrPort("198.51.100.1:1"), User: "alice@example.com", Password: "x"})
	}
	if _, err := h.login("198.51.100.1", "alice@example.com", secret); err != nil {
		t.Errorf("after cleartext refusals: %v", err)
	}
}

func TestUserNames(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{" Alice@Example.COM\t", "alice@example.com", true},
		{"jörg@example.com", "jörg@example.com", true},
		{"alice", "", false},
		{"@example.com", "", false},
		{"alice@", "", false},
		{"a@b@example.com", "", false},
		{"al ice@example.com", "", false},
		{"alice\x00@example.com", "", false},
		{"alice\r\n@example.com", "", false},
		{"al\u2028ice@example.com", "", false},
		{"\xff@example.com", "", false},
		{strings.Repeat("a", 250) + "@example.com", "", false},
	} {
		got, ok := CanonicalUser(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("CanonicalUser(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	if s := sanitizeName("a\r\nb\xff" + strings.Repeat("é", 200)); len(s) > MaxUserLength || strings.ContainsAny(s, "\r\n") || !strings.HasPrefix(s, "a??b?") {
		t.Errorf("sanitizeName gave %q", s)
	}
}

func TestEvents(t *testing.T) {
	h := newHarness(t, Settings{}, nil)
	ctx := context.Background()
	r := Request{Protocol: "smtp", Mechanism: "LOGIN", Listener: "submission",
		Remote: netip.MustParseAddrPort("[::ffff:192.0.2.1]:5555"), TLS: true, User: "Alice@Example.com", Password: secret}
	if u, err := h.svc.Login(ctx, r); err != nil || u != "alice@example.com" {
		t.Fatalf("Login = %q, %v", u, err)
	}
	action, ev := h.lastEvent(t)
	want := map[string]any{
		"event.outcome": "success", "source.ip": "192.0.2.1", "source.port": uint64(5555),
		"user.name": "alice@example.com", "moat.reason": "ok", "moat.mechanism": "LOGIN",
		"moat.listener": "submission", "tls.established": true,
	}
	if action != "smtp.login" || fmt.Sprint(ev) != fmt.Sprint(want) {
		t.Errorf("event %s %v\nwant smtp.login %v", action, ev, want)
	}
	r.Password = secret + "x"
	h.svc.Login(ctx, r)
	if _, ev := h.lastEvent(t); ev["event.outcome"] != "failure" || ev["moat.reason"] != "bad_credentials" {
		t.Errorf("failure event %v", ev)
	}
	r.User = "not an address\x1b[31m"
	h.svc.Login(ctx, r)
	if _, ev := h.lastEvent(t); ev["user.name"] != "not an address?[31m" || ev["moat.reason"] != "bad_user_name" {
		t.Errorf("bad name event %v", ev)
	}
	if n := h.logs.Len(); n != 3 {
		t.Errorf("%d events for 3 attempts", n)
	}
	h.jsonMu.Lock()
	out := h.json.String()
	h.jsonMu.Unlock()
	if strings.Contains(out, secret) || strings.Contains(out, "horse") {
		t.Errorf("the password reached the log:\n%s", out)
	}
	if !strings.Contains(out, `"user.name":"alice@example.com"`) {
		t.Errorf("JSON events lack user.name:\n%s", out)
	}
}

func TestUnavailable(t *testing.T) {
	v := &checkingUsers{}
	v.err = errors.New("users: permission denied")
	h := newHarness(t, Settings{MaxFailures: 2}, v)
	for range 3 {
		if _, err := h.login("192.0.2.1", "alice@example.com", secret); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v, want ErrUnavailable", err)
		}
		if _, ev := h.lastEvent(t); ev["moat.reason"] != "unavailable" || ev["error.message"] != "users: permission denied" {
			t.Errorf("event %v", ev)
		}
	}
	v.err = nil
	if _, err := h.login("192.0.2.1", "alice@example.com", secret); err != nil {
		t.Errorf("unavailability counted as failures: %v", err)
	}
}

func TestSetSettingsKeepsCounters(t *testing.T) {
	h := newHarness(t, Settings{MaxFailures: 5}, nil)
	h.login("192.0.2.1", "x@example.com", "wrong")
	h.login("192.0.2.1", "y@example.com", "wrong")
	h.svc.SetSettings(Settings{MaxFailures: 3, Delays: durations(1, 3)})
	if got := h.svc.Settings(); got.MaxFailures != 3 || got.MaxUserFailures != 10 || got.Lockout != 15*time.Minute {
		t.Errorf("settings in force %+v", got)
	}
	h.sleeps.take()
	h.login("192.0.2.1", "z@example.com", "wrong")
	if _, err := h.login("192.0.2.1", "alice@example.com", secret); !errors.Is(err, ErrLocked) {
		t.Errorf("third failure across a reload did not lock: %v", err)
	}
	if d := h.sleeps.take(); !equalDurations(d, durations(3, 3)) {
		t.Errorf("delays after reload %v", d)
	}
}

func TestBounded(t *testing.T) {
	h := newHarness(t, Settings{MaxTracked: 16}, nil)
	for i := range 200 {
		h.login(fmt.Sprintf("198.18.%d.%d", i/256, i%256), fmt.Sprintf("u%d@example.com", i), "wrong")
	}
	if n, m := h.svc.ips.(*memCounters).len(), h.svc.names.(*memCounters).len(); n > 16 || m > 16 {
		t.Errorf("tables hold %d clients and %d users, want at most 16", n, m)
	}
}

// TestLoginHonoursContext: a client that hung up does not keep Login
// waiting out its delay.
func TestLoginHonoursContext(t *testing.T) {
	svc := New(&fakeUsers{}, Settings{Delays: []time.Duration{time.Hour}}, audit.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := svc.Login(ctx, Request{Remote: netip.MustParseAddrPort("192.0.2.1:1"), TLS: true, User: "alice@example.com", Password: "wrong"})
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, ErrFailed) {
			t.Errorf("err = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Login kept waiting after its context ended")
	}
}

func TestConcurrentLogins(t *testing.T) {
	h := newHarness(t, Settings{MaxFailures: 1000, MaxUserFailures: 1000}, nil)
	var wg sync.WaitGroup
	var ok atomic.Int64
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				pass := "wrong"
				if i%5 == 0 {
					pass = secret
				}
				if _, err := h.login(fmt.Sprintf("192.0.2.%d", g), "alice@example.com", pass); err == nil {
					ok.Add(1)
				}
				if g == 0 && i == 25 {
					h.svc.SetSettings(Settings{MaxFailures: 1000, MaxUserFailures: 1000})
				}
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 80 || h.logs.Len() != 400 {
		t.Errorf("%d successes (want 80), %d events (want 400)", ok.Load(), h.logs.Len())
	}
}

// TestRequestVerify: in proxy mode the request's Verify (the internal
// server's login) decides instead of the user list, under the same
// lockout; its errors are unavailability, not failures; the event names
// the upstream.
func TestRequestVerify(t *testing.T) {
	h := newHarness(t, Settings{MaxFailures: 2}, nil)
	ctx := context.Background()
	var asked []string
	upstreamErr := error(nil)
	r := Request{Protocol: "imap", Mechanism: "LOGIN", Listener: "imaps", Upstream: "mail.corp.test:993",
		Remote: netip.MustParseAddrPort("192.0.2.7:4000"), TLS: true, User: "Carol@Example.com", Password: "upstream-pw",
		Verify: func(_ context.Context, user, password string) (bool, error) {
			asked = append(asked, user)
			return password == "upstream-pw", upstreamErr
		}}
	if u, err := h.svc.Login(ctx, r); err != nil || u != "carol@example.com" {
		t.Fatalf("Login = %q, %v", u, err)
	}
	if _, ev := h.lastEvent(t); ev["moat.upstream"] != "mail.corp.test:993" || ev["event.outcome"] != "success" {
		t.Errorf("event %v", ev)
	}
	upstreamErr = errors.New("dial tcp: connection refused")
	if _, err := h.svc.Login(ctx, r); !errors.Is(err, ErrUnavailable) {
		t.Errorf("upstream down: %v, want ErrUnavailable", err)
	}
	upstreamErr = nil
	r.Password = "wrong"
	for range 2 {
		if _, err := h.svc.Login(ctx, r); !errors.Is(err, ErrFailed) {
			t.Errorf("wrong password: %v", err)
		}
	}
	r.Password = "upstream-pw"
	n := len(asked)
	if _, err := h.svc.Login(ctx, r); !errors.Is(err, ErrLocked) {
		t.Errorf("after 2 failures: %v, want ErrLocked", err)
	}
	if len(asked) != n {
		t.Errorf("a locked-out login still reached the upstream")
	}
	if asked[0] != "carol@example.com" {
		t.Errorf("Verify got %q, want the canonical name", asked[0])
	}
}
