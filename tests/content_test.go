package tests

import (
	"encoding/base64"
	"strings"
	"testing"

	"moat/internal/smtptest"
)

const contentPolicy = `policy: default
checks:
  headers: [ { header: Subject, match: "(?i)\\bcheap pills\\b", score: 20 } ]
  attachments: { block_extensions: [exe, scr, js] }
actions: { tag: 5, quarantine: 8, reject: 12 }
`

// gtube is SpamAssassin's Generic Test for Unsolicited Bulk Email.
const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

func withAttachment(from, to, name string) []byte {
	var b strings.Builder
	b.WriteString("From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n")
	b.WriteString("--b1\r\nContent-Type: text/plain\r\n\r\nPlease find the invoice attached.\r\n")
	b.WriteString("--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"" + name + "\"\r\n")
	b.WriteString("Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString([]byte("MZ not really a program")) + "\r\n")
	b.WriteString("--b1--\r\n")
	return []byte(b.String())
}

// TestContentChecks: a blocked attachment, a double extension, GTUBE and a
// header rule decide at the end of data, through the real binary.
func TestContentChecks(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), Policy: contentPolicy})
	from := "a@sender.example"
	for _, tc := range []struct {
		name string
		data []byte
		want int // 0: delivered
	}{
		{"clean attachment", withAttachment(from, rcptBob, "invoice.pdf"), 0},
		{"blocked extension", withAttachment(from, rcptBob, "invoice.exe"), 550},
		{"double extension", withAttachment(from, rcptBob, "invoice.pdf.exe"), 550},
		{"header rule", []byte("From: <" + from + ">\r\nTo: <" + rcptBob + ">\r\nSubject: Cheap pills today\r\n\r\nhello\r\n"), 550},
		{"GTUBE", []byte("From: <" + from + ">\r\nTo: <" + rcptBob + ">\r\nSubject: test\r\n\r\n" + gtube + "\r\n"), 550},
	} {
		r := Send(t, m.Addr, Envelope{From: from, To: []string{rcptBob}, Data: tc.data})
		switch {
		case tc.want == 0 && r.Stage != "":
			t.Errorf("%s: refused: %s", tc.name, r)
		case tc.want != 0 && (r.Stage != StageEOD || r.Err == nil || r.Err.Code != tc.want):
			t.Errorf("%s: want %d at end of data: %s", tc.name, tc.want, r)
		}
	}
	evs := m.WaitTransactionEvents(5)
	if s := evs[1].String(); !strings.Contains(s, `"attachments":{`) || !strings.Contains(s, "invoice.exe") {
		t.Errorf("blocked attachment event: %s", s)
	}
	if s := evs[4].String(); !strings.Contains(s, `"gtube":{`) {
		t.Errorf("GTUBE event: %s", s)
	}
	if n := len(sink.Accepted()); n != 1 {
		t.Errorf("sink accepted %d messages, want 1", n)
	}
}
