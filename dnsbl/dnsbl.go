// Package dnsbl looks the client up in DNS block and allow lists (DNSBL,
// DNSWL, RFC 5782) and the HELO name or sender domain in domain lists
// (RHSBL), and scores what it finds. Lookups go through the shared caching
// resolver and start when the client connects (Prefetch), so they are
// usually answered by the time the policy asks.
package dnsbl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"moat/filters"
)

// What a zone is asked about.
const (
	LookupClient = "client" // the client IP: reversed octets or nibbles
	LookupHELO   = "helo"   // the HELO/EHLO name
	LookupSender = "sender" // the envelope sender's domain
)

// Range is a span of answer addresses that count as listed.
type Range struct{ From, To netip.Addr }

// Zone is one list.
type Zone struct {
	Zone   string  // "zen.spamhaus.org"
	Score  float64 // negative for an allowlist
	Match  []Range // answers that count; empty: see defaultMatch
	Lookup string  // LookupClient (default), LookupHELO or LookupSender
}

// defaultMatch is what counts when a zone names no ranges: any answer in
// 127.0.0.0/8 except 127.0.0.1 (no list uses it for a listing) and
// 127.255.255.0/24, where lists such as Spamhaus report errors (for
// example "query via a public resolver"), which must not block mail.
func defaultMatch(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	b := a.As4()
	return b[0] == 127 && a != netip.AddrFrom4([4]byte{127, 0, 0, 1}) && !(b[1] == 255 && b[2] == 255)
}

// Listing is one list that answered for the client.
type Listing struct {
	Zone  string  `json:"zone"`
	Code  string  `json:"code"` // the answer, e.g. 127.0.0.2
	Score float64 `json:"score"`
	Query string  `json:"query"` // what was asked: the IP, HELO or domain
}

// Check is the dnsbl check of one policy.
type Check struct {
	zones []Zone
}

// NewCheck builds the check for the policy's zones.
func NewCheck(zones []Zone) *Check {
	zs := make([]Zone, len(zones))
	for i, z := range zones {
		z.Zone = strings.TrimSuffix(strings.ToLower(z.Zone), ".")
		if z.Lookup == "" {
			z.Lookup = LookupClient
		}
		zs[i] = z
	}
	return &Check{zones: zs}
}

// Name implements filters.Check.
func (c *Check) Name() string { return "dnsbl" }

// Stages implements filters.Check: the policy is known at the first RCPT,
// and by then HELO and the sender are known too.
func (c *Check) Stages() []filters.Stage { return []filters.Stage{filters.StageMail} }

// query returns the DNS name to ask zone z about, or "" when the
// transaction has nothing to ask (no HELO name, null sender, a HELO that
// is an address literal).
func query(z Zone, t *filters.Txn) (name, subject string) {
	switch z.Lookup {
	case LookupHELO:
		h := strings.TrimSuffix(strings.ToLower(t.Helo), ".")
		if h == "" || strings.HasPrefix(h, "[") || !strings.Contains(h, ".") {
			return "", ""
		}
		return h + "." + z.Zone, h
	case LookupSender:
		at := strings.LastIndexByte(t.From, '@')
		if at < 0 {
			return "", ""
		}
		d := strings.TrimSuffix(strings.ToLower(t.From[at+1:]), ".")
		if d == "" || strings.HasPrefix(d, "[") {
			return "", ""
		}
		return d + "." + z.Zone, d
	}
	if !t.ClientIP.IsValid() {
		return "", ""
	}
	return ReverseName(t.ClientIP) + "." + z.Zone, t.ClientIP.Unmap().String()
}

// ReverseName is the list query label for an address: 192.0.2.1 →
// 1.2.0.192; IPv6 → 32 nibbles, least significant first (RFC 5782).
func ReverseName(a netip.Addr) string {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		return fmt.Sprintf("%d.%d.%d.%d", b[3], b[2], b[1], b[0])
	}
	b := a.As16()
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 63)
	for i := 15; i >= 0; i-- {
		if len(out) > 0 {
			out = append(out, '.')
		}
		out = append(out, hex[b[i]&0xf], '.', hex[b[i]>>4])
	}
	return string(out)
}

// lookuper is the resolver method the check prefers: one A query.
type lookuper interface {
	LookupA(ctx context.Context, name string) ([]netip.Addr, error)
}

