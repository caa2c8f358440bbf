package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"

	"moat/filters"
	"moat/policies"
)

// ExplainInput is one transaction to dry-run.
type ExplainInput struct {
	IP      netip.Addr
	Helo    string
	From    string   // "" for the null sender
	To      []string // recipients
	Message []byte   // the message, CRLF line ends; nil: stop after RCPT
}

// ExplainRcpt is what happened to one recipient at RCPT.
type ExplainRcpt struct {
	Address  string                    `json:"address"`
	Route    string                    `json:"route,omitempty"` // upstream host:port or "local"
	Policy   string                    `json:"policy,omitempty"`
	Why      string                    `json:"policy_reason,omitempty"` // why this policy applies
	Checks   map[string]map[string]any `json:"checks,omitempty"`
	Score    float64                   `json:"score"`
	Decision string                    `json:"decision,omitempty"` // the rule that decided
	Greylist string                    `json:"greylist,omitempty"`
	Reply    string                    `json:"reply"`
}

// ExplainResult is the whole dry run.
type ExplainResult struct {
	Trusted    bool                      `json:"trusted"`
	Recipients []ExplainRcpt             `json:"recipients"`
	Data       *ExplainData              `json:"data,omitempty"`
	Checks     map[string]map[string]any `json:"checks,omitempty"`
}

// ExplainData is the end-of-data verdict.
type ExplainData struct {
	Policy   string                    `json:"policy"`
	Checks   map[string]map[string]any `json:"checks"`
	Score    float64                   `json:"score"`
	Action   string                    `json:"action"`
	Would    string                    `json:"would_action,omitempty"`
	Decision string                    `json:"decision"`
	Reply    string                    `json:"reply"`
	AuthRes  string                    `json:"authentication_results"`
}

