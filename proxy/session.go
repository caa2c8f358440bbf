package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"moat/config"
	"moat/filters"
	"moat/metrics"
	"moat/policies"
)

// session is one SMTP connection, from greeting to close. Its methods run
// on the connection's goroutine in protocol order: a command is read,
// handled and answered before the next is read.
//
// The SMTP server side is written by hand rather than with go-smtp's
// server: that server always advertises CHUNKING, alters DATA (drops the
// dot in "\r\n.\n", misses the terminator in "\r\r\n.\r\n"), has no hook
// before the greeting, never refreshes its deadline during DATA, and its
// Shutdown leaves idle connections open. A gateway's wire strictness rests
// on exactly these points.
type session struct {
	srv *Server
	rt  *Runtime // the configuration the session started with
	l   *listener

	raw  net.Conn      // the TCP connection
	conn net.Conn      // raw, or the TLS connection over it
	dc   *deadlineConn // conn with the read deadlines of the current stage; br reads it
	br   *bufio.Reader
	bw   *bufio.Writer
	// first holds the byte that woke a session which had given its read
	// buffer back while idle (awaitCommand); br reads it before dc.
	first firstByte

	id      string
	start   time.Time
	remote  netip.AddrPort // the client: the TCP peer, or whom the PROXY header or XCLIENT names
	proxy   netip.AddrPort // the TCP peer when a PROXY header named another client
	trusted bool
	// xclientOK: the client is in smtp.trusted_proxies and may send XCLIENT.
	xclientOK bool
	admitted  netip.Addr // the address the connection limits counted in; close counts it out
	// tarpit: every reply waits this long (smtp.limits.tarpit); 0: none.
	tarpit   time.Duration
	tlsState *tls.ConnectionState
	helo     string
	esmtp    bool
	user     string
	ntx      int // transactions begun
	accepted int // transactions whose message was taken (2xx at end of data)
	errs     int // error replies to bad commands
	quit     bool
	reason   string // why the session ended, for the smtp.connection event and metrics: see end

	rdns *rdns // the client's confirmed reverse DNS name, looked up at connect

	mu   sync.Mutex // guards idle against Server.Shutdown
	idle bool       // waiting for a command outside a transaction

	tx *txn
}

// txn is one mail transaction, MAIL to end of data (or RSET).
type txn struct {
	n            int
	start        time.Time
	from         Address
	utf8         bool
	eightBit     bool
	declaredSize int64
	rcpts        []Address
	refused      []refusal
	dest         string // "local" or the upstream host:port
	route        *config.Route
	policy       *policies.Policy
	allowed      bool // on an allow list: checks are logged, not scored
	results      []filters.Result
	auth         filters.Auth       // SPF, DKIM and DMARC results, shared by the checks and Authentication-Results
	refusedBy    *policies.Decision // the decision that refused the last recipient, for the event
	up           *upstreamConn      // open during RCPT when the route verifies recipients
	bdat         *bdatState
	last         *Reply       // the last refusal, for the event of a transaction that never got a recipient
	limited      string       // the rate limit that refused a recipient, for the event's moat.reason
	rates        *reservation // the rate-limit tokens this transaction holds
}

type refusal struct {
	Address string `json:"address"`
	Reply   string `json:"reply"`
}

type bdatState struct {
	sp *spool
	c  *content
}

var errLineTooLong = errors.New("line too long")

func (s *session) cfg() *config.Config { return s.rt.Cfg }

// serve runs the session to its end.
func (s *session) serve(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the session's background lookups
	defer s.close()
	if !s.connect() {
		return
	}
	s.lookupRDNS(ctx)
	s.prefetch(ctx, "")
	if s.l.conf.ImplicitTLS {
		if !s.handshake() {
			s.end("tls_error")
			return
		}
	} else if !s.pregreet() {
		return
	}
	s.send(reply(220, "", "%s ESMTP moat", s.cfg().Hostname))
	s.flush()
	for !s.quit {
		if !s.waitCommand() {
			return
		}
		err := s.awaitCommand()
		var line string
		if err == nil {
			line, err = s.readLine()
		}
		s.setIdle(false)
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				s.bad(reply(500, "5.5.2", "Line too long"))
				s.flush()
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if s.srv.shutting.Load() && s.tx == nil {
					s.send(replyShutdown)
					s.end("shutdown")
				} else {
					s.send(replyTimeout)
					s.end("timeout")
				}
				s.flush()
			}
			s.end("client_error")
			s.abortTx("connection lost")
			return
		}
		s.handle(ctx, line)
		if s.br.Buffered() == 0 && !s.flush() {
			s.end("client_error")
			s.abortTx("connection lost")
			return
		}
	}
}

