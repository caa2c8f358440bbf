package content

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"moat/filters"
)

// corpusMessage is one message of testdata/mail-corpus (see its
// PROVENANCE.md).
type corpusMessage struct {
	file, label string
	raw         []byte
}

// loadCorpus reads index.tsv and every message it lists, as the message
// would arrive over SMTP: without a leading mbox "From " line, with CRLF
// line ends.
func loadCorpus(t testing.TB) []corpusMessage {
	t.Helper()
	dir := filepath.Join("testdata", "mail-corpus")
	index, err := os.ReadFile(filepath.Join(dir, "index.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	var out []corpusMessage
	for i, line := range strings.Split(strings.TrimSpace(string(index)), "\n") {
		cols := strings.Split(line, "\t")
		if i == 0 || len(cols) < 2 {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, cols[0]))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasPrefix(raw, []byte("From ")) {
			if j := bytes.IndexByte(raw, '\n'); j >= 0 {
				raw = raw[j+1:]
			}
		}
		raw = []byte(crlf(string(raw)))
		out = append(out, corpusMessage{file: cols[0], label: cols[1], raw: raw})
	}
	if len(out) != 40 {
		t.Fatalf("%d messages in the corpus, want 40", len(out))
	}
	return out
}

func TestCorpus(t *testing.T) {
	hasGTUBE := map[string]bool{"spam/sa-014.eml": true, "spam/sa-gtube.eml": true}
	att := NewAttachments(AttachmentOptions{})
	gt := NewGTUBE()
	hd := NewHeaders(nil)
	caught := 0
	for _, m := range loadCorpus(t) {
		t.Run(m.file, func(t *testing.T) {
			tx := txn(string(m.raw))
			r, ok := att.Run(t.Context(), filters.StageData, tx)
			switch {
			case !ok:
				t.Fatal("attachments: no result")
			case r.Value == filters.Fail:
				t.Errorf("attachments flags a %s message: %s %v", m.label, r.Reason, r.Fields)
			case r.Value != filters.Pass:
				t.Logf("attachments: %s: %s", r.Value, r.Reason)
			}
			g, ok := gt.Run(t.Context(), filters.StageData, tx)
			if ok != hasGTUBE[m.file] || (ok && (g.Value != filters.Fail || g.Score != GTUBEScore)) {
				t.Errorf("gtube: %v %+v, want found=%v", ok, g, hasGTUBE[m.file])
			}
			if ok {
				caught++
			}
			if h, ok := hd.Run(t.Context(), filters.StageData, tx); !ok || h.Value != filters.Pass {
				t.Errorf("headers without rules: %+v", h)
			}
		})
	}
	if caught != len(hasGTUBE) {
		t.Errorf("GTUBE caught in %d messages, want %d", caught, len(hasGTUBE))
	}
}

// TestCorpusHeaderRules: a rule that sees only the decoded Subject (UTF-8
// encoded words) catches the spam written that way, and SPEC.md's example
// rule, \bviagra\b, does not take "via.gra" (spam/sa-008.eml) for the word.
// No rule flags ham.
//
// spam/sa-utf16.eml's Subject is little-endian UTF-16 without a byte order
// mark under the label utf-16, which go-message's charset package reads as
// big-endian (RFC 2781 section 4.3), so a rule on its text would not match.
func TestCorpusHeaderRules(t *testing.T) {
	hd := NewHeaders([]HeaderRule{
		{Header: "Subject", Match: regexp.MustCompile(`(?i)\bviagra\b`), Score: 4},
		{Header: "Subject", Match: regexp.MustCompile(`外贸客户`), Score: 3},
	})
	want := map[string]float64{"spam/sa-unicode2.eml": 3}
	for _, m := range loadCorpus(t) {
		r, _ := hd.Run(t.Context(), filters.StageData, txn(string(m.raw)))
		if r.Score != want[m.file] || (r.Value == filters.Fail) != (want[m.file] > 0) {
			t.Errorf("%s (%s): %s score %v (%s), want score %v", m.file, m.label, r.Value, r.Score, r.Reason, want[m.file])
		}
	}
}

// TestConcurrentUse: a policy's checks are shared by every session; run
// them at once on the corpus (go test -race).
func TestConcurrentUse(t *testing.T) {
	checks := []filters.Check{
		NewAttachments(AttachmentOptions{}),
		NewGTUBE(),
		NewHeaders([]HeaderRule{{Header: "Subject", Match: regexp.MustCompile(`(?i)free`), Score: 1, Action: "tag"}}),
	}
	msgs := loadCorpus(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for _, m := range msgs {
				for _, c := range checks {
					c.Run(t.Context(), filters.StageData, txn(string(m.raw)))
				}
			}
		})
	}
	wg.Wait()
}
