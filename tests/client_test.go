package tests

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"moat/internal/smtptest"
)

// Stages at which a send can end.
const (
	StageDial     = "dial"
	StageHello    = "hello" // greeting or EHLO
	StageStartTLS = "starttls"
	StageMail     = "mail"
	StageRcpt     = "rcpt" // every recipient was refused
	StageData     = "data" // the DATA command
	StageEOD      = "eod"  // the reply after the final dot
)

// Envelope is one message for Send.
type Envelope struct {
	Helo     string // default "client.example.net"
	From     string
	To       []string
	Data     []byte // the message, CRLF lines; the dot-stuffing is the client's
	StartTLS bool   // STARTTLS first (moat's certificate is self-signed: not verified)
	MailOpts *smtp.MailOptions
	// Source is the local address to send from ("127.0.0.2": any
	// 127.0.0.0/8 address works on Linux loopback); "" lets the system pick.
	Source string
}

// SendResult is how a send with go-smtp's client ended. On success Stage
// is "" and Reply holds the end-of-data reply text as go-smtp returns it
// ("2.0.0 Ok: queued as X"; lines joined by "\n", codes stripped). When
// the server refused, Stage says where and Err is its reply, exactly as
// the client parsed it. Other failures (network, TLS) are in NetErr.
type SendResult struct {
	Stage    string
	Err      *smtp.SMTPError
	NetErr   error
	RcptErrs map[string]*smtp.SMTPError // recipients refused at RCPT
	Reply    string
	TLS      bool
	Elapsed  time.Duration
}

func (r SendResult) String() string {
	if r.Stage == "" {
		return fmt.Sprintf("delivered: %q (refused rcpts %v)", r.Reply, r.RcptErrs)
	}
	if r.Err != nil {
		return fmt.Sprintf("stage %s: %d %v %q (refused rcpts %v)", r.Stage, r.Err.Code, r.Err.EnhancedCode, r.Err.Message, r.RcptErrs)
	}
	return fmt.Sprintf("stage %s: %v", r.Stage, r.NetErr)
}

// Send delivers env to addr with go-smtp's client: Dial, Hello, Mail,
// Rcpt for each recipient (going on past refused ones, as an MTA does),
// Data. It never fails the test itself.
func Send(t testing.TB, addr string, env Envelope) SendResult {
	t.Helper()
	start := time.Now()
	res := sendOnce(addr, env)
	res.Elapsed = time.Since(start)
	return res
}

func sendOnce(addr string, env Envelope) (res SendResult) {
	res.RcptErrs = map[string]*smtp.SMTPError{}
	fail := func(stage string, err error) SendResult {
		res.Stage = stage
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			res.Err = se
		} else {
			res.NetErr = err
		}
		return res
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	if env.Source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(env.Source)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return fail(StageDial, err)
	}
	helo := env.Helo
	if helo == "" {
		helo = "client.example.net"
	}
	var c *smtp.Client
	if env.StartTLS {
		c, err = smtp.NewClientStartTLS(conn, &tls.Config{ServerName: Hostname, InsecureSkipVerify: true})
		if err != nil {
			conn.Close()
			return fail(StageStartTLS, err)
		}
		res.TLS = true
	} else {
		c = smtp.NewClient(conn)
	}
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 60*time.Second, 90*time.Second
	if err := c.Hello(helo); err != nil {
		return fail(StageHello, err)
	}
	if err := c.Mail(env.From, env.MailOpts); err != nil {
		return fail(StageMail, err)
	}
	var lastErr error
	for _, to := range env.To {
		if err := c.Rcpt(to, nil); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				return fail(StageRcpt, err)
			}
			res.RcptErrs[to] = se
			lastErr = err
		}
	}
	if len(res.RcptErrs) == len(env.To) {
		if lastErr == nil {
			lastErr = errors.New("no recipients")
		}
		return fail(StageRcpt, lastErr)
	}
	w, err := c.Data()
	if err != nil {
		return fail(StageData, err)
	}
	if _, err := w.Write(env.Data); err != nil {
		return fail(StageEOD, err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return fail(StageEOD, err)
	}
	res.Reply = resp.StatusText
	c.Quit()
	return res
}

