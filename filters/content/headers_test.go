package content

import (
	"reflect"
	"regexp"
	"testing"

	"moat/filters"
)

func TestHeaders(t *testing.T) {
	rule := func(header, re string, score float64, action string) HeaderRule {
		return HeaderRule{Header: header, Match: regexp.MustCompile(re), Score: score, Action: action}
	}
	viagra := rule("Subject", `(?i)\bviagra\b`, 4, "")
	tests := []struct {
		name     string
		rules    []HeaderRule
		header   string // the header section, LF line ends
		value    string
		score    float64
		action   string
		reason   string
		matched  []HeaderMatch
		observed []HeaderMatch
	}{
		{
			name:   "no match",
			rules:  []HeaderRule{viagra},
			header: "Subject: Quarterly report\n",
			value:  filters.Pass,
		},
		{
			name:   "a plain match",
			rules:  []HeaderRule{viagra},
			header: "Subject: Cheap VIAGRA here\n",
			value:  filters.Fail, score: 4, reason: "Subject matches rule 0",
			matched: []HeaderMatch{{Header: "Subject", Rule: 0, Score: 4}},
		},
		{
			name:   "a word boundary holds",
			rules:  []HeaderRule{viagra},
			header: "Subject: viagrafalls tourism\n",
			value:  filters.Pass,
		},
		{
			name:   "an encoded word, base64",
			rules:  []HeaderRule{viagra},
			header: "Subject: =?utf-8?B?QnV5IFZpYWdyYSBub3c=?=\n",
			value:  filters.Fail, score: 4,
			matched: []HeaderMatch{{Header: "Subject", Rule: 0, Score: 4}},
		},
		{
			name:   "encoded words split across a fold",
			rules:  []HeaderRule{viagra},
			header: "Subject: =?utf-8?Q?Buy_Via?=\n =?utf-8?Q?gra_now?=\n",
			value:  filters.Fail, score: 4,
			matched: []HeaderMatch{{Header: "Subject", Rule: 0, Score: 4}},
		},
		{
			name:   "a legacy charset (go-message charset)",
			rules:  []HeaderRule{rule("Subject", `Domače`, 1, "")},
			header: "Subject: =?iso-8859-2?Q?Doma=e8e?= novice\n",
			value:  filters.Fail, score: 1,
			matched: []HeaderMatch{{Header: "Subject", Rule: 0, Score: 1}},
		},
		{
			name:   "a Japanese charset",
			rules:  []HeaderRule{rule("Subject", `テスト`, 1, "")},
			header: "Subject: =?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=\n",
			value:  filters.Fail, score: 1,
			matched: []HeaderMatch{{Header: "Subject", Rule: 0, Score: 1}},
		},
		{
			name:   "an unknown charset is matched as written",
			rules:  []HeaderRule{rule("Subject", `x-klingon`, 1, "")},
			header: "Subject: =?x-klingon?Q?Qapla?=\n",
			value:  filters.Fail, score: 1,
			matched: []HeaderMatch{{Header: "Subject", Rule: 0, Score: 1}},
		},
		{
			name:   "a folded value is unfolded",
			rules:  []HeaderRule{rule("Subject", `^Buy cheap\s+pills now$`, 2, "")},
			header: "Subject: Buy cheap\n\tpills now\n",
			value:  filters.Fail, score: 2,
			matched: []HeaderMatch{{Header: "Subject", Rule: 0, Score: 2}},
		},
		{
			name:   "every occurrence, names without regard to case",
			rules:  []HeaderRule{rule("received", `from evil\.example`, 3, "")},
			header: "Received: from good.example\nRECEIVED: from evil.example by mx\nReceived: from evil.example again\n",
			value:  filters.Fail, score: 3, reason: "received matches rule 0",
			matched: []HeaderMatch{{Header: "received", Rule: 0, Score: 3}},
		},
		{
			name: "scores add up, the most severe action wins",
			rules: []HeaderRule{
				viagra,
				rule("From", `@spam\.example>?$`, 2, "tag"),
				rule("X-Mailer", `BulkMailer`, 0, "reject"),
				rule("Subject", `nothing`, 10, "reject"),
				rule("X-Mailer", `Bulk`, 1, "quarantine"),
			},
			header: "From: Sp Ammer <a@spam.example>\nSubject: viagra\nX-Mailer: BulkMailer 2.0\n",
			value:  filters.Fail, score: 7, action: "reject",
			reason: "Subject matches rule 0, From matches rule 1, X-Mailer matches rule 2, X-Mailer matches rule 4",
			matched: []HeaderMatch{
				{Header: "Subject", Rule: 0, Score: 4},
				{Header: "From", Rule: 1, Score: 2, Action: "tag"},
				{Header: "X-Mailer", Rule: 2, Action: "reject"},
				{Header: "X-Mailer", Rule: 4, Score: 1, Action: "quarantine"},
			},
		},
		{
			name: "an observed rule adds nothing and is reported apart",
			rules: []HeaderRule{
				viagra,
				{Header: "Subject", Match: regexp.MustCompile(`(?i)cheap`), Score: 5, Action: "reject", Observe: true},
			},
			header: "Subject: cheap viagra\n",
			value:  filters.Fail, score: 4,
			matched:  []HeaderMatch{{Header: "Subject", Rule: 0, Score: 4}},
			observed: []HeaderMatch{{Header: "Subject", Rule: 1, Score: 5, Action: "reject"}},
		},
		{
			name:     "only observed rules match: pass",
			rules:    []HeaderRule{{Header: "Subject", Match: regexp.MustCompile(`x`), Score: 5, Observe: true}},
			header:   "Subject: x\n",
			value:    filters.Pass,
			observed: []HeaderMatch{{Header: "Subject", Rule: 0, Score: 5}},
		},
		{
			name:   "an absent field matches nothing, an empty one is a value",
			rules:  []HeaderRule{rule("X-Absent", `.*`, 1, ""), rule("X-Empty", `^$`, 1, "")},
			header: "X-Empty:\n",
			value:  filters.Fail, score: 1,
			matched: []HeaderMatch{{Header: "X-Empty", Rule: 1, Score: 1}},
		},
		{
			name:    "the body is not header",
			rules:   []HeaderRule{viagra},
			header:  "Subject: hello\n\nSubject: viagra\n",
			value:   filters.Pass,
			matched: nil,
		},
		{
			name:   "junk lines are skipped",
			rules:  []HeaderRule{viagra},
			header: "From sender@example.net Mon Mar  2 10:00:00 2026\nno colon here\n: no name\nSubject: viagra\n",
			value:  filters.Fail, score: 4,
			matched: []HeaderMatch{{Header: "Subject", Rule: 0, Score: 4}},
		},
		{
			name:   "a rule without a regexp is skipped",
			rules:  []HeaderRule{{Header: "Subject", Score: 1}},
			header: "Subject: x\n",
			value:  filters.Pass,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := NewHeaders(tt.rules).Run(t.Context(), filters.StageData, &filters.Txn{Header: []byte(crlf(tt.header + "\n"))})
			if !ok {
				t.Fatal("no result")
			}
			if got.Check != "headers" || got.Value != tt.value || got.Score != tt.score || got.Action != tt.action {
				t.Errorf("got %s %s score %v action %q, want %s score %v action %q", got.Check, got.Value, got.Score, got.Action, tt.value, tt.score, tt.action)
			}
			if tt.reason != "" && got.Reason != tt.reason {
				t.Errorf("reason %q, want %q", got.Reason, tt.reason)
			}
			if m, _ := got.Fields["matched"].([]HeaderMatch); !reflect.DeepEqual(m, tt.matched) {
				t.Errorf("matched = %+v\nwant      %+v", m, tt.matched)
			}
			if m, _ := got.Fields["observed"].([]HeaderMatch); !reflect.DeepEqual(m, tt.observed) {
				t.Errorf("observed = %+v\nwant       %+v", m, tt.observed)
			}
		})
	}
}

func TestHeadersStages(t *testing.T) {
	c := NewHeaders(nil)
	if c.Name() != "headers" || !reflect.DeepEqual(c.Stages(), []filters.Stage{filters.StageData}) {
		t.Errorf("Name %q, Stages %v", c.Name(), c.Stages())
	}
	if _, ok := c.Run(t.Context(), filters.StageMail, &filters.Txn{}); ok {
		t.Error("a result at MAIL")
	}
}

func TestParseFields(t *testing.T) {
	got := parseFields([]byte("A: 1\r\nB:  two \r\n  folded\r\n\tagain\r\nBad Name: x\r\nC:\r\n\r\nD: body\r\n"))
	want := []field{{"A", "1"}, {"B", "two   folded\tagain"}, {"C", ""}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseFields = %q, want %q", got, want)
	}
	if got := parseFields([]byte(" leading continuation\nA: 1")); !reflect.DeepEqual(got, []field{{"A", "1"}}) {
		t.Errorf("no final line end: %q", got)
	}
}
