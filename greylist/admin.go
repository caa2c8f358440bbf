package greylist

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Entry kinds in List.
const (
	KindTriplet = "triplet"
	KindNetwork = "network"
	KindAllow   = "allow"
)

// Entry states in List.
const (
	StateGreylisted  = "greylisted"   // triplet: waiting for a retry
	StatePassed      = "passed"       // triplet: passed, remembered
	StateCounting    = "counting"     // network: counting passes, not auto-allowed
	StateAutoAllowed = "auto-allowed" // network: auto-allowed
	StateAllowed     = "allowed"      // allow: in force
	StateExpired     = "expired"      // anything over, not yet dropped by the store
)

// Filter selects what List and Delete see; a zero field matches
// everything.
type Filter struct {
	// Client matches entries whose network overlaps it: 192.0.2.7/32
	// finds the triplets of 192.0.2.0/24. Entries without a network (a
	// sender allow) do not match a set Client.
	Client netip.Prefix
	// Sender is an address (normalised like a triplet's sender), a domain
	// ("example.com" or "@example.com") or "<>" for the null sender.
	// Entries without a sender (networks, network allows) do not match a
	// set Sender.
	Sender string
}

// Entry is one record as List shows it.
type Entry struct {
	Kind      string // KindTriplet, KindNetwork or KindAllow
	Key       string // store key; for allows "a|n|NETWORK" or "a|s|SENDER"
	Network   netip.Prefix
	Sender    string // triplet: normalised sender; allow: address, "@domain" or "" (null sender)
	Rcpt      string
	BodyHash  string
	FirstSeen time.Time // triplet: first sight; allow: when added
	LastSeen  time.Time // triplet: last seen (rewritten at most hourly once passed); network: last pass
	PassedAt  time.Time // triplet: when it passed
	Attempts  int       // triplet: deliveries tried up to its pass
	Passed    int       // network: distinct triplets passed
	// Until is when the entry ends: a waiting triplet's retry window, a
	// passed one's lifetime, a network's auto-allow, an allow's end (zero:
	// no end).
	Until time.Time
	By    string // allow: who added it
	State string // one of the State constants
}

// byKey is the context key of WithBy.
type byKey struct{}

// WithBy names who makes an allow (the CLI's or admin API's user),
// recorded with AllowNetwork and AllowSender; "admin" when unset.
func WithBy(ctx context.Context, by string) context.Context {
	return context.WithValue(ctx, byKey{}, by)
}

func byFrom(ctx context.Context) string {
	if by, _ := ctx.Value(byKey{}).(string); by != "" {
		return by
	}
	return "admin"
}

// filter is a compiled Filter.
type filter struct {
	client    netip.Prefix
	sender    string
	hasSender bool
}

func (f Filter) compile() (filter, error) {
	var c filter
	if f.Client.IsValid() {
		p, err := normalizePrefix(f.Client)
		if err != nil {
			return c, err
		}
		c.client = p
	}
	if f.Sender != "" {
		s, err := senderPattern(f.Sender)
		if err != nil {
			return c, err
		}
		c.sender, c.hasSender = s, true
	}
	return c, nil
}

func (c filter) network(n netip.Prefix) bool {
	return !c.client.IsValid() || (n.IsValid() && c.client.Overlaps(n))
}

func (c filter) triplet(t Triplet) bool {
	return c.network(t.Network) && (!c.hasSender || senderMatches(c.sender, t.Sender))
}

func (c filter) allow(e allowEntry) bool {
	if e.isNetwork() {
		return !c.hasSender && c.network(e.Network)
	}
	return !c.client.IsValid() && (!c.hasSender || c.sender == e.Sender || senderMatches(c.sender, e.Sender))
}

// normalizePrefix masks a prefix and takes an IPv4-mapped one as IPv4.
func normalizePrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("greylist: invalid network %v", p)
	}
	a, bits := p.Addr().WithZone(""), p.Bits()
	if a.Is4In6() && bits >= 96 {
		a, bits = a.Unmap(), bits-96
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}