// waitCommand prepares to read the next command: it sets the deadline and,
// outside a transaction, lets a shutdown interrupt the wait.
func (s *session) waitCommand() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tx == nil && s.srv.shutting.Load() {
		s.send(replyShutdown)
		s.flush()
		s.end("shutdown")
		return false
	}
	s.idle = s.tx == nil
	s.dc.set(0, s.cfg().SMTP.Timeouts.Command.D())
	return true
}

func (s *session) setIdle(v bool) {
	s.mu.Lock()
	s.idle = v
	s.mu.Unlock()
}

// interruptIfIdle is called by a shutdown: a session waiting for a
// command outside a transaction stops waiting at once.
func (s *session) interruptIfIdle() {
	s.mu.Lock()
	if s.idle {
		s.dc.interrupt()
	}
	s.mu.Unlock()
}

// idleRelease is how long a session waits for a command with its 16 KiB
// read buffer; then it gives the buffer back to the pool until the client
// sends something. Connections that sit idle (a flood of them, slow
// senders between messages) then hold a few hundred bytes, not 16 KiB.
const idleRelease = time.Second

// awaitCommand waits up to idleRelease for the next command with the read
// buffer, then without it, until the command deadline waitCommand set.
// Commands that follow within idleRelease (all of a normal dialogue) cost
// nothing more; after a longer wait, one extra read of one byte.
func (s *session) awaitCommand() error {
	if s.br.Buffered() > 0 {
		return nil // pipelined: the next command is here
	}
	s.dc.setIdle(time.Duration(s.srv.idleRelease.Load()))
	_, err := s.br.Peek(1)
	s.dc.setIdle(0)
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() || s.dc.expired() {
		return err // data, a real error, or the command deadline itself
	}
	putReader(s.br)
	s.br = nil
	s.srv.idleFreed.Add(1)
	n, err := s.dc.Read(s.first.b[:])
	if n == 0 && err == nil {
		err = io.ErrNoProgress
	}
	s.first.n, s.first.r = n, s.dc
	s.br = newReader(&s.first)
	if n > 0 {
		return nil // the byte is in first; an error comes again on the next read
	}
	return err
}

// firstByte reads its byte, then r.
type firstByte struct {
	b [1]byte
	n int
	r io.Reader
}

func (f *firstByte) Read(p []byte) (int, error) {
	if f.n > 0 && len(p) > 0 {
		p[0] = f.b[0]
		f.n = 0
		return 1, nil
	}
	return f.r.Read(p)
}

// readLine reads one command line, without its line end. A bare LF ends a
// command line too, as in most MTAs; DATA is held to CRLF.
func (s *session) readLine() (string, error) {
	max := s.cfg().SMTP.MaxLineLength
	var buf []byte
	for {
		chunk, err := s.br.ReadSlice('\n')
		if len(buf)+len(chunk) > max {
			// Skip to the end of the line so the next command is read whole.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = s.br.ReadSlice('\n')
			}
			if err != nil {
				return "", err
			}
			return "", errLineTooLong
		}
		buf = append(buf, chunk...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
	}
	line := strings.TrimRight(string(buf), "\r\n")
	return line, nil
}

// send queues a reply; flush puts queued replies on the wire. Replies are
// flushed when the client has sent nothing more, so pipelined commands
// (RFC 2920) get their replies in one write.
func (s *session) send(r *Reply) {
	if s.tarpit > 0 && s.user == "" {
		s.srv.sleep(s.tarpit)
	}
	s.conn.SetWriteDeadline(time.Now().Add(s.cfg().SMTP.Timeouts.Command.D()))
	s.bw.WriteString(r.Wire())
}

func (s *session) flush() bool {
	return s.bw.Flush() == nil
}

// bad answers a command that was wrong; too many of them end the session.
func (s *session) bad(r *Reply) {
	s.send(r)
	s.errs++
	if max := s.cfg().SMTP.Limits.ErrorsPerSession; max > 0 && s.errs >= max {
		s.send(replyTooManyErrors)
		s.abortTx("too many errors")
		s.end("error_limit")
	}
}

