package smtptest

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 10 * time.Second

// dialClient connects a go-smtp client with short timeouts and says EHLO.
func dialClient(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c
}

// rawConn is a textproto dialogue with the sink.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *textproto.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, r: textproto.NewReader(bufio.NewReader(c))}
}

func (rc *rawConn) write(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatalf("write %q: %v", s, err)
	}
}

// reply reads one reply and returns its lines as sent.
func (rc *rawConn) reply() ([]string, error) {
	rc.c.SetReadDeadline(time.Now().Add(waitFor))
	var lines []string
	for {
		l, err := rc.r.ReadLine()
		if err != nil {
			return lines, err
		}
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return lines, nil
		}
	}
}

func (rc *rawConn) expect(want ...string) {
	rc.t.Helper()
	got, err := rc.reply()
	if err != nil {
		rc.t.Fatalf("reading reply: %v (got %q, want %q)", err, got, want)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		rc.t.Fatalf("reply:\n got %q\nwant %q", got, want)
	}
}

func (rc *rawConn) cmd(line string, want ...string) {
	rc.t.Helper()
	rc.write(line + "\r\n")
	rc.expect(want...)
}

// expectSilence asserts that nothing arrives for a short while: the only
// way to observe a stall.
func (rc *rawConn) expectSilence() {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	l, err := rc.r.ReadLine()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		rc.t.Fatalf("want no reply (a stall), got %q, %v", l, err)
	}
}

func (rc *rawConn) expectClosed() {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(waitFor))
	l, err := rc.r.ReadLine()
	if err == nil {
		rc.t.Fatalf("want the connection closed, got %q", l)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		rc.t.Fatalf("want the connection closed, it stayed open")
	}
}

func TestSinkGreetingEHLOAndCommands(t *testing.T) {
	s := NewSink(t)
	rc := dialRaw(t, s.Addr())
	rc.expect("220 sink.test ESMTP smtptest")
	rc.cmd("MAIL FROM:<a@example.net>", "503 5.5.1 Error: send HELO/EHLO first")
	rc.cmd("EHLO client.test",
		"250-sink.test", "250-PIPELINING", "250-SIZE 52428800", "250-8BITMIME",
		"250-ENHANCEDSTATUSCODES", "250 SMTPUTF8")
	rc.cmd("NOOP", "250 2.0.0 Ok")
	rc.cmd("RCPT TO:<b@example.com>", "503 5.5.1 Error: need MAIL command")
	rc.cmd("DATA", "503 5.5.1 Error: need MAIL command")
	rc.cmd("MAIL FROM:<a@example.net>", "250 2.1.0 Ok")
	rc.cmd("MAIL FROM:<a@example.net>", "503 5.5.1 Error: nested MAIL command")
	rc.cmd("DATA", "503 5.5.1 Error: need RCPT command")
	rc.cmd("RSET", "250 2.0.0 Ok")
	rc.cmd("RCPT TO:<b@example.com>", "503 5.5.1 Error: need MAIL command")
	rc.cmd("VRFY b", "502 5.5.1 VRFY command is disabled")
	rc.cmd("STARTTLS", "502 5.5.2 Error: command not recognized")
	rc.cmd("HELO client.test", "250 sink.test")
	rc.cmd("QUIT", "221 2.0.0 Bye")
	rc.expectClosed()
	if n := len(s.Transactions()); n != 0 {
		t.Fatalf("transactions = %d, want 0", n)
	}
	s.WaitIdle(waitFor)
	raw := s.Conns()[0].Raw
	if !bytes.HasPrefix(raw, []byte("MAIL FROM:<a@example.net>\r\nEHLO client.test\r\n")) || !bytes.HasSuffix(raw, []byte("QUIT\r\n")) {
		t.Fatalf("raw bytes not recorded as sent: %q", raw)
	}
}

