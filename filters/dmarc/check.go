package dmarc

import (
	"context"
	"fmt"
	"io"

	"moat/filters"
	"moat/filters/spf"
)

// VerifyFunc verifies the DKIM signatures of a message (the signature of
// moat/filters/dkim.Verify): one result per signature, none for an
// unsigned message; an error means the message could not be read.
type VerifyFunc func(ctx context.Context, r filters.Resolver, msg io.Reader) ([]filters.DKIMResult, error)

// Option configures the check.
type Option func(*check)

// WithIntN sets the random source of pct= sampling: a uniform number in
// [0, n). Tests use it; the default is math/rand/v2.IntN.
func WithIntN(f func(n int) int) Option {
	return func(c *check) { c.eval.IntN = f }
}

type check struct {
	verify VerifyFunc
	eval   Evaluator
}

// NewCheck returns the "dmarc" check. It runs at the end of DATA:
//
//   - the From domain comes from the header section (FromDomain); a
//     message without exactly one From address is a permerror;
//   - SPF is t.Auth.SPF, or else evaluated now with package spf (and
//     stored in t.Auth);
//   - DKIM is t.Auth.DKIM when t.Auth.DKIMDone, or else the result of
//     verifyDKIM on the message (stored in t.Auth, DKIMDone set). With a
//     nil verifyDKIM the message counts as unsigned. When verifyDKIM
//     returns an error, a DMARC fail becomes temperror: an aligned
//     signature might have passed;
//   - the outcome goes to t.Auth.DMARC (when t.Auth is set), and a second
//     run reports it again.
//
// The result's Value is the DMARC result; Fields carry "policy" (the policy
// to apply, see Evaluator.Evaluate), "domain" (the From domain),
// "spf_aligned" and "dkim_aligned", and "policy_domain" when a record was
// found.
func NewCheck(verifyDKIM VerifyFunc, opts ...Option) filters.Check {
	c := &check{verify: verifyDKIM}
	for _, o := range opts {
		o(c)
	}
	return c
}

func (c *check) Name() string { return "dmarc" }

func (c *check) Stages() []filters.Stage { return []filters.Stage{filters.StageData} }

// Run implements filters.Check.
func (c *check) Run(ctx context.Context, stage filters.Stage, t *filters.Txn) (filters.Result, bool) {
	if stage != filters.StageData {
		return filters.Result{}, false
	}
	if t.Auth != nil && t.Auth.DMARC != nil {
		return Result(*t.Auth.DMARC), true
	}
	res := c.run(ctx, t)
	if t.Auth != nil {
		t.Auth.DMARC = &res
	}
	return Result(res), true
}

func (c *check) run(ctx context.Context, t *filters.Txn) filters.DMARCResult {
	from, err := FromDomain(t.Header)
	if err != nil {
		return filters.DMARCResult{Result: filters.PermError, Policy: PolicyNone, Reason: err.Error()}
	}

	var spfRes filters.SPFResult
	if t.Auth != nil && t.Auth.SPF != nil {
		spfRes = *t.Auth.SPF
	} else {
		sctx, cancel := context.WithTimeout(ctx, spf.Timeout)
		spfRes = spf.Evaluate(sctx, t.DNS, t.ClientIP, t.Helo, t.From)
		cancel()
		if t.Auth != nil {
			t.Auth.SPF = &spfRes
		}
	}

	var dkim []filters.DKIMResult
	var dkimErr error
	switch {
	case t.Auth != nil && t.Auth.DKIMDone:
		dkim = t.Auth.DKIM
	case c.verify != nil && t.Message != nil:
		dkim, dkimErr = c.verify(ctx, t.DNS, t.Message())
		if dkimErr == nil && t.Auth != nil {
			t.Auth.DKIM, t.Auth.DKIMDone = dkim, true
		}
	}

	res := c.eval.Evaluate(ctx, t.DNS, from, spfRes, dkim)
	if dkimErr != nil && res.Result == filters.Fail {
		res.Result, res.Policy = filters.TempError, PolicyNone
		res.Reason = fmt.Sprintf("DKIM verification failed (%v), so the fail may be wrong: %s", dkimErr, res.Reason)
	}
	return res
}

// Result is the check result that reports res.
func Result(res filters.DMARCResult) filters.Result {
	f := map[string]any{
		"policy":       res.Policy,
		"domain":       res.FromDomain,
		"spf_aligned":  res.SPFAligned,
		"dkim_aligned": res.DKIMAligned,
	}
	if res.PolicyDomain != "" {
		f["policy_domain"] = res.PolicyDomain
	}
	return filters.Result{Check: "dmarc", Value: res.Result, Reason: res.Reason, Fields: f}
}

var _ filters.Check = (*check)(nil)
