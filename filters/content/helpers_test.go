package content

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"strings"
	"testing"

	"moat/filters"
)

// The messages of the tests are built here, with CRLF line ends as they
// arrive over SMTP.

// crlf turns the line ends of s into CRLF.
func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// topHeader is the header of every test message, before its entity.
const topHeader = "From: Alice <alice@example.net>\r\nTo: bob@example.com\r\nSubject: test\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\nMessage-ID: <t@example.net>\r\nMIME-Version: 1.0\r\n"

// mail is a whole message: topHeader, then the entity (its own header
// fields continue the header section).
func mail(entity string) string { return topHeader + entity }

// text is a text/plain entity.
func text(body string) string {
	return "Content-Type: text/plain; charset=utf-8\r\n\r\n" + crlf(body)
}

// ent is an entity of the given header lines (LF or CRLF) and body.
func ent(header, body string) string {
	return crlf(strings.TrimRight(header, "\n")) + "\r\n\r\n" + body
}

// multi is a multipart entity of the parts.
func multi(subtype, boundary string, parts ...string) string {
	var b strings.Builder
	b.WriteString("Content-Type: multipart/" + subtype + "; boundary=\"" + boundary + "\"\r\n\r\n")
	b.WriteString("This is a multi-part message in MIME format.\r\n")
	for _, p := range parts {
		b.WriteString("--" + boundary + "\r\n" + p + "\r\n")
	}
	b.WriteString("--" + boundary + "--\r\n")
	return b.String()
}

// b64 is data in base64, in 76-character lines.
func b64(data []byte) string {
	s := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	b.WriteString(s + "\r\n")
	return b.String()
}

// file is an attachment entity named name (in both Content-Type and
// Content-Disposition), base64-encoded.
func file(name, ctype string, data []byte) string {
	return ent("Content-Type: "+ctype+"; name=\""+name+"\"\nContent-Disposition: attachment; filename=\""+name+"\"\nContent-Transfer-Encoding: base64", b64(data))
}

// zipOf is a zip archive holding empty files of those names.
func zipOf(t testing.TB, names ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, n := range names {
		w, err := zw.Create(n)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, "content of "+n)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// txn is the transaction of a raw message, at the end of DATA.
func txn(raw string) *filters.Txn {
	b := []byte(raw)
	h := b
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
		h = b[:i+4]
	}
	return &filters.Txn{Size: int64(len(b)), Header: h, Message: func() io.Reader { return bytes.NewReader(b) }}
}

// pdf is a few bytes that stand for a harmless attachment.
var pdf = []byte("%PDF-1.4\n% a small pdf\n%%EOF\n")

// contextCanceled is a context that has ended.
func contextCanceled(t *testing.T) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	return ctx, cancel
}
