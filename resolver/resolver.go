// Package resolver is moat's caching DNS stub resolver: the one resolver
// the SPF, DKIM, DMARC and DNSBL checks share. It sends recursive queries
// to the configured servers (UDP with EDNS0, TCP when a reply is
// truncated), caches answers by name and type with their TTLs, caches
// NXDOMAIN and NODATA per RFC 2308, and sends one query upstream for any
// number of callers asking the same question at once.
//
// Every error is an unwrapped *net.DNSError, because that is the only
// error type blitiri.com.ar/go/spf and go-msgauth look at: IsNotFound for
// NXDOMAIN, NODATA and invalid names; IsTemporary (and IsTimeout for
// timeouts) for SERVFAIL, REFUSED, timeouts and network errors; neither
// flag for FORMERR and malformed replies, which those libraries take for
// permanent errors. README.md has the cache and error rules in full.
package resolver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"

	"moat/filters"
	"moat/metrics"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout   = 2 * time.Second
	DefaultAttempts  = 2
	DefaultCacheSize = 20000
	DefaultMinTTL    = 30 * time.Second
	DefaultMaxTTL    = 24 * time.Hour
	DefaultNegMaxTTL = time.Hour
)

// FailureTTL is how long a failed resolution (SERVFAIL, REFUSED, FORMERR,
// timeout, network error, malformed reply) stays cached, so that a dead
// or broken server costs one wait per name and type every few seconds
// instead of one per message. RFC 9520 asks resolvers to cache failures
// for at least one second and at most five minutes.
const FailureTTL = 5 * time.Second

const (
	resolvConf  = "/etc/resolv.conf"
	fallbackDNS = "127.0.0.1:53"
	ednsSize    = 1232 // the EDNS0 UDP size of DNS Flag Day 2020
	maxCNAME    = 8    // CNAMEs followed per lookup
)

// Config configures a Resolver. The zero value of every field means its
// default.
type Config struct {
	// Servers are the recursive resolvers to ask, "ip:port" (a bare IP
	// means port 53). Empty: the nameservers of /etc/resolv.conf, or
	// 127.0.0.1:53 if that file cannot be read or lists none.
	Servers []string
	// Timeout is the limit on one query attempt, including its retry
	// over TCP after a truncated UDP reply. Default 2s.
	Timeout time.Duration
	// Attempts is how many times each server is asked. The servers are
	// tried in order, a failure moving on to the next one, and the list
	// is gone through Attempts times. Default 2.
	Attempts int
	// CacheSize is the number of (name, type) entries the cache holds,
	// least recently used evicted first. Default 20000.
	CacheSize int
	// MinTTL and MaxTTL are the floor and the ceiling on how long a
	// positive answer is cached. Defaults 30s and 24h.
	MinTTL, MaxTTL time.Duration
	// NegMaxTTL is the ceiling on how long NXDOMAIN and NODATA are
	// cached. Default 1h.
	NegMaxTTL time.Duration
	// Now is the clock, injected by tests; nil means time.Now.
	Now func() time.Time
}

// Resolver is a caching DNS stub resolver, safe for concurrent use. It
// implements filters.Resolver.
type Resolver struct {
	servers   []string
	serverTag string // the servers as one string, for errors that cannot name one
	timeout   time.Duration
	attempts  int
	minTTL    time.Duration
	maxTTL    time.Duration
	negMaxTTL time.Duration
	now       func() time.Time

	udp, tcp *dns.Client
	cache    *lru.Cache[key, *entry]
	flights  singleflight.Group

	queries, hits, misses, coalesced, errors atomic.Uint64
}

// Stats are the resolver's counters since New, for metrics.
type Stats struct {
	Queries   uint64 // messages sent upstream: every UDP and TCP attempt, retries included
	Hits      uint64 // lookups answered from the cache, one per name and type (LookupIPAddr makes two)
	Misses    uint64 // lookups the cache could not answer
	Coalesced uint64 // misses answered by a query another caller had already sent
	Errors    uint64 // resolutions that failed (not NXDOMAIN or NODATA), counted once however many callers waited
}