// Explain runs one transaction through the real pipeline — routes, the
// policy of each recipient, every check with the real resolver — without
// a network client and without changing any state: greylisting is
// reported, not recorded, and nothing is delivered or quarantined. The
// replies are the ones a client would get, except that an upstream's own
// reply at the end of data is not asked for.
func Explain(ctx context.Context, rt *Runtime, in ExplainInput) (*ExplainResult, error) {
	c := rt.Cfg
	res := &ExplainResult{Trusted: c.Trusted(in.IP)}
	from := Address{}
	if in.From != "" {
		a, _, err := parseArg("FROM:<"+in.From+">", "FROM:", true)
		if err != nil {
			return nil, fmt.Errorf("--from %q: not a valid address", in.From)
		}
		from = a
	}
	t := &txn{from: from.canonical(), utf8: from.NonASCII}
	from = t.from
	remote := netip.AddrPortFrom(in.IP.Unmap(), 0)
	ft := func() *filters.Txn {
		f := &filters.Txn{ClientIP: remote.Addr(), Helo: in.Helo, From: from.String(), DNS: rt.DNS, Auth: &t.auth}
		for _, r := range t.rcpts {
			f.Rcpt = append(f.Rcpt, r.String())
		}
		return f
	}
	for _, rs := range in.To {
		er := ExplainRcpt{Address: rs}
		res.Recipients = append(res.Recipients, er)
		e := &res.Recipients[len(res.Recipients)-1]
		addr, _, err := parseArg("TO:<"+rs+">", "TO:", false)
		if err != nil {
			e.Reply = replyBadRcpt.String()
			continue
		}
		addr = addr.canonical() // as the session does
		route, ok := c.Route(addr.ASCIIDomain())
		if !ok {
			e.Reply = replyRelayDenied.String()
			continue
		}
		e.Route = route.Upstream
		if t.dest != "" && route.Upstream != t.dest {
			e.Reply = replyOtherDest.String()
			continue
		}
		if res.Trusted {
			e.Policy, e.Why = "trusted", "the client is in smtp.trusted_networks: no checks"
			t.dest = route.Upstream
			t.rcpts = append(t.rcpts, addr)
			e.Reply = reply(250, "2.1.5", "Ok").String()
			continue
		}
		pol := rt.Policies.For(addr.String(), from.String(), remote.Addr())
		e.Policy = pol.Name()
		e.Why = "the default policy"
		if !pol.IsDefault() {
			e.Why = "its applies_to matches"
		}
		if t.policy != nil && pol != t.policy {
			e.Reply = replyOtherPolicy.String()
			continue
		}
		if lr := pol.Lists(remote.Addr(), from.String(), addr.String()); lr.Denied {
			e.Decision, e.Reply = lr.Reason, fromFilter(lr.Reply).String()
			continue
		} else if lr.Allowed {
			e.Decision = lr.Reason + ": checks are not scored"
			t.allowed = true
		}
		f := ft()
		f.Rcpt = append(f.Rcpt, addr.String())
		first := t.policy == nil
		results := runChecks(ctx, pol, f, func(st filters.Stage) bool {
			return st == filters.StageRcpt || (first && st < filters.StageRcpt)
		})
		d := pol.Decide(append(append([]filters.Result(nil), t.results...), results...), false)
		e.Checks, e.Score = d.Checks, d.Score
		if !t.allowed {
			if e.Decision == "" {
				e.Decision = d.Reason
			}
			if d.Action == policies.Reject || d.Action == policies.Tempfail {
				e.Reply = decisionReply(d).String()
				continue
			}
			if g := pol.Greylist(); g != nil {
				switch why := greylistExempt(g, d, append(append([]filters.Result(nil), t.results...), results...), false); {
				case why != "":
					e.Greylist = "skipped: " + why
				case g.AtData:
					e.Greylist = "checked after DATA against the store (explain does not touch it)"
				default:
					e.Greylist = "checked against the store (explain does not touch it): a first-time triplet gets 451 4.7.1 Greylisted, try again later"
				}
			}
		}
		t.results = append(t.results, results...)
		t.dest, t.policy = route.Upstream, pol
		t.rcpts = append(t.rcpts, addr)
		e.Reply = reply(250, "2.1.5", "Ok").String()
	}
	if in.Message == nil || len(t.rcpts) == 0 {
		return res, nil
	}
	var out bytes.Buffer
	cnt := newContent(&out, c.SMTP.BareNewline == "normalize", int64(c.SMTP.MaxMessageSize), int(c.SMTP.MaxHeaderSize))
	cnt.Write(in.Message)
	cnt.finish()
	dd := &ExplainData{Checks: map[string]map[string]any{}}
	res.Data = dd
	switch cnt.problem {
	case errTooBig:
		dd.Reply = replyTooBig.String()
		return res, nil
	case errHeaderTooBig:
		dd.Reply = replyHeaderTooBig.String()
		return res, nil
	case errBareNewline, errNUL:
		dd.Reply = replyBareNewline.String()
		return res, nil
	}
	dd.Action, dd.Reply = "accept", "the upstream's own reply (explain does not deliver)"
	if t.policy == nil {
		dd.Policy = "trusted"
		return res, nil
	}
	dd.Policy = t.policy.Name()
	f := ft()
	f.Size = cnt.size
	msg := out.Bytes()
	f.Message = func() io.Reader { return bytes.NewReader(msg) }
	f.Header = cnt.header
	results := append(t.results, runChecks(ctx, t.policy, f, func(st filters.Stage) bool { return st == filters.StageData })...)
	d := t.policy.Decide(results, true)
	dd.Checks, dd.Score, dd.Would, dd.Decision = d.Checks, d.Score, string(d.Would), d.Reason
	if t.allowed {
		dd.Decision = "allow-listed: accepted whatever the checks say"
	} else {
		dd.Action = string(d.Action)
		switch d.Action {
		case policies.Reject, policies.Tempfail:
			dd.Reply = decisionReply(d).String()
		case policies.Quarantine:
			dd.Reply = "250 2.0.0 Ok: queued as ... (kept in the quarantine)"
		}
	}
	dd.AuthRes = authResults(c.Hostname, in.Helo, t)
	return res, nil
}
