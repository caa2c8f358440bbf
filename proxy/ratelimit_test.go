package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"moat/audit"
	"moat/config"
	"moat/internal/yamlx"
)

func TestMailLimiter(t *testing.T) {
	const (
		msgNet  = "452 4.7.1 Too many messages from your network, slow down"
		rcptNet = "452 4.7.1 Too many recipients from your network, slow down"
		sender  = "452 4.7.1 Too many messages from this sender, slow down"
	)
	type step struct {
		advance time.Duration
		op      string // "mail", "rcpt": check; "msg", "+rcpt": count
		ip      string
		from    string
		want    string // for checks: "ok" or the refusal's text
	}
	tests := []struct {
		name  string
		lim   config.Limits
		steps []step
	}{
		{"off by default", config.Limits{}, []step{
			{op: "msg", ip: "192.0.2.1", from: "a@x.test"}, {op: "msg", ip: "192.0.2.1", from: "a@x.test"},
			{op: "mail", ip: "192.0.2.1", from: "a@x.test", want: "ok"},
			{op: "+rcpt", ip: "192.0.2.1"}, {op: "rcpt", ip: "192.0.2.1", want: "ok"},
		}},
		{"messages per IPv4 /24", config.Limits{MessagesPerNetwork: "2/1m"}, []step{
			{op: "mail", ip: "192.0.2.1", want: "ok"},
			{op: "msg", ip: "192.0.2.1"},
			{op: "msg", ip: "192.0.2.200"}, // same /24
			{op: "mail", ip: "192.0.2.7", want: msgNet},
			{op: "mail", ip: "192.0.3.1", want: "ok"}, // another /24
			{advance: 30 * time.Second, op: "mail", ip: "192.0.2.1", want: "ok"},
			{op: "msg", ip: "192.0.2.1"},
			{op: "mail", ip: "192.0.2.1", want: msgNet},
		}},
		{"messages per IPv6 /64", config.Limits{MessagesPerNetwork: "1/1h"}, []step{
			{op: "msg", ip: "2001:db8:1:2::1"},
			{op: "mail", ip: "2001:db8:1:2:ffff::9", want: msgNet},
			{op: "mail", ip: "2001:db8:1:3::1", want: "ok"},
			{op: "mail", ip: "::ffff:192.0.2.1", want: "ok"},
		}},
		{"recipients per network", config.Limits{RecipientsPerNetwork: "3/1m"}, []step{
			{op: "+rcpt", ip: "198.51.100.1"}, {op: "+rcpt", ip: "198.51.100.2"},
			{op: "rcpt", ip: "198.51.100.3", want: "ok"},
			{op: "+rcpt", ip: "198.51.100.3"},
			{op: "rcpt", ip: "198.51.100.3", want: rcptNet},
			{op: "mail", ip: "198.51.100.3", want: "ok"}, // messages are not limited
			{advance: 20 * time.Second, op: "rcpt", ip: "198.51.100.3", want: "ok"},
		}},
		{"messages per sender, case-folded, <> free", config.Limits{MessagesPerSender: "1/1h"}, []step{
			{op: "msg", ip: "192.0.2.1", from: "Bulk@Example.test"},
			{op: "mail", ip: "203.0.113.5", from: "bulk@example.TEST", want: sender},
			{op: "mail", ip: "203.0.113.5", from: "other@example.test", want: "ok"},
			{op: "msg", ip: "192.0.2.1", from: ""}, {op: "msg", ip: "192.0.2.1", from: ""},
			{op: "mail", ip: "192.0.2.1", from: "", want: "ok"},
			{advance: time.Hour, op: "mail", ip: "203.0.113.5", from: "bulk@example.test", want: "ok"},
		}},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			l := newMailLimiter(clk.now, audit.Discard())
			for i, st := range tt.steps {
				clk.add(st.advance)
				var got string
				switch st.op {
				case "mail":
					r, _ := l.checkMail(ctx, nil, ip(st.ip), st.from, &tt.lim)
					got = strReply(r)
				case "rcpt":
					got = strReply(l.checkRcpt(ctx, nil, ip(st.ip), &tt.lim))
				case "msg":
					l.countMessage(ctx, nil, ip(st.ip), st.from, &tt.lim)
					continue
				case "+rcpt":
					l.countRcpt(ctx, nil, ip(st.ip), &tt.lim)
					continue
				}
				if got != st.want {
					t.Errorf("step %d (%s %s %q): got %q, want %q", i, st.op, st.ip, st.from, got, st.want)
				}
			}
		})
	}
}