func (s *session) handle(ctx context.Context, line string) {
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	switch verb {
	case "EHLO", "HELO":
		s.cmdHelo(verb, arg)
	case "STARTTLS":
		s.cmdStartTLS(arg)
	case "MAIL":
		s.cmdMail(ctx, arg)
	case "RCPT":
		s.cmdRcpt(ctx, arg)
	case "DATA":
		s.cmdData(ctx, arg)
	case "BDAT":
		s.cmdBdat(ctx, arg)
	case "RSET":
		if arg != "" {
			s.bad(reply(501, "5.5.4", "Syntax: RSET"))
			return
		}
		s.abortTx("client reset")
		s.send(reply(250, "2.0.0", "Ok"))
	case "NOOP":
		s.send(reply(250, "2.0.0", "Ok"))
	case "QUIT":
		s.send(reply(221, "2.0.0", "Bye"))
		s.abortTx("client quit")
		s.end("quit")
	case "HELP":
		s.send(reply(214, "2.0.0", "See RFC 5321"))
	case "VRFY", "EXPN":
		s.send(reply(502, "5.5.1", "%s command is disabled", verb))
	case "TURN", "ETRN", "ATRN":
		s.bad(reply(502, "5.5.1", "%s not implemented", verb))
	case "AUTH":
		s.cmdAuth(ctx, arg)
	case "XCLIENT":
		s.cmdXclient(ctx, arg)
	case "CONNECT", "GET", "POST", "HEAD", "PUT":
		// Somebody speaks HTTP to the SMTP port (a proxy abuse probe).
		s.send(reply(421, "4.7.0", "Not an HTTP server, closing connection"))
		s.abortTx("non-SMTP command")
		s.end("http")
	default:
		s.bad(reply(500, "5.5.2", "Command not recognized"))
	}
}

func (s *session) cmdHelo(verb, arg string) {
	arg = strings.TrimSpace(arg)
	if arg == "" || strings.ContainsAny(arg, " \t") && verb == "HELO" {
		s.bad(reply(501, "5.5.4", "Syntax: %s hostname", verb))
		return
	}
	name, _, _ := strings.Cut(arg, " ")
	if len(name) > 255 {
		s.bad(reply(501, "5.5.4", "HELO name too long"))
		return
	}
	s.abortTx("new HELO")
	s.helo = name
	s.esmtp = verb == "EHLO"
	if !s.esmtp {
		s.send(reply(250, "", "%s", s.cfg().Hostname))
		return
	}
	lines := []string{s.cfg().Hostname, "PIPELINING",
		"SIZE " + strconv.FormatInt(int64(s.cfg().SMTP.MaxMessageSize), 10),
		"8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING"}
	if s.tlsState == nil && s.srv.tlsConfig != nil {
		lines = append(lines, "STARTTLS")
	}
	if s.authOffered() {
		lines = append(lines, "AUTH PLAIN LOGIN")
	}
	if s.xclientOK {
		lines = append(lines, xclientCapability)
	}
	s.send(&Reply{Code: 250, Text: strings.Join(lines, "\n")})
}

func (s *session) cmdStartTLS(arg string) {
	switch {
	case arg != "":
		s.bad(reply(501, "5.5.4", "Syntax: STARTTLS"))
		return
	case s.tlsState != nil:
		s.bad(reply(503, "5.5.1", "TLS already active"))
		return
	case s.srv.tlsConfig == nil:
		s.bad(reply(454, "4.7.0", "TLS not available"))
		return
	case s.tx != nil:
		s.bad(reply(503, "5.5.1", "STARTTLS not allowed during a mail transaction"))
		return
	}
	// Whatever the client sent after STARTTLS, before the handshake, was
	// sent in clear and may have been injected (CVE-2011-0411): drop it.
	if n := s.br.Buffered(); n > 0 {
		s.br.Discard(n)
		s.srv.log.Warn("smtp.starttls_injection", sessionFields(s, fmt.Sprintf("discarded %d bytes sent after STARTTLS", n))...)
	}
	s.send(reply(220, "2.0.0", "Ready to start TLS"))
	if !s.flush() {
		s.end("client_error")
		return
	}
	if !s.handshake() {
		s.end("tls_error")
		return
	}
	// RFC 3207 section 4.2: forget everything learnt before TLS, a login
	// made in clear (trusted networks) included.
	s.helo, s.esmtp, s.user = "", false, ""
}

// handshake runs the server side of TLS over the raw connection.
func (s *session) handshake() bool {
	var under net.Conn = s.raw
	if n := s.br.Buffered(); n > 0 && s.proxy.IsValid() && s.tlsState == nil && s.l.conf.ImplicitTLS {
		// The ClientHello came in the segment of the PROXY header and is
		// in the reader already: the handshake reads it from there.
		b, _ := s.br.Peek(n)
		under = &prefixConn{Conn: s.raw, prefix: append([]byte(nil), b...)}
		s.br.Discard(n)
	}
	tc := tls.Server(under, s.srv.tlsConfig)
	tc.SetDeadline(time.Now().Add(s.cfg().SMTP.Timeouts.Command.D()))
	if err := tc.Handshake(); err != nil {
		s.srv.log.Debug("smtp.tls_failed", sessionFields(s, err.Error())...)
		return false
	}
	tc.SetDeadline(time.Time{})
	st := tc.ConnectionState()
	s.tlsState = &st
	s.conn = tc
	s.dc = &deadlineConn{Conn: tc}
	s.br.Reset(s.dc) // drops nothing: STARTTLS already discarded what was buffered
	s.bw.Reset(tc)
	return true
}