func TestSinkDeliveryWithGoSMTPClient(t *testing.T) {
	s := NewSink(t)
	c := dialClient(t, s.Addr())
	msg := "From: a@example.net\r\nTo: b@example.com\r\nSubject: hi\r\n\r\n" +
		".starts with a dot\r\n..two dots\r\n.\r\nnot the end\r\n\xc3\xa9 8-bit\r\n"
	if err := c.Mail("a@example.net", &smtp.MailOptions{Size: int64(len(msg))}); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"b@example.com", "c@example.com"} {
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatal(err)
		}
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
	txs := s.WaitTransactions(1, waitFor)
	tx := txs[0]
	if want := "2.0.0 Ok: queued as " + tx.QueueID; resp.StatusText != want || len(tx.QueueID) != 10 {
		t.Errorf("end-of-data reply %q, want %q", resp.StatusText, want)
	}
	if tx.Reply != "250 2.0.0 Ok: queued as "+tx.QueueID {
		t.Errorf("recorded reply %q", tx.Reply)
	}
	if tx.Helo != "client.test" || tx.From != "a@example.net" || tx.ConnID != 1 || tx.Seq != 1 {
		t.Errorf("envelope: %+v", tx)
	}
	if want := "FROM:<a@example.net> BODY=8BITMIME SIZE=" + strconv.Itoa(len(msg)); tx.Mail != want {
		t.Errorf("MAIL argument %q, want %q", tx.Mail, want)
	}
	if strings.Join(tx.RcptArgs, ",") != "TO:<b@example.com>,TO:<c@example.com>" || strings.Join(tx.Rcpts, ",") != "b@example.com,c@example.com" {
		t.Errorf("RCPT: args %q, accepted %q", tx.RcptArgs, tx.Rcpts)
	}
	wantRaw := "From: a@example.net\r\nTo: b@example.com\r\nSubject: hi\r\n\r\n" +
		"..starts with a dot\r\n...two dots\r\n..\r\nnot the end\r\n\xc3\xa9 8-bit\r\n.\r\n"
	if string(tx.Data) != wantRaw {
		t.Errorf("raw DATA:\n got %q\nwant %q", tx.Data, wantRaw)
	}
	if string(tx.Message) != msg {
		t.Errorf("message:\n got %q\nwant %q", tx.Message, msg)
	}
	if !tx.Accepted() || len(s.Accepted()) != 1 {
		t.Errorf("not counted as accepted")
	}
	if !bytes.Contains(s.Raw(), []byte("DATA\r\n"+wantRaw)) {
		t.Errorf("connection bytes lack the DATA section: %q", s.Raw())
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	s.WaitIdle(waitFor)
	if s.Connections() != 1 || s.Conns()[0].Transactions != 1 || s.Conns()[0].Aborted {
		t.Errorf("connection record: %+v", s.Conns())
	}
}

