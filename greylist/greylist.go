package greylist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// Verdict is the greylisting outcome of one recipient.
type Verdict string

const (
	// New: first sight of the triplet (or first since it expired); the
	// message is greylisted.
	New Verdict = "new"
	// Early: a retry before the delay is over; still greylisted.
	Early Verdict = "early"
	// Passed: a retry after the delay within the retry window, or a
	// triplet that passed before and was seen within its lifetime.
	Passed Verdict = "passed"
	// AutoAllowed: the client network passed AutoAllowAfter distinct
	// triplets, so all its mail skips greylisting.
	AutoAllowed Verdict = "auto-allowed"
	// Allowed: the client network or the sender is allowed by hand.
	Allowed Verdict = "allowed"
)

// Greylisted reports whether the verdict delays the message.
func (v Verdict) Greylisted() bool { return v == New || v == Early }

// Result is the decision on one recipient.
type Result struct {
	Verdict Verdict
	// Key is the triplet's store key ("t|192.0.2.0/24|sender|rcpt"), set
	// even when the check fails.
	Key string
	// FirstSeen is when the triplet was first seen (zero for Allowed and
	// AutoAllowed).
	FirstSeen time.Time
	// RetryAfter is when a retry passes; set for New and Early.
	RetryAfter time.Time
}

// Greylister decides greylisting over a Store. The decision logic is all
// here, so every store behaves the same. Times come from Now and are kept
// inside the records: a store's own expiry only reclaims space, and a
// store that keeps a record longer (another clock, a late sweep) changes
// no decision. A zero RetryWindow or Lifetime in Params means
// DefaultParams' value. A Greylister is safe for concurrent use and must
// not be copied after its first use.
type Greylister struct {
	Store  Store
	Params Params
	Now    func() time.Time // time.Now when nil

	allows atomic.Pointer[allowCache] // the allow list last read, decoded
}

// refreshAfter: a passed triplet's last-seen time (and an active
// network's auto-allow) is rewritten only when older than this, so that
// most checks of known triplets only read.
const refreshAfter = time.Hour

// foreverTTL is the store TTL of an allow list whose entries have no end.
const foreverTTL = 100 * 365 * 24 * time.Hour

// params are g.Params with a zero RetryWindow or Lifetime taken from
// DefaultParams (a zero prefix already means the default).
func (g *Greylister) params() Params {
	p, d := g.Params, DefaultParams()
	if p.RetryWindow <= 0 {
		p.RetryWindow = d.RetryWindow
	}
	if p.Lifetime <= 0 {
		p.Lifetime = d.Lifetime
	}
	return p
}

func (g *Greylister) now() time.Time {
	if g.Now != nil {
		return g.Now()
	}
	return time.Now()
}

// unavailable wraps a store failure so that errors.Is(err,
// ErrUnavailable) holds.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Check decides one recipient of a transaction from client. Manual allows
// and the network's auto-allow are read first; then the triplet is
// updated: first sight records it (New), a retry before the delay counts
// an attempt (Early), one after the delay and within the retry window
// passes it (Passed) and, the first time, counts a pass for the client
// network, which is auto-allowed once it has AutoAllowAfter of them. A
// passed triplet is remembered for Lifetime after it was last seen.
//
// bodyHash, when not "", becomes part of the triplet (greylisting after
// DATA). Store failures come back wrapping ErrUnavailable, with only
// Result.Key set; the caller decides (by default greylisting fails open).
func (g *Greylister) Check(ctx context.Context, client netip.Addr, sender, rcpt, bodyHash string) (Result, error) {
	now := g.now()
	p := g.params()
	t := MakeTriplet(client, sender, rcpt, p)
	t.BodyHash = bodyHash
	res := Result{Key: t.Key()}
	if !t.Network.IsValid() {
		return res, fmt.Errorf("greylist: invalid client address %v", client)
	}

	// The allow list, the triplet's record and the network's: one round
	// trip when the store can (Redis: MGET).
	keys := []string{keyAllows, res.Key, networkKey(t.Network)}
	if p.AutoAllowAfter <= 0 {
		keys = keys[:2]
	}
	vs, err := getMany(ctx, g.Store, keys)
	if err != nil {
		return res, unavailable(err)
	}
	rawAllows, rawTriplet, rawNet := vs[0], vs[1], []byte(nil)
	if len(vs) > 2 {
		rawNet = vs[2]
	}

	if g.allowsFrom(rawAllows).match(client.Unmap().WithZone(""), t.Sender, now) {
		res.Verdict = Allowed
		return res, nil
	}
	if p.AutoAllowAfter > 0 && g.autoAllowed(ctx, t.Network, rawNet, now, p) {
		res.Verdict = AutoAllowed
		return res, nil
	}

	var d decision
	err = updateFrom(ctx, g.Store, res.Key, rawTriplet, func(cur []byte) ([]byte, time.Duration, bool, error) {
		d = decide(cur, now, p)
		return d.next, d.ttl, d.write, nil
	})
	if err != nil {
		return res, unavailable(err)
	}
	res.Verdict, res.FirstSeen = d.verdict, d.rec.FirstSeen
	if d.verdict.Greylisted() {
		res.RetryAfter = d.rec.FirstSeen.Add(p.Delay)
	}
	if d.firstPass {
		if err := g.countPass(ctx, t.Network, now, p); err != nil {
			return Result{Key: res.Key}, unavailable(err)
		}
	}
	return res, nil
}

