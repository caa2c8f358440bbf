package main

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// rateConfig is one rate-limit consistency run: N messages split across
// the gateways, which share one limit.
type rateConfig struct {
	Addrs           []string
	N               int // messages in all
	Sessions        int // concurrent sessions in all
	From, Rcpt      string
	DistinctSenders bool // "i.From" for message i: only a per-network limit applies
	Name            string
	Limit           int           // COUNT of the limit
	Per             time.Duration // its DURATION
	Slack           int           // accepted messages allowed beyond Limit + refill
	Timeout         time.Duration // of one session
}

// rateReport is what a run saw.
type rateReport struct {
	rateConfig
	Accepted, Refused, Failed []int // per gateway; Refused: 452 at MAIL or RCPT
	Errors                    tally // the failures (neither accepted nor 452)
	Elapsed                   time.Duration
}

func sumOf(v []int) int {
	n := 0
	for _, x := range v {
		n += x
	}
	return n
}

// Refill is what the bucket can have refilled during the run: Limit per
// Per, over the run's duration (the bucket's own span is inside it).
func (r *rateReport) Refill() float64 {
	return float64(r.Limit) * r.Elapsed.Seconds() / r.Per.Seconds()
}

// Bound is the most messages the gateways together may accept.
func (r *rateReport) Bound() int {
	return r.Limit + int(math.Floor(r.Refill())) + r.Slack
}

// OK: no failures, and the accepted count is at least the limit (the
// bucket starts full and the load exceeds it) and at most Bound.
func (r *rateReport) OK() bool {
	a := sumOf(r.Accepted)
	return sumOf(r.Failed) == 0 && a >= min(r.Limit, r.N) && a <= r.Bound()
}

func (r *rateReport) String() string {
	var b strings.Builder
	a := sumOf(r.Accepted)
	per := make([]string, len(r.Accepted))
	for i := range r.Accepted {
		per[i] = fmt.Sprintf("%d/%d", r.Accepted[i], r.Refused[i])
	}
	fmt.Fprintf(&b, "rate %s: limit=%d per=%v sent=%d accepted=%d refused=%d failed=%d secs=%.3f refill=%.2f bound=%d slack=%d sessions=%d accepted_refused_per_gateway=%s\n",
		r.Name, r.Limit, r.Per, r.N, a, sumOf(r.Refused), sumOf(r.Failed), r.Elapsed.Seconds(), r.Refill(), r.Bound(), r.Slack, r.Sessions, strings.Join(per, ","))
	if len(r.Errors) > 0 {
		fmt.Fprintf(&b, "rate %s: failures: %v\n", r.Name, r.Errors)
	}
	switch {
	case r.OK():
		fmt.Fprintf(&b, "rate %s: PASS\n", r.Name)
	case sumOf(r.Failed) > 0:
		fmt.Fprintf(&b, "rate %s: FAIL (%d messages failed otherwise than 452)\n", r.Name, sumOf(r.Failed))
	case a > r.Bound():
		fmt.Fprintf(&b, "rate %s: FAIL (accepted %d > limit %d + refill %.2f + slack %d)\n", r.Name, a, r.Limit, r.Refill(), r.Slack)
	default:
		fmt.Fprintf(&b, "rate %s: FAIL (accepted %d < limit %d)\n", r.Name, a, r.Limit)
	}
	return b.String()
}

// runRate sends the messages: message i through gateway i mod len(Addrs),
// one session each.
func runRate(ctx context.Context, c rateConfig) (*rateReport, error) {
	n := len(c.Addrs)
	r := &rateReport{rateConfig: c, Accepted: make([]int, n), Refused: make([]int, n), Failed: make([]int, n), Errors: tally{}}
	var mu sync.Mutex
	start := time.Now()
	forEach(ctx, c.N, c.Sessions, func(i int) {
		g := i % n
		from := c.From
		if c.DistinctSenders {
			from = strconv.Itoa(i) + "." + from
		}
		code, err := rateSend(ctx, c, c.Addrs[g], from)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			r.Accepted[g]++
		case code == 452:
			r.Refused[g]++
		default:
			r.Failed[g]++
			r.Errors.add(fmt.Errorf("gateway %d: %w", g+1, err))
		}
	})
	r.Elapsed = time.Since(start)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("rate load: %w", err)
	}
	return r, nil
}

func rateSend(ctx context.Context, c rateConfig, addr, from string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	s, err := dial(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer s.close()
	return s.send(from, c.Rcpt)
}

// parseRate reads COUNT/DURATION as moat's config does: a Go duration, or
// a whole number of days ("2d").
func parseRate(s string) (int, time.Duration, error) {
	cs, ds, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, fmt.Errorf("rate %q: want COUNT/DURATION", s)
	}
	count, err := strconv.Atoi(cs)
	if err != nil || count <= 0 {
		return 0, 0, fmt.Errorf("rate %q: count: want a positive integer", s)
	}
	var per time.Duration
	if days, ok := strings.CutSuffix(ds, "d"); ok {
		d, err := strconv.Atoi(days)
		if err != nil {
			return 0, 0, fmt.Errorf("rate %q: duration: %w", s, err)
		}
		per = time.Duration(d) * 24 * time.Hour
	} else if per, err = time.ParseDuration(ds); err != nil {
		return 0, 0, fmt.Errorf("rate %q: duration: %w", s, err)
	}
	if per <= 0 {
		return 0, 0, fmt.Errorf("rate %q: duration: want > 0", s)
	}
	return count, per, nil
}
