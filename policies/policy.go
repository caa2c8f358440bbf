// Package policies reads the policy files admins edit (SPEC.md "Policy
// files"), checks them with positioned errors, resolves extends, picks the
// policy for a transaction, and turns check results into one action.
//
// A Set is immutable once built: reload by building a new Set and swapping
// it in; a session keeps the *Policy it started with. Every method is safe
// for concurrent use.
//
// See README.md in this folder for the file format and the inheritance
// rules.
package policies

import (
	"fmt"
	"moat/greylist"
	"net/netip"

	"moat/filters"
	"moat/internal/yamlx"
)

// Set is every policy loaded from the policy files.
type Set struct {
	list   []*Policy // load order, the default included
	byName map[string]*Policy
	def    *Policy
}

// Default returns the default policy (the one without applies_to).
func (s *Set) Default() *Policy { return s.def }

// For returns the policy for one recipient of a transaction: the first
// policy in load order, other than the default, whose applies_to matches
// the recipient, the sender or the client address (any one criterion is
// enough), else the default policy.
func (s *Set) For(rcpt, from string, client netip.Addr) *Policy {
	for _, p := range s.list {
		if p.spec.AppliesTo != nil && p.spec.AppliesTo.matches(rcpt, from, client) {
			return p
		}
	}
	return s.def
}

// Policy returns the policy of that name, or nil.
func (s *Set) Policy(name string) *Policy { return s.byName[name] }

// Policies returns every policy in load order.
func (s *Set) Policies() []*Policy {
	out := make([]*Policy, len(s.list))
	copy(out, s.list)
	return out
}

// Policy is one effective policy (after extends), ready to use.
type Policy struct {
	name   string
	spec   Spec // effective
	checks []filters.Check
}

func newPolicy(s *Spec) *Policy {
	return &Policy{name: s.Policy, spec: *s, checks: compileChecks(&s.Checks)}
}

// Name returns the policy's name, as the event's moat.policy shows it.
func (p *Policy) Name() string { return p.name }

// Source returns where the policy was defined: "FILE:LINE".
func (p *Policy) Source() string { return position(&p.spec, "policy") }

// IsDefault reports whether p is a default policy (has no applies_to).
func (p *Policy) IsDefault() bool { return p.spec.AppliesTo == nil }

// Mode returns the policy-wide mode: Enforce or Observe.
func (p *Policy) Mode() Mode {
	if p.spec.Mode == Observe {
		return Observe
	}
	return Enforce
}

// Spec returns a copy of the effective policy settings (after extends),
// for tools that print them and for checks that read their own settings.
func (p *Policy) Spec() *Spec { return clone(&p.spec) }

// Checks returns the checks the policy runs: the implemented checks it
// turns on, compiled from its settings, in a fixed order. Checks in
// per-check observe mode are included (they run; Decide does not apply
// them). The checks are shared and stateless; the slice is the caller's.
func (p *Policy) Checks() []filters.Check {
	out := make([]filters.Check, len(p.checks))
	copy(out, p.checks)
	return out
}

// TagSettings says how a tagged message is marked.
type TagSettings struct {
	SubjectPrefix string // prepended to the Subject; "" for none
	Header        bool   // add X-Spam-Flag and X-Spam-Score
}

// Tag returns how the policy marks a tagged message. Unset, the prefix is
// empty and the headers are added.
func (p *Policy) Tag() TagSettings {
	t := TagSettings{Header: true}
	if p.spec.Tag.SubjectPrefix != nil {
		t.SubjectPrefix = *p.spec.Tag.SubjectPrefix
	}
	if p.spec.Tag.Header != nil {
		t.Header = *p.spec.Tag.Header
	}
	return t
}

// ListResult is what the allow and deny lists say about a transaction.
type ListResult struct {
	Allowed bool // skip scoring (still logged)
	Denied  bool // reject with Reply
	// Reason names the list and the entry: "client 192.0.2.1 is in
	// deny.clients of policy default". Empty when neither list matched.
	Reason string
	// Reply is 554 5.7.1 with the reason when Denied, else nil.
	Reply *filters.Reply
}

