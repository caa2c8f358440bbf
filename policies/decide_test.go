package policies

import (
	"reflect"
	"strings"
	"testing"

	"moat/filters"
)

// decidePolicy maps results of checks this version does not run yet too:
// Decide works from results, whoever produced them.
const decidePolicy = `policy: default
checks:
  size: { max: 1KiB }
  spf: { fail: 5, softfail: 2, temperror: tempfail, permerror: accept }
  dkim: { fail: 3, mode: observe }
  dmarc: { fail: 1, action: quarantine }
actions: { tag: 5, quarantine: 8, reject: 12 }
---
policy: observed
applies_to: { clients: [192.0.2.1] }
extends: default
mode: observe
---
policy: no-thresholds
applies_to: { clients: [192.0.2.2] }
extends: default
actions: ~
---
policy: size-observed
applies_to: { clients: [192.0.2.3] }
extends: default
checks: { size: { max: 1KiB, mode: observe } }
---
policy: small
applies_to: { clients: [192.0.2.4] }
actions: { tag: 0.3 }
`

func TestDecide(t *testing.T) {
	s := compile(t, decidePolicy)
	size552 := &filters.Reply{Code: 552, Enhanced: "5.3.4", Text: "Message size exceeds fixed limit"}
	sizeFail := filters.Result{Check: "size", Value: filters.Fail, Reason: "message is 2000 bytes, limit 1024",
		Fields: map[string]any{"size": int64(2000), "limit": int64(1024)}, Reply: size552}
	spf := func(v string) filters.Result { return filters.Result{Check: "spf", Value: v} }
	dnsbl := func(score float64) filters.Result {
		return filters.Result{Check: "dnsbl", Value: filters.Fail, Score: score, Fields: map[string]any{"zones": []string{"x.example"}}}
	}
	type checks = map[string]map[string]any
	tests := []struct {
		name    string
		policy  string
		results []filters.Result
		final   bool
		want    Decision
	}{
		{
			name:  "nothing to say",
			final: true,
			want:  Decision{Action: Accept, Reason: "score 0 < tag 5", Checks: checks{}},
		},
		{
			name:    "size pass",
			results: []filters.Result{{Check: "size", Value: filters.Pass}},
			final:   true,
			want:    Decision{Action: Accept, Reason: "score 0 < tag 5", Checks: checks{"size": {"result": "pass", "score": 0.0}}},
		},
		{
			name:    "size fail at RCPT: the default action, the check's reply",
			results: []filters.Result{sizeFail},
			want: Decision{Action: Reject, Reason: "size: fail → reject", Reply: size552,
				Checks: checks{"size": {"result": "fail", "score": 0.0, "action": "reject", "size": int64(2000), "limit": int64(1024), "reason": "message is 2000 bytes, limit 1024"}}},
		},
		{
			name:    "score reaches tag",
			results: []filters.Result{spf(filters.Fail)},
			final:   true,
			want:    Decision{Action: Tag, Score: 5, Reason: "score 5 ≥ tag 5 (spf +5: fail)", Checks: checks{"spf": {"result": "fail", "score": 5.0}}},
		},
		{
			name:    "a check's own score adds to the mapping",
			results: []filters.Result{spf(filters.Fail), dnsbl(4)},
			final:   true,
			want: Decision{Action: Quarantine, Score: 9, Reason: "score 9 ≥ quarantine 8 (spf +5: fail; dnsbl +4: fail)", Checks: checks{
				"spf":   {"result": "fail", "score": 5.0},
				"dnsbl": {"result": "fail", "score": 4.0, "zones": []string{"x.example"}},
			}},
		},
		{
			name:    "score reaches reject",
			results: []filters.Result{spf(filters.Fail), dnsbl(7.5)},
			final:   true,
			want: Decision{Action: Reject, Score: 12.5, Reason: "score 12.5 ≥ reject 12 (spf +5: fail; dnsbl +7.5: fail)",
				Reply: &filters.Reply{Code: 550, Enhanced: "5.7.1", Text: "score 12.5 >= reject 12 (spf +5: fail; dnsbl +7.5: fail)"},
				Checks: checks{
					"spf":   {"result": "fail", "score": 5.0},
					"dnsbl": {"result": "fail", "score": 7.5, "zones": []string{"x.example"}},
				}},
		},
		{
			name:    "score reaches reject at RCPT",
			results: []filters.Result{spf(filters.Fail), dnsbl(7.5)},
			want: Decision{Action: Reject, Score: 12.5, Reason: "score 12.5 ≥ reject 12 (spf +5: fail; dnsbl +7.5: fail)",
				Reply: &filters.Reply{Code: 550, Enhanced: "5.7.1", Text: "score 12.5 >= reject 12 (spf +5: fail; dnsbl +7.5: fail)"},
				Checks: checks{
					"spf":   {"result": "fail", "score": 5.0},
					"dnsbl": {"result": "fail", "score": 7.5, "zones": []string{"x.example"}},
				}},
		},
		{
			name:    "at RCPT, quarantine and tag scores wait for the end of DATA",
			results: []filters.Result{spf(filters.Fail), dnsbl(4)},
			want: Decision{Action: Accept, Score: 9, Reason: "score 9 < reject 12", Checks: checks{
				"spf":   {"result": "fail", "score": 5.0},
				"dnsbl": {"result": "fail", "score": 4.0, "zones": []string{"x.example"}},
			}},
		},
		{
			name:    "an action word: tempfail at RCPT",
			results: []filters.Result{spf(filters.TempError)},
			want: Decision{Action: Tempfail, Reason: "spf: temperror → tempfail",
				Reply:  &filters.Reply{Code: 451, Enhanced: "4.7.1", Text: "spf: temperror -> tempfail"},
				Checks: checks{"spf": {"result": "temperror", "score": 0.0, "action": "tempfail"}}},
		},
		{
			name:    "accept as an action word does nothing",
			results: []filters.Result{spf(filters.PermError)},
			final:   true,
			want:    Decision{Action: Accept, Reason: "score 0 < tag 5", Checks: checks{"spf": {"result": "permerror", "score": 0.0, "action": "accept"}}},
		},
		{
			name:    "a check in observe mode is recorded, not applied",
			results: []filters.Result{spf(filters.Fail), {Check: "dkim", Value: filters.Fail}},
			final:   true,
			want: Decision{Action: Tag, Score: 5, Reason: "score 5 ≥ tag 5 (spf +5: fail)", Would: Quarantine, WouldReason: "score 8 ≥ quarantine 8", Checks: checks{
				"spf":  {"result": "fail", "score": 5.0},
				"dkim": {"result": "fail", "score": 3.0, "mode": "observe"},
			}},
		},
		{
			name:    "a check's action: quarantine waits at RCPT",
			results: []filters.Result{{Check: "dmarc", Value: filters.Fail}},
			want:    Decision{Action: Accept, Score: 1, Reason: "score 1 < reject 12", Checks: checks{"dmarc": {"result": "fail", "score": 1.0, "action": "quarantine"}}},
		},
		{
			name:    "a check's action: quarantine at the end of DATA",
			results: []filters.Result{{Check: "dmarc", Value: filters.Fail}},
			final:   true,
			want:    Decision{Action: Quarantine, Score: 1, Reason: "dmarc: fail → quarantine", Checks: checks{"dmarc": {"result": "fail", "score": 1.0, "action": "quarantine"}}},
		},
		{
			name:    "a check's action is for fail only",
			results: []filters.Result{{Check: "dmarc", Value: filters.Pass}},
			final:   true,
			want:    Decision{Action: Accept, Reason: "score 0 < tag 5", Checks: checks{"dmarc": {"result": "pass", "score": 0.0}}},
		},
		{
			name:    "the most severe action wins",
			results: []filters.Result{spf(filters.TempError), sizeFail, {Check: "dmarc", Value: filters.Fail}},
			final:   true,
			want: Decision{Action: Reject, Score: 1, Reason: "size: fail → reject", Reply: size552, Checks: checks{
				"spf":   {"result": "temperror", "score": 0.0, "action": "tempfail"},
				"size":  {"result": "fail", "score": 0.0, "action": "reject", "size": int64(2000), "limit": int64(1024), "reason": "message is 2000 bytes, limit 1024"},
				"dmarc": {"result": "fail", "score": 1.0, "action": "quarantine"},
			}},
		},
		{
			name:    "between equals, the check action comes before the score",
			results: []filters.Result{dnsbl(20), sizeFail},
			final:   true,
			want: Decision{Action: Reject, Score: 20, Reason: "size: fail → reject", Reply: size552, Checks: checks{
				"dnsbl": {"result": "fail", "score": 20.0, "zones": []string{"x.example"}},
				"size":  {"result": "fail", "score": 0.0, "action": "reject", "size": int64(2000), "limit": int64(1024), "reason": "message is 2000 bytes, limit 1024"},
			}},
		},
		{
			name:    "the last result of a check counts",
			results: []filters.Result{spf(filters.Fail), spf(filters.SoftFail)},
			final:   true,
			want:    Decision{Action: Accept, Score: 2, Reason: "score 2 < tag 5", Checks: checks{"spf": {"result": "softfail", "score": 2.0}}},
		},
		{
			name:    "a check the policy does not know counts its own score",
			results: []filters.Result{{Check: "helo", Value: filters.Fail, Score: 2, Fields: map[string]any{"result": "spoofed", "helo": "x"}}},
			final:   true,
			want:    Decision{Action: Accept, Score: 2, Reason: "score 2 < tag 5", Checks: checks{"helo": {"result": "fail", "score": 2.0, "helo": "x"}}},
		},
		{
			name:    "negative scores",
			results: []filters.Result{spf(filters.Fail), dnsbl(-4)},
			final:   true,
			want: Decision{Action: Accept, Score: 1, Reason: "score 1 < tag 5", Checks: checks{
				"spf":   {"result": "fail", "score": 5.0},
				"dnsbl": {"result": "fail", "score": -4.0, "zones": []string{"x.example"}},
			}},
		},
		{
			name:    "a result's own action applies (a header rule's action:)",
			results: []filters.Result{{Check: "headers", Value: filters.Fail, Score: 4, Action: "reject", Reason: "Subject matches rule 0"}},
			final:   true,
			want: Decision{Action: Reject, Score: 4, Reason: "headers: fail → reject",
				Reply:  &filters.Reply{Code: 550, Enhanced: "5.7.1", Text: "headers: fail -> reject (Subject matches rule 0)"},
				Checks: checks{"headers": {"result": "fail", "score": 4.0, "action": "reject", "reason": "Subject matches rule 0"}}},
		},
		{
			name:    "a result's own quarantine waits at RCPT",
			results: []filters.Result{{Check: "headers", Value: filters.Fail, Action: "quarantine"}},
			want:    Decision{Action: Accept, Reason: "score 0 < reject 12", Checks: checks{"headers": {"result": "fail", "score": 0.0, "action": "quarantine"}}},
		},
		{
			name:    "a milder result action does not lower the check's action",
			results: []filters.Result{{Check: "dmarc", Value: filters.Fail, Action: "tag"}},
			final:   true,
			want:    Decision{Action: Quarantine, Score: 1, Reason: "dmarc: fail → quarantine", Checks: checks{"dmarc": {"result": "fail", "score": 1.0, "action": "quarantine"}}},
		},
		{
			name:    "a more severe result action wins over the check's action",
			results: []filters.Result{{Check: "dmarc", Value: filters.Fail, Action: "tempfail"}},
			final:   true,
			want: Decision{Action: Tempfail, Score: 1, Reason: "dmarc: fail → tempfail",
				Reply:  &filters.Reply{Code: 451, Enhanced: "4.7.1", Text: "dmarc: fail -> tempfail"},
				Checks: checks{"dmarc": {"result": "fail", "score": 1.0, "action": "tempfail"}}},
		},
		{
			name:    "a result action that is no action word is ignored",
			results: []filters.Result{{Check: "headers", Value: filters.Fail, Action: "bounce"}},
			final:   true,
			want:    Decision{Action: Accept, Reason: "score 0 < tag 5", Checks: checks{"headers": {"result": "fail", "score": 0.0}}},
		},
		{
			name:    "a result action of a check in observe mode is recorded, not applied",
			results: []filters.Result{{Check: "dkim", Value: filters.Fail, Action: "reject"}},
			final:   true,
			want: Decision{Action: Accept, Score: 0, Reason: "score 0 < tag 5", Would: Reject, WouldReason: "dkim: fail → reject",
				Checks: checks{"dkim": {"result": "fail", "score": 3.0, "action": "reject", "mode": "observe"}}},
		},
		{
			name:    "policy in observe mode",
			policy:  "observed",
			results: []filters.Result{spf(filters.Fail), dnsbl(10)},
			final:   true,
			want: Decision{Action: Accept, Score: 15, Reason: "policy observed is in observe mode", Would: Reject, WouldReason: "score 15 ≥ reject 12", Checks: checks{
				"spf":   {"result": "fail", "score": 5.0},
				"dnsbl": {"result": "fail", "score": 10.0, "zones": []string{"x.example"}},
			}},
		},
		{
			name:    "policy in observe mode, nothing to hold back",
			policy:  "observed",
			results: []filters.Result{spf(filters.Pass)},
			final:   true,
			want:    Decision{Action: Accept, Reason: "policy observed is in observe mode", Checks: checks{"spf": {"result": "pass", "score": 0.0}}},
		},
		{
			name:    "no thresholds",
			policy:  "no-thresholds",
			results: []filters.Result{spf(filters.Fail), dnsbl(50)},
			final:   true,
			want: Decision{Action: Accept, Score: 55, Reason: "score 55, no threshold set", Checks: checks{
				"spf":   {"result": "fail", "score": 5.0},
				"dnsbl": {"result": "fail", "score": 50.0, "zones": []string{"x.example"}},
			}},
		},
		{
			name:    "size in observe mode",
			policy:  "size-observed",
			results: []filters.Result{sizeFail},
			final:   true,
			want: Decision{Action: Accept, Reason: "score 0 < tag 5", Would: Reject, WouldReason: "size: fail → reject",
				Checks: checks{"size": {"result": "fail", "score": 0.0, "action": "reject", "mode": "observe", "size": int64(2000), "limit": int64(1024), "reason": "message is 2000 bytes, limit 1024"}}},
		},
		{
			name:    "scores add up without float noise",
			policy:  "small",
			results: []filters.Result{{Check: "a", Score: 0.1}, {Check: "b", Score: 0.2}},
			final:   true,
			want: Decision{Action: Tag, Score: 0.3, Reason: "score 0.3 ≥ tag 0.3 (a +0.1; b +0.2)", Checks: checks{
				"a": {"result": "", "score": 0.1},
				"b": {"result": "", "score": 0.2},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := tt.policy
			if name == "" {
				name = "default"
			}
			p := s.Policy(name)
			got := p.Decide(tt.results, tt.final)
			tt.want.Policy = name
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decide =\n  %+v\nwant\n  %+v", got, tt.want)
			}
		})
	}
}

