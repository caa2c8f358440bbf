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
// sender. Refusals are 452 4.7.1 so that a legitimate bulk sender retries
// later (Postfix's anvil message and recipient rates, in process).
//
// A transaction reserves: at MAIL it takes a message token from the
// network's and the sender's buckets (both or neither) and, when one is
// left, a recipient token for its first RCPT, in one step; a later RCPT
// takes its own. Tokens go back when they were not used: the message's
// unless the message was accepted at the end of data, a recipient's
// unless the recipient was accepted. So the rates count accepted mail,
// and gateways sharing the buckets in Redis can never together accept
// more than a rate allows (a check now and a count later would let every
// transaction in flight through at once). With Redis that is one round
// trip at MAIL for the usual one-recipient message, and none after.
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
// sender) is not limited.
func senderKey(from string) string {
	return strings.ToLower(from)
}

// tokenSite is where a reserved token was taken, so that it goes back
// there: Redis, or this process's memory (no Redis, or Redis failed).
type tokenSite uint8

const (
	siteNone tokenSite = iota
	siteMemory
	siteRedis
)

// reservation is what one transaction holds of the rates.
type reservation struct {
	net    netip.Prefix
	sender string    // senderKey; "" when not limited
	msg    tokenSite // the message tokens (network and sender) taken at MAIL
	spare  tokenSite // a recipient token taken and not yet used
	held   tokenSite // the recipient token of the RCPT being decided
}

// reserveMail decides a MAIL from ip with envelope sender from: it takes
// the message tokens and, when there is one, a recipient token. It
// returns the reservation, or the refusal and the event's reason. rdb,
// when set, holds the buckets every gateway shares.
func (l *mailLimiter) reserveMail(ctx context.Context, rdb redis.UniversalClient, ip netip.Addr, from string, lim *config.Limits) (*reservation, *Reply, string) {
	res := &reservation{net: networkKey(ip)}
	msgRate := l.messages.rateOf(lim.MessagesPerNetwork)
	sndRate := l.senders.rateOf(lim.MessagesPerSender)
	rcptRate := l.recipients.rateOf(lim.RecipientsPerNetwork)
	if k := senderKey(from); k != "" && sndRate.Count > 0 {
		res.sender = k
	}
	if msgRate.Count == 0 && res.sender == "" && rcptRate.Count == 0 {
		return res, nil, ""
	}
	now := l.now()
	if rdb != nil {
		var bs []sharedBucketRef
		if msgRate.Count > 0 {
			bs = append(bs, sharedBucketRef{"messages_per_network", res.net.String(), msgRate, true})
		}
		if res.sender != "" {
			bs = append(bs, sharedBucketRef{"messages_per_sender", res.sender, sndRate, true})
		}
		if rcptRate.Count > 0 {
			bs = append(bs, sharedBucketRef{"recipients_per_network", res.net.String(), rcptRate, false})
		}
		failed, optTaken, err := takeShared(ctx, rdb, bs, now)
		if err == nil {
			if failed >= 0 {
				return rateRefusal(bs[failed].limit)
			}
			res.msg = siteRedis
			if optTaken {
				res.spare = siteRedis
			}
			return res, nil, ""
		}
		l.alarm.raise(ctx, l.log, now, err)
	}
	if !l.messages.takeIf(res.net, lim.MessagesPerNetwork, now) {
		return rateRefusal("messages_per_network")
	}
	if res.sender != "" && !l.senders.takeIf(res.sender, lim.MessagesPerSender, now) {
		l.messages.give(res.net, lim.MessagesPerNetwork, now)
		return rateRefusal("messages_per_sender")
	}
	res.msg = siteMemory
	if rcptRate.Count > 0 && l.recipients.takeIf(res.net, lim.RecipientsPerNetwork, now) {
		res.spare = siteMemory
	}
	return res, nil, ""
}

// rateRefusal is reserveMail's answer when the message limit refused.
func rateRefusal(limit string) (*reservation, *Reply, string) {
	if limit == "messages_per_sender" {
		return nil, replySenderRate, "rate_limit: messages_per_sender"
	}
	return nil, replyMessageRate, "rate_limit: messages_per_network"
}

// takeRcpt holds a recipient token for the RCPT being decided (the spare
// one taken at MAIL when there is one), or refuses; rcptDone settles it.
func (l *mailLimiter) takeRcpt(ctx context.Context, rdb redis.UniversalClient, res *reservation, lim *config.Limits) *Reply {
	if res.spare != siteNone {
		res.held, res.spare = res.spare, siteNone
		return nil
	}
	r := l.recipients.rateOf(lim.RecipientsPerNetwork)
	if r.Count == 0 {
		return nil
	}
	now := l.now()
	if rdb != nil {
		failed, _, err := takeShared(ctx, rdb, []sharedBucketRef{{"recipients_per_network", res.net.String(), r, true}}, now)
		if err == nil {
			if failed >= 0 {
				return replyRecipientRate
			}
			res.held = siteRedis
			return nil
		}
		l.alarm.raise(ctx, l.log, now, err)
	}
	if !l.recipients.takeIf(res.net, lim.RecipientsPerNetwork, now) {
		return replyRecipientRate
	}
	res.held = siteMemory
	return nil
}