// MustSend sends and fails the test unless the end-of-data reply is 2xx.
func MustSend(t testing.TB, addr string, env Envelope) SendResult {
	t.Helper()
	r := Send(t, addr, env)
	if r.Stage != "" {
		t.Fatalf("send from %s to %v via %s: %v", env.From, env.To, addr, r)
	}
	return r
}

// ExpectRefused fails the test unless the send ended at stage with the
// reply want ("552 5.3.4", or with text: "554 5.7.1 Relay access denied").
func (r SendResult) ExpectRefused(t testing.TB, stage, want string) {
	t.Helper()
	if r.Stage != stage || r.Err == nil {
		t.Fatalf("want %q at %s, got %v", want, stage, r)
	}
	checkSMTPError(t, r.Err, want)
}

// checkSMTPError compares a go-smtp error with "CODE X.Y.Z [text]".
func checkSMTPError(t testing.TB, se *smtp.SMTPError, want string) {
	t.Helper()
	w := parseWant(t, want)
	got := fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	if got != w.code+" "+w.enhanced || (w.text != "" && se.Message != w.text) {
		t.Fatalf("reply: got %s %q, want %q", got, se.Message, want)
	}
}

type wantReply struct{ code, enhanced, text string }

// parseWant splits "554 5.7.1 Relay access denied" into its parts.
func parseWant(t testing.TB, want string) wantReply {
	t.Helper()
	parts := strings.SplitN(want, " ", 3)
	if len(parts) < 2 || len(parts[0]) != 3 {
		t.Fatalf("bad expected reply %q: want \"CODE X.Y.Z [text]\"", want)
	}
	w := wantReply{code: parts[0], enhanced: parts[1]}
	if len(parts) == 3 {
		w.text = parts[2]
	}
	return w
}

// Reply is one SMTP reply as received: every line verbatim.
type Reply struct {
	Lines []string // "250-2.0.0 first", "250 2.0.0 last"
}

// Code is the reply code, or 0.
func (r Reply) Code() int {
	if len(r.Lines) == 0 {
		return 0
	}
	return smtptest.ReplyCode(r.Lines[len(r.Lines)-1])
}

// Enhanced is the enhanced status code of the last line ("5.7.1"), or "".
func (r Reply) Enhanced() string {
	if len(r.Lines) == 0 {
		return ""
	}
	_, enh, _ := splitReplyLine(r.Lines[len(r.Lines)-1])
	return enh
}

// Text is the text of every line, code and enhanced code removed, joined
// by "\n" (what go-smtp's client reports).
func (r Reply) Text() string {
	texts := make([]string, len(r.Lines))
	for i, l := range r.Lines {
		_, _, texts[i] = splitReplyLine(l)
	}
	return strings.Join(texts, "\n")
}

// String is the reply as sent, lines joined by CRLF.
func (r Reply) String() string { return strings.Join(r.Lines, "\r\n") }

func splitReplyLine(l string) (code, enhanced, text string) {
	if len(l) < 3 {
		return l, "", ""
	}
	code, rest := l[:3], l[3:]
	if len(rest) > 0 {
		rest = rest[1:]
	}
	if f, tail, ok := strings.Cut(rest, " "); ok && isEnhanced(f) {
		return code, f, tail
	} else if !ok && isEnhanced(rest) {
		return code, rest, ""
	}
	return code, "", rest
}

func isEnhanced(s string) bool {
	p := strings.Split(s, ".")
	if len(p) != 3 || (p[0] != "2" && p[0] != "4" && p[0] != "5") {
		return false
	}
	for _, x := range p[1:] {
		if _, err := strconv.Atoi(x); err != nil || len(x) > 3 {
			return false
		}
	}
	return true
}

