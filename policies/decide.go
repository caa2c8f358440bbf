package policies

import (
	"cmp"
	"fmt"
	"math"
	"strings"

	"moat/filters"
)

// Decision is what the policy makes of a transaction's check results.
type Decision struct {
	Policy string  // the policy's name (the event's moat.policy)
	Action Action  // what to do
	Would  Action  // what observe mode kept from happening; "" when nothing was kept back
	Score  float64 // the total of the applied scores (the event's moat.score)
	// Reason names the rule that decided the Action: "score 13 ≥ reject
	// 12", "size: fail → reject", "policy default is in observe mode",
	// "score 2 < tag 5".
	Reason string
	// WouldReason names the rule that decided Would; "" when Would is.
	WouldReason string
	// Reply is the reply for a reject or tempfail: the deciding result's
	// own Reply when it has one, else 550 5.7.1 or 451 4.7.1 with the
	// reason. Nil for the other actions.
	Reply *filters.Reply
	// Checks is the event's moat.checks: per check {"result": value,
	// "score": n, the result's Fields, "action": a when the result maps
	// to one, "mode": "observe" when the check was only observed}.
	Checks map[string]map[string]any
}

// Decide turns check results into one action.
//
// Each result counts as the policy maps it: the check's result mapping
// (spf: { fail: 5, temperror: tempfail }) or else the check's built-in
// default (size: fail → reject), plus the check's own Result.Score; a
// check's `action:` applies to its fail result. A result's own Action (the
// action of a matching header rule) applies too, whatever the result's
// value; the more severe of the two wins, and an Action that is not an
// action word is ignored. When results hold several for one check (from
// several stages), the last one counts. A check in observe mode is
// recorded but not applied.
//
// With final (the end of DATA; pass every result of the transaction) the
// score thresholds apply: score ≥ reject → reject, ≥ quarantine →
// quarantine, ≥ tag → tag, and every check action applies. Before that
// (RCPT) only score ≥ reject and check actions reject and tempfail apply.
// The most severe action wins (reject > tempfail > quarantine > tag >
// accept); between equals, check actions in result order come before the
// score. A policy in observe mode decides the same way, then accepts and
// keeps the action it would have taken in Would.
func (p *Policy) Decide(results []filters.Result, final bool) Decision {
	last := make(map[string]int, len(results))
	for i, r := range results {
		last[r.Check] = i
	}
	d := Decision{Policy: p.name, Checks: make(map[string]map[string]any, len(last))}
	applied, full := verdict{action: Accept}, verdict{action: Accept}
	var score, fullScore float64
	var contrib []string // what added to the applied score, for the reason
	for i, r := range results {
		if last[r.Check] != i {
			continue
		}
		rl := p.rule(r.Check, r.Value)
		if a, err := ParseAction(r.Action); r.Action != "" && err == nil && a.severity() > rl.action.severity() {
			rl.action = a // the check's own choice (a header rule's action:)
		}
		if hr := p.honorDMARC(r, &rl); hr != nil && r.Reply == nil {
			r.Reply = hr
		}
		s := r.Score + rl.score
		observed := rl.mode == Observe
		entry := make(map[string]any, len(r.Fields)+4)
		for k, v := range r.Fields {
			entry[k] = v
		}
		entry["result"] = r.Value
		entry["score"] = round(s)
		if r.Reason != "" {
			entry["reason"] = r.Reason
		}
		if rl.action != "" {
			entry["action"] = string(rl.action)
		}
		if observed {
			entry["mode"] = string(Observe)
		}
		d.Checks[r.Check] = entry

		fullScore += s
		if !observed {
			score += s
			if s > 0 {
				c := fmt.Sprintf("%s +%s", r.Check, formatScore(round(s)))
				if why := cmp.Or(r.Reason, r.Value); why != "" {
					c += ": " + why
				}
				contrib = append(contrib, c)
			}
		}
		if rl.action.severity() > 0 && (final || rl.action == Reject || rl.action == Tempfail) {
			v := verdict{action: rl.action, reason: fmt.Sprintf("%s: %s → %s", r.Check, r.Value, rl.action), detail: r.Reason, reply: r.Reply}
			full.consider(v)
			if !observed {
				applied.consider(v)
			}
		}
	}
	score, fullScore = round(score), round(fullScore)
	byScore := p.byScore(score, final)
	if byScore.action != Accept && len(contrib) > 0 {
		byScore.reason += " (" + strings.Join(contrib, "; ") + ")"
	}
	applied.consider(byScore)
	full.consider(p.byScore(fullScore, final))

	d.Score = score
	if p.Mode() == Observe {
		d.Action, d.Reason = Accept, fmt.Sprintf("policy %s is in observe mode", p.name)
		if full.action != Accept {
			d.Would, d.WouldReason = full.action, full.reason
		}
	} else {
		d.Action, d.Reason = applied.action, applied.reason
		d.Reply = reply(applied)
		if full.action != applied.action {
			d.Would, d.WouldReason = full.action, full.reason
		}
	}
	return d
}

