// Package smtptest holds SMTP peers for tests: a recording sink written by
// hand over net (every byte it reads is kept, and it sends exactly the replies
// a test scripts), a launcher for Postfix's smtp-sink, and RequireTool, which
// skips a test when an external tool is missing except under CI, where it
// fails it.
//
// The sink is deliberately not built on go-smtp's server: go-smtp unstuffs
// DATA, accepts some odd line endings and writes its own replies, and a test
// of a relay needs to see the bytes the relay really sent and to answer with
// the bytes the test chose.
package smtptest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Stages a sink can stall or hang up at, besides the command verbs ("EHLO",
// "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", ...).
const (
	// StageGreeting is the moment after the connection is accepted, before
	// the 220 greeting.
	StageGreeting = "GREETING"
	// StageEndOfData is the moment after the final CRLF.CRLF of DATA, before
	// the end-of-data reply (smtp-sink calls this command ".").
	StageEndOfData = "."
)

// DefaultExtensions is the EHLO extension list of a sink, in order: what a
// stock Postfix announces, minus the extensions the sink does not implement.
var DefaultExtensions = []string{"PIPELINING", "SIZE 52428800", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"}

// Default replies, Postfix-like. The end-of-data reply is
// "250 2.0.0 Ok: queued as <QueueID>".
const (
	DefaultHostname      = "sink.test"
	replyMailOK          = "250 2.1.0 Ok"
	replyRcptOK          = "250 2.1.5 Ok"
	replyDataGo          = "354 End data with <CR><LF>.<CR><LF>"
	replyOK              = "250 2.0.0 Ok"
	replyBye             = "221 2.0.0 Bye"
	replyNeedHelo        = "503 5.5.1 Error: send HELO/EHLO first"
	replyNestedMail      = "503 5.5.1 Error: nested MAIL command"
	replyNeedMail        = "503 5.5.1 Error: need MAIL command"
	replyNeedRcpt        = "503 5.5.1 Error: need RCPT command"
	replyMailSyntax      = "501 5.5.4 Syntax: MAIL FROM:<address>"
	replyRcptSyntax      = "501 5.5.4 Syntax: RCPT TO:<address>"
	replyHeloSyntax      = "501 5.5.4 Syntax: EHLO hostname"
	replyUnknown         = "502 5.5.2 Error: command not recognized"
	replyVrfy            = "502 5.5.1 VRFY command is disabled"
	replyBadSyntax       = "500 5.5.2 Error: bad syntax"
	replyLineTooLong     = "500 5.5.2 Error: line too long"
	replyRefusedCommands = "503 5.5.1 Error: command not accepted, the greeting refused this connection"
	// RefusedGreeting is the greeting RefuseAtGreeting sends.
	RefusedGreeting = "554 5.3.2 " + DefaultHostname + " Service currently unavailable"
)

const (
	defaultIdleTimeout = 2 * time.Minute
	maxCommandLine     = 64 << 10
)

// Option configures a Sink, at NewSink or later with Sink.Set.
type Option func(*config)

type config struct {
	hostname      string
	greeting      string // "" = "220 <hostname> ESMTP smtptest"
	extensions    []string
	replies       map[string]string // verb -> reply
	rcptReplies   map[string]string // lower-cased address -> reply
	dataReply     string
	dataReplyFunc func(Transaction) string
	dropInData    int // <0: off
	stall         map[string]bool
	hangup        map[string]bool
	idleTimeout   time.Duration
}

func defaultConfig() config {
	return config{
		hostname:    DefaultHostname,
		extensions:  append([]string(nil), DefaultExtensions...),
		replies:     map[string]string{},
		rcptReplies: map[string]string{},
		dropInData:  -1,
		stall:       map[string]bool{},
		hangup:      map[string]bool{},
		idleTimeout: defaultIdleTimeout,
	}
}

func (c config) clone() config {
	c.extensions = append([]string(nil), c.extensions...)
	c.replies = cloneMap(c.replies)
	c.rcptReplies = cloneMap(c.rcptReplies)
	c.stall = cloneMap(c.stall)
	c.hangup = cloneMap(c.hangup)
	return c
}

func cloneMap[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// WithHostname sets the name in the greeting and the EHLO/HELO replies.
func WithHostname(name string) Option { return func(c *config) { c.hostname = name } }

// WithGreeting replaces the whole greeting reply. A greeting whose code is
// not 220 refuses the connection: the sink then answers QUIT with 221 and
// every other command with 503.
func WithGreeting(reply string) Option { return func(c *config) { c.greeting = reply } }

// RefuseAtGreeting makes the sink greet with RefusedGreeting (554).
func RefuseAtGreeting() Option { return WithGreeting(RefusedGreeting) }

// WithExtensions replaces the EHLO extension list (DefaultExtensions).
func WithExtensions(exts ...string) Option {
	return func(c *config) { c.extensions = append([]string(nil), exts...) }
}

// WithoutExtensions drops extensions by keyword, e.g. "SMTPUTF8" or "SIZE".
func WithoutExtensions(keywords ...string) Option {
	return func(c *config) {
		kept := c.extensions[:0:0]
		for _, e := range c.extensions {
			kw, _, _ := strings.Cut(e, " ")
			drop := false
			for _, k := range keywords {
				if strings.EqualFold(kw, k) {
					drop = true
				}
			}
			if !drop {
				kept = append(kept, e)
			}
		}
		c.extensions = kept
	}
}

// WithReply sets the reply to one command verb ("HELO", "MAIL", "RCPT",
// "DATA", "RSET", "NOOP", "QUIT", "VRFY", ...), replacing the default.
// A DATA reply other than 354 keeps the sink out of DATA mode; a RCPT
// reply other than 2xx does not add the recipient. Replies may span lines
// ("250-first\r\n250 last"); a missing final CRLF is added.
func WithReply(verb, reply string) Option {
	return func(c *config) { c.replies[strings.ToUpper(verb)] = reply }
}

// WithRcptReply sets the reply to RCPT TO:<addr> (compared without regard
// to case), e.g. "550 5.1.1 <nobody@example.com>: Recipient address
// rejected: User unknown".
func WithRcptReply(addr, reply string) Option {
	return func(c *config) { c.rcptReplies[strings.ToLower(addr)] = reply }
}

// WithDataReply sets the end-of-data reply, multi-line replies included
// ("250-2.0.0 first line\r\n250-2.0.0 second\r\n250 2.0.0 Ok: queued as ABC123").
// A reply with a 2xx code means the transaction was delivered.
func WithDataReply(reply string) Option {
	return func(c *config) { c.dataReply, c.dataReplyFunc = reply, nil }
}

// WithDataReplyFunc computes the end-of-data reply from the transaction
// (its Data and Message are complete; Reply is not yet set).
func WithDataReplyFunc(f func(Transaction) string) Option {
	return func(c *config) { c.dataReplyFunc = f }
}

// WithDropInData closes the connection, without a reply, after n bytes of
// DATA have arrived (n = 0: right after the 354). n < 0 turns it off.
func WithDropInData(n int) Option { return func(c *config) { c.dropInData = n } }

// WithStall makes the sink never answer at a stage: a command verb,
// StageGreeting or StageEndOfData. It keeps reading (and recording) until
// the peer closes or the sink is closed.
func WithStall(stage string) Option {
	return func(c *config) { c.stall[strings.ToUpper(stage)] = true }
}

// WithHangupAt makes the sink close the connection without a reply at a
// stage: a command verb, StageGreeting or StageEndOfData.
func WithHangupAt(stage string) Option {
	return func(c *config) { c.hangup[strings.ToUpper(stage)] = true }
}

// WithoutFaults clears every stall, hang-up and DATA drop.
func WithoutFaults() Option {
	return func(c *config) {
		c.stall, c.hangup, c.dropInData = map[string]bool{}, map[string]bool{}, -1
	}
}

// WithIdleTimeout bounds the wait for each command line and each DATA read
// (default 2 minutes). Stalls are not bounded by it; they end when the
// peer or the sink closes.
func WithIdleTimeout(d time.Duration) Option { return func(c *config) { c.idleTimeout = d } }

// Transaction is one mail transaction that reached the end of DATA and got
// its end-of-data reply.
type Transaction struct {
	Seq      int      // 1-based, in the order the sink finished them
	ConnID   int      // the Conn it arrived on
	Helo     string   // the HELO/EHLO argument in force
	Mail     string   // the MAIL argument as sent: "FROM:<a@b> SIZE=123 BODY=8BITMIME"
	From     string   // the reverse-path inside <>
	RcptArgs []string // every RCPT argument as sent, accepted or not: "TO:<x@y> NOTIFY=NEVER"
	Rcpts    []string // the addresses the sink accepted, in order
	// Data is the raw DATA bytes exactly as received, from the byte after
	// the CRLF of the DATA command up to and including the final CRLF.CRLF
	// (for an empty message it is ".\r\n": that CRLF belongs to the command).
	Data []byte
	// Message is Data unstuffed (a dot at the start of a line, that is after
	// CRLF, removed once) without the final ".\r\n". Nothing else is
	// changed: bare CR, bare LF and NUL stay as they came.
	Message []byte
	Reply   string // the end-of-data reply sent, lines joined by CRLF, no final CRLF
	QueueID string // the id in the default reply
}

// Accepted reports whether the end-of-data reply was 2xx.
func (tx Transaction) Accepted() bool { return strings.HasPrefix(tx.Reply, "2") }

// Conn is what the sink saw on one connection.
type Conn struct {
	ID     int    // 1-based, in accept order
	Remote string // the peer's address
	// Raw is every byte read from the connection, in order, including bytes
	// read ahead but never processed.
	Raw          []byte
	Transactions int  // transactions finished on it
	Aborted      bool // DATA started but never reached CRLF.CRLF and a reply
	Closed       bool
}

// Sink is a recording SMTP server on 127.0.0.1. It serves until the test's
// cleanup (or Close). All methods are safe for concurrent use.
type Sink struct {
	t   testing.TB
	ln  net.Listener
	wg  sync.WaitGroup
	mu  sync.Mutex
	cfg config
	// guarded by mu
	conns   []*Conn
	txs     []Transaction
	live    map[net.Conn]struct{}
	closed  bool
	changed chan struct{} // closed and replaced at every change
}

// NewSink starts a sink on 127.0.0.1:0 and closes it at t.Cleanup.
func NewSink(t testing.TB, opts ...Option) *Sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: listen: %v", err)
	}
	s := &Sink{
		t:       t,
		ln:      ln,
		cfg:     defaultConfig(),
		live:    map[net.Conn]struct{}{},
		changed: make(chan struct{}),
	}
	for _, o := range opts {
		o(&s.cfg)
	}
	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(s.Close)
	return s
}

// Addr is the sink's "127.0.0.1:port".
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// Set changes the sink's behaviour for the commands that follow, on open
// connections too.
func (s *Sink) Set(opts ...Option) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cfg.clone()
	for _, o := range opts {
		o(&c)
	}
	s.cfg = c
}