func (s *session) cmdMail(ctx context.Context, arg string) {
	switch {
	case s.helo == "":
		s.bad(reply(503, "5.5.1", "Send HELO/EHLO first"))
		return
	case s.tx != nil:
		s.bad(reply(503, "5.5.1", "Nested MAIL command"))
		return
	case s.l.conf.Mode == "submission" && s.user == "":
		s.bad(reply(530, "5.7.0", "Authentication required"))
		return
	}
	from, params, err := parseArg(arg, "FROM:", true)
	if err != nil {
		s.bad(reply(501, "5.1.7", "Bad sender address syntax"))
		return
	}
	t := &txn{from: from, start: time.Now()}
	for _, p := range params {
		switch p.Key {
		case "SIZE":
			n, err := strconv.ParseInt(p.Value, 10, 64)
			if err != nil || n < 0 {
				s.bad(reply(501, "5.5.4", "Bad SIZE parameter"))
				return
			}
			t.declaredSize = n
		case "BODY":
			switch strings.ToUpper(p.Value) {
			case "7BIT":
			case "8BITMIME":
				t.eightBit = true
			default:
				s.bad(reply(501, "5.5.4", "Unsupported BODY type"))
				return
			}
		case "SMTPUTF8":
			if p.HasValue || !s.esmtp {
				s.bad(reply(501, "5.5.4", "Bad SMTPUTF8 parameter"))
				return
			}
			t.utf8 = true
		case "AUTH":
			// RFC 4954 section 5: a server that offers AUTH takes the
			// parameter. moat passes on no identity it did not check
			// itself, so the value is dropped.
			if !s.authAvailable() {
				s.bad(reply(555, "5.5.4", "Unsupported parameter %s", p.Key))
				return
			}
		default:
			s.bad(reply(555, "5.5.4", "Unsupported parameter %s", p.Key))
			return
		}
	}
	if len(params) > 0 && !s.esmtp {
		s.bad(reply(555, "5.5.4", "Parameters need EHLO"))
		return
	}
	if from.NonASCII && !t.utf8 {
		s.send(replyNeedUTF8)
		return
	}
	from = from.canonical()
	t.from = from
	if max := int64(s.cfg().SMTP.MaxMessageSize); t.declaredSize > max {
		s.send(replyTooBig)
		return
	}
	s.ntx++
	t.n = s.ntx
	if !s.unfiltered() {
		res, r, why := s.srv.mailLimits.reserveMail(ctx, s.rt.Redis, s.remote.Addr(), from.String(), &s.cfg().SMTP.Limits)
		if r != nil {
			ev := s.newEvent(t)
			ev.outcome, ev.action, ev.reply, ev.reason = "failure", actionOf(r), r.String(), why
			s.srv.logTransaction(ev)
			s.send(r)
			return
		}
		t.rates = res
	}
	s.tx = t
	s.prefetch(ctx, from.String()) // lists of HELO names and sender domains
	s.send(reply(250, "2.1.0", "Ok"))
}

func (s *session) cmdRcpt(ctx context.Context, arg string) {
	t := s.tx
	if t == nil {
		s.bad(reply(503, "5.5.1", "Need MAIL command"))
		return
	}
	if t.bdat != nil {
		s.bad(reply(503, "5.5.1", "RCPT not allowed after BDAT"))
		return
	}
	addr, params, err := parseArg(arg, "TO:", false)
	if err != nil {
		// RFC 5321 section 4.5.1: <postmaster> without a domain is valid.
		if rest, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(arg)), "to:"); ok && strings.TrimSpace(rest) == "<postmaster>" {
			addr, params, err = Address{Local: "postmaster", Domain: s.cfg().Hostname}, nil, nil
		}
	}
	if err != nil {
		s.bad(replyBadRcpt)
		return
	}
	if len(params) > 0 {
		s.bad(reply(555, "5.5.4", "Unsupported parameter %s", params[0].Key))
		return
	}
	r := s.acceptRcpt(ctx, t, addr)
	if t.rates != nil {
		s.srv.mailLimits.rcptDone(ctx, s.rt.Redis, t.rates, r.Positive(), &s.cfg().SMTP.Limits)
	}
	if !r.Positive() {
		t.refused = append(t.refused, refusal{Address: addr.String(), Reply: r.String()})
		t.last = r
	}
	s.send(r)
}