// Expect fails the test unless r is want ("250", "552 5.3.4" or
// "554 5.7.1 Relay access denied"; the text, when given, is compared with
// the last line's).
func (r Reply) Expect(t testing.TB, want string) {
	t.Helper()
	if !r.Is(want) {
		t.Fatalf("reply %q, want %q", r.String(), want)
	}
}

// Is reports whether r matches want, as Expect compares.
func (r Reply) Is(want string) bool {
	parts := strings.SplitN(want, " ", 3)
	if strconv.Itoa(r.Code()) != parts[0] {
		return false
	}
	if len(parts) > 1 && r.Enhanced() != parts[1] {
		return false
	}
	if len(parts) > 2 {
		_, _, text := splitReplyLine(r.Lines[len(r.Lines)-1])
		return text == parts[2]
	}
	return true
}

// Dialogue is a raw SMTP conversation: the test writes exact bytes and
// reads replies line by line with net/textproto, for pipelining, smuggling
// and STARTTLS tests.
type Dialogue struct {
	t        testing.TB
	conn     net.Conn
	br       *bufio.Reader
	tp       *textproto.Reader
	Greeting Reply
	Timeout  time.Duration // per reply; default waitTimeout
}

// Dial connects to addr and reads the greeting.
func Dial(t testing.TB, addr string) *Dialogue {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	d := &Dialogue{t: t, Timeout: waitTimeout}
	d.setConn(c)
	t.Cleanup(func() { d.conn.Close() })
	d.Greeting = d.Read()
	return d
}

func (d *Dialogue) setConn(c net.Conn) {
	d.conn = c
	d.br = bufio.NewReader(c)
	d.tp = textproto.NewReader(d.br)
}

// Send writes s exactly as given, in one write.
func (d *Dialogue) Send(s string) {
	d.t.Helper()
	d.conn.SetWriteDeadline(time.Now().Add(d.Timeout))
	if _, err := io.WriteString(d.conn, s); err != nil {
		d.t.Fatalf("write %q: %v", abbrev(s), err)
	}
}

// TryRead reads one reply (all its lines).
func (d *Dialogue) TryRead() (Reply, error) {
	d.conn.SetReadDeadline(time.Now().Add(d.Timeout))
	var r Reply
	for {
		l, err := d.tp.ReadLine()
		if err != nil {
			return r, err
		}
		r.Lines = append(r.Lines, l)
		if len(l) < 4 || l[3] != '-' {
			return r, nil
		}
	}
}

// Read reads one reply; it fails the test on error or timeout.
func (d *Dialogue) Read() Reply {
	d.t.Helper()
	r, err := d.TryRead()
	if err != nil {
		d.t.Fatalf("reading a reply: %v (partial %q)", err, r.Lines)
	}
	return r
}

// Cmd sends one command line (CRLF added) and reads its reply.
func (d *Dialogue) Cmd(line string) Reply {
	d.t.Helper()
	d.Send(line + "\r\n")
	return d.Read()
}

// Expect sends line and fails unless the reply matches want (Reply.Expect).
func (d *Dialogue) Expect(line, want string) Reply {
	d.t.Helper()
	r := d.Cmd(line)
	if !r.Is(want) {
		d.t.Fatalf("%s: reply %q, want %q", abbrev(line), r.String(), want)
	}
	return r
}

// EHLO sends EHLO and returns the extension keywords with their arguments.
func (d *Dialogue) EHLO(name string) map[string]string {
	d.t.Helper()
	r := d.Expect("EHLO "+name, "250")
	ext := map[string]string{}
	for _, l := range r.Lines[1:] {
		if len(l) < 5 {
			continue
		}
		kw, arg, _ := strings.Cut(l[4:], " ")
		ext[strings.ToUpper(kw)] = arg
	}
	return ext
}