// New returns a resolver for c, after checking it.
func New(c Config) (*Resolver, error) {
	r := &Resolver{
		timeout: c.Timeout, attempts: c.Attempts,
		minTTL: c.MinTTL, maxTTL: c.MaxTTL, negMaxTTL: c.NegMaxTTL, now: c.Now,
	}
	if len(c.Servers) == 0 {
		r.servers = systemServers(resolvConf)
	}
	for i, s := range c.Servers {
		addr, err := serverAddr(s)
		if err != nil {
			return nil, fmt.Errorf("resolver: Servers[%d]: %w", i, err)
		}
		r.servers = append(r.servers, addr)
	}
	r.serverTag = strings.Join(r.servers, ",")
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Timeout", &r.timeout, DefaultTimeout},
		{"MinTTL", &r.minTTL, DefaultMinTTL},
		{"MaxTTL", &r.maxTTL, DefaultMaxTTL},
		{"NegMaxTTL", &r.negMaxTTL, DefaultNegMaxTTL},
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("resolver: %s must not be negative, got %v", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if r.minTTL > r.maxTTL {
		return nil, fmt.Errorf("resolver: MinTTL %v is more than MaxTTL %v", r.minTTL, r.maxTTL)
	}
	switch {
	case r.attempts < 0:
		return nil, fmt.Errorf("resolver: Attempts must not be negative, got %d", r.attempts)
	case r.attempts == 0:
		r.attempts = DefaultAttempts
	}
	size := c.CacheSize
	switch {
	case size < 0:
		return nil, fmt.Errorf("resolver: CacheSize must not be negative, got %d", size)
	case size == 0:
		size = DefaultCacheSize
	}
	cache, err := lru.New[key, *entry](size)
	if err != nil {
		return nil, fmt.Errorf("resolver: cache of %d entries: %w", size, err)
	}
	r.cache = cache
	if r.now == nil {
		r.now = time.Now
	}
	r.udp = &dns.Client{Net: "udp", Timeout: r.timeout, UDPSize: ednsSize}
	r.tcp = &dns.Client{Net: "tcp", Timeout: r.timeout}
	return r, nil
}

// Servers returns the servers the resolver asks, "ip:port", in order.
func (r *Resolver) Servers() []string { return slices.Clone(r.servers) }

// Stats returns the counters.
func (r *Resolver) Stats() Stats {
	return Stats{
		Queries:   r.queries.Load(),
		Hits:      r.hits.Load(),
		Misses:    r.misses.Load(),
		Coalesced: r.coalesced.Load(),
		Errors:    r.errors.Load(),
	}
}

// LookupTXT returns the TXT records of name, one string per record with
// its character-strings joined.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	e, err := r.lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	return slices.Clone(e.strs), nil
}

// LookupMX returns the MX records of name, sorted by preference (records
// of equal preference keep the server's order). Host names are absolute,
// with a trailing dot, as net.Resolver returns them.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	e, err := r.lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	mx := make([]*net.MX, len(e.mx))
	for i := range e.mx {
		m := e.mx[i]
		mx[i] = &m
	}
	return mx, nil
}

// LookupIPAddr returns the IPv4 and IPv6 addresses of host, A records
// first; the A and AAAA queries go out in parallel. An IP address given
// as host is returned as is, without a query. Like net.Resolver, it
// returns the addresses it found even if the other query failed; with
// none, a temporary failure of either query wins over not-found.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []net.IPAddr{{IP: net.IP(ip.AsSlice()), Zone: ip.Zone()}}, nil
	}
	if !isDomainName(host) {
		return nil, invalidName(host)
	}
	type result struct {
		e   *entry
		err *net.DNSError
	}
	six := make(chan result, 1)
	go func() {
		e, err := r.lookup(ctx, host, dns.TypeAAAA)
		six <- result{e, err}
	}()
	e4, err4 := r.lookup(ctx, host, dns.TypeA)
	res6 := <-six
	e6, err6 := res6.e, res6.err
	var addrs []net.IPAddr
	for _, e := range []*entry{e4, e6} {
		if e == nil {
			continue
		}
		for _, a := range e.addrs {
			addrs = append(addrs, net.IPAddr{IP: net.IP(a.AsSlice())})
		}
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	switch {
	case err4 == nil || err6 == nil: // cannot happen: a positive answer has records
		return nil, &net.DNSError{Err: "no A or AAAA record", Name: host, Server: r.serverTag, IsNotFound: true}
	case err4.Temporary():
		return nil, err4
	case err6.Temporary():
		return nil, err6
	case !err4.IsNotFound:
		return nil, err4
	case !err6.IsNotFound:
		return nil, err6
	case err4.Err == errNoSuchHost:
		return nil, err4
	case err6.Err == errNoSuchHost:
		return nil, err6
	}
	err4.Err = "no A or AAAA record"
	return nil, err4
}

// LookupAddr returns the names of the PTR records of the reverse name of
// the IP address addr, absolute (with a trailing dot). An addr that is not
// an IP address gives a not-found error without a query.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr, IsNotFound: true}
	}
	arpa, err := dns.ReverseAddr(ip.WithZone("").Unmap().String())
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address: " + err.Error(), Name: addr, IsNotFound: true}
	}
	e, derr := r.lookup(ctx, arpa, dns.TypePTR)
	if derr != nil {
		return nil, derr
	}
	return slices.Clone(e.strs), nil
}

// LookupA returns the IPv4 addresses of name from one A query: the
// lookup a DNSBL needs, where NXDOMAIN (IsNotFound) means "not listed".
func (r *Resolver) LookupA(ctx context.Context, name string) ([]netip.Addr, error) {
	e, err := r.lookup(ctx, name, dns.TypeA)
	if err != nil {
		return nil, err
	}
	return slices.Clone(e.addrs), nil
}

// CachedA is LookupA answered from the cache alone: cached is false when
// name's A records are not in the cache (nothing is sent). A DNSBL check
// uses it to skip a goroutine per zone when the answers are already there
// (the usual case: Prefetch asked at MAIL).
func (r *Resolver) CachedA(name string) (addrs []netip.Addr, cached bool, err error) {
	if !isDomainName(name) {
		return nil, true, invalidName(name)
	}
	e := r.cached(key{name: dns.Fqdn(strings.ToLower(name)), qtype: dns.TypeA})
	if e == nil {
		return nil, false, nil
	}
	r.hits.Add(1)
	metrics.DNS.CacheHit.Inc()
	e, derr := e.result(name)
	if derr != nil {
		return nil, true, derr
	}
	return slices.Clone(e.addrs), true, nil
}

var _ filters.Resolver = (*Resolver)(nil)