// postmasterRoute takes mail for the gateway's own postmaster when its
// hostname is not a routed domain.
var postmasterRoute = &config.Route{Upstream: "local"}

// acceptRcpt decides one recipient: relay control, routing, policy,
// then (when the route asks) the upstream's own verdict.
func (s *session) acceptRcpt(ctx context.Context, t *txn, addr Address) *Reply {
	if len(t.rcpts) >= s.cfg().SMTP.MaxRecipients {
		return replyTooManyRcpts
	}
	if t.rates != nil {
		if r := s.srv.mailLimits.takeRcpt(ctx, s.rt.Redis, t.rates, &s.cfg().SMTP.Limits); r != nil {
			t.limited = "rate_limit: recipients_per_network"
			return r
		}
	}
	if addr.NonASCII && !t.utf8 {
		return replyNeedUTF8
	}
	addr = addr.canonical()
	domain := addr.ASCIIDomain()
	route, ok := s.cfg().Route(domain)
	if !ok && strings.EqualFold(addr.Local, "postmaster") && strings.EqualFold(domain, s.cfg().Hostname) {
		// RFC 5321 section 4.5.1: the postmaster must be reachable, also
		// as the bare <postmaster>. When the gateway's own name is not
		// routed, its postmaster's mail goes to the built-in store (read
		// it with a store user postmaster@HOSTNAME).
		route, ok = postmasterRoute, true
	}
	if !ok {
		// Relaying to the internet is not a feature yet, trusted or
		// authenticated: outbound relay comes later.
		return replyRelayDenied
	}
	if !route.Local() && !s.unfiltered() && senderRouted(addr.Local) {
		// user%other@ours, other!user@ours, "user@other"@ours: the
		// internal server trusts moat and may route on them, sending the
		// mail on to other (Postfix's allow_untrusted_routing = no).
		return replyRoutedAddress
	}
	dest := route.Upstream
	if t.dest != "" && dest != t.dest {
		return replyOtherDest
	}
	rcpt := addr.String()
	var pol *policies.Policy
	if !s.unfiltered() {
		pol = s.rt.Policies.For(rcpt, t.from.String(), s.remote.Addr())
		if t.policy != nil && pol != t.policy {
			return replyOtherPolicy
		}
		lr := pol.Lists(s.remote.Addr(), t.from.String(), rcpt)
		if lr.Denied {
			// For the event and the metrics: the policy's deny list refused.
			t.refusedBy = &policies.Decision{Policy: pol.Name(), Action: policies.Reject, Reason: lr.Reason,
				Reply: lr.Reply, Checks: map[string]map[string]any{}}
			return fromFilter(lr.Reply)
		}
		allowed := t.allowed || lr.Allowed
		if !allowed {
			r, d := s.checkRcpt(ctx, t, pol, addr)
			if r != nil {
				return r
			}
			// Greylisting comes last: it needs the score so far, and it
			// must answer before the upstream hears of this recipient.
			if r := s.greylistRcpt(ctx, t, pol, addr, d); r != nil {
				return r
			}
		}
		t.allowed = allowed
	}
	if route.Local() {
		if _, err := localDir(s.cfg().DataDir, addr); err != nil {
			return reply(550, "5.1.1", "Mailbox name not allowed")
		}
		if u := s.rt.Users; u != nil {
			known, domainHasUsers, err := u.Lookup(addr.String())
			switch {
			case err != nil:
				s.srv.log.Error("users.error", sessionFields(s, err.Error())...)
				return reply(451, "4.3.0", "Temporary lookup failure")
			case domainHasUsers && !known:
				return reply(550, "5.1.1", "Recipient address rejected: User unknown in local recipient table")
			}
		}
	} else {
		if r := s.verifyUpstream(ctx, t, route, addr); r != nil {
			return r
		}
	}
	t.dest, t.route, t.policy = dest, route, pol
	t.rcpts = append(t.rcpts, addr)
	return reply(250, "2.1.5", "Ok")
}

