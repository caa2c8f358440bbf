package auth

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"moat/audit"
	"moat/metrics"
)

// Verifier checks a password. *users.DB implements it, and takes as long
// for an unknown user as for a known one.
type Verifier interface {
	Verify(addr, password string) bool
}

// CheckingVerifier is a Verifier that can also say it could not decide
// (its user list is unreadable). When the Verifier given to New implements
// it, Login calls VerifyErr instead and answers ErrUnavailable on an error,
// without counting a failure against the client.
type CheckingVerifier interface {
	Verifier
	VerifyErr(addr, password string) (bool, error)
}

// Settings are the rules of a Service. A zero field takes the default given
// in its comment.
type Settings struct {
	// AllowPlaintext (auth.allow_plaintext_auth) lets any client send a
	// password over an unencrypted connection. Default off.
	AllowPlaintext bool
	// Trusted (smtp.trusted_networks) may send passwords in clear, and a
	// user locked out by failures elsewhere may still log in from there.
	// Their failures are delayed and counted like anybody's.
	Trusted []netip.Prefix
	// Allow (auth.allow_networks) are never delayed nor locked out, and
	// their failures are not counted (monitoring, the office's NAT).
	Allow []netip.Prefix
	// Delays (auth.failure_delays) is the wait before answering the first,
	// second, ... failed login in a row (the larger of the client's and
	// the user's count); the last repeats. Default 2s, 4s, 8s, 15s.
	Delays []time.Duration
	// MaxFailures (auth.max_failures_per_ip) failures from one client
	// within Window lock that client out for Lockout. IPv6 clients count
	// by /64. Default 10.
	MaxFailures int
	// MaxUserFailures (auth.max_failures_per_user) failures for one user
	// within Window lock that user out for Lockout. Default 10.
	MaxUserFailures int
	// Window (auth.failure_window) is how long failures are remembered
	// from the first of a series. Default 15m.
	Window time.Duration
	// Lockout (auth.lockout): while it lasts every login for the client
	// or user is refused with ErrLocked, even with the right password,
	// without checking it. Default 15m.
	Lockout time.Duration
	// MaxTracked is how many clients, and how many user names, the
	// failure counters remember each; beyond it the least recently seen
	// are forgotten, so that an attacker with many addresses or names
	// cannot grow memory without limit. Default 50000 (about 200 bytes
	// an entry: 10 MB a table at most).
	MaxTracked int
}

// DefaultDelays are the failure delays when Settings.Delays is empty.
var DefaultDelays = []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 15 * time.Second}

// withDefaults returns s with every zero field set to its default.
func (s Settings) withDefaults() Settings {
	if len(s.Delays) == 0 {
		s.Delays = DefaultDelays
	}
	s.Delays = slices.Clone(s.Delays)
	for i, d := range s.Delays {
		s.Delays[i] = max(d, 0)
	}
	if s.MaxFailures <= 0 {
		s.MaxFailures = 10
	}
	if s.MaxUserFailures <= 0 {
		s.MaxUserFailures = 10
	}
	if s.Window <= 0 {
		s.Window = 15 * time.Minute
	}
	if s.Lockout <= 0 {
		s.Lockout = 15 * time.Minute
	}
	if s.MaxTracked <= 0 {
		s.MaxTracked = 50000
	}
	s.Trusted, s.Allow = slices.Clone(s.Trusted), slices.Clone(s.Allow)
	return s
}

// delay is the wait before answering the n-th failure in a row (n >= 1).
func (s *Settings) delay(n int) time.Duration {
	return s.Delays[min(max(n, 1), len(s.Delays))-1]
}

// longest is the wait before refusing a locked-out login.
func (s *Settings) longest() time.Duration { return slices.Max(s.Delays) }

func (s *Settings) plaintextAllowed(ip netip.Addr) bool {
	return s.AllowPlaintext || contains(s.Trusted, ip)
}