// TestSinkEndOfData sends DATA bodies with odd line endings: only the
// exact CRLF.CRLF may end DATA, and the raw bytes must be kept as sent.
func TestSinkEndOfData(t *testing.T) {
	cases := []struct {
		name    string
		body    string // sent after "354", up to and including the terminator
		message string // unstuffed
	}{
		{"empty message", ".\r\n", ""},
		{"plain", "a\r\n.\r\n", "a\r\n"},
		{"lf dot lf", "a\n.\nb\r\n.\r\n", "a\n.\nb\r\n"},
		{"cr dot cr", "a\r.\rb\r\n.\r\n", "a\r.\rb\r\n"},
		{"lf dot crlf", "a\n.\r\nb\r\n.\r\n", "a\n.\r\nb\r\n"},
		{"crlf dot lf", "a\r\n.\nb\r\n.\r\n", "a\r\n\nb\r\n"},
		{"crlf dot cr", "a\r\n.\rb\r\n.\r\n", "a\r\n\rb\r\n"},
		{"nul before dot", "a\r\n\x00.\r\nb\r\n.\r\n", "a\r\n\x00.\r\nb\r\n"},
		{"stuffed dot line", "a\r\n..\r\nb\r\n.\r\n", "a\r\n.\r\nb\r\n"},
		{"cr cr lf dot crlf ends", "a\r\r\n.\r\n", "a\r\r\n"},
		{"leading dot line", "..x\r\n.\r\n", ".x\r\n"},
	}
	s := NewSink(t)
	rc := dialRaw(t, s.Addr())
	rc.expect("220 sink.test ESMTP smtptest")
	rc.write("EHLO client.test\r\n")
	if _, err := rc.reply(); err != nil {
		t.Fatal(err)
	}
	for i, tc := range cases {
		rc.cmd("MAIL FROM:<a@example.net>", "250 2.1.0 Ok")
		rc.cmd("RCPT TO:<b@example.com>", "250 2.1.5 Ok")
		rc.cmd("DATA", "354 End data with <CR><LF>.<CR><LF>")
		rc.write(tc.body)
		got, err := rc.reply()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		txs := s.WaitTransactions(i+1, waitFor)
		tx := txs[i]
		if len(got) != 1 || got[0] != "250 2.0.0 Ok: queued as "+tx.QueueID {
			t.Errorf("%s: reply %q", tc.name, got)
		}
		if string(tx.Data) != tc.body {
			t.Errorf("%s: raw DATA %q, want %q", tc.name, tx.Data, tc.body)
		}
		if string(tx.Message) != tc.message {
			t.Errorf("%s: message %q, want %q", tc.name, tx.Message, tc.message)
		}
	}
	rc.cmd("QUIT", "221 2.0.0 Bye")
}