// checkRcpt runs the policy's checks up to the RCPT stage and returns a
// refusal, or nil to go on.
func (s *session) checkRcpt(ctx context.Context, t *txn, pol *policies.Policy, addr Address) (*Reply, policies.Decision) {
	ftx := s.filterTxn(t)
	ftx.Rcpt = append(ftx.Rcpt, addr.String())
	first := t.policy == nil
	results := runChecks(ctx, pol, ftx, func(st filters.Stage) bool {
		return st == filters.StageRcpt || (first && st < filters.StageRcpt)
	})
	d := pol.Decide(append(append([]filters.Result(nil), t.results...), results...), false)
	switch d.Action {
	case policies.Reject, policies.Tempfail:
		t.refusedBy = &d
		return decisionReply(d), d
	}
	t.results = append(t.results, results...)
	return nil, d
}

// checkTimeout bounds one check at one stage, whatever DNS does: RFC 7208
// section 4.6.4 asks SPF to allow at least 20 seconds in all.
const checkTimeout = 20 * time.Second

// runChecks runs the policy's checks at the stages want selects, in the
// policy's order, each under checkTimeout.
func runChecks(ctx context.Context, pol *policies.Policy, ftx *filters.Txn, want func(filters.Stage) bool) []filters.Result {
	var results []filters.Result
	for _, c := range pol.Checks() {
		for _, st := range c.Stages() {
			if !want(st) {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, checkTimeout)
			start := time.Now()
			r, ok := c.Run(cctx, st, ftx)
			cancel()
			if ok {
				results = append(results, r)
				metrics.CheckRun(c.Name(), r.Value, time.Since(start))
			} else {
				metrics.CheckRun(c.Name(), "", time.Since(start))
			}
		}
	}
	return results
}

// prefetch starts the lookups of the default policy's checks (DNSBL) in
// the background, so their answers are cached or in flight when the
// recipient's policy asks.
func (s *session) prefetch(ctx context.Context, from string) {
	if s.rt.DNS == nil || s.unfiltered() {
		return
	}
	ft := &filters.Txn{ClientIP: s.remote.Addr(), ClientPort: int(s.remote.Port()), Helo: s.helo, From: from, DNS: s.rt.DNS}
	for _, c := range s.rt.Policies.Default().Checks() {
		if p, ok := c.(filters.Prefetcher); ok {
			p.Prefetch(ctx, ft)
		}
	}
}

func decisionReply(d policies.Decision) *Reply {
	if d.Reply != nil {
		return fromFilter(d.Reply)
	}
	if d.Action == policies.Tempfail {
		return reply(451, "4.7.1", "%s", d.Reason)
	}
	return reply(550, "5.7.1", "%s", d.Reason)
}

// verifyUpstream makes sure the upstream can take this recipient: it
// speaks SMTPUTF8 when the transaction needs it, and, when the route
// verifies recipients, says yes to RCPT now.
func (s *session) verifyUpstream(ctx context.Context, t *txn, route *config.Route, addr Address) *Reply {
	if !route.VerifyRecipients && !t.utf8 {
		return nil
	}
	if t.up == nil {
		u, greet, err := s.srv.upstreamFor(ctx, route.Upstream, s.cfg())
		if err != nil {
			metrics.UpstreamError(route.Upstream, dialStage(greet, err))
			s.srv.log.Warn("smtp.upstream_error", sessionFields(s, err.Error())...)
			if greet != nil && greet.Code >= 400 {
				return &Reply{Code: 451, Enhanced: "4.4.1", Text: "Upstream unavailable, try again later"}
			}
			return replyUpstreamDown
		}
		if t.utf8 && !u.has("SMTPUTF8") {
			s.srv.pool.put(u)
			return replyUpstreamNoUTF
		}
		if !route.VerifyRecipients {
			s.srv.pool.put(u)
			return nil
		}
		mr, _, _, err := u.begin(ctx, s.cfg().SMTP.Timeouts.UpstreamCommand.D(), s.mailParams(t, t.declaredSize), nil, false)
		if err != nil {
			u.conn.Close()
			metrics.UpstreamError(route.Upstream, "command")
			return replyUpstreamDown
		}
		if mr.Code != 250 {
			u.reset(ctx, s.cfg().SMTP.Timeouts.UpstreamCommand.D())
			s.srv.pool.put(u)
			return mr
		}
		t.up = u
	}
	r, err := t.up.rcpt(ctx, s.cfg().SMTP.Timeouts.UpstreamCommand.D(), addr.String())
	if err != nil {
		metrics.UpstreamError(route.Upstream, "command")
		t.up.conn.Close()
		t.up = nil
		return replyUpstreamDown
	}
	if r.Code != 250 && r.Code != 251 {
		return r
	}
	return nil
}

func (s *session) mailParams(t *txn, size int64) mailParams {
	return mailParams{from: t.from.String(), size: size, utf8: t.utf8, eightBit: t.eightBit}
}

