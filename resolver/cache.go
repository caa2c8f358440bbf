package resolver

import (
	"cmp"
	"context"
	"errors"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"moat/metrics"
)

// key is what the cache and the in-flight queries are keyed by.
type key struct {
	name  string // lower-case FQDN
	qtype uint16
}

func (k key) String() string { return k.name + "/" + strconv.Itoa(int(k.qtype)) }

// entry is one cached answer, positive or not, converted for the lookup
// that asked for it. It is never changed once stored: lookups copy what
// they return.
type entry struct {
	expires time.Time
	server  string   // the server that answered, or the last one tried
	fail    *failure // nil for a positive answer
	strs    []string // TXT (chunks joined), PTR
	addrs   []netip.Addr
	mx      []net.MX // sorted by preference
}

// failure is a cached negative answer or error, turned into a fresh
// *net.DNSError for each caller.
type failure struct {
	text      string
	notFound  bool // NXDOMAIN, NODATA
	temporary bool
	timeout   bool
}

// errNoSuchHost is the text of an NXDOMAIN error, the same as net.Resolver's.
const errNoSuchHost = "no such host"

func (f *failure) dnsError(name, server string) *net.DNSError {
	return &net.DNSError{Err: f.text, Name: name, Server: server,
		IsNotFound: f.notFound, IsTemporary: f.temporary, IsTimeout: f.timeout}
}

// lookup answers (name, qtype) from the cache or from upstream. name is
// what the caller asked for, unchecked; errors carry it.
func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) (*entry, *net.DNSError) {
	if !isDomainName(name) {
		return nil, invalidName(name)
	}
	k := key{name: dns.Fqdn(strings.ToLower(name)), qtype: qtype}
	if e := r.cached(k); e != nil {
		r.hits.Add(1)
		metrics.DNS.CacheHit.Inc()
		return e.result(name)
	}
	if err := ctx.Err(); err != nil {
		return nil, r.ctxError(err, name)
	}
	// The query runs in its own goroutine on a context that keeps ctx's
	// values but not its end: a caller that stops waiting leaves it to
	// the others, and its answer still goes to the cache.
	leader := false
	ch := r.flights.DoChan(k.String(), func() (any, error) {
		leader = true
		return r.resolve(ctx, k), nil
	})
	r.misses.Add(1)
	select {
	case res := <-ch:
		if !leader {
			r.coalesced.Add(1)
			metrics.DNS.Coalesced.Inc()
		} else {
			metrics.DNS.CacheMiss.Inc()
		}
		return res.Val.(*entry).result(name)
	case <-ctx.Done():
		metrics.DNS.CacheMiss.Inc()
		return nil, r.ctxError(ctx.Err(), name)
	}
}

// cached returns the live cache entry for k, or nil.
func (r *Resolver) cached(k key) *entry {
	e, ok := r.cache.Get(k)
	if !ok || !r.now().Before(e.expires) {
		return nil
	}
	return e
}

func (e *entry) result(name string) (*entry, *net.DNSError) {
	if e.fail != nil {
		return nil, e.fail.dnsError(name, e.server)
	}
	return e, nil
}

// ctxError is the error of a caller whose context ended first.
func (r *Resolver) ctxError(err error, name string) *net.DNSError {
	d := &net.DNSError{Err: err.Error(), Name: name, Server: r.serverTag, IsTemporary: true, UnwrapErr: err}
	if errors.Is(err, context.DeadlineExceeded) {
		d.Err, d.IsTimeout = "i/o timeout", true
	}
	return d
}

// resolve asks upstream, within Timeout×Attempts×servers in all, and
// caches what it learns.
func (r *Resolver) resolve(ctx context.Context, k key) *entry {
	if e := r.cached(k); e != nil { // a query that just ended stored it
		return e
	}
	budget := r.timeout * time.Duration(r.attempts*len(r.servers))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), budget)
	defer cancel()
	e, ttl := r.resolveChain(ctx, k.name, k.qtype)
	if e.fail != nil && !e.fail.notFound {
		r.errors.Add(1)
	}
	if ttl > 0 {
		e.expires = r.now().Add(ttl)
		r.cache.Add(k, e)
	}
	return e
}

// resolveChain resolves name and qtype, following CNAMEs: those in one
// answer, and, when a server answers with a CNAME alone, with a query for
// its target. It returns the entry and how long to cache it (0: not at
// all).
func (r *Resolver) resolveChain(ctx context.Context, name string, qtype uint16) (*entry, time.Duration) {
	chainTTL := uint32(math.MaxUint32) // the lowest TTL of the CNAMEs followed
	hops := 0
	for {
		reply, server, fail := r.exchange(ctx, name, qtype)
		if fail != nil {
			return &entry{server: server, fail: fail}, FailureTTL
		}
		target, rrs, ttl, n := follow(reply.Answer, name, qtype, maxCNAME-hops)
		if n < 0 {
			return &entry{server: server, fail: &failure{text: "more than " + strconv.Itoa(maxCNAME) + " CNAMEs"}}, FailureTTL
		}
		hops += n
		chainTTL = min(chainTTL, ttl)
		if reply.Rcode == dns.RcodeSuccess && len(rrs) > 0 {
			return newEntry(qtype, rrs, server), r.positiveTTL(chainTTL)
		}
		soa := soaOf(reply)
		if reply.Rcode == dns.RcodeNameError || soa != nil || n == 0 {
			f := &failure{text: "no " + dns.TypeToString[qtype] + " record", notFound: true}
			if reply.Rcode == dns.RcodeNameError {
				f.text = errNoSuchHost
			}
			return &entry{server: server, fail: f}, r.negativeTTL(soa, chainTTL)
		}
		// A CNAME with neither its target's records nor a negative
		// answer for it: the server did not chase it, so ask for the
		// target.
		if hops >= maxCNAME {
			return &entry{server: server, fail: &failure{text: "more than " + strconv.Itoa(maxCNAME) + " CNAMEs"}}, FailureTTL
		}
		name = target
	}
}