func TestSinkPipelining(t *testing.T) {
	s := NewSink(t)
	rc := dialRaw(t, s.Addr())
	rc.expect("220 sink.test ESMTP smtptest")
	rc.write("EHLO client.test\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
	if _, err := rc.reply(); err != nil {
		t.Fatal(err)
	}
	rc.expect("250 2.1.0 Ok")
	rc.expect("250 2.1.5 Ok")
	rc.expect("250 2.1.5 Ok")
	rc.expect("354 End data with <CR><LF>.<CR><LF>")
	rc.write("x\r\n.\r\nQUIT\r\n")
	tx := s.WaitTransactions(1, waitFor)[0]
	rc.expect("250 2.0.0 Ok: queued as " + tx.QueueID)
	rc.expect("221 2.0.0 Bye")
}

func TestSinkScriptedReplies(t *testing.T) {
	const unknown = "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
	const multi = "250-2.0.0 first line\r\n250-2.0.0 second\r\n250 2.0.0 Ok: queued as ABC123"
	s := NewSink(t, WithRcptReply("Nobody@Example.com", unknown), WithDataReply(multi))
	c := dialClient(t, s.Addr())
	if err := c.Mail("a@example.net", nil); err != nil {
		t.Fatal(err)
	}
	err := c.Rcpt("nobody@example.com", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) ||
		se.Message != "<nobody@example.com>: Recipient address rejected: User unknown" {
		t.Fatalf("RCPT nobody: %#v", err)
	}
	if err := c.Rcpt("b@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "Subject: x\r\n\r\nx\r\n")
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	if want := "2.0.0 first line\n2.0.0 second\n2.0.0 Ok: queued as ABC123"; resp.StatusText != want {
		t.Errorf("end-of-data reply %q, want %q", resp.StatusText, want)
	}
	tx := s.WaitTransactions(1, waitFor)[0]
	if tx.Reply != multi {
		t.Errorf("recorded reply %q", tx.Reply)
	}
	if strings.Join(tx.Rcpts, ",") != "b@example.com" || len(tx.RcptArgs) != 2 {
		t.Errorf("RCPT: args %q, accepted %q", tx.RcptArgs, tx.Rcpts)
	}

	// The same reply, read line by line.
	rc := dialRaw(t, s.Addr())
	rc.expect("220 sink.test ESMTP smtptest")
	rc.write("HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<NOBODY@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
	rc.expect("250 sink.test")
	rc.expect("250 2.1.0 Ok")
	rc.expect(unknown)
	rc.expect("250 2.1.5 Ok")
	rc.expect("354 End data with <CR><LF>.<CR><LF>")
	rc.write("\r\n.\r\n")
	rc.expect("250-2.0.0 first line", "250-2.0.0 second", "250 2.0.0 Ok: queued as ABC123")

	// A multi-line permanent failure reaches a go-smtp client as one error.
	s.Set(WithDataReply("554-5.7.1 rejected\n554 5.7.1 by policy"))
	c2 := dialClient(t, s.Addr())
	if err := c2.Mail("a@example.net", nil); err != nil {
		t.Fatal(err)
	}
	if err := c2.Rcpt("b@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err = c2.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "x\r\n")
	err = w.Close()
	if !errors.As(err, &se) || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) || se.Message != "rejected\nby policy" {
		t.Fatalf("end of data: %#v", err)
	}
	if n := len(s.Accepted()); n != 2 {
		t.Errorf("accepted = %d, want 2 (the 554 one is not)", n)
	}
}

func TestSinkExtensions(t *testing.T) {
	s := NewSink(t, WithoutExtensions("SMTPUTF8"))
	c := dialClient(t, s.Addr())
	if ok, _ := c.Extension("SMTPUTF8"); ok {
		t.Error("SMTPUTF8 still announced")
	}
	if ok, v := c.Extension("SIZE"); !ok || v != "52428800" {
		t.Errorf("SIZE = %v %q", ok, v)
	}
	s.Set(WithExtensions("8BITMIME"))
	rc := dialRaw(t, s.Addr())
	rc.expect("220 sink.test ESMTP smtptest")
	rc.cmd("EHLO x", "250-sink.test", "250 8BITMIME")
}

func TestSinkRefuseAtGreeting(t *testing.T) {
	s := NewSink(t, RefuseAtGreeting())
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Hello("client.test")
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 554 {
		t.Fatalf("greeting: %#v", err)
	}
	rc := dialRaw(t, s.Addr())
	rc.expect(RefusedGreeting)
	rc.cmd("EHLO x", replyRefusedCommands)
	rc.cmd("QUIT", "221 2.0.0 Bye")
	rc.expectClosed()
}

func TestSinkStall(t *testing.T) {
	for _, stage := range []string{StageGreeting, "EHLO", "MAIL", "RCPT", "DATA", StageEndOfData} {
		t.Run(stage, func(t *testing.T) {
			s := NewSink(t, WithStall(stage))
			rc := dialRaw(t, s.Addr())
			steps := []struct {
				stage, send string
				want        []string
			}{
				{StageGreeting, "", []string{"220 sink.test ESMTP smtptest"}},
				{"EHLO", "EHLO c\r\n", nil},
				{"MAIL", "MAIL FROM:<a@example.net>\r\n", []string{"250 2.1.0 Ok"}},
				{"RCPT", "RCPT TO:<b@example.com>\r\n", []string{"250 2.1.5 Ok"}},
				{"DATA", "DATA\r\n", []string{"354 End data with <CR><LF>.<CR><LF>"}},
				{StageEndOfData, "x\r\n.\r\n", nil},
			}
			for _, st := range steps {
				rc.write(st.send)
				if st.stage == stage {
					rc.expectSilence()
					break
				}
				if st.want != nil {
					rc.expect(st.want...)
				} else if _, err := rc.reply(); err != nil {
					t.Fatal(err)
				}
			}
			// The sink keeps recording while it stalls.
			rc.write("NOOP\r\n")
			if !s.Await(waitFor, func(s *Sink) bool { return bytes.HasSuffix(s.Raw(), []byte("NOOP\r\n")) }) {
				t.Errorf("bytes sent during a stall were not recorded: %q", s.Raw())
			}
			if len(s.Transactions()) != 0 {
				t.Errorf("a stalled transaction was counted")
			}
		})
	}
}

func TestSinkHangupAndDrop(t *testing.T) {
	t.Run("hang up at MAIL", func(t *testing.T) {
		s := NewSink(t, WithHangupAt("mail"))
		rc := dialRaw(t, s.Addr())
		rc.expect("220 sink.test ESMTP smtptest")
		rc.write("EHLO c\r\n")
		rc.reply()
		rc.write("MAIL FROM:<a@example.net>\r\n")
		rc.expectClosed()
	})
	t.Run("drop in DATA", func(t *testing.T) {
		s := NewSink(t, WithDropInData(10))
		c := dialClient(t, s.Addr())
		if err := c.Mail("a@example.net", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("b@example.com", nil); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, "Subject: 0123456789\r\n\r\nbody\r\n")
		if err := w.Close(); err == nil {
			t.Fatal("end of data succeeded, want an error from a dropped connection")
		}
		s.WaitIdle(waitFor)
		conns := s.Conns()
		if len(s.Transactions()) != 0 || len(conns) != 1 || !conns[0].Aborted || !conns[0].Closed {
			t.Fatalf("after a drop: transactions %d, conns %+v", len(s.Transactions()), conns)
		}
		if !bytes.Contains(conns[0].Raw, []byte("DATA\r\nSubject: ")) {
			t.Errorf("raw bytes: %q", conns[0].Raw)
		}
		// Cleared faults let the next connection through.
		s.Set(WithoutFaults())
		c2 := dialClient(t, s.Addr())
		if err := c2.SendMail("a@example.net", []string{"b@example.com"}, strings.NewReader("x\r\n")); err != nil {
			t.Fatal(err)
		}
		s.WaitTransactions(1, waitFor)
	})
}

func TestSinkCountsAndWaits(t *testing.T) {
	s := NewSink(t)
	const n = 4
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(s.Addr())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.SendMail("a@example.net", []string{"b@example.com"}, strings.NewReader("x\r\n")); err != nil {
				errs <- err
				return
			}
			errs <- c.Quit()
		}()
	}
	txs := s.WaitTransactions(n, waitFor)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := map[int]bool{}
	for _, tx := range txs {
		seen[tx.ConnID] = true
	}
	if len(txs) != n || len(seen) != n || s.Connections() != n {
		t.Fatalf("transactions %d on %d connections, accepted %d connections", len(txs), len(seen), s.Connections())
	}
	s.WaitConnections(n, waitFor)
	if s.Await(50*time.Millisecond, func(s *Sink) bool { return len(s.Transactions()) > n }) {
		t.Fatal("Await reported a condition that cannot hold")
	}
}

func TestSinkCloseEndsStalls(t *testing.T) {
	s := NewSink(t, WithStall("MAIL"))
	rc := dialRaw(t, s.Addr())
	rc.expect("220 sink.test ESMTP smtptest")
	rc.write("EHLO c\r\n")
	rc.reply()
	rc.write("MAIL FROM:<a@example.net>\r\n")
	rc.expectSilence()
	s.Close()
	rc.expectClosed()
	s.Close() // idempotent
}

func TestUnstuff(t *testing.T) {
	for in, want := range map[string]string{
		"":              "",
		"..":            ".",
		".a\r\n.b\r\n":  "a\r\nb\r\n",
		"a\n.b\r.c\r\n": "a\n.b\r.c\r\n",
		"a\r\n..\r\n":   "a\r\n.\r\n",
		"\r\n.":         "\r\n",
	} {
		if got := string(unstuff([]byte(in))); got != want {
			t.Errorf("unstuff(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReplyCode(t *testing.T) {
	for in, want := range map[string]int{"250 ok": 250, "5": 0, "abc": 0, "451-4.4.1 x": 451} {
		if got := ReplyCode(in); got != want {
			t.Errorf("ReplyCode(%q) = %d, want %d", in, got, want)
		}
	}
}

// TestFreePortNeverTwice: the ports FreePort hands out in one process are
// distinct (the kernel may offer a released port again at once).
func TestFreePortNeverTwice(t *testing.T) {
	seen := map[int]bool{}
	for range 500 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
