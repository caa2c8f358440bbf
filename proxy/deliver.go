package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"moat/config"
	"moat/filters"
	"moat/metrics"
	"moat/policies"
	"moat/store/mailbox"
	"moat/store/maildir"
	"moat/store/quarantine"
)

// replyNoStorage is the reply when data_dir cannot keep a message (the
// store, the spool, the quarantine), whatever the cause (a full or
// read-only disk, a broken folder): 452 4.3.1 (RFC 3463: mail system
// full). The client retries and nothing was kept; the cause is logged.
var replyNoStorage = reply(452, "4.3.1", "Insufficient system storage")

// finish decides and delivers a fully received message and returns the
// reply for the end of data. The transaction ends here whatever happens.
func (s *session) finish(ctx context.Context, t *txn, sp *spool, c *content) *Reply {
	s.tx = nil
	ev := s.newEvent(t)
	ev.size = c.size
	ev.messageID = headerValue(c.header, "Message-Id")
	r := s.decideAndDeliver(ctx, t, sp, c, ev)
	if t.up != nil {
		s.srv.release(ctx, s.cfg(), t.up)
		t.up = nil
	}
	ev.reply = r.String()
	if ev.action == "" {
		ev.action = actionOf(r)
	}
	// The message's rate-limit tokens stay taken when it was accepted.
	s.srv.mailLimits.release(ctx, s.rt.Redis, t.rates, r.Positive(), &s.cfg().SMTP.Limits)
	if r.Positive() {
		ev.outcome = "success"
		s.accepted++
	} else {
		ev.outcome = "failure"
		if ev.action == "accept" || ev.action == "tag" {
			// Decided to accept, but the next hop refused or failed.
			ev.action = actionOf(r)
		}
	}
	s.srv.logTransaction(ev)
	return r
}

func (s *session) decideAndDeliver(ctx context.Context, t *txn, sp *spool, c *content, ev *txnEvent) *Reply {
	switch c.problem {
	case errTooBig:
		return replyTooBig
	case errHeaderTooBig:
		return replyHeaderTooBig
	case errBareNewline:
		return replyBareNewline
	case errNUL:
		return replyNUL
	}
	if c.ioErr != nil {
		s.srv.log.Error("smtp.spool_error", sessionFields(s, c.ioErr.Error())...)
		return replyNoStorage
	}
	metrics.MessageSize.Observe(float64(c.size))
	action := policies.Accept
	var tag *policies.TagSettings
	if t.policy != nil {
		ft := s.filterTxn(t)
		ft.Size = c.size
		ft.Message = func() io.Reader { return sp.Reader(0) }
		ft.Header = c.header
		results := append(t.results, runChecks(ctx, t.policy, ft, func(st filters.Stage) bool { return st == filters.StageData })...)
		if t.allowed {
			ev.checks = checksOnly(results)
			ev.reason = "allow-listed"
		} else {
			d := t.policy.Decide(results, true)
			ev.checks, ev.score, ev.would = d.Checks, d.Score, string(d.Would)
			if d.Reason != "" {
				ev.reason = d.Reason
			}
			action = d.Action
			switch d.Action {
			case policies.Reject, policies.Tempfail:
				ev.action = string(d.Action)
				return decisionReply(d)
			}
			if gr, refuse := s.greylistData(ctx, t, sp.Reader(0), int64(len(c.header)), d); gr.Check != "" {
				entry := map[string]any{"result": gr.Value}
				for k, v := range gr.Fields {
					entry[k] = v
				}
				ev.checks["greylist"] = entry
				if refuse {
					ev.action, ev.reason = string(policies.Tempfail), gr.Reason
					return replyGreylisted
				}
			}
			switch d.Action {
			case policies.Tag:
				ts := t.policy.Tag()
				tag = &ts
			}
		}
	}
	ev.action = string(action)
	prefix, header := s.outboundHeader(t, c, tag, ev.score)
	body := func() io.Reader {
		return &parts{bytes.NewReader(prefix), bytes.NewReader(header), sp.Reader(int64(len(c.header)))}
	}
	size := int64(len(prefix)+len(header)) + sp.Size() - int64(len(c.header))
	if action == policies.Quarantine {
		return s.quarantine(t, body(), ev)
	}
	start := time.Now()
	var r *Reply
	if t.route.Local() {
		r = s.deliverLocal(t, body, ev)
	} else {
		ev.upstream = t.dest
		r = s.deliverUpstream(ctx, t, body(), size)
	}
	metrics.UpstreamDelivered(t.dest, time.Since(start))
	return r
}