// Close stops the listener, closes every connection (ending stalls) and
// waits for the sink's goroutines. It is safe to call more than once.
func (s *Sink) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.ln.Close()
		for c := range s.live {
			c.Close()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Connections is the number of connections accepted so far.
func (s *Sink) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Conns returns a copy of every connection's record, in accept order.
func (s *Sink) Conns() []Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Conn, len(s.conns))
	for i, c := range s.conns {
		out[i] = *c
		out[i].Raw = bytes.Clone(c.Raw)
	}
	return out
}

// Raw returns every byte received on every connection, in accept order.
func (s *Sink) Raw() []byte {
	var b []byte
	for _, c := range s.Conns() {
		b = append(b, c.Raw...)
	}
	return b
}

// Transactions returns a copy of every finished transaction, in order.
func (s *Sink) Transactions() []Transaction {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Transaction, len(s.txs))
	for i, tx := range s.txs {
		out[i] = tx.clone()
	}
	return out
}

// Accepted returns the finished transactions whose end-of-data reply was 2xx.
func (s *Sink) Accepted() []Transaction {
	var out []Transaction
	for _, tx := range s.Transactions() {
		if tx.Accepted() {
			out = append(out, tx)
		}
	}
	return out
}

func (tx Transaction) clone() Transaction {
	tx.RcptArgs = append([]string(nil), tx.RcptArgs...)
	tx.Rcpts = append([]string(nil), tx.Rcpts...)
	tx.Data = bytes.Clone(tx.Data)
	tx.Message = bytes.Clone(tx.Message)
	return tx
}