// Lists checks the client address, the envelope sender ("" for the null
// sender) and the recipient ("" when not known yet) against the policy's
// deny and allow lists. Deny wins over allow; within a list, clients are
// checked before senders, senders before recipients.
func (p *Policy) Lists(client netip.Addr, from, rcpt string) ListResult {
	deny, allow := &p.spec.Deny, &p.spec.Allow
	if r, ok := p.clientIn(deny.Clients, "deny.clients", client); ok {
		return denied(r)
	}
	if r, ok := p.addrIn(deny.Senders, "deny.senders", "sender", from); ok {
		return denied(r)
	}
	if r, ok := p.clientIn(allow.Clients, "allow.clients", client); ok {
		return ListResult{Allowed: true, Reason: r}
	}
	if r, ok := p.addrIn(allow.Senders, "allow.senders", "sender", from); ok {
		return ListResult{Allowed: true, Reason: r}
	}
	if rcpt != "" {
		if r, ok := p.addrIn(allow.Recipients, "allow.recipients", "recipient", rcpt); ok {
			return ListResult{Allowed: true, Reason: r}
		}
	}
	return ListResult{}
}

func denied(reason string) ListResult {
	return ListResult{Denied: true, Reason: reason, Reply: &filters.Reply{Code: 554, Enhanced: "5.7.1", Text: replyText(reason)}}
}

func (p *Policy) clientIn(list []yamlx.Prefix, listName string, client netip.Addr) (string, bool) {
	pr, ok := matchPrefix(list, client)
	if !ok {
		return "", false
	}
	a := client.Unmap()
	r := fmt.Sprintf("client %s is in %s of policy %s", a, listName, p.name)
	if pr.Bits() != a.BitLen() {
		r += fmt.Sprintf(" (%s)", pr)
	}
	return r, true
}

func (p *Policy) addrIn(list []AddrPattern, listName, what, addr string) (string, bool) {
	pat, ok := matchAddr(list, addr)
	if !ok {
		return "", false
	}
	shown := addr
	if shown == "" {
		shown = "<>"
	}
	r := fmt.Sprintf("%s %s is in %s of policy %s", what, shown, listName, p.name)
	if !pat.exact() {
		r += fmt.Sprintf(" (%s)", pat)
	}
	return r, true
}

// GreylistSettings is how a policy greylists.
type GreylistSettings struct {
	Params   greylist.Params
	MinScore float64 // greylist only when the score so far is at least this
	Observe  bool    // log what greylisting would do, delay nothing
	AtData   bool    // decide after DATA, with the body hash in the triplet
}

// Greylist returns the policy's greylisting, or nil when it is off.
// Unset keys take greylist.DefaultParams.
func (p *Policy) Greylist() *GreylistSettings {
	c := p.spec.Checks.Greylist
	if c == nil || (c.Enabled != nil && !*c.Enabled) {
		return nil
	}
	g := &GreylistSettings{Params: greylist.DefaultParams(), Observe: c.Mode == Observe, AtData: c.At == "data"}
	if c.Delay > 0 {
		g.Params.Delay = c.Delay.D()
	}
	if c.RetryWindow > 0 {
		g.Params.RetryWindow = c.RetryWindow.D()
	}
	if c.Lifetime > 0 {
		g.Params.Lifetime = c.Lifetime.D()
	}
	if c.AutoAllowAfter != nil {
		g.Params.AutoAllowAfter = *c.AutoAllowAfter
	}
	if c.IPv4Prefix > 0 {
		g.Params.IPv4Prefix = c.IPv4Prefix
	}
	if c.IPv6Prefix > 0 {
		g.Params.IPv6Prefix = c.IPv6Prefix
	}
	if c.MinScore != nil {
		g.MinScore = *c.MinScore
	}
	return g
}
