package content

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"moat/filters"
)

// HeaderRule is one rule of the "headers" check: a regular expression
// matched against the decoded values of a header field.
type HeaderRule struct {
	Header string         // the field name, compared without regard to case
	Match  *regexp.Regexp // Go RE2 syntax; matched against each occurrence
	Score  float64        // added to the check's score when the rule matches
	// Action is what a match calls for ("" for none): accept, tag,
	// quarantine, tempfail or reject. The check reports the most severe
	// action of its matching rules in Result.Action.
	Action string
	// Observe: a match is reported in the "observed" field only; it adds
	// no score and no action and does not make the result fail.
	Observe bool
}

// HeaderMatch is one rule that matched, in the result's "matched" and
// "observed" fields.
type HeaderMatch struct {
	Header string  `json:"header"` // the field name as the rule writes it
	Rule   int     `json:"rule"`   // the rule's index in the policy's list
	Score  float64 `json:"score"`
	Action string  `json:"action,omitempty"`
}

// severity orders the action words as the policy engine does (policies
// Action): the most severe one wins.
var severity = map[string]int{"accept": 0, "tag": 1, "quarantine": 2, "tempfail": 3, "reject": 4}

// headers is the "headers" check.
type headers struct {
	rules []HeaderRule
}

// NewHeaders returns the "headers" check. At StageData it matches every
// rule against every occurrence of its header field in Txn.Header, each
// value unfolded and with its RFC 2047 encoded words decoded (in any
// charset go-message knows; a value whose charset is unknown is matched
// as written). A rule counts once however many occurrences match.
//
// The result is fail when a rule not in observe mode matched, with Score
// the sum of those rules' scores and Action the most severe of their
// actions, and pass otherwise. Fields: "matched" ([]HeaderMatch of the
// rules that count) and "observed" (those in observe mode), each when not
// empty. The reason names the fields and rules, never the values.
func NewHeaders(rules []HeaderRule) filters.Check {
	return &headers{rules: rules}
}

func (c *headers) Name() string { return "headers" }

func (c *headers) Stages() []filters.Stage { return []filters.Stage{filters.StageData} }

// Run implements filters.Check.
func (c *headers) Run(_ context.Context, stage filters.Stage, t *filters.Txn) (filters.Result, bool) {
	if stage != filters.StageData {
		return filters.Result{}, false
	}
	fields := parseFields(t.Header)
	decoded := make([]string, len(fields)) // decoded on first use
	done := make([]bool, len(fields))
	res := filters.Result{Check: c.Name(), Value: filters.Pass}
	var matched, observed []HeaderMatch
	var why []string
	for i, r := range c.rules {
		if r.Match == nil {
			continue
		}
		hit := false
		for j, f := range fields {
			if !strings.EqualFold(f.name, r.Header) {
				continue
			}
			if !done[j] {
				decoded[j], done[j] = decodeWords(f.value), true
			}
			if r.Match.MatchString(decoded[j]) {
				hit = true
				break
			}
		}
		if !hit {
			continue
		}
		m := HeaderMatch{Header: r.Header, Rule: i, Score: r.Score, Action: r.Action}
		if r.Observe {
			observed = append(observed, m)
			continue
		}
		matched = append(matched, m)
		res.Score += r.Score
		if a := r.Action; a != "" && (res.Action == "" || severity[a] > severity[res.Action]) {
			res.Action = a
		}
		why = append(why, fmt.Sprintf("%s matches rule %d", r.Header, i))
	}
	if len(matched) > 0 || len(observed) > 0 {
		res.Fields = map[string]any{}
	}
	if len(matched) > 0 {
		res.Value = filters.Fail
		res.Fields["matched"] = matched
		res.Reason = strings.Join(why, ", ")
	}
	if len(observed) > 0 {
		res.Fields["observed"] = observed
	}
	return res, true
}

var _ filters.Check = (*headers)(nil)