// ReadUntilClosed reads replies until the server closes the connection
// (or Timeout passes, which fails the test).
func (d *Dialogue) ReadUntilClosed() []Reply {
	d.t.Helper()
	var rs []Reply
	for {
		r, err := d.TryRead()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				d.t.Fatalf("the server kept the connection open; replies so far: %q", rs)
			}
			return rs
		}
		rs = append(rs, r)
	}
}

// Buffered is the number of bytes received but not read yet.
func (d *Dialogue) Buffered() int { return d.br.Buffered() }

// StartTLS runs the TLS handshake on the connection (after the 220 to
// STARTTLS) and continues the dialogue over TLS. Any plaintext received
// but not read yet is an error: the server answered something it should
// have discarded.
func (d *Dialogue) StartTLS() *tls.ConnectionState {
	d.t.Helper()
	if n := d.Buffered(); n > 0 {
		b, _ := d.br.Peek(n)
		d.t.Fatalf("plaintext after the STARTTLS reply: %q", b)
	}
	tc := tls.Client(d.conn, &tls.Config{ServerName: Hostname, InsecureSkipVerify: true})
	ctx, cancel := context.WithTimeout(context.Background(), d.Timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		d.t.Fatalf("TLS handshake: %v", err)
	}
	d.setConn(tc)
	st := tc.ConnectionState()
	return &st
}

// Close closes the connection.
func (d *Dialogue) Close() { d.conn.Close() }

func abbrev(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// SwaksOptions is one swaks run.
type SwaksOptions struct {
	Server string // "127.0.0.1:port"
	To     string
	From   string
	Helo   string
	TLS    bool   // --tls: STARTTLS, required
	Body   string // --body
	Extra  []string
}

// SwaksResult is swaks's transcript (stdout and stderr) and exit code.
type SwaksResult struct {
	Args       []string
	Transcript string
	ExitCode   int
}

// RunSwaks runs swaks against opts.Server (RequireTool: skipped without
// swaks, failed under CI) and returns its transcript. It never fails the
// test on swaks's exit code: check ExitCode.
func RunSwaks(t testing.TB, o SwaksOptions) SwaksResult {
	t.Helper()
	bin := smtptest.RequireTool(t, "swaks")
	args := []string{"--server", o.Server, "--to", o.To, "--timeout", "60"}
	if o.From != "" {
		args = append(args, "--from", o.From)
	}
	if o.Helo != "" {
		args = append(args, "--helo", o.Helo)
	}
	if o.TLS {
		args = append(args, "--tls")
	}
	if o.Body != "" {
		args = append(args, "--body", o.Body)
	}
	args = append(args, o.Extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	res := SwaksResult{Args: args, Transcript: string(out)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
	default:
		t.Fatalf("running swaks %v: %v\n%s", args, err, out)
	}
	if ctx.Err() != nil {
		t.Fatalf("swaks %v did not finish within 2 minutes:\n%s", args, out)
	}
	return res
}

// Message builds a small message with CRLF lines and a unique marker in
// the body (register it with Moat.ForbidInLog).
type Message struct {
	From, To, Subject string
	Headers           []string // extra header lines, without CRLF
	BodyLines         []string // without CRLF
	Marker            string   // in the body only
	ID                string   // the Message-ID's local part
}

// NewMessage returns a message from -> to with a fresh body marker.
func NewMessage(from, to, subject string) *Message {
	return &Message{From: from, To: to, Subject: subject, Marker: "body-marker-" + randomHex(8), ID: randomHex(8)}
}

// Bytes renders the message: headers, a blank line, the body lines, the
// marker line.
func (m *Message) Bytes() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@client.example.net>\r\n", m.From, m.To, m.Subject, m.ID)
	b.WriteString("Date: Thu, 26 Nov 2026 04:26:37 +0000\r\n")
	for _, h := range m.Headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	for _, l := range m.BodyLines {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("secret " + m.Marker + "\r\n")
	return []byte(b.String())
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