// TestMailLimiterMemory: buckets full again are swept, the table never
// grows past maxClients, and a rate changed by a reload starts afresh.
func TestMailLimiterMemory(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	l := newMailLimiter(clk.now, audit.Discard())
	lim := &config.Limits{MessagesPerSender: "5/1m"}
	for i := range 1000 {
		l.countMessage(ctx, nil, ip("192.0.2.1"), fmt.Sprintf("s%d@x.test", i), lim)
	}
	if n := l.senders.size(); n != 1000 {
		t.Fatalf("%d senders tracked, want 1000", n)
	}
	clk.add(sweepEvery)
	l.countMessage(ctx, nil, ip("192.0.2.1"), "last@x.test", lim)
	if n := l.senders.size(); n != 1 {
		t.Errorf("after a sweep %d senders tracked, want 1", n)
	}

	// A flood of new keys stops at maxClients.
	tab := &rateTable[int]{}
	for i := range maxClients + 50 {
		tab.takeIf(i, "1/1h", clk.now())
	}
	if n := tab.size(); n != maxClients {
		t.Errorf("table holds %d keys, want at most %d", n, maxClients)
	}
	tab.takeIf(1, "2/1h", clk.now())
	if n := tab.size(); n != 1 {
		t.Errorf("after a new rate the table holds %d keys, want 1", n)
	}
}

