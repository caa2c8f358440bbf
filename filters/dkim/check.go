package dkim

import (
	"context"
	"strconv"

	"moat/filters"
)

// check is the "dkim" check.
type check struct{}

// NewCheck returns the "dkim" check. It runs at StageData, verifies every
// signature of the message once per transaction (sharing the results
// through Txn.Auth, where DMARC finds them) and reports:
//
//   - none when the message has no DKIM-Signature;
//   - pass when at least one signature verifies;
//   - otherwise the first signature's result in the order temperror,
//     fail, permerror, neutral (see rank).
//
// Fields: "domain" and "selector" of the signature the result comes from
// (the first with that result), and "signatures", a list of
// {domain, selector, result} for every signature in header order.
func NewCheck() filters.Check { return check{} }

func (check) Name() string { return "dkim" }

func (check) Stages() []filters.Stage { return []filters.Stage{filters.StageData} }

// Run implements filters.Check.
func (c check) Run(ctx context.Context, stage filters.Stage, t *filters.Txn) (filters.Result, bool) {
	if stage != filters.StageData {
		return filters.Result{}, false
	}
	var results []filters.DKIMResult
	if t.Auth != nil && t.Auth.DKIMDone {
		results = t.Auth.DKIM
	} else {
		if t.Message == nil {
			return filters.Result{Check: c.Name(), Value: filters.TempError, Reason: "the message is not available"}, true
		}
		var err error
		results, err = Verify(ctx, t.DNS, t.Message())
		if err != nil {
			return filters.Result{Check: c.Name(), Value: filters.TempError, Reason: err.Error()}, true
		}
		if t.Auth != nil {
			t.Auth.DKIM = results
			t.Auth.DKIMDone = true
		}
	}
	return c.summarize(results), true
}

// rank orders the results of single signatures for the message's result:
// the lowest rank present wins.
//
// One passing signature is enough (RFC 6376 6.1: signatures are evaluated
// on their own; RFC 7489 needs one aligned pass). A signature that failed
// is no evidence against the message: "a Verifier SHOULD NOT treat a
// message that has one or more bad signatures and no good signatures
// differently from a message with no signature at all" (RFC 6376 6.1), and
// anyone can add a broken signature. So a temperror, a signature that could
// still pass when DNS answers, wins over fail and permerror: the outcome is
// not known yet, and a policy that maps temperror to tempfail gets the
// message again later. fail (the signature was checked and does not match)
// says more than permerror (it could not be checked at all). neutral is
// only given to signatures past MaxSignatures, which were not checked.
var rank = map[string]int{
	filters.Pass:      0,
	filters.TempError: 1,
	filters.Fail:      2,
	filters.PermError: 3,
	filters.Neutral:   4,
}

// summarize turns the per-signature results into the check's result.
func (c check) summarize(results []filters.DKIMResult) filters.Result {
	if len(results) == 0 {
		return filters.Result{Check: c.Name(), Value: filters.None, Reason: "no DKIM signature",
			Fields: map[string]any{"signatures": []map[string]string{}}}
	}
	best := 0
	for i, r := range results {
		if rankOf(r.Result) < rankOf(results[best].Result) {
			best = i
		}
	}
	sigs := make([]map[string]string, len(results))
	for i, r := range results {
		sigs[i] = map[string]string{"domain": r.Domain, "selector": r.Selector, "result": r.Result}
	}
	b := results[best]
	reason := b.Reason
	if len(results) > 1 {
		reason += " (" + strconv.Itoa(len(results)) + " signatures)"
	}
	return filters.Result{
		Check:  c.Name(),
		Value:  b.Result,
		Reason: reason,
		Fields: map[string]any{"domain": b.Domain, "selector": b.Selector, "signatures": sigs},
	}
}

func rankOf(result string) int {
	if r, ok := rank[result]; ok {
		return r
	}
	return len(rank)
}

var _ filters.Check = check{}