// decision is what decide makes of a triplet record.
type decision struct {
	verdict   Verdict
	rec       tripletRecord
	firstPass bool
	next      []byte
	ttl       time.Duration
	write     bool
}

// decide is the triplet rule, a pure function of the stored record (nil
// when absent) and the time. Intervals are half-open: a retry passes from
// first sight + Delay until (not at) first sight + RetryWindow, and a
// passed triplet is forgotten Lifetime after it was last seen.
func decide(cur []byte, now time.Time, p Params) decision {
	rec, err := decodeTriplet(cur)
	switch {
	case err != nil: // absent, or unreadable: start over
	case !rec.PassedAt.IsZero():
		if now.Sub(rec.LastSeen) >= p.Lifetime {
			break // not seen for a lifetime: forgotten
		}
		d := decision{verdict: Passed, rec: rec}
		if now.Sub(rec.LastSeen) >= refreshAfter {
			d.rec.LastSeen = now
			d.next, d.ttl, d.write = d.rec.encode(), p.Lifetime, true
		}
		return d
	case now.Sub(rec.FirstSeen) >= p.RetryWindow:
		// The retry came too late: start over.
	case now.Before(rec.FirstSeen.Add(p.Delay)):
		rec.LastSeen = now
		rec.Attempts++
		return decision{verdict: Early, rec: rec, next: rec.encode(), ttl: waitingTTL(rec, now, p), write: true}
	default:
		rec.LastSeen, rec.PassedAt = now, now
		rec.Attempts++
		return decision{verdict: Passed, rec: rec, firstPass: true, next: rec.encode(), ttl: p.Lifetime, write: true}
	}
	rec = tripletRecord{FirstSeen: now, LastSeen: now, Attempts: 1}
	return decision{verdict: New, rec: rec, next: rec.encode(), ttl: waitingTTL(rec, now, p), write: true}
}

// waitingTTL is the store TTL of a triplet waiting for its retry: the end
// of its retry window plus the delay as a margin (a shared store's clock
// may run ahead), at least a second.
func waitingTTL(rec tripletRecord, now time.Time, p Params) time.Duration {
	return max(rec.FirstSeen.Add(max(p.RetryWindow, p.Delay)+p.Delay).Sub(now), time.Second)
}

// batchStore is a Store that reads several records at once (Redis: one
// MGET; bolt: one read transaction) and starts an Update from a record it
// just read.
type batchStore interface {
	getMany(ctx context.Context, keys []string) ([][]byte, error)
	updateFrom(ctx context.Context, key string, cur []byte, fn UpdateFunc) error
}

