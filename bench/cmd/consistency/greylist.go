package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// greylistConfig is one greylist consistency run against two gateways.
type greylistConfig struct {
	Addrs      [2]string
	N          int           // distinct new triplets
	Sessions   int           // concurrent sessions, two per triplet in flight
	Delay      time.Duration // the gateways' greylist delay
	From       string
	RcptDomain string
	Run        string        // tag of this run's recipients
	Timeout    time.Duration // of one session
	Events     [2]string     // the gateways' event logs; empty: no event check
	EventWait  time.Duration // how long the events may take to appear
}

// rcpt is the recipient of triplet i: lower case, as the greylist key
// has it.
func (c *greylistConfig) rcpt(i int) string {
	return fmt.Sprintf("gl-%s-%d@%s", strings.ToLower(c.Run), i, strings.ToLower(c.RcptDomain))
}

// greylistReport is what a run saw.
type greylistReport struct {
	Triplets        int
	FirstGreylisted int // first attempts answered 4xx at RCPT, of 2×Triplets
	RetryAccepted   int // retries accepted at the end of data, of 2×Triplets
	FirstErrors     tally
	RetryErrors     tally
	Waited          time.Duration // between the last first attempt and the retries
	Events          *eventReport  // nil: not checked
}

// OK reports whether the run passed.
func (r *greylistReport) OK() bool {
	return r.FirstGreylisted == 2*r.Triplets && r.RetryAccepted == 2*r.Triplets && (r.Events == nil || r.Events.OK(r.Triplets))
}

func (r *greylistReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "greylist: triplets=%d first_attempts=%d greylisted=%d retries=%d accepted=%d waited_ms=%d\n",
		r.Triplets, 2*r.Triplets, r.FirstGreylisted, 2*r.Triplets, r.RetryAccepted, r.Waited.Milliseconds())
	if len(r.FirstErrors) > 0 {
		fmt.Fprintf(&b, "greylist: first attempts not greylisted: %v\n", r.FirstErrors)
	}
	if len(r.RetryErrors) > 0 {
		fmt.Fprintf(&b, "greylist: retries not accepted: %v\n", r.RetryErrors)
	}
	if e := r.Events; e != nil {
		fmt.Fprintf(&b, "greylist: events=%d new_once=%d early_once=%d passed_twice=%d new_at_a=%d new_at_b=%d greylisted_after_pass=%d\n",
			e.Events, e.NewOnce, e.EarlyOnce, e.PassedTwice, e.NewAt[0], e.NewAt[1], e.AfterPass)
		for _, p := range e.Problems {
			fmt.Fprintf(&b, "greylist: problem: %s\n", p)
		}
	}
	switch {
	case r.OK():
		b.WriteString("greylist: PASS\n")
	default:
		var why []string
		if r.FirstGreylisted != 2*r.Triplets {
			why = append(why, fmt.Sprintf("%d first attempts not greylisted", 2*r.Triplets-r.FirstGreylisted))
		}
		if r.RetryAccepted != 2*r.Triplets {
			why = append(why, fmt.Sprintf("%d retries not accepted", 2*r.Triplets-r.RetryAccepted))
		}
		if r.Events != nil && !r.Events.OK(r.Triplets) {
			why = append(why, "the events disagree")
		}
		fmt.Fprintf(&b, "greylist: FAIL (%s)\n", strings.Join(why, ", "))
	}
	return b.String()
}

