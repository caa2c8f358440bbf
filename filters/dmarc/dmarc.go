// Package dmarc is the "dmarc" check: RFC 7489 evaluation of the
// RFC5322.From domain against the SPF and DKIM results of the message.
//
// github.com/emersion/go-msgauth/dmarc parses the policy record; the rest
// of RFC 7489 is here: policy discovery with the organizational-domain
// fallback (section 6.6.3), identifier alignment (section 3.1), the choice
// of p= or sp=, and pct= sampling (section 6.6.4). Reporting (rua=, ruf=)
// is not done.
package dmarc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"

	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"

	"moat/filters"
)

// Policies (RFC 7489 section 6.3, p= and sp=).
const (
	PolicyNone       = "none"
	PolicyQuarantine = "quarantine"
	PolicyReject     = "reject"
)

// OrgDomain returns the Organizational Domain of domain (RFC 7489 section
// 3.2): the public suffix (from the Public Suffix List compiled into
// golang.org/x/net/publicsuffix, ICANN and private sections) plus one
// label. A name that is itself a public suffix, or that the list cannot
// handle, is its own organizational domain. The result is in lower case
// without a trailing dot.
func OrgDomain(domain string) string {
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	if o, err := publicsuffix.EffectiveTLDPlusOne(d); err == nil {
		return o
	}
	return d
}

// Aligned reports whether domain a is aligned with domain b (RFC 7489
// section 3.1): strict mode ("s") wants the same name, relaxed mode
// (anything else, "r" by default) the same organizational domain. Names
// compare without case and without a trailing dot; a malformed name (an
// empty label, such as a leading dot) is never aligned.
func Aligned(a, b string, mode dmarc.AlignmentMode) bool {
	na, err1 := normalize(a)
	nb, err2 := normalize(b)
	if err1 != nil || err2 != nil {
		return false
	}
	if mode == dmarc.AlignmentStrict {
		return na == nb
	}
	return OrgDomain(na) == OrgDomain(nb)
}

// Evaluator evaluates DMARC. The zero value is ready to use.
type Evaluator struct {
	// IntN returns a uniform random number in [0, n); it decides whether a
	// message falls inside a pct= sample. Nil means math/rand/v2.IntN.
	IntN func(n int) int
}

// Evaluate evaluates DMARC with the zero Evaluator.
func Evaluate(ctx context.Context, r filters.Resolver, fromDomain string, spf filters.SPFResult, dkim []filters.DKIMResult) filters.DMARCResult {
	var e Evaluator
	return e.Evaluate(ctx, r, fromDomain, spf, dkim)
}

// Evaluate finds the DMARC policy of fromDomain (the RFC5322.From domain,
// see FromDomain) through r, and checks whether spf (its Domain, when its
// Result is pass) or one of dkim (the d= of a signature whose Result is
// pass) is aligned with it.
//
// Result:
//   - pass: a policy exists and an aligned identifier passed. Policy is
//     "none" (nothing to apply).
//   - fail: a policy exists and nothing aligned passed. Policy is what the
//     domain asks for: p=, or sp= when the record was found at the
//     organizational domain of a From subdomain, then moved one step down
//     (reject→quarantine, quarantine→none) when the message falls outside
//     a pct= sample.
//   - none: no policy: no DMARC record at _dmarc.<from> nor at
//     _dmarc.<organizational domain>, or more than one record where one was
//     looked for (RFC 7489 section 6.6.3).
//   - temperror: a policy lookup failed (SERVFAIL, timeout, ctx done), or
//     nothing aligned passed but an aligned SPF or DKIM result is
//     temperror (a retry might pass).
//   - permerror: the record that applies is malformed (Reason names it), or
//     fromDomain is not a domain.
//
// PolicyDomain is where the record was found. The Reason says which
// identifiers aligned or why none did.
func (e *Evaluator) Evaluate(ctx context.Context, r filters.Resolver, fromDomain string, spf filters.SPFResult, dkim []filters.DKIMResult) filters.DMARCResult {
	return e.evaluate(ctx, r, fromDomain, spf, dkim).DMARCResult
}

// outcome is an evaluation with the facts behind Policy.
type outcome struct {
	filters.DMARCResult
	requested string // p= or sp= before pct sampling; "" without a policy
	fromSP    bool   // requested came from sp=
	sampledIn bool   // the message fell inside the pct= sample
}