// getMany reads the records under keys from s, in one round trip when s
// is a batchStore.
func getMany(ctx context.Context, s Store, keys []string) ([][]byte, error) {
	if bs, ok := s.(batchStore); ok {
		return bs.getMany(ctx, keys)
	}
	out := make([][]byte, len(keys))
	for i, k := range keys {
		v, err := s.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// updateFrom is s.Update of a record just read as cur: a batchStore
// starts from cur instead of reading it again.
func updateFrom(ctx context.Context, s Store, key string, cur []byte, fn UpdateFunc) error {
	if bs, ok := s.(batchStore); ok {
		return bs.updateFrom(ctx, key, cur, fn)
	}
	return s.Update(ctx, key, fn)
}

// autoAllowed reports whether the network record raw auto-allows; an
// active auto-allowed network has its auto-allow pushed to a lifetime
// from now, at most hourly.
func (g *Greylister) autoAllowed(ctx context.Context, network netip.Prefix, raw []byte, now time.Time, p Params) bool {
	key := networkKey(network)
	rec, err := decodeNetwork(raw)
	if err != nil || !now.Before(rec.AutoUntil) {
		return false
	}
	if rec.AutoUntil.Sub(now) < p.Lifetime-refreshAfter {
		// The decision is made: a failed refresh is tried again next time.
		_ = g.Store.Update(ctx, key, func(cur []byte) ([]byte, time.Duration, bool, error) {
			rec, err := decodeNetwork(cur)
			if err != nil || !now.Before(rec.AutoUntil) {
				return nil, 0, false, nil // gone meanwhile: leave it
			}
			rec.AutoUntil = now.Add(p.Lifetime)
			return rec.encode(), p.Lifetime, true, nil
		})
	}
	return true
}

// countPass counts a triplet's first pass for its network and starts the
// network's auto-allow when the count reaches AutoAllowAfter.
func (g *Greylister) countPass(ctx context.Context, network netip.Prefix, now time.Time, p Params) error {
	return g.Store.Update(ctx, networkKey(network), func(cur []byte) ([]byte, time.Duration, bool, error) {
		rec, err := decodeNetwork(cur)
		if err != nil {
			rec = networkRecord{}
		}
		rec.Passed++
		rec.LastPass = now
		if p.AutoAllowAfter > 0 && rec.Passed >= p.AutoAllowAfter && !now.Before(rec.AutoUntil) {
			rec.AutoUntil = now.Add(p.Lifetime)
		}
		return rec.encode(), p.Lifetime, true, nil
	})
}

// allowCache is the allow list as last read: the raw record, so that an
// unchanged list is not decoded again, and its entries.
type allowCache struct {
	raw     []byte
	entries []allowEntry
}

// allowsFrom decodes the allow list record raw, or reuses the last
// decoding when the record is the same.
func (g *Greylister) allowsFrom(raw []byte) *allowCache {
	if c := g.allows.Load(); c != nil && bytes.Equal(c.raw, raw) {
		return c
	}
	entries, err := decodeAllows(raw)
	if err != nil {
		entries = nil // absent, or from a newer moat: no allows this moat can read
	}
	c := &allowCache{raw: raw, entries: entries}
	g.allows.Store(c)
	return c
}

// match reports whether a live allow covers the client or the sender.
func (c *allowCache) match(client netip.Addr, sender string, now time.Time) bool {
	for _, e := range c.entries {
		if e.live(now) && e.matches(client, sender) {
			return true
		}
	}
	return false
}

func (e allowEntry) matches(client netip.Addr, sender string) bool {
	if e.isNetwork() {
		return e.Network.Contains(client)
	}
	return senderMatches(e.Sender, sender)
}

// senderMatches matches a normalised sender against a pattern: an
// address, "@domain" for any address at that domain, or "" for the null
// sender.
func senderMatches(pattern, sender string) bool {
	if strings.HasPrefix(pattern, "@") {
		return strings.HasSuffix(sender, pattern)
	}
	return pattern == sender
}

// senderPattern turns what an admin typed into a sender pattern: "<>" is
// the null sender, "example.com" or "@example.com" a domain, anything
// else an address, normalised like a triplet's sender.
func senderPattern(s string) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "<>":
		return "", nil
	case s == "" || s == "@":
		return "", errors.New("greylist: empty sender (write <> for the null sender)")
	case strings.HasPrefix(s, "@"):
		return strings.ToLower(s), nil
	case !strings.Contains(s, "@"):
		return "@" + strings.ToLower(s), nil
	}
	return NormalizeSender(s), nil
}