// runGreylist runs both phases and the event check.
func runGreylist(ctx context.Context, c greylistConfig) (*greylistReport, error) {
	r := &greylistReport{Triplets: c.N, FirstErrors: tally{}, RetryErrors: tally{}}
	var mu sync.Mutex
	var last time.Time // the latest reply to a first attempt

	// Phase 1: each triplet's two first attempts at the same moment.
	forEach(ctx, c.N, max(c.Sessions/2, 1), func(i int) {
		codes, errs, at := firstAttempts(ctx, c, c.rcpt(i))
		mu.Lock()
		defer mu.Unlock()
		for g := range 2 {
			if codes[g] >= 400 && codes[g] < 500 {
				r.FirstGreylisted++
			} else {
				if errs[g] == nil {
					errs[g] = fmt.Errorf("RCPT got %d", codes[g])
				}
				r.FirstErrors.add(fmt.Errorf("gateway %c: %w", 'a'+g, errs[g]))
			}
		}
		if at.After(last) {
			last = at
		}
	})
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("first attempts: %w", err)
	}

	// Each gateway recorded first sight before it answered, so a retry
	// from the latest answer plus the delay is past every triplet's delay:
	// this wait is the delay itself, not a guess.
	t := time.NewTimer(time.Until(last.Add(c.Delay)))
	select {
	case <-ctx.Done():
		t.Stop()
		return nil, fmt.Errorf("waiting for the delay: %w", ctx.Err())
	case <-t.C:
	}
	r.Waited = time.Since(last)

	// Phase 2: retry each triplet at one gateway, then the other.
	forEach(ctx, c.N, c.Sessions, func(i int) {
		for g := range 2 {
			err := retry(ctx, c, c.Addrs[g], c.rcpt(i))
			mu.Lock()
			if err == nil {
				r.RetryAccepted++
			} else {
				r.RetryErrors.add(fmt.Errorf("gateway %c: %w", 'a'+g, err))
			}
			mu.Unlock()
		}
	})
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("retries: %w", err)
	}

	if c.Events[0] != "" {
		e, err := waitEvents(ctx, c)
		if err != nil {
			return nil, err
		}
		r.Events = e
	}
	return r, nil
}

// forEach calls fn(0) … fn(n-1), workers at a time, and returns when all
// calls have returned or ctx ended.
func forEach(ctx context.Context, n, workers int, fn func(i int)) {
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := range jobs {
				fn(i)
			}
		})
	}
	for i := range n {
		select {
		case jobs <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
}

// firstAttempts opens one session at each gateway, brings both to the
// point of RCPT, then sends both RCPTs at once. It returns both reply
// codes (0: no reply), the errors, and when the later reply came.
func firstAttempts(ctx context.Context, c greylistConfig, rcpt string) (codes [2]int, errs [2]error, at time.Time) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(2)
	for g := range 2 {
		done.Go(func() {
			codes[g], errs[g] = firstAttempt(ctx, c.Addrs[g], c.From, rcpt, ready.Done, start)
		})
	}
	ready.Wait()
	close(start)
	done.Wait()
	return codes, errs, time.Now()
}

// firstAttempt says EHLO and MAIL, calls ready, waits for start and sends
// RCPT; ready is called exactly once, also when an earlier step fails.
func firstAttempt(ctx context.Context, addr, from, rcpt string, ready func(), start <-chan struct{}) (int, error) {
	var once sync.Once
	signal := func() { once.Do(ready) }
	defer signal()
	s, err := dial(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer s.close()
	if err := s.Mail(from, nil); err != nil {
		return replyCode(err), fmt.Errorf("MAIL: %w", err)
	}
	signal()
	select {
	case <-start:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	err = s.Rcpt(rcpt, nil)
	if err != nil && replyCode(err) == 0 {
		return 0, fmt.Errorf("RCPT: %w", err)
	}
	return replyCode(err), nil
}

// retry sends the triplet's message through addr; nil when accepted.
func retry(ctx context.Context, c greylistConfig, addr, rcpt string) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	s, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	defer s.close()
	_, err = s.send(c.From, rcpt)
	return err
}

// eventReport is what the gateways' events say about this run's triplets.
type eventReport struct {
	Events      int    // smtp.transaction events of this run's triplets
	NewOnce     int    // triplets with exactly one "new" across both gateways
	EarlyOnce   int    // triplets with exactly one "early" (the other first attempt)
	PassedTwice int    // triplets with exactly two "passed" (the retries)
	NewAt       [2]int // which gateway said "new"
	AfterPass   int    // triplets greylisted after their first pass
	Problems    []string
}

// OK reports whether every one of n triplets was seen as it should.
func (e *eventReport) OK(n int) bool {
	return e.Events == 4*n && e.NewOnce == n && e.EarlyOnce == n && e.PassedTwice == n && e.AfterPass == 0
}

// event is the part of moat's smtp.transaction event read here.
type event struct {
	Action string    `json:"event.action"`
	Time   time.Time `json:"@timestamp"`
	Checks struct {
		Greylist *struct {
			Result string `json:"result"`
			Key    string `json:"key"`
		} `json:"greylist"`
	} `json:"moat.checks"`
	gateway int
}

// waitEvents reads both event logs until they hold the 4 events of every
// triplet (two first attempts, two retries) or EventWait has passed, then
// judges them.
func waitEvents(ctx context.Context, c greylistConfig) (*eventReport, error) {
	ctx, cancel := context.WithTimeout(ctx, c.EventWait)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		evs, err := readEvents(c)
		if err != nil {
			return nil, err
		}
		if len(evs) >= 4*c.N {
			return judge(c, evs), nil
		}
		select {
		case <-ctx.Done():
			// Judge what is there: the missing events are problems.
			return judge(c, evs), nil
		case <-tick.C:
		}
	}
}

