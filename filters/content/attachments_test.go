package content

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"moat/filters"
)

func TestAttachments(t *testing.T) {
	exe := []byte("MZ\x90\x00 this program cannot be run in DOS mode")
	nested := func(depth int) string {
		e := file("deep.exe", "application/octet-stream", exe)
		for i := range depth {
			e = multi("mixed", "b"+strings.Repeat("x", i), e)
		}
		return e
	}
	many := func(n int) string {
		var ps []string
		for range n {
			ps = append(ps, text("hello"))
		}
		return multi("mixed", "many", ps...)
	}
	tests := []struct {
		name        string
		opts        AttachmentOptions
		msg         string
		value       string
		reason      string // a prefix of the reason; "" for none
		parts       int
		blocked     []Finding
		unscanned   []Finding
		limit, errf bool
	}{
		{
			name:  "plain text",
			msg:   mail(text("Hello Bob.\n")),
			value: filters.Pass, parts: 1,
		},
		{
			name:  "a pdf attachment",
			msg:   mail(multi("mixed", "b1", text("see attached"), file("report.pdf", "application/pdf", pdf))),
			value: filters.Pass, parts: 3,
		},
		{
			name:  "an exe attachment",
			msg:   mail(multi("mixed", "b1", text("run it"), file("run.exe", "application/octet-stream", exe))),
			value: filters.Fail, parts: 3, reason: `attachment "run.exe": extension .exe is blocked`,
			blocked: []Finding{{Name: "run.exe", Reason: "extension .exe is blocked"}},
		},
		{
			name:  "a double extension",
			msg:   mail(multi("mixed", "b1", text("invoice"), file("invoice.pdf.exe", "application/pdf", exe))),
			value: filters.Fail, parts: 3, reason: `attachment "invoice.pdf.exe": double extension .pdf.exe; .exe is blocked`,
			blocked: []Finding{{Name: "invoice.pdf.exe", Reason: "double extension .pdf.exe; .exe is blocked"}},
		},
		{
			name:  "a double extension padded with spaces",
			msg:   mail(multi("mixed", "b1", file("invoice.pdf          .scr", "application/pdf", exe))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "invoice.pdf          .scr", Reason: "double extension .pdf.scr; .scr is blocked"}},
		},
		{
			name:  "upper case, trailing dots and spaces as Windows ignores them",
			msg:   mail(multi("mixed", "b1", file("SETUP.EXE. . ", "application/octet-stream", exe))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "SETUP.EXE. .", Reason: "extension .exe is blocked"}},
		},
		{
			name:  "a harmless name with a blocked word in it",
			msg:   mail(multi("mixed", "b1", file("exe-notes.txt", "text/plain", []byte("hi")), file("com", "text/plain", []byte("hi")))),
			value: filters.Pass, parts: 3,
		},
		{
			name: "a path in the name",
			msg: mail(multi("mixed", "b1", ent(`Content-Type: application/octet-stream
Content-Disposition: attachment; filename="C:\\Temp\\evil.bat"`, "@echo off\r\n"))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: `C:\Temp\evil.bat`, Reason: "extension .bat is blocked"}},
		},
		{
			name: "RFC 2231 filename",
			msg: mail(multi("mixed", "b1", ent(`Content-Type: application/octet-stream
Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20invoice.js`, "x"))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "€ invoice.js", Reason: "extension .js is blocked"}},
		},
		{
			name: "RFC 2231 continuations",
			msg: mail(multi("mixed", "b1", ent(`Content-Type: application/octet-stream
Content-Disposition: attachment;
 filename*0="very-long-invoice-";
 filename*1="name.vbs"`, "x"))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "very-long-invoice-name.vbs", Reason: "extension .vbs is blocked"}},
		},
		{
			name: "RFC 2231 in another charset",
			msg: mail(multi("mixed", "b1", ent(`Content-Type: application/octet-stream
Content-Disposition: attachment; filename*=iso-8859-1'fr'r%E9sum%E9.pdf.cmd`, "x"))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "résumé.pdf.cmd", Reason: "double extension .pdf.cmd; .cmd is blocked"}},
		},
		{
			name: "an encoded word in Content-Type name only",
			msg: mail(multi("mixed", "b1", ent(`Content-Type: application/octet-stream; name="=?utf-8?B?UmVjaG51bmcuZXhl?="
Content-Transfer-Encoding: base64`, b64(exe)))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "Rechnung.exe", Reason: "extension .exe is blocked"}},
		},
		{
			name: "an encoded word in a legacy charset",
			msg: mail(multi("mixed", "b1", ent(`Content-Type: application/octet-stream
Content-Disposition: attachment; filename="=?windows-1252?Q?Factura_n=BA1.pif?="`, "x"))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "Factura nº1.pif", Reason: "extension .pif is blocked"}},
		},
		{
			name: "a duplicate filename, which mime.ParseMediaType refuses",
			msg: mail(multi("mixed", "b1", ent(`Content-Type: application/octet-stream
Content-Disposition: attachment; filename="notes.txt"; filename="notes.exe"`, "x"))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "notes.exe", Reason: "extension .exe is blocked"}},
		},
		{
			name: "the names of two Content-Type fields and a disposition",
			msg: mail(multi("mixed", "b1", ent(`Content-Type: text/plain; name="a.txt"
Content-Type: application/octet-stream; name="b.scr"
Content-Disposition: inline; filename="a.txt"`, "x"))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "b.scr", Reason: "extension .scr is blocked"}},
		},
		{
			name: "an unquoted name with a space",
			msg: mail(multi("mixed", "b1", ent(`Content-Type: application/octet-stream
Content-Disposition: attachment; filename=my setup.exe`, "x"))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "my setup.exe", Reason: "extension .exe is blocked"}},
		},
		{
			name:  "a blocked media type without a name",
			msg:   mail(multi("mixed", "b1", text("hi"), ent("Content-Type: application/x-msdownload\nContent-Transfer-Encoding: base64", b64(exe)))),
			value: filters.Fail, parts: 3, reason: "attachment: type application/x-msdownload is blocked",
			blocked: []Finding{{Reason: "type application/x-msdownload is blocked"}},
		},
		{
			name:  "a blocked media type by wildcard",
			opts:  AttachmentOptions{BlockMIMETypes: []string{"Application/*"}},
			msg:   mail(multi("mixed", "b1", text("hi"), file("report.pdf", "application/pdf", pdf))),
			value: filters.Fail, parts: 3,
			blocked: []Finding{{Name: "report.pdf", Reason: "type application/pdf is blocked"}},
		},
		{
			name:  "empty lists block nothing",
			opts:  AttachmentOptions{BlockExtensions: []string{}, BlockMIMETypes: []string{}},
			msg:   mail(multi("mixed", "b1", file("run.exe", "application/x-msdownload", exe))),
			value: filters.Pass, parts: 2,
		},
		{
			name:  "an own list, with dots and capitals",
			opts:  AttachmentOptions{BlockExtensions: []string{".PDF"}},
			msg:   mail(multi("mixed", "b1", file("run.exe", "application/octet-stream", exe), file("a.pdf", "application/pdf", pdf))),
			value: filters.Fail, parts: 3,
			blocked: []Finding{{Name: "a.pdf", Reason: "extension .pdf is blocked"}},
		},
		{
			name: "nested multiparts",
			msg: mail(multi("mixed", "outer",
				multi("alternative", "alt", text("plain"), ent("Content-Type: text/html", "<p>html</p>")),
				multi("mixed", "inner", file("a.pdf", "application/pdf", pdf), file("b.hta", "application/octet-stream", []byte("<hta>"))))),
			value: filters.Fail, parts: 7,
			blocked: []Finding{{Name: "b.hta", Reason: "extension .hta is blocked"}},
		},
		{
			name: "an attached message with an exe",
			msg: mail(multi("mixed", "b1", text("fwd"),
				ent("Content-Type: message/rfc822\nContent-Disposition: attachment; filename=\"fwd.eml\"",
					"From: x@example.org\r\nSubject: inner\r\nMIME-Version: 1.0\r\n"+multi("mixed", "in", text("inner"), file("inner.exe", "application/octet-stream", exe))))),
			value: filters.Fail, parts: 6,
			blocked: []Finding{{Name: "inner.exe", Reason: "extension .exe is blocked"}},
		},
		{
			name:  "a zip holding an exe",
			msg:   mail(multi("mixed", "b1", text("zip"), file("files.zip", "application/octet-stream", zipOf(t, "docs/", "docs/readme.txt", "docs/Invoice.PDF.exe")))),
			value: filters.Fail, parts: 3, reason: `attachment "docs/Invoice.PDF.exe" in archive "files.zip": double extension .pdf.exe; .exe is blocked`,
			blocked: []Finding{{Name: "docs/Invoice.PDF.exe", Reason: "double extension .pdf.exe; .exe is blocked", InArchive: "files.zip"}},
		},
		{
			name:  "a zip by media type alone",
			msg:   mail(multi("mixed", "b1", ent("Content-Type: application/x-zip-compressed\nContent-Transfer-Encoding: base64", b64(zipOf(t, "a.js"))))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "a.js", Reason: "extension .js is blocked", InArchive: "(unnamed archive)"}},
		},
		{
			name:  "a zip with a nested zip: flagged, not opened",
			msg:   mail(multi("mixed", "b1", file("outer.zip", "application/zip", zipOf(t, "readme.txt", "inner.ZIP")))),
			value: filters.Pass, parts: 2,
			unscanned: []Finding{{Name: "inner.ZIP", Reason: "nested archive, not opened", InArchive: "outer.zip"}},
		},
		{
			name:  "a zip with a ../ path",
			msg:   mail(multi("mixed", "b1", file("x.zip", "application/zip", zipOf(t, "../../evil.lnk")))),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "../../evil.lnk", Reason: "extension .lnk is blocked", InArchive: "x.zip"}},
		},
		{
			name:  "a zip that is not one",
			msg:   mail(multi("mixed", "b1", file("broken.zip", "application/zip", []byte("PK\x03\x04 not really")))),
			value: filters.Pass, parts: 2,
			unscanned: []Finding{{Name: "broken.zip", Reason: "archive not opened: zip: not a valid zip file"}},
		},
		{
			name:  "a zip over the size bound",
			opts:  AttachmentOptions{MaxArchiveSize: 100},
			msg:   mail(multi("mixed", "b1", file("big.zip", "application/zip", zipOf(t, "a.exe", "b.txt", "c.txt")))),
			value: filters.Pass, parts: 2,
			unscanned: []Finding{{Name: "big.zip", Reason: "archive larger than 100 bytes, not opened"}},
		},
		{
			name:  "a zip whose base64 is broken",
			msg:   mail(multi("mixed", "b1", ent("Content-Type: application/zip; name=\"x.zip\"\nContent-Transfer-Encoding: base64", "UEsDBA**notbase64**\r\n"))),
			value: filters.Pass, parts: 2,
			unscanned: []Finding{{Name: "x.zip", Reason: "archive not opened: illegal base64 data at input byte 6"}},
		},
		{
			name:  "too many parts",
			opts:  AttachmentOptions{MaxParts: 10},
			msg:   mail(many(30)),
			value: filters.Fail, parts: 10, reason: "more than 10 MIME parts; not scanned past that", limit: true,
		},
		{
			name:  "many parts under the default bound",
			msg:   mail(many(500)),
			value: filters.Pass, parts: 501,
		},
		{
			name:  "too many parts after a blocked one",
			opts:  AttachmentOptions{MaxParts: 3},
			msg:   mail(multi("mixed", "b1", file("a.exe", "application/octet-stream", exe), text("1"), text("2"))),
			value: filters.Fail, parts: 3, reason: `attachment "a.exe": extension .exe is blocked; more than 3 MIME parts; not scanned past that`, limit: true,
			blocked: []Finding{{Name: "a.exe", Reason: "extension .exe is blocked"}},
		},
		{
			name:  "nested too deep",
			msg:   mail(nested(25)),
			value: filters.Fail, parts: 21, reason: "MIME parts nested more than 20 deep; not scanned past that", limit: true,
		},
		{
			name:  "nested just deep enough",
			msg:   mail(nested(20)),
			value: filters.Fail, parts: 21,
			blocked: []Finding{{Name: "deep.exe", Reason: "extension .exe is blocked"}},
		},
		{
			name:  "a multipart without a boundary",
			msg:   mail("Content-Type: multipart/mixed\r\n\r\nhello\r\n"),
			value: filters.PermError, parts: 1, reason: "malformed MIME structure: multipart/mixed without a boundary",
		},
		{
			name:  "a truncated multipart",
			msg:   mail("Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello, and then nothing"),
			value: filters.PermError, parts: 2, reason: "malformed MIME structure: multipart: NextPart: EOF",
		},
		{
			name:  "a truncated multipart after a blocked part",
			msg:   mail("Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n" + file("a.exe", "application/octet-stream", exe) + "\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello, and then nothing"),
			value: filters.Fail, parts: 3, errf: true,
			blocked: []Finding{{Name: "a.exe", Reason: "extension .exe is blocked"}},
		},
		{
			name:  "a broken part header",
			msg:   mail(multi("mixed", "b1", "Content-Type: text/plain\r\nthis line is no header field\r\n\r\nbody")),
			value: filters.PermError, parts: 1, reason: "malformed MIME structure: message: malformed MIME header line: this line is no header field",
		},
		{
			name:  "a leniently read top-level header",
			msg:   "From sender@example.net Mon Mar  2 10:00:00 2026\r\nSubject: x\r\nnot a field\r\n" + multi("mixed", "b1", file("a.exe", "application/octet-stream", exe)),
			value: filters.Fail, parts: 2,
			blocked: []Finding{{Name: "a.exe", Reason: "extension .exe is blocked"}},
		},
		{
			name:  "an unknown transfer encoding and charset",
			msg:   mail(multi("mixed", "b1", ent("Content-Type: text/plain; charset=x-klingon\nContent-Transfer-Encoding: x-uuencode", "hi"), file("a.txt", "text/plain", []byte("hi")))),
			value: filters.Pass, parts: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewAttachments(tt.opts)
			got, ok := c.Run(t.Context(), filters.StageData, txn(tt.msg))
			if !ok {
				t.Fatal("no result")
			}
			if got.Check != "attachments" || got.Value != tt.value {
				t.Errorf("result %s %s (%s), want %s", got.Check, got.Value, got.Reason, tt.value)
			}
			if tt.reason != "" && got.Reason != tt.reason {
				t.Errorf("reason %q\nwant   %q", got.Reason, tt.reason)
			}
			if tt.value != filters.Pass && got.Reason == "" {
				t.Error("no reason")
			}
			if n := got.Fields["parts"]; n != tt.parts {
				t.Errorf("parts = %v, want %d", n, tt.parts)
			}
			if b, _ := got.Fields["blocked"].([]Finding); !reflect.DeepEqual(b, tt.blocked) {
				t.Errorf("blocked = %+v\nwant      %+v", b, tt.blocked)
			}
			if u, _ := got.Fields["unscanned"].([]Finding); !reflect.DeepEqual(u, tt.unscanned) {
				t.Errorf("unscanned = %+v\nwant        %+v", u, tt.unscanned)
			}
			if _, ok := got.Fields["limit"]; ok != tt.limit {
				t.Errorf("limit field %v, want %v", got.Fields["limit"], tt.limit)
			}
			if _, ok := got.Fields["error"]; ok != tt.errf {
				t.Errorf("error field %v, want %v", got.Fields["error"], tt.errf)
			}
			if got.Score != 0 || got.Action != "" || got.Reply != nil {
				t.Errorf("the check decided something itself: %+v", got)
			}
		})
	}
}