// Await waits until cond holds, re-checking it at every change in the sink
// (bytes received, connection accepted or closed, transaction finished). It returns false
// when timeout passes first. cond must not call Await.
func (s *Sink) Await(timeout time.Duration, cond func(*Sink) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond(s) {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return cond(s)
		}
	}
}

// WaitTransactions waits until at least n transactions have finished and
// returns them all; after timeout it fails the test (call it from the
// test's goroutine).
func (s *Sink) WaitTransactions(n int, timeout time.Duration) []Transaction {
	s.t.Helper()
	if !s.Await(timeout, func(s *Sink) bool { return len(s.Transactions()) >= n }) {
		s.t.Fatalf("smtptest: sink %s: want %d transactions within %v, have %d", s.Addr(), n, timeout, len(s.Transactions()))
	}
	return s.Transactions()
}

// WaitConnections waits until at least n connections were accepted; after
// timeout it fails the test.
func (s *Sink) WaitConnections(n int, timeout time.Duration) {
	s.t.Helper()
	if !s.Await(timeout, func(s *Sink) bool { return s.Connections() >= n }) {
		s.t.Fatalf("smtptest: sink %s: want %d connections within %v, have %d", s.Addr(), n, timeout, s.Connections())
	}
}

// WaitIdle waits until every accepted connection is closed; after timeout
// it fails the test.
func (s *Sink) WaitIdle(timeout time.Duration) {
	s.t.Helper()
	open := func(s *Sink) int {
		n := 0
		for _, c := range s.Conns() {
			if !c.Closed {
				n++
			}
		}
		return n
	}
	if !s.Await(timeout, func(s *Sink) bool { return open(s) == 0 }) {
		s.t.Fatalf("smtptest: sink %s: %d connections still open after %v", s.Addr(), open(s), timeout)
	}
}

