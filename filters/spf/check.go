package spf

import (
	"context"
	"time"

	"moat/filters"
)

// Timeout bounds one check_host() evaluation when the caller's context
// allows longer. RFC 7208 section 4.6.4 asks for a limit of at least 20
// seconds; past it the result is temperror.
const Timeout = 20 * time.Second

type check struct{}

// NewCheck returns the "spf" check. It runs at MAIL FROM, evaluates once
// per transaction through Evaluate with the transaction's resolver, and
// records the outcome in t.Auth.SPF (when t.Auth is set), where DMARC and
// the Authentication-Results header find it. If t.Auth.SPF is already
// there, it reports that instead of evaluating again.
//
// The result's Value is the SPF result; Fields carry "domain" (the domain
// checked) and "identity" ("mailfrom", or "helo" for the null sender).
func NewCheck() filters.Check { return check{} }

func (check) Name() string { return "spf" }

func (check) Stages() []filters.Stage { return []filters.Stage{filters.StageMail} }

// Run implements filters.Check.
func (c check) Run(ctx context.Context, stage filters.Stage, t *filters.Txn) (filters.Result, bool) {
	if stage != filters.StageMail {
		return filters.Result{}, false
	}
	var res filters.SPFResult
	if t.Auth != nil && t.Auth.SPF != nil {
		res = *t.Auth.SPF
	} else {
		ctx, cancel := context.WithTimeout(ctx, Timeout)
		res = Evaluate(ctx, t.DNS, t.ClientIP, t.Helo, t.From)
		cancel()
		if t.Auth != nil {
			t.Auth.SPF = &res
		}
	}
	return Result(res), true
}

// Result is the check result that reports res.
func Result(res filters.SPFResult) filters.Result {
	return filters.Result{
		Check:  "spf",
		Value:  res.Result,
		Reason: res.Reason,
		Fields: map[string]any{"domain": res.Domain, "identity": res.Identity},
	}
}

var _ filters.Check = check{}
