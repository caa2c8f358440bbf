package proxy

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"moat/audit"
	"moat/config"
)

// mailLimiter enforces the rates of accepted mail in smtp.limits:
// messages and recipients per client network (an IPv4 /24 or an IPv6
// /64, the block one sender usually has) and messages per envelope
// sender. A message is counted when it is accepted at the end of data
// and checked at MAIL; a recipient is checked and counted at RCPT.
// Refusals are 452 4.7.1 so that a legitimate bulk sender retries later
// (Postfix's anvil message and recipient rates, in process).
//
// Written by hand for the reasons connLimiter is: the per-key table and
// its expiry are the point, golang.org/x/time/rate is one bucket.
type mailLimiter struct {
	now func() time.Time // injected by tests
	log *audit.Logger

	messages   rateTable[netip.Prefix]
	recipients rateTable[netip.Prefix]
	senders    rateTable[string]
	alarm      rateAlarm // of Redis failures
}

func newMailLimiter(now func() time.Time, log *audit.Logger) *mailLimiter {
	return &mailLimiter{now: now, log: log}
}

// Rate-limit refusals; the event's moat.reason names the limit.
var (
	replyMessageRate   = reply(452, "4.7.1", "Too many messages from your network, slow down")
	replyRecipientRate = reply(452, "4.7.1", "Too many recipients from your network, slow down")
	replySenderRate    = reply(452, "4.7.1", "Too many messages from this sender, slow down")
)

// networkKey is the network a mail rate counts by: IPv4 /24, IPv6 /64.
func networkKey(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap().WithZone("")
	bits := 64
	if ip.Is4() {
		bits = 24
	}
	p, _ := ip.Prefix(bits)
	return p
}

// senderKey is the envelope sender a rate counts by; "" (the null
// sender <>, bounces) is never limited.
func senderKey(from string) string {
	return strings.ToLower(from)
}

// checkMail decides a MAIL from ip with envelope sender from. It returns
// nil, or the refusal and the event's reason. rdb, when set, holds the
// buckets every gateway shares.
func (l *mailLimiter) checkMail(ctx context.Context, rdb redis.UniversalClient, ip netip.Addr, from string, lim *config.Limits) (*Reply, string) {
	if !decide(ctx, l, rdb, "messages_per_network", &l.messages, networkKey(ip), lim.MessagesPerNetwork, false) {
		return replyMessageRate, "rate_limit: messages_per_network"
	}
	if k := senderKey(from); k != "" && !decide(ctx, l, rdb, "messages_per_sender", &l.senders, k, lim.MessagesPerSender, false) {
		return replySenderRate, "rate_limit: messages_per_sender"
	}
	return nil, ""
}

// checkRcpt decides one more recipient from ip; countRcpt counts it once
// accepted.
func (l *mailLimiter) checkRcpt(ctx context.Context, rdb redis.UniversalClient, ip netip.Addr, lim *config.Limits) *Reply {
	if !decide(ctx, l, rdb, "recipients_per_network", &l.recipients, networkKey(ip), lim.RecipientsPerNetwork, false) {
		return replyRecipientRate
	}
	return nil
}

func (l *mailLimiter) countRcpt(ctx context.Context, rdb redis.UniversalClient, ip netip.Addr, lim *config.Limits) {
	decide(ctx, l, rdb, "recipients_per_network", &l.recipients, networkKey(ip), lim.RecipientsPerNetwork, true)
}

// countMessage counts an accepted message against ip's network and from.
func (l *mailLimiter) countMessage(ctx context.Context, rdb redis.UniversalClient, ip netip.Addr, from string, lim *config.Limits) {
	decide(ctx, l, rdb, "messages_per_network", &l.messages, networkKey(ip), lim.MessagesPerNetwork, true)
	if k := senderKey(from); k != "" {
		decide(ctx, l, rdb, "messages_per_sender", &l.senders, k, lim.MessagesPerSender, true)
	}
}