func (s *Sink) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Sink) config() config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

func (s *Sink) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		rec := &Conn{ID: len(s.conns) + 1, Remote: c.RemoteAddr().String()}
		s.conns = append(s.conns, rec)
		s.live[c] = struct{}{}
		s.notifyLocked()
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			sess := &session{s: s, c: c, rec: rec, src: &recordingReader{s: s, c: c, rec: rec}}
			sess.r = bufio.NewReader(sess.src)
			sess.serve()
			c.Close()
			s.mu.Lock()
			delete(s.live, c)
			rec.Closed = true
			s.notifyLocked()
			s.mu.Unlock()
		}()
	}
}

// recordingReader keeps every byte read from the connection and applies
// the idle timeout to each read.
type recordingReader struct {
	s     *Sink
	c     net.Conn
	rec   *Conn
	noDDL bool // stalling: wait without a deadline
}

func (r *recordingReader) Read(p []byte) (int, error) {
	if r.noDDL {
		r.c.SetReadDeadline(time.Time{})
	} else {
		r.c.SetReadDeadline(time.Now().Add(r.s.config().idleTimeout))
	}
	n, err := r.c.Read(p)
	if n > 0 {
		r.s.mu.Lock()
		r.rec.Raw = append(r.rec.Raw, p[:n]...)
		r.s.notifyLocked()
		r.s.mu.Unlock()
	}
	return n, err
}

type session struct {
	s    *Sink
	c    net.Conn
	src  *recordingReader
	r    *bufio.Reader // reads src
	rec  *Conn
	helo string
	tx   *Transaction // nil outside a transaction
}

// errHangup ends a session without a reply.
var errHangup = errors.New("smtptest: hang up")