// follow walks the CNAME chain from name through answer, at most budget
// links, and returns where it ends, the records of qtype owned by that
// name, the lowest TTL of all those records (MaxUint32 if none), and the
// number of CNAMEs followed (-1 if there were more than budget). Records
// of other types or other owners are ignored.
func follow(answer []dns.RR, name string, qtype uint16, budget int) (string, []dns.RR, uint32, int) {
	ttl := uint32(math.MaxUint32)
	for n := 0; ; n++ {
		var rrs []dns.RR
		var cname *dns.CNAME
		for _, rr := range answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, name) {
				continue
			}
			switch {
			case h.Rrtype == qtype:
				rrs = append(rrs, rr)
			case h.Rrtype == dns.TypeCNAME && cname == nil:
				cname = rr.(*dns.CNAME)
			}
		}
		if len(rrs) > 0 || cname == nil {
			for _, rr := range rrs {
				ttl = min(ttl, rr.Header().Ttl)
			}
			return name, rrs, ttl, n
		}
		if n == budget {
			return name, nil, ttl, -1
		}
		ttl = min(ttl, cname.Hdr.Ttl)
		name = strings.ToLower(cname.Target)
	}
}

func soaOf(m *dns.Msg) *dns.SOA {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return soa
		}
	}
	return nil
}

// positiveTTL clamps the lowest TTL of an answer to [MinTTL, MaxTTL].
func (r *Resolver) positiveTTL(ttl uint32) time.Duration {
	return min(max(time.Duration(ttl)*time.Second, r.minTTL), r.maxTTL)
}

// negativeTTL is RFC 2308's min(SOA TTL, SOA MINIMUM), also bounded by
// the CNAMEs that led there and by NegMaxTTL. Without an SOA there is no
// TTL, and RFC 2308 section 5 says not to cache.
func (r *Resolver) negativeTTL(soa *dns.SOA, chainTTL uint32) time.Duration {
	if soa == nil {
		return 0
	}
	ttl := min(soa.Hdr.Ttl, soa.Minttl, chainTTL)
	return min(time.Duration(ttl)*time.Second, r.negMaxTTL)
}

// newEntry converts the records of a positive answer.
func newEntry(qtype uint16, rrs []dns.RR, server string) *entry {
	e := &entry{server: server}
	for _, rr := range rrs {
		switch rr := rr.(type) {
		case *dns.TXT:
			e.strs = append(e.strs, strings.Join(rr.Txt, ""))
		case *dns.PTR:
			e.strs = append(e.strs, rr.Ptr)
		case *dns.MX:
			e.mx = append(e.mx, net.MX{Host: rr.Mx, Pref: rr.Preference})
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A); ok {
				e.addrs = append(e.addrs, a.Unmap())
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
				e.addrs = append(e.addrs, a)
			}
		}
	}
	slices.SortStableFunc(e.mx, func(a, b net.MX) int { return cmp.Compare(a.Pref, b.Pref) })
	return e
}

// isDomainName reports whether s is a name net.Resolver would look up:
// at most 253 characters (254 with the final dot), labels of 1 to 63
// letters, digits, hyphens and underscores, no label starting or ending
// with a hyphen, and not all digits and dots (that is an IP address).
// The root "." is a name.
func isDomainName(s string) bool {
	if s == "." {
		return true
	}
	if len(s) == 0 || len(s) > 254 || len(s) == 254 && s[253] != '.' {
		return false
	}
	nonNumeric := false
	label := 0 // length of the current label
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '_':
			nonNumeric = true
			label++
		case '0' <= c && c <= '9':
			label++
		case c == '-':
			if label == 0 {
				return false
			}
			nonNumeric = true
			label++
		case c == '.':
			if label == 0 || label > 63 || s[i-1] == '-' {
				return false
			}
			label = 0
		default:
			return false
		}
	}
	if label > 63 || s[len(s)-1] == '-' {
		return false
	}
	return nonNumeric
}

// invalidName is the error for a name that is not looked up, the same as
// net.Resolver's: not found, no server.
func invalidName(name string) *net.DNSError {
	return &net.DNSError{Err: errNoSuchHost + " (invalid name)", Name: name, IsNotFound: true}
}
