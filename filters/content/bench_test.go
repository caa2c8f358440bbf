package content

import (
	"archive/zip"
	"bytes"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"moat/filters"
)

// BenchmarkChecks runs each check, and the three in a row as the end of
// DATA does, on a 10 KB text message, on a message with a 1 MB (binary,
// base64-encoded) PDF attachment, and on one with a 1 MB zip of 200
// files, which the attachments check reads into memory and lists. The
// headers check has SPEC.md's rule plus four more.
func BenchmarkChecks(b *testing.B) {
	var body strings.Builder
	for body.Len() < 10*1024 {
		body.WriteString("The quick brown fox jumps over the lazy dog, again and again and again.\n")
	}
	blob := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range blob {
		blob[i] = byte(rng.Uint32())
	}
	var zbuf bytes.Buffer
	zw := zip.NewWriter(&zbuf)
	for i := range 200 {
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: "dir/file" + strings.Repeat("x", i%7) + ".dat", Method: zip.Store})
		w.Write(blob[i*(len(blob)/200) : (i+1)*(len(blob)/200)])
	}
	zw.Close()
	msgs := []struct {
		name string
		raw  string
	}{
		{"10KB", mail(text(body.String()))},
		{"1MB-attachment", mail(multi("mixed", "b1", text("see attached"), file("report.pdf", "application/pdf", blob)))},
		{"1MB-zip", mail(multi("mixed", "b1", text("see attached"), file("files.zip", "application/zip", zbuf.Bytes())))},
	}
	rules := []HeaderRule{{Header: "Subject", Match: regexp.MustCompile(`(?i)\bviagra\b`), Score: 4}}
	for _, h := range []string{"From", "To", "Subject", "X-Mailer"} {
		rules = append(rules, HeaderRule{Header: h, Match: regexp.MustCompile(`(?i)(casino|lottery|winner)`), Score: 1})
	}
	checks := []filters.Check{NewHeaders(rules), NewAttachments(AttachmentOptions{}), NewGTUBE()}
	for _, m := range msgs {
		tx := txn(m.raw)
		for _, c := range checks {
			b.Run(m.name+"/"+c.Name(), func(b *testing.B) {
				b.SetBytes(int64(len(m.raw)))
				b.ReportAllocs()
				for b.Loop() {
					c.Run(b.Context(), filters.StageData, tx)
				}
			})
		}
		b.Run(m.name+"/all", func(b *testing.B) {
			b.SetBytes(int64(len(m.raw)))
			b.ReportAllocs()
			for b.Loop() {
				for _, c := range checks {
					if r, _ := c.Run(b.Context(), filters.StageData, tx); r.Value == filters.Fail {
						b.Fatalf("%s: %s", r.Check, r.Reason)
					}
				}
			}
		})
	}
}