// List returns the triplets, network records and allows that match f,
// allows first, then networks, then triplets, each sorted by key.
func (g *Greylister) List(ctx context.Context, f Filter) ([]Entry, error) {
	c, err := f.compile()
	if err != nil {
		return nil, err
	}
	now, p := g.now(), g.params()
	var out []Entry
	allows, err := g.readAllows(ctx)
	if err != nil {
		return nil, err
	}
	for _, a := range allows {
		if c.allow(a) {
			out = append(out, allowToEntry(a, now))
		}
	}
	if !c.hasSender {
		err := g.Store.Scan(ctx, prefixNetwork, func(key string, v []byte) bool {
			n, err := netip.ParsePrefix(key[len(prefixNetwork):])
			rec, derr := decodeNetwork(v)
			if err == nil && derr == nil && c.network(n) {
				out = append(out, networkToEntry(key, n, rec, now))
			}
			return true
		})
		if err != nil {
			return nil, unavailable(err)
		}
	}
	err = g.Store.Scan(ctx, prefixTriplet, func(key string, v []byte) bool {
		t, ok := parseTripletKey(key)
		rec, err := decodeTriplet(v)
		if ok && err == nil && c.triplet(t) {
			out = append(out, tripletToEntry(key, t, rec, now, p))
		}
		return true
	})
	if err != nil {
		return nil, unavailable(err)
	}
	order := map[string]int{KindAllow: 0, KindNetwork: 1, KindTriplet: 2}
	slices.SortFunc(out, func(a, b Entry) int {
		return cmp.Or(cmp.Compare(order[a.Kind], order[b.Kind]), cmp.Compare(a.Key, b.Key))
	})
	return out, nil
}

func tripletToEntry(key string, t Triplet, rec tripletRecord, now time.Time, p Params) Entry {
	e := Entry{Kind: KindTriplet, Key: key, Network: t.Network, Sender: t.Sender, Rcpt: t.Rcpt, BodyHash: t.BodyHash,
		FirstSeen: rec.FirstSeen, LastSeen: rec.LastSeen, PassedAt: rec.PassedAt, Attempts: rec.Attempts}
	if rec.PassedAt.IsZero() {
		e.Until, e.State = rec.FirstSeen.Add(p.RetryWindow), StateGreylisted
	} else {
		e.Until, e.State = rec.LastSeen.Add(p.Lifetime), StatePassed
	}
	if !now.Before(e.Until) {
		e.State = StateExpired
	}
	return e
}

func networkToEntry(key string, n netip.Prefix, rec networkRecord, now time.Time) Entry {
	e := Entry{Kind: KindNetwork, Key: key, Network: n, LastSeen: rec.LastPass, Passed: rec.Passed, Until: rec.AutoUntil, State: StateCounting}
	if now.Before(rec.AutoUntil) {
		e.State = StateAutoAllowed
	}
	return e
}

func allowToEntry(a allowEntry, now time.Time) Entry {
	e := Entry{Kind: KindAllow, Key: a.key(), Sender: a.Sender, FirstSeen: a.Added, Until: a.Until, By: a.By, State: StateAllowed}
	if a.isNetwork() {
		e.Network = a.Network
	}
	if !a.live(now) {
		e.State = StateExpired
	}
	return e
}

// Delete removes the triplets, network records and allows that match f
// (a zero Filter: everything) and returns how many.
func (g *Greylister) Delete(ctx context.Context, f Filter) (int, error) {
	c, err := f.compile()
	if err != nil {
		return 0, err
	}
	var keys []string
	if !c.hasSender {
		err := g.Store.Scan(ctx, prefixNetwork, func(key string, _ []byte) bool {
			if n, err := netip.ParsePrefix(key[len(prefixNetwork):]); err == nil && c.network(n) {
				keys = append(keys, key)
			}
			return true
		})
		if err != nil {
			return 0, unavailable(err)
		}
	}
	err = g.Store.Scan(ctx, prefixTriplet, func(key string, _ []byte) bool {
		if t, ok := parseTripletKey(key); ok && c.triplet(t) {
			keys = append(keys, key)
		}
		return true
	})
	if err != nil {
		return 0, unavailable(err)
	}
	n := 0
	for _, k := range keys {
		if err := g.Store.Delete(ctx, k); err != nil {
			return n, unavailable(err)
		}
		n++
	}
	var removed int
	err = g.updateAllows(ctx, func(entries []allowEntry) []allowEntry {
		kept := entries[:0]
		for _, e := range entries {
			if !c.allow(e) {
				kept = append(kept, e)
			}
		}
		removed = len(entries) - len(kept)
		return kept
	})
	return n + removed, err
}