func (e *Evaluator) evaluate(ctx context.Context, r filters.Resolver, fromDomain string, spf filters.SPFResult, dkim []filters.DKIMResult) outcome {
	o := outcome{DMARCResult: filters.DMARCResult{FromDomain: fromDomain, Policy: PolicyNone}}
	from, err := normalize(fromDomain)
	if err != nil {
		o.Result = filters.PermError
		o.Reason = fmt.Sprintf("From domain: %v", err)
		return o
	}
	o.FromDomain = from
	if r == nil {
		o.Result, o.Reason = filters.TempError, "no DNS resolver"
		return o
	}

	rec, at, err := discover(ctx, r, from)
	o.PolicyDomain = at
	var re *RecordError
	switch {
	case errors.Is(err, errNoPolicy):
		o.Result = filters.None
		o.Reason = err.Error()
		return o
	case errors.As(err, &re):
		o.Result = filters.PermError
		o.Reason = err.Error()
		return o
	case err != nil:
		o.Result = filters.TempError
		o.Reason = err.Error()
		return o
	}

	// Alignment (section 3.1).
	spfWhy := ""
	switch {
	case spf.Result != filters.Pass:
		r := spf.Result
		if r == "" {
			r = "not evaluated"
		}
		spfWhy = fmt.Sprintf("SPF %s", r)
		if spf.Domain != "" {
			spfWhy += " for " + spf.Domain
		}
	case Aligned(spf.Domain, from, rec.SPFAlignment):
		o.SPFAligned = true
		spfWhy = fmt.Sprintf("SPF pass for %s is aligned (%s)", spf.Domain, modeName(rec.SPFAlignment))
	default:
		spfWhy = fmt.Sprintf("SPF pass for %s is not aligned (%s)", spf.Domain, modeName(rec.SPFAlignment))
	}
	var passed, aligned []string
	for _, d := range dkim {
		if d.Result != filters.Pass {
			continue
		}
		passed = append(passed, d.Domain)
		if Aligned(d.Domain, from, rec.DKIMAlignment) {
			aligned = append(aligned, d.Domain)
		}
	}
	o.DKIMAligned = len(aligned) > 0
	var dkimWhy string
	switch {
	case o.DKIMAligned:
		dkimWhy = fmt.Sprintf("DKIM d=%s is aligned (%s)", strings.Join(aligned, ", d="), modeName(rec.DKIMAlignment))
	case len(passed) > 0:
		dkimWhy = fmt.Sprintf("DKIM pass for d=%s is not aligned (%s)", strings.Join(passed, ", d="), modeName(rec.DKIMAlignment))
	case len(dkim) > 0:
		dkimWhy = "no DKIM signature passed"
	default:
		dkimWhy = "no DKIM signature"
	}

	o.requested = string(rec.Policy)
	if at != from && rec.SubdomainPolicy != "" {
		o.requested, o.fromSP = string(rec.SubdomainPolicy), true
	}
	tag := "p"
	if o.fromSP {
		tag = "sp"
	}
	policyWhy := fmt.Sprintf("%s=%s at _dmarc.%s", tag, o.requested, at)

	if o.SPFAligned || o.DKIMAligned {
		o.Result = filters.Pass
		o.Reason = fmt.Sprintf("%s; %s; %s", spfWhy, dkimWhy, policyWhy)
		return o
	}
	// An aligned identifier whose check failed for a while (a DNS
	// timeout) might have passed: say temperror so that the client retries
	// rather than apply the policy to what may be legitimate mail.
	var unsure []string
	if spf.Result == filters.TempError && Aligned(spf.Domain, from, rec.SPFAlignment) {
		unsure = append(unsure, "SPF for "+spf.Domain)
	}
	for _, d := range dkim {
		if d.Result == filters.TempError && Aligned(d.Domain, from, rec.DKIMAlignment) {
			unsure = append(unsure, "DKIM d="+d.Domain)
		}
	}
	if len(unsure) > 0 {
		o.Result = filters.TempError
		o.Reason = fmt.Sprintf("nothing aligned passed, but %s had a temporary error; %s; %s; %s",
			strings.Join(unsure, " and "), spfWhy, dkimWhy, policyWhy)
		return o
	}

	o.Result = filters.Fail
	o.Policy = o.requested
	o.sampledIn = true
	if rec.Percent != nil && *rec.Percent < 100 {
		intN := e.IntN
		if intN == nil {
			intN = rand.IntN
		}
		o.sampledIn = intN(100) < *rec.Percent
		if !o.sampledIn {
			o.Policy = weaker(o.requested)
			policyWhy += fmt.Sprintf(", pct=%d: outside the sample, %s applies", *rec.Percent, o.Policy)
		} else {
			policyWhy += fmt.Sprintf(", pct=%d: inside the sample", *rec.Percent)
		}
	}
	o.Reason = fmt.Sprintf("%s; %s; %s", spfWhy, dkimWhy, policyWhy)
	return o
}

// weaker is the policy one step down (RFC 7489 section 6.6.4).
func weaker(p string) string {
	if p == PolicyReject {
		return PolicyQuarantine
	}
	return PolicyNone
}

func modeName(m dmarc.AlignmentMode) string {
	if m == dmarc.AlignmentStrict {
		return "strict"
	}
	return "relaxed"
}

// errNoPolicy: DMARC does not apply to the domain.
var errNoPolicy = errors.New("no DMARC policy")

// RecordError is a DMARC record that cannot be used.
type RecordError struct {
	Domain string // the name queried, _dmarc.…
	Record string
	Err    error
}

func (e *RecordError) Error() string {
	return fmt.Sprintf("malformed DMARC record %q at %s: %v", e.Record, e.Domain, e.Err)
}

func (e *RecordError) Unwrap() error { return e.Err }

