package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func readAll(t *testing.T, wire string, normalize bool, max int64) (got, rest string, err error) {
	t.Helper()
	var out bytes.Buffer
	c := newContent(&out, normalize, max, 1<<20)
	r := bufio.NewReaderSize(strings.NewReader(wire), 16)
	err = readDotData(r, c)
	left, _ := io.ReadAll(r)
	if err != nil {
		return out.String(), string(left), err
	}
	return out.String(), string(left), c.problem
}

func TestReadDotData(t *testing.T) {
	for _, tc := range []struct {
		name      string
		wire      string
		normalize bool
		want      string
		problem   error
		rest      string
	}{
		{name: "simple", wire: "Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n", want: "Subject: x\r\n\r\nbody\r\n", rest: "QUIT\r\n"},
		{name: "empty", wire: ".\r\n", want: ""},
		{name: "unstuff", wire: "..a\r\n..\r\n.b\r\n.\r\n", want: ".a\r\n.\r\nb\r\n"},
		{name: "long line split across buffer", wire: strings.Repeat("x", 50) + "\r\n.\r\n", want: strings.Repeat("x", 50) + "\r\n"},
		{name: "crlf split at buffer edge", wire: strings.Repeat("y", 15) + "\r\n.\r\n", want: strings.Repeat("y", 15) + "\r\n"},
		{name: "lf dot lf is content", wire: "a\n.\nb\r\n.\r\n", problem: errBareNewline},
		{name: "lf dot lf normalised", wire: "a\n.\nb\r\n.\r\n", normalize: true, want: "a\r\n.\r\nb\r\n"},
		{name: "cr dot cr normalised", wire: "a\r.\rb\r\n.\r\n", normalize: true, want: "a\r\n.\r\nb\r\n"},
		{name: "crlf dot lf is content", wire: "a\r\n.\nb\r\n.\r\n", problem: errBareNewline},
		{name: "crlf dot lf normalised keeps a line", wire: "a\r\n.\nb\r\n.\r\n", normalize: true, want: "a\r\n\r\nb\r\n"},
		{name: "cr cr lf dot crlf ends", wire: "a\r\r\n.\r\nMAIL\r\n", problem: errBareNewline, rest: "MAIL\r\n"},
		{name: "nul rejected", wire: "a\r\n\x00.\r\n.\r\n", problem: errNUL},
		{name: "nul dropped", wire: "a\r\n\x00.\r\n.\r\n", normalize: true, want: "a\r\n.\r\n"},
		{name: "too big", wire: "0123456789\r\n.\r\nNOOP\r\n", problem: errTooBig, rest: "NOOP\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			max := int64(1 << 20)
			if tc.name == "too big" {
				max = 5
			}
			got, rest, err := readAll(t, tc.wire, tc.normalize, max)
			if !errors.Is(err, tc.problem) {
				t.Fatalf("problem %v, want %v", err, tc.problem)
			}
			if tc.problem == nil && got != tc.want {
				t.Errorf("content %q, want %q", got, tc.want)
			}
			if rest != tc.rest {
				t.Errorf("left unread %q, want %q", rest, tc.rest)
			}
		})
	}
}

func TestHeaderTracking(t *testing.T) {
	var out bytes.Buffer
	c := newContent(&out, false, 1<<20, 1<<20)
	readDotData(bufio.NewReader(strings.NewReader("A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n.\r\n")), c)
	if string(c.header) != "A: 1\r\nB: 2\r\n\r\n" || c.headerEnd != int64(len(c.header)) {
		t.Errorf("header %q end %d", c.header, c.headerEnd)
	}
	c = newContent(&out, false, 1<<20, 10)
	readDotData(bufio.NewReader(strings.NewReader("A: 0123456789\r\n\r\nbody\r\n.\r\n")), c)
	if c.problem != errHeaderTooBig {
		t.Errorf("problem %v, want header too big", c.problem)
	}
	c = newContent(&out, false, 1<<20, 1<<20)
	readDotData(bufio.NewReader(strings.NewReader("\r\nbody only\r\n.\r\n")), c)
	if string(c.header) != "\r\n" {
		t.Errorf("empty header: %q", c.header)
	}
}

func TestDotWriter(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a\r\n.b\r\n..\r\n", "a\r\n..b\r\n...\r\n.\r\n"},
		{".", "..\r\n.\r\n"},
		{"no end", "no end\r\n.\r\n"},
		{"", ".\r\n"},
	} {
		var b bytes.Buffer
		w := bufio.NewWriter(&b)
		d := &dotWriter{w: w, atLineStart: true}
		// Feed one byte at a time to test state across writes.
		for i := 0; i < len(tc.in); i++ {
			d.Write([]byte{tc.in[i]})
		}
		d.close()
		w.Flush()
		if b.String() != tc.want {
			t.Errorf("dotWriter(%q) = %q, want %q", tc.in, b.String(), tc.want)
		}
	}
}

// FuzzDataRoundTrip checks that whatever a client sends, what moat stores
// and sends on has CRLF line ends only and, dot-stuffed again, cannot
// end early at the next hop.
func FuzzDataRoundTrip(f *testing.F) {
	for _, s := range []string{"a\r\n.\r\n", "a\n.\nb\r\n.\r\n", "a\r.\rb\r\n.\r\n", "a\r\r\n.\r\n", "..x\r\n.\r\n", "\x00.\r\n.\r\n"} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, wire []byte, normalize bool) {
		var out bytes.Buffer
		c := newContent(&out, normalize, 1<<20, 1<<20)
		if err := readDotData(bufio.NewReaderSize(bytes.NewReader(wire), 16), c); err != nil || c.problem != nil {
			return
		}
		msg := out.Bytes()
		for i, b := range msg {
			if b == '\n' && (i == 0 || msg[i-1] != '\r') || b == '\r' && (i+1 >= len(msg) || msg[i+1] != '\n') || b == 0 {
				t.Fatalf("stored message has a bare CR/LF or NUL at %d: %q", i, msg)
			}
		}
		var sent bytes.Buffer
		w := bufio.NewWriter(&sent)
		d := &dotWriter{w: w, atLineStart: true}
		d.Write(msg)
		d.close()
		w.Flush()
		// The next hop must find the end exactly at the end.
		var back bytes.Buffer
		c2 := newContent(&back, false, 1<<20, 1<<20)
		r := bufio.NewReader(&sent)
		if err := readDotData(r, c2); err != nil {
			t.Fatalf("next hop: %v", err)
		}
		if r.Buffered() != 0 {
			t.Fatalf("next hop ended early; %d bytes left", r.Buffered())
		}
		want := msg
		if len(want) > 0 && !bytes.HasSuffix(want, []byte("\r\n")) {
			want = append(append([]byte(nil), want...), "\r\n"...)
		}
		if !bytes.Equal(back.Bytes(), want) {
			t.Fatalf("round trip changed the message:\n%q\n%q", want, back.Bytes())
		}
	})
}