// AllowNetwork lets every client in prefix skip greylisting until then
// (zero: no end), replacing an allow of the same network.
func (g *Greylister) AllowNetwork(ctx context.Context, prefix netip.Prefix, until time.Time) error {
	p, err := normalizePrefix(prefix)
	if err != nil {
		return err
	}
	return g.addAllow(ctx, allowEntry{Network: p, Until: until})
}

// AllowSender lets a sender skip greylisting until then (zero: no end):
// an address (normalised like a triplet's sender, so a BATV or SRS form
// allows the original), a domain ("example.com" or "@example.com") or
// "<>" for the null sender. It replaces an allow of the same sender.
func (g *Greylister) AllowSender(ctx context.Context, sender string, until time.Time) error {
	s, err := senderPattern(sender)
	if err != nil {
		return err
	}
	return g.addAllow(ctx, allowEntry{Sender: s, Until: until})
}

func (g *Greylister) addAllow(ctx context.Context, a allowEntry) error {
	a.Added, a.By = g.now(), byFrom(ctx)
	if !a.live(a.Added) {
		return fmt.Errorf("greylist: allow until %v: that is not in the future", a.Until.Format(time.RFC3339))
	}
	return g.updateAllows(ctx, func(entries []allowEntry) []allowEntry {
		entries = slices.DeleteFunc(entries, func(e allowEntry) bool { return e.key() == a.key() })
		return append(entries, a)
	})
}

// AllowTriplet marks one triplet (without a body hash) as passed now, as
// if its retry had come after the delay; it does not count towards the
// network's auto-allow.
func (g *Greylister) AllowTriplet(ctx context.Context, client netip.Addr, sender, rcpt string) error {
	p := g.params()
	t := MakeTriplet(client, sender, rcpt, p)
	if !t.Network.IsValid() {
		return fmt.Errorf("greylist: invalid client address %v", client)
	}
	now := g.now()
	err := g.Store.Update(ctx, t.Key(), func(cur []byte) ([]byte, time.Duration, bool, error) {
		rec, err := decodeTriplet(cur)
		if err != nil {
			rec = tripletRecord{FirstSeen: now, Attempts: 1}
		}
		rec.LastSeen = now
		if rec.PassedAt.IsZero() {
			rec.PassedAt = now
		}
		return rec.encode(), p.Lifetime, true, nil
	})
	return unavailable(err)
}

var errUnreadableAllows = errors.New("greylist: the allow list was written by a newer moat; not changed")

// readAllows returns the allow list, expired entries included.
func (g *Greylister) readAllows(ctx context.Context) ([]allowEntry, error) {
	raw, err := g.Store.Get(ctx, keyAllows)
	if err != nil {
		return nil, unavailable(err)
	}
	if raw == nil {
		return nil, nil
	}
	entries, err := decodeAllows(raw)
	if err != nil {
		return nil, errUnreadableAllows
	}
	return entries, nil
}

// updateAllows rewrites the allow list through change, dropping expired
// entries; it never overwrites a list it cannot read. change gets a fresh
// slice each time (Store.Update may call it more than once).
func (g *Greylister) updateAllows(ctx context.Context, change func([]allowEntry) []allowEntry) error {
	now := g.now()
	err := g.Store.Update(ctx, keyAllows, func(cur []byte) ([]byte, time.Duration, bool, error) {
		var entries []allowEntry
		if cur != nil {
			var err error
			if entries, err = decodeAllows(cur); err != nil {
				return nil, 0, false, errUnreadableAllows
			}
		}
		entries = slices.DeleteFunc(entries, func(e allowEntry) bool { return !e.live(now) })
		entries = change(entries)
		if len(entries) == 0 {
			return nil, 0, cur != nil, nil
		}
		var ttl time.Duration
		for _, e := range entries {
			if e.Until.IsZero() {
				ttl = foreverTTL
				break
			}
			ttl = max(ttl, e.Until.Sub(now), time.Second)
		}
		return encodeAllows(entries), ttl, true, nil
	})
	if errors.Is(err, errUnreadableAllows) {
		return err
	}
	return unavailable(err)
}