func (s *session) filterTxn(t *txn) *filters.Txn {
	ft := &filters.Txn{
		ClientIP:      s.remote.Addr(),
		ClientPort:    int(s.remote.Port()),
		Helo:          s.helo,
		TLS:           s.tlsState != nil,
		Authenticated: s.user != "",
		User:          s.user,
		From:          t.from.String(),
		DeclaredSize:  t.declaredSize,
		DNS:           s.rt.DNS,
		Auth:          &t.auth,
	}
	for _, r := range t.rcpts {
		ft.Rcpt = append(ft.Rcpt, r.String())
	}
	return ft
}

func (s *session) cmdData(ctx context.Context, arg string) {
	t := s.tx
	switch {
	case arg != "":
		s.bad(reply(501, "5.5.4", "Syntax: DATA"))
		return
	case t == nil:
		s.bad(reply(503, "5.5.1", "Need MAIL command"))
		return
	case t.bdat != nil:
		s.bad(reply(503, "5.5.1", "DATA not allowed after BDAT"))
		return
	case len(t.rcpts) == 0:
		// RFC 5321 section 3.3: no valid recipients.
		s.send(reply(554, "5.5.1", "No valid recipients"))
		return
	}
	s.send(reply(354, "", "End data with <CR><LF>.<CR><LF>"))
	if !s.flush() {
		s.end("client_error")
		return
	}
	sp := newSpool(s.srv.spoolDir, int(s.cfg().SMTP.SpoolMemory))
	defer sp.Close()
	c := s.newContent(sp)
	err := s.readBody(func(r *bufio.Reader) error { return readDotData(r, c) })
	if err != nil {
		s.lostInData(err)
		return
	}
	s.send(s.finish(ctx, t, sp, c))
}

// readBody reads a message body under the DATA time limits: each read
// within the command timeout, the whole within the data timeout.
func (s *session) readBody(read func(*bufio.Reader) error) error {
	to := s.cfg().SMTP.Timeouts
	s.dc.set(to.Command.D(), to.Data.D())
	return read(s.br)
}

// lostInData ends a session whose client vanished or stalled mid-message.
func (s *session) lostInData(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.send(replyTimeout)
		s.flush()
		s.end("timeout")
	}
	s.abortTx("connection lost during data")
	s.end("client_error")
}

func (s *session) newContent(sp *spool) *content {
	smtp := s.cfg().SMTP
	return newContent(sp, smtp.BareNewline == "normalize", int64(smtp.MaxMessageSize), int(smtp.MaxHeaderSize))
}

func (s *session) cmdBdat(ctx context.Context, arg string) {
	fields := strings.Fields(arg)
	var size int64 = -1
	last := false
	if len(fields) == 1 || len(fields) == 2 {
		if n, err := strconv.ParseInt(fields[0], 10, 64); err == nil && n >= 0 {
			size = n
		}
		if len(fields) == 2 {
			if strings.EqualFold(fields[1], "LAST") {
				last = true
			} else {
				size = -1
			}
		}
	}
	if size < 0 {
		// The chunk's length is unknown, so its bytes cannot be told
		// from commands: the session cannot go on safely.
		s.send(reply(501, "5.5.4", "Syntax: BDAT size [LAST]; closing connection"))
		s.abortTx("bad BDAT")
		s.end("protocol_error")
		return
	}
	t := s.tx
	if t == nil || len(t.rcpts) == 0 {
		if err := s.discard(size); err != nil {
			s.lostInData(err)
			return
		}
		if t == nil {
			s.bad(reply(503, "5.5.1", "Need MAIL command"))
		} else {
			s.send(reply(554, "5.5.1", "No valid recipients"))
		}
		return
	}
	if t.bdat == nil {
		sp := newSpool(s.srv.spoolDir, int(s.cfg().SMTP.SpoolMemory))
		t.bdat = &bdatState{sp: sp, c: s.newContent(sp)}
	}
	b := t.bdat
	err := s.readBody(func(r *bufio.Reader) error {
		_, err := io.CopyN(b.c, r, size)
		return err
	})
	if err != nil {
		s.lostInData(err)
		return
	}
	if !last {
		s.send(reply(250, "2.0.0", "%d octets received", size))
		return
	}
	b.c.finish()
	defer b.sp.Close()
	s.send(s.finish(ctx, t, b.sp, b.c))
}

// discard reads and drops n bytes of a chunk that has no transaction.
func (s *session) discard(n int64) error {
	return s.readBody(func(r *bufio.Reader) error {
		_, err := io.CopyN(io.Discard, r, n)
		return err
	})
}