// outboundHeader returns the header lines moat adds on top (Received and
// tag headers) and the message's own header, rewritten when tagging
// changes the subject.
func (s *session) outboundHeader(t *txn, c *content, tag *policies.TagSettings, score float64) (prefix, header []byte) {
	var b bytes.Buffer
	b.WriteString(s.received(t))
	b.WriteString(authResults(s.cfg().Hostname, s.helo, t))
	header = stripAuthResults(c.header, s.cfg().Hostname)
	if tag != nil {
		if tag.Header {
			b.WriteString("X-Spam-Flag: YES\r\n")
			fmt.Fprintf(&b, "X-Spam-Score: %g\r\n", score)
		}
		if tag.SubjectPrefix != "" {
			header = prefixSubject(header, tag.SubjectPrefix)
		}
	}
	return b.Bytes(), header
}

// received builds the Received header (RFC 5321 section 4.4), with the TLS
// details in a comment as Postfix writes them.
func (s *session) received(t *txn) string {
	proto := "SMTP"
	if s.esmtp {
		proto = "ESMTP"
	}
	if t.utf8 {
		proto = "UTF8" + proto[1:]
		if !s.esmtp {
			proto = "UTF8SMTP"
		}
	}
	if s.tlsState != nil {
		proto += "S"
	}
	if s.user != "" {
		proto += "A"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Received: from %s (%s[%s])\r\n\tby %s (moat) with %s id %s", cleanHelo(s.helo), rdnsPart(s.clientName()),
		s.remote.Addr().Unmap(), s.cfg().Hostname, proto, s.txnID(t))
	if s.tlsState != nil {
		fmt.Fprintf(&b, "\r\n\t(using %s with cipher %s)", tlsVersionName(s.tlsState.Version), cipherName(s.tlsState.CipherSuite))
	}
	if len(t.rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", t.rcpts[0])
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", time.Now().Format("Mon, 02 Jan 2006 15:04:05 -0700 (MST)"))
	return b.String()
}

// rdnsPart is the TCP-info name of the Received header (RFC 5321 section
// 4.4): the confirmed reverse name and a space, or nothing.
func rdnsPart(name string) string {
	if name == "" {
		return ""
	}
	return cleanHelo(name) + " "
}

// cleanHelo makes the HELO name safe inside a header: it is the client's
// word, so anything but printable ASCII (and UTF-8) is replaced.
func cleanHelo(h string) string {
	var b strings.Builder
	for _, r := range h {
		switch {
		case r < 0x21 || r == 0x7f || r == '(' || r == ')' || r == ';' || r == '\\':
			b.WriteByte('_')
		default:
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "unknown"
	}
	return b.String()
}

func (s *session) txnID(t *txn) string { return fmt.Sprintf("%s-%d", s.id, t.n) }

// prefixSubject puts prefix in front of the Subject, adding a Subject
// header when there is none.
func prefixSubject(header []byte, prefix string) []byte {
	lines := bytes.SplitAfter(header, []byte("\r\n"))
	var out bytes.Buffer
	done := false
	for _, l := range lines {
		if !done && len(l) >= 8 && strings.EqualFold(string(l[:8]), "subject:") {
			rest := bytes.TrimLeft(l[8:], " \t")
			out.WriteString("Subject: " + prefix)
			out.Write(rest)
			done = true
			continue
		}
		if !done && (string(l) == "\r\n") {
			out.WriteString("Subject: " + strings.TrimSpace(prefix) + "\r\n")
			done = true
		}
		out.Write(l)
	}
	return out.Bytes()
}

// headerValue returns the first value of the named header field, unfolded.
func headerValue(header []byte, name string) string {
	lines := strings.Split(string(header), "\r\n")
	for i, l := range lines {
		if len(l) > len(name) && l[len(name)] == ':' && strings.EqualFold(l[:len(name)], name) {
			v := strings.TrimSpace(l[len(name)+1:])
			for _, cont := range lines[i+1:] {
				if cont == "" || (cont[0] != ' ' && cont[0] != '\t') {
					break
				}
				v += " " + strings.TrimSpace(cont)
			}
			if len(v) > 998 {
				v = v[:998]
			}
			return v
		}
	}
	return ""
}

// localDir is the Maildir++ root of a recipient in the built-in store;
// an error means the name cannot be a mailbox there.
func localDir(dataDir string, a Address) (maildir.Dir, error) {
	p, err := mailbox.UserDir(dataDir, localUser(a))
	return maildir.Dir(p), err
}

// localUser is the built-in store's name for a recipient: the local part
// unquoted, "@", the ASCII domain.
func localUser(a Address) string {
	local := a.Local
	if strings.HasPrefix(local, `"`) {
		local = strings.Trim(local, `"`)
	}
	return local + "@" + a.ASCIIDomain()
}

// deliverLocal writes one copy per recipient into the built-in store;
// all or none. Each copy is on disk before the client hears 250.
func (s *session) deliverLocal(t *txn, body func() io.Reader, ev *txnEvent) *Reply {
	ev.upstream = "local"
	mb := s.rt.Mailboxes
	if mb == nil {
		mb = mailbox.Open(s.cfg().DataDir)
	}
	var done []string
	for _, rc := range t.rcpts {
		path, err := mb.Deliver(localUser(rc), body())
		if err != nil {
			for _, p := range done {
				mb.Remove(p)
			}
			s.srv.log.Error("smtp.local_delivery_error", sessionFields(s, err.Error())...)
			return replyNoStorage
		}
		done = append(done, path)
	}
	return reply(250, "2.0.0", "Ok: queued as %s", s.txnID(t))
}

// quarantine keeps the message, as it would have gone out, with its
// envelope and verdict in the quarantine store. The client hears 250 only
// once the entry is on disk; when it cannot be kept, 452 4.3.1, and the
// client retries later (nothing is lost).
func (s *session) quarantine(t *txn, body io.Reader, ev *txnEvent) *Reply {
	ev.upstream = "quarantine"
	q := s.rt.Quarantine
	if q == nil {
		s.srv.log.Error("smtp.quarantine_error", sessionFields(s, "no quarantine store")...)
		return replyNoStorage
	}
	rcpts := make([]string, len(t.rcpts))
	for i, r := range t.rcpts {
		rcpts[i] = r.String()
	}
	id, err := q.Put(quarantine.Meta{
		Envelope: quarantine.Envelope{
			From:        t.from.String(),
			Rcpts:       rcpts,
			ClientIP:    s.remote.Addr().Unmap().String(),
			Helo:        s.helo,
			SessionID:   s.id,
			Transaction: s.txnID(t),
		},
		Verdict: quarantine.Verdict{
			Policy: ev.policy,
			Action: ev.action,
			Score:  ev.score,
			Reason: ev.reason,
			Checks: ev.checks,
		},
		MessageID: ev.messageID,
		Received:  time.Now(),
	}, body)
	if err != nil {
		s.srv.log.Error("smtp.quarantine_error", sessionFields(s, err.Error())...)
		return replyNoStorage
	}
	return reply(250, "2.0.0", "Ok: queued as %s", id)
}

// deliverUpstream hands the message to the route's upstream and returns
// the upstream's own reply, verbatim. Recipients are all-or-nothing: if
// the upstream refuses any of them, no data is sent and the client hears
// that refusal for the whole message, so nothing is half-delivered.
func (s *session) deliverUpstream(ctx context.Context, t *txn, msg io.Reader, size int64) *Reply {
	warn := func(err error) { s.srv.log.Warn("smtp.upstream_error", sessionFields(s, err.Error())...) }
	to := s.srv.upstreamTimeouts(s.cfg())
	if u := t.up; u != nil {
		// Verified recipients: MAIL and RCPT went out during the dialogue.
		t.up = nil
		r, err := u.data(ctx, to, msg)
		return s.srv.afterData(ctx, s.cfg(), u, r, err, warn)
	}
	rcpts := make([]string, len(t.rcpts))
	for i, r := range t.rcpts {
		rcpts[i] = r.String()
	}
	return s.srv.sendUpstream(ctx, s.cfg(), t.dest, s.mailParams(t, size), rcpts, msg, warn)
}

// sendUpstream hands a message to an upstream over a pooled connection
// and returns the upstream's own reply, verbatim, or 451 4.4.1 when it
// cannot be reached. Recipients are all-or-nothing: if the upstream
// refuses any of them, no data is sent and that refusal is the reply.
func (srv *Server) sendUpstream(ctx context.Context, c *config.Config, dest string, p mailParams, rcpts []string, msg io.Reader, warn func(error)) *Reply {
	to := srv.upstreamTimeouts(c)
	for attempt := 0; ; attempt++ {
		u, reused, greet, err := srv.pool.get(ctx, dest, c.Hostname, to)
		if err != nil {
			metrics.UpstreamError(dest, dialStage(greet, err))
			warn(err)
			return replyUpstreamDown
		}
		mr, rr, dr, err := u.begin(ctx, to.command, p, rcpts, true)
		if err != nil {
			u.conn.Close()
			if reused && attempt == 0 {
				continue // the upstream had closed the idle connection
			}
			metrics.UpstreamError(dest, "command")
			warn(err)
			return replyUpstreamDown
		}
		refusal := mr
		if mr.Code == 250 {
			refusal = nil
			for _, r := range rr {
				if r.Code != 250 && r.Code != 251 {
					refusal = r
					break
				}
			}
		}
		if refusal == nil && dr.Code != 354 {
			refusal = dr
		}
		if refusal != nil {
			if dr != nil && dr.Code == 354 {
				u.abortData()
			} else {
				srv.release(ctx, c, u)
			}
			return refusal
		}
		r, err := u.sendData(ctx, to, msg)
		return srv.afterData(ctx, c, u, r, err, warn)
	}
}

// afterData returns the upstream's end-of-data reply, or 451 4.4.1 when
// the upstream failed, and puts the connection back when it is sound.
func (srv *Server) afterData(ctx context.Context, c *config.Config, u *upstreamConn, r *Reply, err error, warn func(error)) *Reply {
	if err != nil {
		u.conn.Close()
		metrics.UpstreamError(u.addr, "data")
		warn(err)
		return replyUpstreamDown
	}
	srv.release(ctx, c, u)
	return r
}

// dialStage is the stage label of moat_upstream_errors_total for a
// failure to get a connection: refused when the upstream answered with a
// refusal (greet), connect when it could not be reached or did not greet,
// command when EHLO or HELO failed.
func dialStage(greet *Reply, err error) string {
	var ue *upstreamError
	switch {
	case greet != nil:
		return "refused"
	case errors.As(err, &ue) && ue.op != "connect" && ue.op != "greeting":
		return "command"
	}
	return "connect"
}

// release ends the connection's transaction and returns it to the pool.
func (srv *Server) release(ctx context.Context, c *config.Config, u *upstreamConn) {
	u.reset(ctx, c.SMTP.Timeouts.UpstreamCommand.D())
	srv.pool.put(u)
}

func checksOnly(results []filters.Result) map[string]map[string]any {
	m := map[string]map[string]any{}
	for _, r := range results {
		e := map[string]any{"result": r.Value}
		for k, v := range r.Fields {
			e[k] = v
		}
		m[r.Check] = e
	}
	return m
}