func TestAttachmentsStagesAndMessage(t *testing.T) {
	c := NewAttachments(AttachmentOptions{})
	if c.Name() != "attachments" || !reflect.DeepEqual(c.Stages(), []filters.Stage{filters.StageData}) {
		t.Errorf("Name %q, Stages %v", c.Name(), c.Stages())
	}
	if _, ok := c.Run(t.Context(), filters.StageRcpt, txn(mail(text("x")))); ok {
		t.Error("a result at RCPT")
	}
	if r, ok := c.Run(t.Context(), filters.StageData, &filters.Txn{}); !ok || r.Value != filters.TempError {
		t.Errorf("without the message: %+v", r)
	}
	unreadable := &filters.Txn{Message: func() io.Reader { return iotest.ErrReader(errors.New("spool: read error")) }}
	if r, _ := c.Run(t.Context(), filters.StageData, unreadable); r.Value != filters.TempError || r.Reason != "spool: read error" {
		t.Errorf("with an unreadable message: %+v", r)
	}
}

func TestAttachmentsContextEnded(t *testing.T) {
	ctx, cancel := contextCanceled(t)
	defer cancel()
	r, _ := NewAttachments(AttachmentOptions{}).Run(ctx, filters.StageData, txn(mail(text("x"))))
	if r.Value != filters.TempError {
		t.Errorf("with an ended context: %+v", r)
	}
}