// discover finds the policy record for the From domain (RFC 7489 section
// 6.6.3): _dmarc.<from>, and when that holds no DMARC record,
// _dmarc.<organizational domain>. It returns the record and the domain it
// was found at. Errors: errNoPolicy (wrapped, with the reason), a
// *RecordError, or a lookup error.
func discover(ctx context.Context, r filters.Resolver, from string) (*dmarc.Record, string, error) {
	rec, err := lookup(ctx, r, from)
	if !errors.Is(err, errNotFound) {
		return rec, from, err
	}
	org := OrgDomain(from)
	if org == from {
		return nil, "", fmt.Errorf("%w: no DMARC record at _dmarc.%s", errNoPolicy, from)
	}
	rec, err = lookup(ctx, r, org)
	if errors.Is(err, errNotFound) {
		return nil, "", fmt.Errorf("%w: no DMARC record at _dmarc.%s nor at _dmarc.%s", errNoPolicy, from, org)
	}
	return rec, org, err
}

var errNotFound = errors.New("no DMARC record")

// lookup queries _dmarc.<domain> and parses the one DMARC record there.
// It returns errNotFound when there is none (no such name, no TXT record,
// no TXT record that starts with v=DMARC1), errNoPolicy (wrapped) when
// there are several, a *RecordError for a malformed one, and any other
// lookup failure as a temporary error.
func lookup(ctx context.Context, r filters.Resolver, domain string) (*dmarc.Record, error) {
	name := "_dmarc." + domain
	txts, err := r.LookupTXT(ctx, name)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return nil, errNotFound
		}
		// SERVFAIL, timeouts, and answers the resolver could not read:
		// the record may exist, so try again later rather than skip
		// the policy.
		return nil, fmt.Errorf("DMARC lookup of %s failed: %w", name, err)
	}
	var recs []string
	for _, t := range txts {
		if isDMARC(t) {
			recs = append(recs, t)
		}
	}
	switch len(recs) {
	case 0:
		return nil, errNotFound
	case 1:
	default:
		return nil, fmt.Errorf("%w: %d DMARC records at %s, so DMARC does not apply", errNoPolicy, len(recs), name)
	}
	rec, err := parseRecord(recs[0])
	if err != nil {
		return nil, &RecordError{Domain: name, Record: recs[0], Err: err}
	}
	return rec, nil
}

// isDMARC reports whether a TXT record starts with the version tag
// v=DMARC1 (RFC 7489 section 6.6.3 step 2 discards the others).
func isDMARC(txt string) bool {
	first, _, _ := strings.Cut(txt, ";")
	k, v, ok := strings.Cut(first, "=")
	return ok && strings.EqualFold(strings.TrimSpace(k), "v") && strings.TrimSpace(v) == "DMARC1"
}

// parseRecord parses a DMARC record with go-msgauth, after two
// adjustments:
//   - tag names, and the values of p, sp, adkim, aspf, fo and rf, compare
//     without case (RFC 7489's ABNF gives them as quoted strings, which
//     are case-insensitive; go-msgauth wants lower case). "DMARC1" is
//     given in hex and stays case-sensitive;
//   - a missing or invalid p=, or an invalid sp=, is acceptable when rua=
//     holds a valid URI: the record then counts as p=none (section 6.6.3
//     step 6). Without one the record is malformed.
func parseRecord(txt string) (*dmarc.Record, error) {
	var parts []string
	tags := map[string]string{}
	for _, part := range strings.Split(txt, ";") {
		k, v, ok := strings.Cut(part, "=")
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		if ok {
			switch k {
			case "p", "sp", "adkim", "aspf", "fo", "rf":
				v = strings.ToLower(v)
			}
			tags[k] = v
			part = k + "=" + v
		}
		parts = append(parts, part)
	}
	p, hasP := tags["p"]
	sp, hasSP := tags["sp"]
	if !hasP || !validPolicy(p) || hasSP && !validPolicy(sp) {
		if !validURIList(tags["rua"]) {
			switch {
			case !hasP:
				return nil, errors.New("no p= tag")
			case !validPolicy(p):
				return nil, fmt.Errorf("p=%s is not none, quarantine or reject", p)
			default:
				return nil, fmt.Errorf("sp=%s is not none, quarantine or reject", sp)
			}
		}
		return dmarc.Parse("v=DMARC1; p=none")
	}
	rec, err := dmarc.Parse(strings.Join(parts, ";"))
	if err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "dmarc: "))
	}
	return rec, nil
}

func validPolicy(p string) bool {
	return p == PolicyNone || p == PolicyQuarantine || p == PolicyReject
}

// validURIList reports whether a rua= value holds at least one URI
// (dmarc-uri = URI [ "!" size ]) with a scheme.
func validURIList(s string) bool {
	for _, u := range strings.Split(s, ",") {
		u = strings.TrimSpace(u)
		if i := strings.LastIndexByte(u, '!'); i > 0 {
			u = u[:i]
		}
		if pu, err := url.Parse(u); err == nil && pu.Scheme != "" && pu.Opaque+pu.Host+pu.Path != "" {
			return true
		}
	}
	return false
}