func (ss *session) serve() {
	cfg := ss.s.config()
	if ss.fault(cfg, StageGreeting) {
		return
	}
	greeting := cfg.greeting
	if greeting == "" {
		greeting = "220 " + cfg.hostname + " ESMTP smtptest"
	}
	if ss.reply(greeting) != nil {
		return
	}
	refused := !strings.HasPrefix(greeting, "220")
	for {
		line, err := ss.readLine()
		if errors.Is(err, errLineTooLong) {
			ss.reply(replyLineTooLong)
			return
		}
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		cfg = ss.s.config()
		if ss.fault(cfg, verb) {
			return
		}
		if refused && verb != "QUIT" {
			if ss.reply(replyRefusedCommands) != nil {
				return
			}
			continue
		}
		var r string
		switch verb {
		case "HELO", "EHLO":
			r = ss.hello(cfg, verb, arg)
		case "MAIL":
			r = ss.mail(cfg, arg)
		case "RCPT":
			r = ss.rcpt(cfg, arg)
		case "DATA":
			err = ss.data(cfg)
			if err != nil {
				return
			}
			continue
		case "RSET":
			ss.tx = nil
			r = pick(cfg.replies[verb], replyOK)
		case "NOOP":
			r = pick(cfg.replies[verb], replyOK)
		case "QUIT":
			ss.reply(pick(cfg.replies[verb], replyBye))
			return
		case "VRFY":
			r = pick(cfg.replies[verb], replyVrfy)
		case "":
			r = replyBadSyntax
		default:
			r = pick(cfg.replies[verb], replyUnknown)
		}
		if ss.reply(r) != nil {
			return
		}
	}
}

// fault applies a stall or hang-up at stage and reports whether the
// session must end.
func (ss *session) fault(cfg config, stage string) bool {
	switch {
	case cfg.hangup[stage]:
		return true
	case cfg.stall[stage]:
		ss.stall()
		return true
	}
	return false
}

// stall reads and records everything, without a deadline, until the peer
// or the sink closes.
func (ss *session) stall() {
	ss.src.noDDL = true
	io.Copy(io.Discard, ss.r)
}

func pick(override, def string) string {
	if override != "" {
		return override
	}
	return def
}

func (ss *session) hello(cfg config, verb, arg string) string {
	name := strings.TrimSpace(arg)
	if name == "" {
		return replyHeloSyntax
	}
	ss.helo = name
	ss.tx = nil
	if r := cfg.replies[verb]; r != "" {
		return r
	}
	if verb == "HELO" {
		return "250 " + cfg.hostname
	}
	lines := []string{cfg.hostname}
	lines = append(lines, cfg.extensions...)
	var b strings.Builder
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		b.WriteString("250" + sep + l)
		if i < len(lines)-1 {
			b.WriteString("\r\n")
		}
	}
	return b.String()
}

func (ss *session) mail(cfg config, arg string) string {
	if ss.helo == "" {
		return replyNeedHelo
	}
	if ss.tx != nil {
		return replyNestedMail
	}
	if len(arg) < 5 || !strings.EqualFold(arg[:5], "FROM:") {
		return replyMailSyntax
	}
	from, ok := angleAddr(arg[5:])
	if !ok {
		return replyMailSyntax
	}
	r := pick(cfg.replies["MAIL"], replyMailOK)
	if strings.HasPrefix(r, "2") {
		ss.tx = &Transaction{ConnID: ss.rec.ID, Helo: ss.helo, Mail: arg, From: from}
	}
	return r
}

func (ss *session) rcpt(cfg config, arg string) string {
	if ss.tx == nil {
		return replyNeedMail
	}
	if len(arg) < 3 || !strings.EqualFold(arg[:3], "TO:") {
		return replyRcptSyntax
	}
	to, ok := angleAddr(arg[3:])
	if !ok || to == "" {
		return replyRcptSyntax
	}
	ss.tx.RcptArgs = append(ss.tx.RcptArgs, arg)
	r := cfg.rcptReplies[strings.ToLower(to)]
	if r == "" {
		r = pick(cfg.replies["RCPT"], replyRcptOK)
	}
	if strings.HasPrefix(r, "2") {
		ss.tx.Rcpts = append(ss.tx.Rcpts, to)
	}
	return r
}

// angleAddr returns what is between the first "<" and the next ">" of s,
// after optional spaces.
func angleAddr(s string) (string, bool) {
	s = strings.TrimLeft(s, " ")
	if !strings.HasPrefix(s, "<") {
		return "", false
	}
	end := strings.IndexByte(s, '>')
	if end < 0 {
		return "", false
	}
	return s[1:end], true
}

