package smtptest

import (
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestStartPostfixSink(t *testing.T) {
	dir := t.TempDir()
	addr := StartPostfixSink(t, dir)
	msg := "From: a@example.net\r\nTo: b@example.com\r\nSubject: via smtp-sink\r\n\r\n.dot line\r\nlast\r\n"
	for i := range 2 {
		c := dialClient(t, addr)
		if err := c.Mail(fmt.Sprintf("a%d@example.net", i), nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("b@example.com", nil); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, msg)
		resp, err := w.CloseWithResponse()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusText != "2.0.0 Ok" {
			t.Errorf("smtp-sink end-of-data reply %q", resp.StatusText)
		}
		c.Quit()
	}
	ds := WaitPostfixDumps(t, dir, 2, waitFor)
	if len(ds) != 2 {
		t.Fatalf("dumps = %d, want 2", len(ds))
	}
	for i, d := range ds {
		if d.ClientAddr != "127.0.0.1" || d.ClientProto != "ESMTP" || d.Helo != "client.test" {
			t.Errorf("dump %d header: %+v", i, d)
		}
		if !strings.HasPrefix(d.Mail, "<a") || len(d.Rcpts) != 1 || d.Rcpts[0] != "<b@example.com>" {
			t.Errorf("dump %d envelope: MAIL %q RCPT %q", i, d.Mail, d.Rcpts)
		}
		if !strings.Contains(d.Received, "by "+PostfixSinkHostname+" (smtp-sink)") {
			t.Errorf("dump %d Received: %q", i, d.Received)
		}
		if string(d.MessageCRLF()) != msg {
			t.Errorf("dump %d message:\n got %q\nwant %q", i, d.MessageCRLF(), msg)
		}
	}
}

func TestParsePostfixDump(t *testing.T) {
	in := "X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: mx.test\n" +
		"X-Mail-Args: <a@b> BODY=8BITMIME\nX-Rcpt-Args: <c@d>\nX-Rcpt-Args: <e@f>\n" +
		"Received: from mx.test ([127.0.0.1])\n\tby smtp-sink.test (smtp-sink) with ESMTP id 1;\n\tThu, 26 Nov 2026 06:10:29 +0000 (UTC)\n" +
		"Received: from c by mx.test\n\twith ESMTP; now\nSubject: x\n\nbody\n\n"
	d, err := ParsePostfixDump("f", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if d.Mail != "<a@b> BODY=8BITMIME" || strings.Join(d.Rcpts, ",") != "<c@d>,<e@f>" || d.Helo != "mx.test" {
		t.Errorf("envelope: %+v", d)
	}
	if want := "Received: from c by mx.test\n\twith ESMTP; now\nSubject: x\n\nbody\n"; string(d.Message) != want {
		t.Errorf("message %q, want %q", d.Message, want)
	}
	if _, err := ParsePostfixDump("f", []byte(in[:len(in)-1])); err == nil {
		t.Error("an unfinished dump parsed")
	}
}

// fakeTB records Skipf and Fatalf instead of ending the test.
type fakeTB struct {
	testing.TB
	skipped, failed string
}

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Skipf(format string, a ...any)  { f.skipped = fmt.Sprintf(format, a...) }
func (f *fakeTB) Fatalf(format string, a ...any) { f.failed = fmt.Sprintf(format, a...) }

func TestRequireTool(t *testing.T) {
	t.Setenv("CI", "")
	if p := RequireTool(t, "sh"); !strings.HasSuffix(p, "/sh") {
		t.Errorf("RequireTool(sh) = %q", p)
	}
	const missing = "moat-no-such-tool-x"
	for _, tc := range []struct {
		ci         string
		skip, fail bool
	}{
		{"", true, false},
		{"false", true, false},
		{"true", false, true},
		{"1", false, true},
	} {
		t.Setenv("CI", tc.ci)
		f := &fakeTB{TB: t}
		if p := RequireTool(f, missing); p != "" {
			t.Errorf("CI=%q: path %q for a missing tool", tc.ci, p)
		}
		if (f.skipped != "") != tc.skip || (f.failed != "") != tc.fail {
			t.Errorf("CI=%q: skipped %q, failed %q; want skip=%v fail=%v", tc.ci, f.skipped, f.failed, tc.skip, tc.fail)
		}
	}
}
