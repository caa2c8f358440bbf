package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// lateAfter is how far past its slot a message may start before it counts
// as late: the client's own timer slack and scheduling on a busy machine
// stay under it; a message that waited for a free session does not.
const lateAfter = time.Millisecond

// schedule returns the send times of n messages at rate messages per
// second, as offsets from the start. By default the slots are evenly
// spaced, 1/rate apart: direct and through-moat runs then get exactly the
// same load, and the repetitions of a noisy machine differ less. With
// poisson the gaps are exponential with mean 1/rate (Poisson arrivals, the
// burstier pattern of independent senders), drawn from a generator seeded
// with seed so that every run replays the same arrivals.
func schedule(n int, rate float64, poisson bool, seed uint64) []time.Duration {
	out := make([]time.Duration, n)
	if !poisson {
		for i := range out {
			out[i] = time.Duration(float64(i) / rate * float64(time.Second))
		}
		return out
	}
	rng := rand.New(rand.NewPCG(seed, seed))
	var t float64 // seconds; the first message leaves at once
	for i := range out {
		out[i] = time.Duration(t * float64(time.Second))
		t += rng.ExpFloat64() / rate
	}
	return out
}

// outcome is what became of one message of an open-loop run.
type outcome struct {
	lat  time.Duration // slot → reply to the end of data (or the error)
	late bool          // started more than lateAfter after its slot
	err  error
}

// openLoop sends message i at start+slots[i] with send, at most c at a
// time. A message whose slot comes while c are in flight waits for one to
// finish, and its latency still counts from its slot: the waiting is part
// of it (no coordinated omission). It returns the outcomes, by message, and
// the time from the first slot to the last reply.
func openLoop(slots []time.Duration, c int, send func(i int) error) ([]outcome, time.Duration) {
	out := make([]outcome, len(slots))
	start := time.Now()
	// Unbuffered: the hand-off blocks while all c workers are busy.
	work := make(chan int)
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			for i := range work {
				due := start.Add(slots[i])
				out[i].late = time.Since(due) > lateAfter
				out[i].err = send(i)
				out[i].lat = time.Since(due)
			}
		})
	}
	for i, at := range slots {
		// Behind schedule (a slow hand-off), the next slots go at once.
		if d := time.Until(start.Add(at)); d > 0 {
			time.Sleep(d)
		}
		work <- i
	}
	close(work)
	wg.Wait()
	return out, time.Since(start)
}

// quantile returns the q-quantile (0 < q ≤ 1) of sorted by the
// nearest-rank method: the smallest value with at least q of the values at
// or below it. Zero when sorted is empty.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	r := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(r, 0), len(sorted)-1)]
}

// summary is the result line's figures of one open-loop run.
type summary struct {
	ok, failed, late int
	lat              []time.Duration // of the messages sent, sorted
}

func summarize(out []outcome) summary {
	var s summary
	for _, o := range out {
		if o.late {
			s.late++
		}
		if o.err != nil {
			s.failed++
			continue
		}
		s.ok++
		s.lat = append(s.lat, o.lat)
	}
	slices.Sort(s.lat)
	return s
}