// cacheLookuper answers from its cache alone (resolver.Resolver):
// cached answers need no goroutine.
type cacheLookuper interface {
	CachedA(name string) (addrs []netip.Addr, cached bool, err error)
}

// cachedA is r's cached answer for name, if r has a cache and it holds one.
func cachedA(r filters.Resolver, name string) ([]netip.Addr, bool, error) {
	if c, ok := r.(cacheLookuper); ok {
		return c.CachedA(name)
	}
	return nil, false, nil
}

func lookupA(ctx context.Context, r filters.Resolver, name string) ([]netip.Addr, error) {
	if l, ok := r.(lookuper); ok {
		return l.LookupA(ctx, name)
	}
	ips, err := r.LookupIPAddr(ctx, name)
	var out []netip.Addr
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip.IP); ok && a.Unmap().Is4() {
			out = append(out, a.Unmap())
		}
	}
	return out, err
}

// Prefetch starts every lookup in the background so that the answers
// are cached (or in flight) when Run needs them.
func (c *Check) Prefetch(ctx context.Context, t *filters.Txn) {
	if t.DNS == nil {
		return
	}
	for _, z := range c.zones {
		if name, _ := query(z, t); name != "" {
			if _, cached, _ := cachedA(t.DNS, name); !cached {
				go lookupA(ctx, t.DNS, name)
			}
		}
	}
}

type answer struct {
	zone    Zone
	subject string
	addrs   []netip.Addr
	err     error
}

// Run implements filters.Check: every zone is asked in parallel; the
// result is fail when a list with a positive score lists the client, pass
// when only allowlists do, none when nothing lists it, and temperror when
// nothing lists it and a lookup failed (a DNS failure adds no score).
func (c *Check) Run(ctx context.Context, _ filters.Stage, t *filters.Txn) (filters.Result, bool) {
	if t.DNS == nil || len(c.zones) == 0 {
		return filters.Result{}, false
	}
	answers := make([]answer, len(c.zones))
	var wg sync.WaitGroup
	for i, z := range c.zones {
		name, subject := query(z, t)
		answers[i] = answer{zone: z, subject: subject}
		if name == "" {
			continue
		}
		// Cached answers (Prefetch asked at MAIL) are read here; only
		// the others are asked, in parallel.
		if addrs, cached, err := cachedA(t.DNS, name); cached {
			answers[i].addrs, answers[i].err = addrs, err
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i].addrs, answers[i].err = lookupA(ctx, t.DNS, name)
		}()
	}
	wg.Wait()
	var listed []Listing
	var failed []string
	score := 0.0
	block := false
	for _, a := range answers {
		if a.err != nil {
			var de *net.DNSError
			if !(errors.As(a.err, &de) && de.IsNotFound) {
				failed = append(failed, a.zone.Zone)
			}
			continue
		}
		sort.Slice(a.addrs, func(i, j int) bool { return a.addrs[i].Less(a.addrs[j]) })
		for _, addr := range a.addrs {
			if matches(a.zone, addr) {
				listed = append(listed, Listing{Zone: a.zone.Zone, Code: addr.String(), Score: a.zone.Score, Query: a.subject})
				score += a.zone.Score
				block = block || a.zone.Score > 0
				break // one listing per zone
			}
		}
	}
	r := filters.Result{Check: "dnsbl", Value: filters.None, Score: score, Fields: map[string]any{}}
	switch {
	case block:
		r.Value = filters.Fail
	case len(listed) > 0:
		r.Value = filters.Pass
	case len(failed) > 0:
		r.Value = filters.TempError
		r.Score = 0
	}
	if len(listed) > 0 {
		r.Fields["listed"] = listed
		var parts []string
		for _, l := range listed {
			parts = append(parts, fmt.Sprintf("%s listed on %s (%s)", l.Query, l.Zone, l.Code))
		}
		r.Reason = strings.Join(parts, ", ")
	}
	if len(failed) > 0 {
		r.Fields["failed"] = failed
		if r.Reason == "" {
			r.Reason = "lookup failed for " + strings.Join(failed, ", ")
		}
	}
	return r, true
}

func matches(z Zone, a netip.Addr) bool {
	if len(z.Match) == 0 {
		return defaultMatch(a)
	}
	for _, m := range z.Match {
		if m.From.Compare(a) <= 0 && a.Compare(m.To) <= 0 {
			return true
		}
	}
	return false
}

var _ filters.Check = (*Check)(nil)