// honorDMARC applies `dmarc: { honor_policy: true }`: a DMARC fail whose
// domain publishes p=reject or p=quarantine (after sp= and pct, as the
// check's "policy" field says) gets that action, unless the policy maps the
// fail to an action of its own. It returns the reply a reject should use.
func (p *Policy) honorDMARC(r filters.Result, rl *rule) *filters.Reply {
	c := p.spec.Checks.DMARC
	if r.Check != "dmarc" || r.Value != filters.Fail || c == nil || !c.HonorPolicy || rl.action != "" {
		return nil
	}
	domain, _ := r.Fields["domain"].(string)
	switch r.Fields["policy"] {
	case "reject":
		rl.action = Reject
		return &filters.Reply{Code: 550, Enhanced: "5.7.1",
			Text: fmt.Sprintf("Message rejected: it fails the DMARC policy of %s (p=reject)", domain)}
	case "quarantine":
		rl.action = Quarantine
	}
	return nil
}

// verdict is one candidate action with the rule behind it.
type verdict struct {
	action Action
	reason string
	detail string // the deciding result's own reason, for the reply text
	reply  *filters.Reply
}

// consider keeps v when it is more severe than the current verdict, or
// when no rule has spoken yet.
func (cur *verdict) consider(v verdict) {
	if v.action.severity() > cur.action.severity() || cur.reason == "" {
		*cur = v
	}
}

// byScore is the verdict of the score thresholds (an accept, with its
// reason, when none is reached).
func (p *Policy) byScore(score float64, final bool) verdict {
	a := &p.spec.Actions
	ths := []struct {
		action Action
		v      *float64
	}{{Reject, a.Reject}, {Quarantine, a.Quarantine}, {Tag, a.Tag}}
	if !final {
		ths = ths[:1]
	}
	lowest := -1 // the last threshold set: the reason of an accept names it
	for i, t := range ths {
		if t.v == nil {
			continue
		}
		if score >= *t.v {
			return verdict{action: t.action, reason: fmt.Sprintf("score %s ≥ %s %s", formatScore(score), t.action, formatScore(*t.v))}
		}
		lowest = i
	}
	if lowest < 0 {
		return verdict{action: Accept, reason: fmt.Sprintf("score %s, no threshold set", formatScore(score))}
	}
	t := ths[lowest]
	return verdict{action: Accept, reason: fmt.Sprintf("score %s < %s %s", formatScore(score), t.action, formatScore(*t.v))}
}

// otherClass is reply code c moved between 4xx and 5xx where both
// codes mean the same thing in RFC 5321 (450/550 mailbox unavailable,
// 452/552 storage), else fallback.
func otherClass(c, fallback int) int {
	switch c {
	case 450, 452:
		return c + 100
	case 550, 552:
		return c - 100
	}
	return fallback
}

// withClass is the enhanced status code e (RFC 3463 "c.s.d") in class c;
// empty stays empty.
func withClass(e string, c byte) string {
	if len(e) < 2 || e[1] != '.' {
		return e
	}
	return string(c) + e[1:]
}

// reply is the SMTP reply for a reject or tempfail verdict.
func reply(v verdict) *filters.Reply {
	switch v.action {
	case Reject, Tempfail:
	default:
		return nil
	}
	if v.reply != nil {
		r := *v.reply
		// A check's own reply keeps its code and text, in the class the
		// action asks for: the size check's 552 5.3.4 under
		// `action: tempfail` is 452 4.3.4, a 4xx under reject a 5xx.
		switch {
		case v.action == Tempfail && r.Code >= 500 && r.Code < 600:
			r.Code = otherClass(r.Code, 451)
			r.Enhanced = withClass(r.Enhanced, '4')
		case v.action == Reject && r.Code >= 400 && r.Code < 500:
			r.Code = otherClass(r.Code, 550)
			r.Enhanced = withClass(r.Enhanced, '5')
		}
		return &r
	}
	text := v.reason
	if v.detail != "" {
		text += " (" + v.detail + ")"
	}
	if v.action == Reject {
		return &filters.Reply{Code: 550, Enhanced: "5.7.1", Text: replyText(text)}
	}
	return &filters.Reply{Code: 451, Enhanced: "4.7.1", Text: replyText(text)}
}

// replyText makes a reason safe for an SMTP reply: ASCII only, one line.
// It is cut to fit RFC 5321's 512-octet reply line.
func replyText(reason string) string {
	r := strings.NewReplacer("≥", ">=", "≤", "<=", "→", "->").Replace(reason)
	r = strings.Map(func(c rune) rune {
		if c < ' ' || c > '~' {
			return '?'
		}
		return c
	}, r)
	if len(r) > 400 {
		r = r[:397] + "..."
	}
	return r
}

// round keeps six decimals, so that 0.1 + 0.2 reaches a threshold of 0.3.
func round(f float64) float64 {
	if math.Abs(f) > 1e15 {
		return f
	}
	return math.Round(f*1e6) / 1e6
}
