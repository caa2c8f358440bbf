package policies

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"moat/filters"
	"moat/filters/content"
)

// contentPolicy turns on the content checks (filters/content) in the ways
// the policy file allows.
const contentPolicy = `policy: default
checks:
  headers:
    - { header: Subject, match: "(?i)\\bviagra\\b", score: 4 }
    - { header: Subject, match: "(?i)casino", action: quarantine }
    - { header: X-Mailer, match: "BulkMailer", score: 20, mode: observe }
    - { header: From, match: "@blocked\\.example>?$", action: reject, score: 1 }
  attachments: { block_extensions: [exe, scr] }
actions: { tag: 5, quarantine: 8, reject: 12 }
---
policy: scored
applies_to: { recipients: ["s@example.com"] }
extends: default
checks:
  attachments: { block_extensions: [exe], block_mime_types: [], score: 6 }
  gtube: false
---
policy: both
applies_to: { recipients: ["b@example.com"] }
extends: default
checks:
  attachments: { score: 6, action: quarantine }
---
policy: watching
applies_to: { recipients: ["w@example.com"] }
extends: default
checks:
  attachments: { mode: observe }
---
policy: defaults
applies_to: { recipients: ["d@example.com"] }
checks:
  attachments: {}
actions: { reject: 12 }
`

// runData runs a policy's checks at the end of DATA on a message (LF line
// ends) and decides.
func runData(t *testing.T, p *Policy, msg string) Decision {
	t.Helper()
	raw := []byte(strings.ReplaceAll(msg, "\n", "\r\n"))
	hdr := raw
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		hdr = raw[:i+4]
	}
	tx := &filters.Txn{Size: int64(len(raw)), Header: hdr, Message: func() io.Reader { return bytes.NewReader(raw) }}
	var results []filters.Result
	for _, c := range p.Checks() {
		if r, ok := c.Run(t.Context(), filters.StageData, tx); ok {
			results = append(results, r)
		}
	}
	return p.Decide(results, true)
}

func withExe(header string) string {
	return header + `MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b1

--b1
Content-Type: text/plain

see attached
--b1
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="invoice.pdf.exe"

MZ
--b1--
`
}

func TestContentChecks(t *testing.T) {
	s := compile(t, contentPolicy)
	names := func(p *Policy) (out []string) {
		for _, c := range p.Checks() {
			out = append(out, c.Name())
		}
		return out
	}
	if got := strings.Join(names(s.Default()), " "); got != "headers attachments gtube" {
		t.Errorf("default runs %s", got)
	}
	if got := strings.Join(names(s.Policy("scored")), " "); got != "headers attachments" {
		t.Errorf("scored runs %s (gtube: false turns it off)", got)
	}
	plain := "From: a@example.net\nSubject: hello\n\nhi\n"
	tests := []struct {
		name, policy, msg string
		action            Action
		score             float64
		reason            string
	}{
		{"clean", "default", plain, Accept, 0, "score 0 < tag 5"},
		{"a rule's score", "default", "Subject: viagra\n\nhi\n", Accept, 4, "score 4 < tag 5"},
		{"a rule's action", "default", "Subject: casino night\n\nhi\n", Quarantine, 0, "headers: fail → quarantine"},
		{"the most severe rule action", "default", "From: <x@blocked.example>\nSubject: casino viagra\n\nhi\n", Reject, 5, "headers: fail → reject"},
		{"an observed rule counts nothing", "default", "X-Mailer: BulkMailer\nSubject: hi\n\nhi\n", Accept, 0, "score 0 < tag 5"},
		{"attachments: reject by default", "default", withExe("Subject: invoice\n"), Reject, 0, "attachments: fail → reject"},
		{"attachments: score alone, no reject", "scored", withExe("Subject: invoice\n"), Tag, 6, `score 6 ≥ tag 5 (attachments +6: attachment "invoice.pdf.exe": double extension .pdf.exe; .exe is blocked)`},
		{"attachments: score and action", "both", withExe("Subject: invoice\n"), Quarantine, 6, "attachments: fail → quarantine"},
		{"attachments: observed", "watching", withExe("Subject: invoice\n"), Accept, 0, "score 0 < tag 5"},
		{"attachments: the default lists", "defaults", withExe("Subject: invoice\n"), Reject, 0, "attachments: fail → reject"},
		{"gtube: on by default", "default", "Subject: test\n\n" + content.GTUBE + "\n", Reject, 1000, "score 1000 ≥ reject 12 (gtube +1000: GTUBE test string found)"},
		{"gtube: turned off", "scored", "Subject: test\n\n" + content.GTUBE + "\n", Accept, 0, "score 0 < tag 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := runData(t, s.Policy(tt.policy), tt.msg)
			if d.Action != tt.action || d.Score != tt.score || d.Reason != tt.reason {
				t.Errorf("%s, score %v, %q\nwant %s, score %v, %q\nchecks %v", d.Action, d.Score, d.Reason, tt.action, tt.score, tt.reason, d.Checks)
			}
		})
	}
}