var terminator = []byte("\r\n.\r\n")

func (ss *session) data(cfg config) error {
	if ss.tx == nil {
		return ss.reply(replyNeedMail)
	}
	if len(ss.tx.Rcpts) == 0 {
		return ss.reply(replyNeedRcpt)
	}
	r := pick(cfg.replies["DATA"], replyDataGo)
	if err := ss.reply(r); err != nil {
		return err
	}
	if !strings.HasPrefix(r, "354") {
		return nil
	}
	tx := ss.tx
	ss.tx = nil
	ss.setAborted(true)
	var raw []byte
	for {
		if d := ss.s.config().dropInData; d >= 0 && len(raw) >= d {
			return errHangup
		}
		b, err := ss.r.ReadByte()
		if err != nil {
			return err
		}
		raw = append(raw, b)
		if bytes.HasSuffix(raw, terminator) || string(raw) == ".\r\n" {
			break
		}
	}
	tx.Data = raw
	tx.Message = unstuff(raw[:len(raw)-3])
	cfg = ss.s.config()
	if ss.fault(cfg, StageEndOfData) {
		return errHangup
	}
	tx.QueueID = queueID()
	var reply string
	switch {
	case cfg.dataReplyFunc != nil:
		reply = cfg.dataReplyFunc(tx.clone())
	case cfg.dataReply != "":
		reply = cfg.dataReply
	default:
		reply = "250 2.0.0 Ok: queued as " + tx.QueueID
	}
	tx.Reply = strings.TrimRight(strings.ReplaceAll(strings.ReplaceAll(reply, "\r\n", "\n"), "\n", "\r\n"), "\r\n")
	ss.s.mu.Lock()
	tx.Seq = len(ss.s.txs) + 1
	ss.s.txs = append(ss.s.txs, *tx)
	ss.rec.Transactions++
	ss.rec.Aborted = false
	ss.s.notifyLocked()
	ss.s.mu.Unlock()
	return ss.reply(reply)
}

func (ss *session) setAborted(v bool) {
	ss.s.mu.Lock()
	ss.rec.Aborted = v
	ss.s.mu.Unlock()
}

// unstuff removes one leading dot from every line that starts after a CRLF
// (or at the start of b). Bare CR and bare LF do not start a line.
func unstuff(b []byte) []byte {
	out := make([]byte, 0, len(b))
	lineStart := true
	for i, c := range b {
		if lineStart && c == '.' {
			lineStart = false
			continue
		}
		out = append(out, c)
		lineStart = c == '\n' && i > 0 && b[i-1] == '\r'
	}
	return out
}

func queueID() string {
	var b [5]byte
	rand.Read(b[:])
	return strings.ToUpper(hex.EncodeToString(b[:]))
}

var errLineTooLong = errors.New("smtptest: command line too long")

// readLine reads one command line; the line ends at LF, and a CR before it
// is dropped.
func (ss *session) readLine() (string, error) {
	var line []byte
	for {
		frag, err := ss.r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > maxCommandLine {
			return "", errLineTooLong
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return "", err
		}
		break
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return string(line), nil
}

// reply writes r with every line ended by CRLF.
func (ss *session) reply(r string) error {
	r = strings.ReplaceAll(r, "\r\n", "\n")
	r = strings.TrimSuffix(r, "\n")
	out := strings.ReplaceAll(r, "\n", "\r\n") + "\r\n"
	ss.c.SetWriteDeadline(time.Now().Add(ss.s.config().idleTimeout))
	_, err := io.WriteString(ss.c, out)
	return err
}

// ReplyCode returns the 3-digit code at the start of a reply, or 0.
func ReplyCode(reply string) int {
	if len(reply) < 3 {
		return 0
	}
	n, err := strconv.Atoi(reply[:3])
	if err != nil {
		return 0
	}
	return n
}

// String describes the transaction for test failure messages.
func (tx Transaction) String() string {
	return fmt.Sprintf("tx#%d conn#%d MAIL %s RCPT %v reply %q data %q", tx.Seq, tx.ConnID, tx.Mail, tx.Rcpts, tx.Reply, tx.Data)
}