// deadlineConn applies the read deadlines of the stage the session is in:
// an overall end (a command line must arrive within the command timeout, a
// whole message within the data timeout) and, for message bodies, an idle
// limit per read as well. The session's bufio.Reader reads through it and
// is never reset between stages, so pipelined bytes are never lost.
type deadlineConn struct {
	net.Conn
	mu          sync.Mutex
	idle        time.Duration // 0: none
	end         time.Time
	interrupted bool
}

// setIdle bounds each read of the current stage to idle (0: no bound),
// its end unchanged.
func (d *deadlineConn) setIdle(idle time.Duration) {
	d.mu.Lock()
	d.idle = idle
	d.mu.Unlock()
}

// expired reports whether the current stage's end has come (or a
// shutdown interrupted it).
func (d *deadlineConn) expired() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.interrupted || !time.Now().Before(d.end)
}

// set starts a stage: reads end within total, each within idle (if > 0).
func (d *deadlineConn) set(idle, total time.Duration) {
	d.mu.Lock()
	d.idle, d.end = idle, time.Now().Add(total)
	if d.interrupted {
		d.end = time.Now()
	}
	d.mu.Unlock()
}

// interrupt makes the current and every later read time out at once.
func (d *deadlineConn) interrupt() {
	d.mu.Lock()
	d.interrupted = true
	d.end = time.Now()
	d.Conn.SetReadDeadline(d.end)
	d.mu.Unlock()
}

func (d *deadlineConn) Read(p []byte) (int, error) {
	d.mu.Lock()
	t := d.end
	if d.idle > 0 {
		if i := time.Now().Add(d.idle); i.Before(t) {
			t = i
		}
	}
	d.Conn.SetReadDeadline(t)
	d.mu.Unlock()
	return d.Conn.Read(p)
}

// end ends the session after the current command. reason is the word
// of the smtp.connection event's moat.reason and, but for "http" (counted
// as refused), the outcome label of moat_smtp_connections_total: quit,
// timeout, error_limit, client_error (reset, EOF, write failure),
// tls_error, protocol_error, http, shutdown; and, counted as refused,
// limit (smtp.limits), pregreet (talked before the greeting),
// proxy_untrusted (no PROXY header allowed from there) and proxy_error
// (a trusted proxy sent no valid header). The first reason given stands.
func (s *session) end(reason string) {
	if reason == "client_error" && s.srv.shutting.Load() {
		reason = "shutdown" // most likely Shutdown's deadline closed the connection
	}
	if s.reason == "" {
		s.reason = reason
	}
	s.quit = true
}

func (s *session) close() {
	s.abortTx("connection closed")
	s.raw.Close()
	s.srv.forget(s)
	if s.reason == "" {
		s.reason = "client_error"
	}
	if s.admitted.IsValid() {
		s.srv.limits.release(s.admitted)
	}
	outcome := s.reason
	switch outcome {
	case "http", "limit", "pregreet", "proxy_untrusted", "proxy_error":
		outcome = "refused"
	}
	s.l.m.Closed(outcome)
	s.srv.logConnection(s)
	if s.br != nil {
		putReader(s.br)
	}
	putWriter(s.bw)
}

// abortTx ends the transaction in progress without a message, writing its
// event when it had begun.
func (s *session) abortTx(why string) {
	t := s.tx
	if t == nil {
		return
	}
	s.tx = nil
	// Nothing accepted: the rate-limit tokens go back.
	s.srv.mailLimits.release(context.Background(), s.rt.Redis, t.rates, false, &s.cfg().SMTP.Limits)
	if t.up != nil {
		u := t.up
		t.up = nil
		u.reset(context.Background(), s.cfg().SMTP.Timeouts.UpstreamCommand.D())
		s.srv.pool.put(u)
	}
	if t.bdat != nil {
		t.bdat.sp.Close()
	}
	ev := s.newEvent(t)
	if len(t.rcpts) == 0 && t.last != nil {
		ev.outcome, ev.action, ev.reply = "failure", actionOf(t.last), t.last.String()
		if d := t.refusedBy; d != nil {
			ev.checks, ev.score, ev.policy = d.Checks, d.Score, d.Policy
			why = d.Reason
		}
		if t.last == replyRecipientRate {
			why = t.limited
		}
	} else {
		if t.policy != nil && len(t.results) > 0 {
			d := t.policy.Decide(t.results, false)
			ev.checks, ev.score = d.Checks, d.Score
		}
		ev.outcome, ev.action = "unknown", "none"
	}
	ev.reason = why
	s.srv.logTransaction(ev)
}

func actionOf(r *Reply) string {
	switch {
	case r.Positive():
		return "accept"
	case r.Temporary():
		return "tempfail"
	}
	return "reject"
}
