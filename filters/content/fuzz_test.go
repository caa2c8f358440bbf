package content

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"moat/filters"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite the seed corpus testdata/fuzz/FuzzWalk from seedMessages")

// seedMessages are the seeds of FuzzWalk: one message for each path of
// the walk the tests know.
func seedMessages(t testing.TB) map[string]string {
	exe := []byte("MZ\x90\x00")
	deep := file("deep.exe", "application/octet-stream", exe)
	for i := range 25 {
		deep = multi("mixed", fmt.Sprint("d", i), deep)
	}
	var many []string
	for range 40 {
		many = append(many, text("x"))
	}
	return map[string]string{
		"plain":       mail(text("Hello.\n")),
		"pdf":         mail(multi("mixed", "b1", text("see attached"), file("report.pdf", "application/pdf", pdf))),
		"exe":         mail(multi("mixed", "b1", file("invoice.pdf.exe", "application/octet-stream", exe))),
		"rfc2231":     mail(multi("mixed", "b1", ent("Content-Type: application/octet-stream\nContent-Disposition: attachment;\n filename*0*=iso-8859-1''r%E9sum%E9;\n filename*1=\".pdf.cmd\"", "x"))),
		"encoded":     mail(multi("mixed", "b1", ent("Content-Type: application/octet-stream; name=\"=?utf-8?B?UmVjaG51bmcuZXhl?=\"\nContent-Transfer-Encoding: base64", b64(exe)))),
		"duplicate":   mail(multi("mixed", "b1", ent("Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=\"a.txt\"; filename=b.exe", "x"))),
		"zip":         mail(multi("mixed", "b1", file("files.zip", "application/zip", zipOf(t, "docs/", "docs/a.exe", "inner.zip", "../b.js")))),
		"rfc822":      mail(multi("mixed", "b1", text("fwd"), ent("Content-Type: message/rfc822", "Subject: inner\r\n"+multi("mixed", "in", file("i.scr", "application/octet-stream", exe))))),
		"nested":      mail(multi("mixed", "outer", multi("alternative", "alt", text("a"), ent("Content-Type: text/html; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable", "<p>caf=E9</p>")), file("a.pdf", "application/pdf", pdf))),
		"deep":        mail(deep),
		"many":        mail(multi("mixed", "many", many...)),
		"truncated":   mail("Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello"),
		"noboundary":  mail("Content-Type: multipart/mixed\r\n\r\nhello\r\n"),
		"badheader":   mail(multi("mixed", "b1", "Content-Type: text/plain\r\nno header\r\n\r\nbody")),
		"gtube-b64":   mail(multi("mixed", "b1", ent("Content-Type: text/plain\nContent-Transfer-Encoding: base64", b64([]byte(GTUBE))))),
		"gtube-plain": mail(text(GTUBE + "\n")),
		"lf-only":     strings.ReplaceAll(mail(multi("mixed", "b1", text("x"), file("a.bat", "application/octet-stream", exe))), "\r\n", "\n"),
	}
}

// FuzzWalk feeds arbitrary messages to the three checks and to the MIME
// walk reading every body: none may panic, results stay in their
// vocabulary and bounds, and one message takes bounded time (the walk is
// linear in the message; archives and names are capped). The seed corpus
// in testdata/fuzz/FuzzWalk is seedMessages (go test -run
// TestFuzzSeeds -update-seeds rewrites it).
func FuzzWalk(f *testing.F) {
	const maxParts, maxDepth = 100, 20
	att := NewAttachments(AttachmentOptions{MaxParts: maxParts, MaxDepth: maxDepth, MaxArchiveSize: 1 << 20})
	gt := NewGTUBE()
	hd := NewHeaders([]HeaderRule{{Header: "Subject", Match: regexp.MustCompile(`(?i)viagra`), Score: 1, Action: "tag"}})
	f.Fuzz(func(t *testing.T, data []byte) {
		start := time.Now()
		tx := &filters.Txn{Header: data, Message: func() io.Reader { return bytes.NewReader(data) }}
		if i := bytes.Index(data, []byte("\r\n\r\n")); i >= 0 {
			tx.Header = data[:i+4]
		}
		r, ok := att.Run(t.Context(), filters.StageData, tx)
		if !ok {
			t.Fatal("attachments: no result")
		}
		switch r.Value {
		case filters.Pass, filters.Fail, filters.PermError:
		default:
			t.Errorf("attachments: result %q", r.Value)
		}
		if (r.Value != filters.Pass) != (r.Reason != "") {
			t.Errorf("attachments: %s with reason %q", r.Value, r.Reason)
		}
		if n, _ := r.Fields["parts"].(int); n < 0 || n > maxParts {
			t.Errorf("attachments: %d parts", n)
		}
		b, _ := r.Fields["blocked"].([]Finding)
		_, limit := r.Fields["limit"]
		if (r.Value == filters.Fail) != (len(b) > 0 || limit) {
			t.Errorf("attachments: %s with blocked %v, limit %v", r.Value, b, r.Fields["limit"])
		}
		if g, ok := gt.Run(t.Context(), filters.StageData, tx); ok && (g.Value != filters.Fail || g.Score != GTUBEScore) {
			t.Errorf("gtube: %+v", g)
		}
		if h, ok := hd.Run(t.Context(), filters.StageData, tx); !ok || (h.Value == filters.Fail) != (h.Score == 1) {
			t.Errorf("headers: %+v", h)
		}
		n, _ := walk(t.Context(), bytes.NewReader(data), maxParts, maxDepth, func(p *part) error {
			if p.Depth > maxDepth {
				t.Errorf("part at depth %d", p.Depth)
			}
			if p.Body != nil {
				io.Copy(io.Discard, p.Body)
			}
			return nil
		})
		if n > maxParts {
			t.Errorf("walk: %d parts", n)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%d bytes took %v", len(data), d)
		}
	})
}

// TestFuzzSeeds keeps the committed seed corpus in step with
// seedMessages; -update-seeds rewrites it.
func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzWalk")
	for name, msg := range seedMessages(t) {
		path := filepath.Join(dir, "seed-"+name)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", msg)
		if *updateSeeds {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%v (go test -run TestFuzzSeeds -update-seeds writes it)", err)
			continue
		}
		if string(got) != want {
			t.Errorf("%s is out of date (go test -run TestFuzzSeeds -update-seeds rewrites it)", path)
		}
	}
}