// TestDecideReplyIsACopy: a caller may change the reply it gets.
func TestDecideReplyIsACopy(t *testing.T) {
	p := compile(t, decidePolicy).Default()
	r := &filters.Reply{Code: 552, Enhanced: "5.3.4", Text: "x"}
	d := p.Decide([]filters.Result{{Check: "size", Value: filters.Fail, Reply: r}}, true)
	d.Reply.Text = "changed"
	if r.Text != "x" {
		t.Error("Decide's reply is the result's reply itself")
	}
}

func TestReplyText(t *testing.T) {
	for in, want := range map[string]string{
		"score 13 ≥ reject 12": "score 13 >= reject 12",
		"size: fail → reject":  "size: fail -> reject",
		"line\r\nbreak\tand é": "line??break?and ?",
	} {
		if got := replyText(in); got != want {
			t.Errorf("replyText(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHonorDMARCPolicy(t *testing.T) {
	set := compile(t, "policy: default\nchecks:\n  dmarc: { honor_policy: true }\n---\npolicy: scored\napplies_to: { recipients: [\"s@example.com\"] }\nchecks:\n  dmarc: { honor_policy: true, fail: tag }\n---\npolicy: off\napplies_to: { recipients: [\"o@example.com\"] }\nchecks:\n  dmarc: { honor_policy: false }\n")
	fail := func(policy string) []filters.Result {
		return []filters.Result{{Check: "dmarc", Value: filters.Fail, Fields: map[string]any{"policy": policy, "domain": "example.net"}}}
	}
	for _, tc := range []struct {
		policy, dmarcPolicy string
		want                Action
	}{
		{"default", "reject", Reject},
		{"default", "quarantine", Quarantine},
		{"default", "none", Accept},
		{"scored", "reject", Tag}, // the policy's own mapping wins
		{"off", "reject", Accept},
	} {
		d := set.Policy(tc.policy).Decide(fail(tc.dmarcPolicy), true)
		if d.Action != tc.want {
			t.Errorf("%s with p=%s: %s (%s), want %s", tc.policy, tc.dmarcPolicy, d.Action, d.Reason, tc.want)
		}
		if tc.want == Reject && (d.Reply == nil || d.Reply.Code != 550 || !strings.Contains(d.Reply.Text, "DMARC policy of example.net")) {
			t.Errorf("reject reply %+v", d.Reply)
		}
	}
}

// TestDecideReplyClass: a check's own reply follows the action's class:
// the size check's 552 under `action: tempfail` is 452 4.3.4 (the event
// said tempfail while the client heard a permanent refusal), a 4xx under
// reject becomes 5xx; the text stays.
func TestDecideReplyClass(t *testing.T) {
	set := compile(t, "policy: default\nchecks:\n  size: { max: 1KiB, action: tempfail }\n  spf: { fail: reject, temperror: tempfail }\n")
	p := set.Default()
	for _, tc := range []struct {
		name   string
		result filters.Result
		want   filters.Reply
	}{
		{"size fail, action tempfail", filters.Result{Check: "size", Value: filters.Fail,
			Reply: &filters.Reply{Code: 552, Enhanced: "5.3.4", Text: "Message size exceeds fixed limit"}},
			filters.Reply{Code: 452, Enhanced: "4.3.4", Text: "Message size exceeds fixed limit"}},
		{"a 4xx reply under reject", filters.Result{Check: "spf", Value: filters.Fail,
			Reply: &filters.Reply{Code: 451, Enhanced: "4.7.1", Text: "try later"}},
			filters.Reply{Code: 550, Enhanced: "5.7.1", Text: "try later"}},
		{"554 under tempfail", filters.Result{Check: "spf", Value: filters.TempError,
			Reply: &filters.Reply{Code: 554, Enhanced: "5.7.1", Text: "no"}},
			filters.Reply{Code: 451, Enhanced: "4.7.1", Text: "no"}},
		{"no enhanced code", filters.Result{Check: "size", Value: filters.Fail,
			Reply: &filters.Reply{Code: 552, Text: "too big"}},
			filters.Reply{Code: 452, Text: "too big"}},
	} {
		d := p.Decide([]filters.Result{tc.result}, true)
		if d.Reply == nil || *d.Reply != tc.want {
			t.Errorf("%s: %s reply %+v, want %+v", tc.name, d.Action, d.Reply, tc.want)
		}
	}
}