// readEvents returns the smtp.transaction events of this run's triplets
// from both logs.
func readEvents(c greylistConfig) ([]event, error) {
	prefix := "gl-" + strings.ToLower(c.Run) + "-"
	var evs []event
	for g, path := range c.Events {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("event log: %w", err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Bytes()
			if !strings.Contains(string(line), prefix) {
				continue
			}
			var e event
			if err := json.Unmarshal(line, &e); err != nil {
				continue // a line being written
			}
			if e.Action != "smtp.transaction" || e.Checks.Greylist == nil || !strings.HasPrefix(keyRcpt(e.Checks.Greylist.Key), prefix) {
				continue
			}
			e.gateway = g
			evs = append(evs, e)
		}
		err = sc.Err()
		f.Close()
		if err != nil && !errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("event log %s: %w", path, err)
		}
	}
	return evs, nil
}

// keyRcpt is the recipient of a greylist key "t|network|sender|rcpt".
func keyRcpt(key string) string {
	return key[strings.LastIndexByte(key, '|')+1:]
}

// judge checks each triplet's events in time order.
func judge(c greylistConfig, evs []event) *eventReport {
	r := &eventReport{Events: len(evs)}
	byRcpt := map[string][]event{}
	for _, e := range evs {
		k := keyRcpt(e.Checks.Greylist.Key)
		byRcpt[k] = append(byRcpt[k], e)
	}
	problem := func(format string, a ...any) {
		if len(r.Problems) < 10 {
			r.Problems = append(r.Problems, fmt.Sprintf(format, a...))
		}
	}
	for i := range c.N {
		rcpt := c.rcpt(i)
		es := byRcpt[rcpt]
		slices.SortStableFunc(es, func(a, b event) int { return a.Time.Compare(b.Time) })
		count := map[string]int{}
		passed, after := false, false
		for _, e := range es {
			res := e.Checks.Greylist.Result
			count[res]++
			switch res {
			case "new":
				r.NewAt[e.gateway]++
				after = after || passed
			case "early":
				after = after || passed
			case "passed":
				passed = true
			}
		}
		if count["new"] == 1 {
			r.NewOnce++
		}
		if count["early"] == 1 {
			r.EarlyOnce++
		}
		if count["passed"] == 2 {
			r.PassedTwice++
		}
		if after {
			r.AfterPass++
		}
		if len(es) != 4 || count["new"] != 1 || count["early"] != 1 || count["passed"] != 2 || after {
			problem("%s: %s", rcpt, describe(es))
		}
	}
	return r
}

// describe lists a triplet's events: "a new 12:00:00.001, b early ...".
func describe(es []event) string {
	if len(es) == 0 {
		return "no events"
	}
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = fmt.Sprintf("%c %s %s", 'a'+e.gateway, e.Checks.Greylist.Result, e.Time.Format("15:04:05.000"))
	}
	return strings.Join(parts, ", ")
}