// decide checks (take false: is a token left?) or counts (take true)
// one for key at the rate src: in Redis when rdb is set, in t when not
// or when Redis fails.
func decide[K comparable](ctx context.Context, l *mailLimiter, rdb redis.UniversalClient, limit string, t *rateTable[K], key K, src string, take bool) bool {
	now := l.now()
	if rdb != nil {
		r := t.rateOf(src)
		if r.Count == 0 {
			return true
		}
		ok, err := sharedBucket(ctx, rdb, limit, keyString(key), r, now, take)
		if err == nil {
			return ok
		}
		l.alarm.raise(ctx, l.log, now, err)
	}
	if take {
		t.take(key, src, now)
		return true
	}
	return t.allow(key, src, now)
}

// rateTable is one token bucket per key, at the rate of one config key.
// Keys never counted take no memory; a bucket full again is forgotten
// at the next sweep, and the table never holds more than maxClients.
type rateTable[K comparable] struct {
	mu      sync.Mutex
	src     string // the COUNT/DURATION rate was parsed from
	rate    rate
	buckets map[K]*bucket
	swept   time.Time
}

// bucket is what one key may still send at once, refilled over time.
type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) refill(now time.Time, r rate) {
	if el := now.Sub(b.last); el > 0 {
		b.tokens += float64(r.Count) * float64(el) / float64(r.Per)
		b.last = now
	}
	if max := float64(r.Count); b.tokens > max {
		b.tokens = max
	}
}

// setRate follows a configuration reload; a new rate starts afresh.
// Called with mu held.
func (t *rateTable[K]) setRate(src string) {
	if t.buckets != nil && t.src == src {
		return
	}
	t.src, t.rate, t.buckets = src, parseRate(src), map[K]*bucket{}
}

// rateOf is the rate src reads, parsed once.
func (t *rateTable[K]) rateOf(src string) rate {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setRate(src)
	return t.rate
}

// allow reports whether key may have one more at rate src.
func (t *rateTable[K]) allow(key K, src string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setRate(src)
	if t.rate.Count == 0 {
		return true
	}
	b := t.buckets[key]
	if b == nil {
		return true
	}
	b.refill(now, t.rate)
	return b.tokens >= 1
}

// take counts one for key. Sessions that passed allow at the same time
// may overshoot the rate by one each; the bucket stops at empty.
func (t *rateTable[K]) take(key K, src string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setRate(src)
	if t.rate.Count == 0 {
		return
	}
	if since := now.Sub(t.swept); since >= sweepEvery || len(t.buckets) >= maxClients && since >= time.Second {
		t.sweep(now)
	}
	b := t.buckets[key]
	if b == nil {
		if len(t.buckets) >= maxClients {
			// Full of keys still counting: this one goes uncounted
			// rather than let the table grow without bound.
			return
		}
		b = &bucket{tokens: float64(t.rate.Count), last: now}
		t.buckets[key] = b
	}
	b.refill(now, t.rate)
	if b.tokens -= 1; b.tokens < 0 {
		b.tokens = 0
	}
}

// sweep drops the buckets full again: forgetting them changes nothing.
// Called with mu held.
func (t *rateTable[K]) sweep(now time.Time) {
	t.swept = now
	for k, b := range t.buckets {
		b.refill(now, t.rate)
		if b.tokens >= float64(t.rate.Count) {
			delete(t.buckets, k)
		}
	}
}

// size is the number of keys tracked, for tests.
func (t *rateTable[K]) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.buckets)
}

// tarpitDelay is how long each reply to a client at ip waits: the
// smtp.limits.tarpit delay when ip is in its networks, bounded by the
// command timeout (a client gives up past it); 0 for trusted clients.
func tarpitDelay(c *config.Config, ip netip.Addr, trusted bool) time.Duration {
	tp := c.SMTP.Limits.Tarpit
	d := tp.Delay.D()
	if d <= 0 || trusted {
		return 0
	}
	ip = ip.Unmap()
	for _, p := range tp.Networks {
		if p.P().Contains(ip) {
			return min(d, c.SMTP.Timeouts.Command.D())
		}
	}
	return 0
}