// rcptDone settles the held recipient token: an accepted recipient used
// it; a refused one leaves it spare for the next RCPT.
func (l *mailLimiter) rcptDone(ctx context.Context, rdb redis.UniversalClient, res *reservation, accepted bool, lim *config.Limits) {
	held := res.held
	res.held = siteNone
	if accepted || held == siteNone {
		return
	}
	if res.spare == siteNone {
		res.spare = held
		return
	}
	l.giveRcpt(ctx, rdb, res.net, held, lim)
}

// release ends a transaction's reservation: the message tokens go back
// unless the message was accepted, a spare recipient token always, all
// of Redis's in one round trip. Nothing to give back (the usual accepted
// message) costs nothing.
func (l *mailLimiter) release(ctx context.Context, rdb redis.UniversalClient, res *reservation, accepted bool, lim *config.Limits) {
	if res == nil {
		return
	}
	if res.held != siteNone { // rcptDone settles it; never left here
		l.giveRcpt(ctx, rdb, res.net, res.held, lim)
	}
	now := l.now()
	var shared []sharedBucketRef
	switch res.spare {
	case siteRedis:
		if r := l.recipients.rateOf(lim.RecipientsPerNetwork); r.Count > 0 {
			shared = append(shared, sharedBucketRef{"recipients_per_network", res.net.String(), r, true})
		}
	case siteMemory:
		l.recipients.give(res.net, lim.RecipientsPerNetwork, now)
	}
	switch {
	case accepted:
	case res.msg == siteRedis:
		if r := l.messages.rateOf(lim.MessagesPerNetwork); r.Count > 0 {
			shared = append(shared, sharedBucketRef{"messages_per_network", res.net.String(), r, true})
		}
		if r := l.senders.rateOf(lim.MessagesPerSender); res.sender != "" && r.Count > 0 {
			shared = append(shared, sharedBucketRef{"messages_per_sender", res.sender, r, true})
		}
	case res.msg == siteMemory:
		l.messages.give(res.net, lim.MessagesPerNetwork, now)
		if res.sender != "" {
			l.senders.give(res.sender, lim.MessagesPerSender, now)
		}
	}
	res.msg, res.spare, res.held = siteNone, siteNone, siteNone
	if err := giveShared(ctx, rdb, shared, now); err != nil {
		// The tokens stay taken until they refill: a refusal too many
		// later, never a message too many.
		l.alarm.raise(ctx, l.log, now, err)
	}
}

// giveRcpt gives one recipient token of net back to site.
func (l *mailLimiter) giveRcpt(ctx context.Context, rdb redis.UniversalClient, net netip.Prefix, site tokenSite, lim *config.Limits) {
	now := l.now()
	switch site {
	case siteRedis:
		r := l.recipients.rateOf(lim.RecipientsPerNetwork)
		if r.Count == 0 {
			return
		}
		if err := giveShared(ctx, rdb, []sharedBucketRef{{"recipients_per_network", net.String(), r, true}}, now); err != nil {
			l.alarm.raise(ctx, l.log, now, err)
		}
	case siteMemory:
		l.recipients.give(net, lim.RecipientsPerNetwork, now)
	}
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

// takeIf takes one token of key at rate src when there is one and
// reports whether it did (always true when the rate is off).
func (t *rateTable[K]) takeIf(key K, src string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setRate(src)
	if t.rate.Count == 0 {
		return true
	}
	if since := now.Sub(t.swept); since >= sweepEvery || len(t.buckets) >= maxClients && since >= time.Second {
		t.sweep(now)
	}
	b := t.buckets[key]
	if b == nil {
		if len(t.buckets) >= maxClients {
			// Full of keys still counting: this one goes uncounted
			// rather than let the table grow without bound.
			return true
		}
		b = &bucket{tokens: float64(t.rate.Count), last: now}
		t.buckets[key] = b
	}
	b.refill(now, t.rate)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// give returns one token of key taken at rate src (a bucket already
// forgotten is full: nothing to do).
func (t *rateTable[K]) give(key K, src string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setRate(src)
	if b := t.buckets[key]; b != nil && t.rate.Count > 0 {
		b.refill(now, t.rate)
		b.tokens = min(b.tokens+1, float64(t.rate.Count))
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