func TestTarpitDelay(t *testing.T) {
	c := config.Default()
	c.SMTP.Timeouts.Command = yamlx.Duration(3 * time.Second)
	c.SMTP.Limits.Tarpit.Networks = []yamlx.Prefix{
		yamlx.Prefix(netip.MustParsePrefix("192.0.2.0/24")),
		yamlx.Prefix(netip.MustParsePrefix("2001:db8::/32")),
	}
	tests := []struct {
		name    string
		delay   time.Duration
		ip      string
		trusted bool
		want    time.Duration
	}{
		{"off", 0, "192.0.2.1", false, 0},
		{"in networks", time.Second, "192.0.2.1", false, time.Second},
		{"IPv4-mapped", time.Second, "::ffff:192.0.2.1", false, time.Second},
		{"IPv6", time.Second, "2001:db8::5", false, time.Second},
		{"elsewhere", time.Second, "198.51.100.1", false, 0},
		{"trusted", time.Second, "192.0.2.1", true, 0},
		{"bounded by the command timeout", time.Minute, "192.0.2.1", false, 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.SMTP.Limits.Tarpit.Delay = yamlx.Duration(tt.delay)
			if got := tarpitDelay(c, ip(tt.ip), tt.trusted); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestMailRatesEndToEnd: the refusals on the wire and in the event, and
// trusted clients exempt.
func TestMailRatesEndToEnd(t *testing.T) {
	send := func(c *client) {
		c.cmd("DATA", "354")
		c.send(stuffed + ".\r\n")
		c.expect("250 ")
	}
	limits := "  limits: {messages_per_network: 1/1h, recipients_per_network: 2/1h, messages_per_sender: 5/1h}\n"
	t.Run("refused", func(t *testing.T) {
		ts, logs := startObserved(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [192.0.2.0/24]\n"+limits+routeTo("127.0.0.1:1", ""), "")
		c := dial(t, ts.addr)
		c.cmd("EHLO client.example.net", "250")
		c.cmd("MAIL FROM:<a@example.net>", "250")
		c.cmd("RCPT TO:<one@local.test>", "250")
		c.cmd("RCPT TO:<two@local.test>", "250")
		c.cmd("RCPT TO:<three@local.test>", "452 4.7.1 Too many recipients from your network, slow down")
		send(c)
		c.cmd("MAIL FROM:<a@example.net>", "452 4.7.1 Too many messages from your network, slow down")
		c.cmd("MAIL FROM:<>", "452 4.7.1 ")
		c.cmd("QUIT", "221")
		evs := waitEvents(t, logs, 3)
		for i, want := range []string{"", "rate_limit: messages_per_network", "rate_limit: messages_per_network"} {
			if got, _ := evs[i]["moat.reason"].(string); want != "" && got != want {
				t.Errorf("event %d: moat.reason %q, want %q", i, got, want)
			}
		}
		if evs[1]["moat.action"] != "tempfail" || evs[1]["event.outcome"] != "failure" {
			t.Errorf("refused MAIL event: %v", evs[1])
		}
	})
	t.Run("recipient refusal in the event", func(t *testing.T) {
		ts, logs := startObserved(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [192.0.2.0/24]\n  limits: {recipients_per_network: 1/1h}\n"+routeTo("127.0.0.1:1", ""), "")
		c := dial(t, ts.addr)
		c.cmd("EHLO client.example.net", "250")
		c.cmd("MAIL FROM:<a@example.net>", "250")
		c.cmd("RCPT TO:<one@local.test>", "250")
		c.cmd("RSET", "250")
		c.cmd("MAIL FROM:<a@example.net>", "250")
		c.cmd("RCPT TO:<one@local.test>", "452 4.7.1 Too many recipients")
		c.cmd("RSET", "250")
		ev := waitEvents(t, logs, 2)[1]
		if ev["moat.reason"] != "rate_limit: recipients_per_network" || ev["moat.action"] != "tempfail" {
			t.Errorf("event %v", ev)
		}
	})
	t.Run("tokens of a transaction without a message go back", func(t *testing.T) {
		ts := startServer(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [192.0.2.0/24]\n  limits: {messages_per_network: 1/1h, recipients_per_network: 1/1h}\n"+routeTo("127.0.0.1:1", ""), "")
		c := dial(t, ts.addr)
		c.cmd("EHLO client.example.net", "250")
		c.cmd("MAIL FROM:<a@example.net>", "250")
		c.cmd("RSET", "250")
		c.cmd("MAIL FROM:<a@example.net>", "250")
		c.cmd("RCPT TO:<one@local.test>", "250")
		send(c)
		c.cmd("MAIL FROM:<a@example.net>", "452 4.7.1 Too many messages from your network")
		c.cmd("QUIT", "221")
	})
	t.Run("trusted exempt", func(t *testing.T) {
		ts := startServer(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [127.0.0.0/8]\n"+limits+routeTo("127.0.0.1:1", ""), "")
		c := dial(t, ts.addr)
		c.cmd("EHLO client.example.net", "250")
		for range 3 {
			c.cmd("MAIL FROM:<a@example.net>", "250")
			c.cmd("RCPT TO:<one@local.test>", "250")
			c.cmd("RCPT TO:<two@local.test>", "250")
			c.cmd("RCPT TO:<three@local.test>", "250")
			send(c)
		}
	})
}

// TestTarpitEndToEnd: every reply to a tarpitted client waits the delay
// (measured: three replies take three delays), and the events say so.
func TestTarpitEndToEnd(t *testing.T) {
	const delay = 60 * time.Millisecond
	ts, logs := startObserved(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [192.0.2.0/24]\n"+
		"  limits: {tarpit: {delay: 60ms, networks: [127.0.0.0/8]}}\n"+routeTo("127.0.0.1:1", ""), "")
	start := time.Now()
	c := dial(t, ts.addr) // the greeting
	c.cmd("HELO client.example.net", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RSET", "250")
	if el := time.Since(start); el < 4*delay {
		t.Errorf("4 replies took %v, want at least %v", el, 4*delay)
	}
	c.cmd("QUIT", "221")
	if ev := waitEvents(t, logs, 1)[0]; ev["moat.tarpit"] != true {
		t.Errorf("transaction event %v", ev)
	}
	if ev := connEvents(t, logs, 1)[0]; ev["moat.tarpit"] != true {
		t.Errorf("connection event %v", ev)
	}

	// Outside the tarpit's networks the events carry no moat.tarpit.
	ts2, logs2 := startObserved(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [192.0.2.0/24]\n"+
		"  limits: {tarpit: {delay: 60ms, networks: [192.0.2.0/24]}}\n", "")
	c2 := dial(t, ts2.addr)
	c2.cmd("QUIT", "221")
	if ev := connEvents(t, logs2, 1)[0]; ev["moat.tarpit"] != nil {
		t.Errorf("connection event outside the tarpit %v", ev)
	}
}

// The tests' words for the steps of a transaction, over the reservation
// API: a MAIL that is only a check (its tokens go back), a message
// accepted, a RCPT that is only a check, a recipient accepted.

func (l *mailLimiter) checkMail(ctx context.Context, rdb redis.UniversalClient, ip netip.Addr, from string, lim *config.Limits) (*Reply, string) {
	res, r, why := l.reserveMail(ctx, rdb, ip, from, lim)
	if r == nil {
		l.release(ctx, rdb, res, false, lim)
	}
	return r, why
}

func (l *mailLimiter) countMessage(ctx context.Context, rdb redis.UniversalClient, ip netip.Addr, from string, lim *config.Limits) {
	if res, r, _ := l.reserveMail(ctx, rdb, ip, from, lim); r == nil {
		l.release(ctx, rdb, res, true, lim)
	}
}

func (l *mailLimiter) checkRcpt(ctx context.Context, rdb redis.UniversalClient, ip netip.Addr, lim *config.Limits) *Reply {
	res, r, _ := l.reserveMail(ctx, rdb, ip, "", lim)
	if r != nil {
		return r
	}
	r = l.takeRcpt(ctx, rdb, res, lim)
	l.rcptDone(ctx, rdb, res, false, lim)
	l.release(ctx, rdb, res, false, lim)
	return r
}

func (l *mailLimiter) countRcpt(ctx context.Context, rdb redis.UniversalClient, ip netip.Addr, lim *config.Limits) {
	res, r, _ := l.reserveMail(ctx, rdb, ip, "", lim)
	if r != nil {
		return
	}
	if l.takeRcpt(ctx, rdb, res, lim) == nil {
		l.rcptDone(ctx, rdb, res, true, lim)
	}
	l.release(ctx, rdb, res, false, lim)
}
