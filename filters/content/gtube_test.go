package content

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"moat/filters"
)

func TestGTUBE(t *testing.T) {
	// A quoted-printable soft line break in the middle of the string
	// hides it from a raw scan.
	qp := GTUBE[:30] + "=\r\n" + GTUBE[30:]
	tests := []struct {
		name  string
		msg   string
		found bool
	}{
		{"absent", mail(text("Hello Bob.\n")), false},
		{"in a plain body", mail(text("Test:\n" + GTUBE + "\nend\n")), true},
		{"alone, no line end", mail("Content-Type: text/plain\r\n\r\n" + GTUBE), true},
		{"in the Subject only", strings.Replace(mail(text("hi")), "Subject: test", "Subject: "+GTUBE, 1), false},
		{"cut in two", mail(text(GTUBE[:40] + "\n" + GTUBE[40:])), false},
		{"in a base64 text part", mail(multi("mixed", "b1", text("see below"),
			ent("Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64", b64([]byte("x\r\n"+GTUBE+"\r\n"))))), true},
		{"in a quoted-printable part across a soft break", mail(multi("alternative", "b1",
			ent("Content-Type: text/html\nContent-Transfer-Encoding: quoted-printable", "<p>"+qp+"</p>"))), true},
		{"in a base64 body, not multipart", mail("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64([]byte(GTUBE))), true},
		{"in UTF-16 text", mail("Content-Type: text/plain; charset=utf-16le\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(utf16le(GTUBE))), true},
		{"in a base64 attachment, not text", mail(multi("mixed", "b1", text("hi"), file("g.bin", "application/octet-stream", []byte(GTUBE)))), false},
		{"in an attached message", mail(multi("mixed", "b1", text("fwd"),
			ent("Content-Type: message/rfc822", "Subject: inner\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64([]byte(GTUBE))))), true},
	}
	c := NewGTUBE()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, ok := c.Run(t.Context(), filters.StageData, txn(tt.msg))
			if ok != tt.found {
				t.Fatalf("found = %v (%+v), want %v", ok, r, tt.found)
			}
			want := filters.Result{Check: "gtube", Value: filters.Fail, Score: GTUBEScore, Reason: "GTUBE test string found"}
			if ok && !reflect.DeepEqual(r, want) {
				t.Errorf("result %+v, want %+v", r, want)
			}
		})
	}
}

func TestGTUBEEdges(t *testing.T) {
	c := NewGTUBE()
	if c.Name() != "gtube" || !reflect.DeepEqual(c.Stages(), []filters.Stage{filters.StageData}) {
		t.Errorf("Name %q, Stages %v", c.Name(), c.Stages())
	}
	tx := txn(mail(text(GTUBE)))
	if _, ok := c.Run(t.Context(), filters.StageRcpt, tx); ok {
		t.Error("a result at RCPT")
	}
	if _, ok := c.Run(t.Context(), filters.StageData, &filters.Txn{}); ok {
		t.Error("a result without a message")
	}
	tx.Header = nil // the whole message is scanned
	if _, ok := c.Run(t.Context(), filters.StageData, tx); !ok {
		t.Error("not found without Txn.Header")
	}
}

func TestStreamContains(t *testing.T) {
	needle := []byte(GTUBE)
	for _, at := range []int{0, 1, 32<<10 - 40, 32<<10 - len(needle), 32 << 10, 64<<10 - 3, 100 << 10} {
		data := bytes.Repeat([]byte{'a'}, 100<<10+len(needle))
		copy(data[at:], needle)
		for name, r := range map[string]func() bool{
			"whole":    func() bool { ok, _ := streamContains(bytes.NewReader(data), needle); return ok },
			"one byte": func() bool { ok, _ := streamContains(iotest.OneByteReader(bytes.NewReader(data)), needle); return ok },
			"half":     func() bool { ok, _ := streamContains(iotest.HalfReader(bytes.NewReader(data)), needle); return ok },
		} {
			if !r() {
				t.Errorf("at %d, %s reads: not found", at, name)
			}
		}
	}
	if ok, _ := streamContains(strings.NewReader(GTUBE[1:]), needle); ok {
		t.Error("found in a shorter text")
	}
	if _, err := streamContains(iotest.ErrReader(iotest.ErrTimeout), needle); err != iotest.ErrTimeout {
		t.Errorf("error %v, want the reader's", err)
	}
}

// utf16le is s (ASCII) in little-endian UTF-16.
func utf16le(s string) []byte {
	var b []byte
	for i := 0; i < len(s); i++ {
		b = append(b, s[i], 0)
	}
	return b
}