func contains(nets []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range nets {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Service is the login authority of one moat process: it lives as long as
// the process, so that a reload does not forget who was guessing.
type Service struct {
	users Verifier
	log   *audit.Logger
	set   atomic.Pointer[Settings]

	ips   counters // by clientKey
	names counters // by canonical user name

	// now and sleep are time.Now and sleepCtx; tests replace them
	// before the first Login.
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
}

var _ Authenticator = (*Service)(nil)

// New makes the login authority over users with the rules s; every
// attempt is written to log. The failure counters are this process's own
// unless an option (WithRedis) shares them.
func New(users Verifier, s Settings, log *audit.Logger, opts ...Option) *Service {
	s = s.withDefaults()
	svc := &Service{
		users: users,
		log:   log,
		ips:   newMemCounters(s.MaxTracked),
		names: newMemCounters(s.MaxTracked),
		now:   time.Now,
		sleep: sleepCtx,
	}
	svc.apply(opts)
	svc.set.Store(&s)
	return svc
}

// SetSettings puts new rules in force (a configuration reload); the
// failure counts and lockouts so far are kept.
func (s *Service) SetSettings(set Settings) {
	set = set.withDefaults()
	s.ips.resize(set.MaxTracked)
	s.names.resize(set.MaxTracked)
	s.set.Store(&set)
}

// Settings returns the rules in force, defaults filled in.
func (s *Service) Settings() Settings { return *s.set.Load() }

// PlaintextAllowed implements Authenticator.
func (s *Service) PlaintextAllowed(remote netip.Addr, tls bool) bool {
	return tls || s.set.Load().plaintextAllowed(remote)
}

// The words of the moat.reason field of a login event.
const (
	reasonOK             = "ok"
	reasonBadCredentials = "bad_credentials"
	reasonLockedIP       = "locked_ip"
	reasonLockedUser     = "locked_user"
	reasonPlaintext      = "plaintext_refused"
	reasonUnavailable    = "unavailable"
	reasonBadUserName    = "bad_user_name"
)

// The login metric's series exist from the start, at 0, for every
// protocol and reason.
func init() {
	for _, p := range []string{"smtp", "pop3", "imap"} {
		for _, r := range []string{reasonOK, reasonBadCredentials, reasonLockedIP, reasonLockedUser, reasonPlaintext, reasonUnavailable, reasonBadUserName} {
			metrics.LoginAttempts.WithLabelValues(p, outcomeOf(r), r)
		}
	}
}

func outcomeOf(reason string) string {
	if reason == reasonOK {
		return "success"
	}
	return "failure"
}

// Login implements Authenticator.
func (s *Service) Login(ctx context.Context, r Request) (string, error) {
	set := s.set.Load()
	ip := r.Remote.Addr().Unmap()
	user, nameOK := CanonicalUser(r.User)
	a := &attempt{s: s, r: r, ip: ip, user: user}
	if !nameOK {
		a.user = sanitizeName(r.User)
	}
	if !r.TLS && !set.plaintextAllowed(ip) {
		a.event(reasonPlaintext)
		return "", ErrPlaintext
	}
	exempt := contains(set.Allow, ip)
	if !exempt {
		reason, err := s.lockedOut(ctx, set, ip, user, nameOK)
		if err != nil {
			a.err = err
			a.event(reasonUnavailable)
			return "", fmt.Errorf("%w: failure counters: %w", ErrUnavailable, err)
		}
		if reason != "" {
			return "", s.refuseLocked(ctx, set, a, reason)
		}
	}
	if !nameOK {
		return "", s.failed(ctx, set, a, exempt, reasonBadUserName)
	}
	var good bool
	var err error
	if r.Verify != nil {
		good, err = r.Verify(ctx, user, r.Password)
	} else {
		good, err = s.verify(user, r.Password)
	}
	if err != nil {
		a.err = err
		a.event(reasonUnavailable)
		return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if !good {
		return "", s.failed(ctx, set, a, exempt, reasonBadCredentials)
	}
	// Only the user's count starts over: a guesser who holds one valid
	// account must not wipe its own client's count by logging in.
	s.names.reset(ctx, user)
	a.event(reasonOK)
	return user, nil
}

// lockedOut returns reasonLockedIP or reasonLockedUser when the client or
// the user is locked out, or "". A user locked out may still log in from
// the trusted networks, so that guessing from outside cannot lock the
// admins out from inside.
func (s *Service) lockedOut(ctx context.Context, set *Settings, ip netip.Addr, user string, nameOK bool) (string, error) {
	now := s.now()
	locked, err := s.ips.locked(ctx, clientKey(ip), now)
	switch {
	case err != nil:
		return "", err
	case locked:
		return reasonLockedIP, nil
	case !nameOK || contains(set.Trusted, ip):
		return "", nil
	}
	locked, err = s.names.locked(ctx, user, now)
	if err != nil || !locked {
		return "", err
	}
	return reasonLockedUser, nil
}

func (s *Service) verify(user, password string) (bool, error) {
	if v, ok := s.users.(CheckingVerifier); ok {
		return v.VerifyErr(user, password)
	}
	return s.users.Verify(user, password), nil
}

// refuseLocked answers a login for a locked-out client or user, after
// the longest delay, without looking at the password.
func (s *Service) refuseLocked(ctx context.Context, set *Settings, a *attempt, reason string) error {
	s.sleep(ctx, set.longest())
	a.event(reason)
	if reason == reasonLockedIP {
		return fmt.Errorf("%w (client)", ErrLocked)
	}
	return fmt.Errorf("%w (user)", ErrLocked)
}

// failed counts a failure against the client and, when the name was
// well-formed, the user; waits the delay; and writes the event.
func (s *Service) failed(ctx context.Context, set *Settings, a *attempt, exempt bool, reason string) error {
	if exempt {
		a.event(reason)
		return ErrFailed
	}
	now := s.now()
	n, ipLocked, err := s.ips.fail(ctx, clientKey(a.ip), now, limit{set.MaxFailures, set.Window, set.Lockout})
	if err != nil {
		n = len(set.Delays) // unknown: wait the last delay
	}
	if reason == reasonBadCredentials {
		nu, userLocked, err := s.names.fail(ctx, a.user, now, limit{set.MaxUserFailures, set.Window, set.Lockout})
		if err != nil {
			nu = len(set.Delays)
		}
		n = max(n, nu)
		a.userLocked = userLocked
	}
	a.ipLocked = ipLocked
	d := set.delay(n)
	if a.ipLocked || a.userLocked {
		d = set.longest()
	}
	s.sleep(ctx, d)
	a.event(reason)
	return ErrFailed
}

// attempt is one Login's facts for its event.
type attempt struct {
	s          *Service
	r          Request
	ip         netip.Addr
	user       string // canonical, or as given and sanitized
	ipLocked   bool   // this failure began a lockout of the client
	userLocked bool   // … of the user
	err        error  // why the login could not be decided
}

// event writes the login event. It never carries the password.
func (a *attempt) event(reason string) {
	outcome := outcomeOf(reason)
	metrics.Login(a.r.Protocol, outcome, reason)
	fs := []zap.Field{
		zap.String("event.outcome", outcome),
		zap.String("source.ip", a.ip.String()),
		zap.Uint16("source.port", a.r.Remote.Port()),
		zap.String("user.name", a.user),
		zap.String("moat.reason", reason),
		zap.String("moat.mechanism", a.r.Mechanism),
		zap.String("moat.listener", a.r.Listener),
		zap.Bool("tls.established", a.r.TLS),
	}
	// moat.lockout says that this failure began a lockout, and of what.
	switch {
	case a.ipLocked && a.userLocked:
		fs = append(fs, zap.String("moat.lockout", "ip,user"))
	case a.ipLocked:
		fs = append(fs, zap.String("moat.lockout", "ip"))
	case a.userLocked:
		fs = append(fs, zap.String("moat.lockout", "user"))
	}
	if a.r.Upstream != "" {
		fs = append(fs, zap.String("moat.upstream", a.r.Upstream))
	}
	if a.err != nil {
		fs = append(fs, zap.String("error.message", a.err.Error()))
	}
	a.s.log.Event(a.r.Protocol+".login", fs...)
}

// MaxUserLength bounds a user name; longer ones are refused.
const MaxUserLength = 256

// CanonicalUser returns the name a login is checked and counted under:
// trimmed and lower-cased, and only if it is a user@domain address of at
// most MaxUserLength bytes of valid UTF-8 without spaces or control
// characters.
func CanonicalUser(name string) (string, bool) {
	if !utf8.ValidString(name) { // before ToLower, which would mend it
		return "", false
	}
	u := strings.ToLower(strings.TrimSpace(name))
	if len(u) > MaxUserLength {
		return "", false
	}
	at := strings.IndexByte(u, '@')
	if at <= 0 || at == len(u)-1 || strings.Count(u, "@") != 1 {
		return "", false
	}
	for _, c := range u {
		if unicode.IsControl(c) || unicode.IsSpace(c) {
			return "", false
		}
	}
	return u, true
}

// sanitizeName makes a refused user name safe and short for the event:
// control characters become '?', and it is cut to MaxUserLength bytes.
func sanitizeName(name string) string {
	name = strings.ToValidUTF8(name, "?")
	name = strings.Map(func(c rune) rune {
		if unicode.IsControl(c) {
			return '?'
		}
		return c
	}, name)
	if len(name) > MaxUserLength {
		cut := MaxUserLength
		for cut > 0 && !utf8.RuneStart(name[cut]) {
			cut--
		}
		name = name[:cut]
	}
	return name
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
