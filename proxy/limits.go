package proxy

import (
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"moat/config"
	"moat/internal/yamlx"
)

// connLimiter enforces smtp.limits when a client connects, before the
// greeting (Postfix's anvil, in process): the open connections of the
// whole server and of one client, and the rate at which one client
// connects. A client is its IPv4 address or its IPv6 /64, the block one
// host usually has.
//
// Written by hand: golang.org/x/time/rate is a single bucket, and the
// per-client table with its expiry is the part that matters here.
type connLimiter struct {
	now func() time.Time // injected by tests

	mu      sync.Mutex
	total   int
	clients map[netip.Prefix]*clientState
	swept   time.Time

	rateSrc string // the connection_rate_per_ip the cache below was parsed from
	rate    rate
}

// clientState is one client's open connections and rate bucket.
type clientState struct {
	open   int
	tokens float64   // connections it may still open at once
	last   time.Time // when tokens was last refilled
}

// rate is COUNT connections per Per; Count 0 is no limit.
type rate struct {
	Count int
	Per   time.Duration
}

// sweepEvery bounds how long an idle client's entry may stay; maxClients
// bounds the table between sweeps (a flood of new addresses sweeps early).
const (
	sweepEvery = time.Minute
	maxClients = 100000
)

func newConnLimiter(now func() time.Time) *connLimiter {
	return &connLimiter{now: now, clients: map[netip.Prefix]*clientState{}}
}

// parseRate reads "120/1m"; "" and "0" are no limit. config.Validate has
// vetted the text already.
func parseRate(s string) rate {
	count, per, ok := strings.Cut(s, "/")
	if !ok {
		return rate{}
	}
	n, err := strconv.Atoi(strings.TrimSpace(count))
	if err != nil || n <= 0 {
		return rate{}
	}
	d, err := yamlx.ParseDuration(strings.TrimSpace(per))
	if err != nil || d <= 0 {
		return rate{}
	}
	return rate{Count: n, Per: d}
}

// clientKey is the address a limit counts by: IPv4 as is, IPv6 by /64.
func clientKey(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

// Limit refusals, 421 4.7.0 as Postfix's anvil answers.
var (
	replyTooManyConns     = reply(421, "4.7.0", "Too many connections, try again later")
	replyTooManyFromIP    = reply(421, "4.7.0", "Too many connections from your address, try again later")
	replyConnRateExceeded = reply(421, "4.7.0", "Connection rate limit exceeded, try again later")
)

// admit counts a new connection from ip. It returns nil when the client
// may go on (it then must call release(ip, true) when it ends) or the
// refusal to send. Exempt clients (trusted networks) are counted in the
// total but never refused.
func (l *connLimiter) admit(ip netip.Addr, lim *config.Limits, exempt bool) *Reply {
	now := l.now()
	key := clientKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rateSrc != lim.ConnectionRatePerIP {
		l.rateSrc, l.rate = lim.ConnectionRatePerIP, parseRate(lim.ConnectionRatePerIP)
	}
	if since := now.Sub(l.swept); since >= sweepEvery || len(l.clients) >= maxClients && since >= time.Second {
		l.sweep(now)
	}
	if !exempt && lim.Connections > 0 && l.total >= lim.Connections {
		return replyTooManyConns
	}
	c := l.clients[key]
	if c == nil {
		c = &clientState{tokens: float64(l.rate.Count), last: now}
		l.clients[key] = c
	}
	if l.rate.Count > 0 {
		c.refill(now, l.rate)
	}
	if !exempt {
		if lim.ConnectionsPerIP > 0 && c.open >= lim.ConnectionsPerIP {
			return replyTooManyFromIP
		}
		if l.rate.Count > 0 {
			if c.tokens < 1 {
				return replyConnRateExceeded
			}
			c.tokens--
		}
	}
	c.open++
	l.total++
	return nil
}

// refill adds the tokens earned since last, up to the bucket's size.
func (c *clientState) refill(now time.Time, r rate) {
	if el := now.Sub(c.last); el > 0 {
		c.tokens += float64(r.Count) * float64(el) / float64(r.Per)
		c.last = now
	}
	if max := float64(r.Count); c.tokens > max {
		c.tokens = max
	}
}

// release counts out a connection admit let in.
func (l *connLimiter) release(ip netip.Addr) {
	key := clientKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if c := l.clients[key]; c != nil && c.open > 0 {
		c.open--
	}
}

// sweep drops the clients with no open connection whose bucket is full
// again: forgetting them changes nothing. Called with mu held.
func (l *connLimiter) sweep(now time.Time) {
	l.swept = now
	for k, c := range l.clients {
		if c.open > 0 {
			continue
		}
		if l.rate.Count > 0 {
			c.refill(now, l.rate)
			if c.tokens < float64(l.rate.Count) {
				continue
			}
		}
		delete(l.clients, k)
	}
}

// size is the number of clients tracked, for tests.
func (l *connLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}