func TestNormalizeName(t *testing.T) {
	for in, want := range map[string]string{
		"Report.PDF":          "report.pdf",
		"setup.exe.":          "setup.exe",
		"setup.exe . . ":      "setup.exe",
		"dir/sub/a.js":        "a.js",
		`C:\x\y.bat`:          "y.bat",
		"x.exe\t\r\n":         "x.exe",
		"ÉTÉ.EXE":             "été.exe",
		"noext":               "noext",
		"":                    "",
		"a.exe\u00a0":         "a.exe",
		"trailing/":           "",
		"x.\u202egnp.exe":     "x.\u202egnp.exe",
		"invoice.pdf     .js": "invoice.pdf     .js",
	} {
		if got := normalizeName(in); got != want {
			t.Errorf("normalizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestAttachmentsManyBlocked: the result lists the first 100 blocked
// files and counts them all.
func TestAttachmentsManyBlocked(t *testing.T) {
	var names []string
	for i := range 150 {
		names = append(names, strings.Repeat("a", i%5+1)+string(rune('a'+i%26))+"/f"+strings.Repeat("0", i/26)+".exe")
	}
	r, _ := NewAttachments(AttachmentOptions{}).Run(t.Context(), filters.StageData, txn(mail(multi("mixed", "b1", file("x.zip", "application/zip", zipOf(t, names...))))))
	b, _ := r.Fields["blocked"].([]Finding)
	if r.Value != filters.Fail || len(b) != 100 || !strings.HasSuffix(r.Reason, "(and 149 more)") {
		t.Errorf("%s, %d listed, reason %q", r.Value, len(b), r.Reason)
	}
}

// TestAttachmentsLFOnly: a message with bare LF line ends (a file given to
// moat explain) is walked all the same.
func TestAttachmentsLFOnly(t *testing.T) {
	msg := strings.ReplaceAll(mail(multi("mixed", "b1", text("hi"), file("a.pdf.bat", "application/pdf", pdf))), "\r\n", "\n")
	tx := txn(msg)
	tx.Header = []byte(msg[:strings.Index(msg, "\n\n")+2])
	r, _ := NewAttachments(AttachmentOptions{}).Run(t.Context(), filters.StageData, tx)
	if r.Value != filters.Fail || r.Fields["parts"] != 3 {
		t.Errorf("%s %s %v", r.Value, r.Reason, r.Fields)
	}
}
