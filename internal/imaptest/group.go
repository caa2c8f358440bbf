package imaptest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runGroups runs the script's command groups in order, then the LOGOUT
// ImapTest adds when the script has none.
func (r *runner) runGroups() error {
	groups := r.s.Groups
	for i := range groups {
		if err := r.runGroup(&groups[i], false); err != nil {
			return err
		}
		if err := r.afterGroup(&groups[i]); err != nil {
			return err
		}
	}
	if !r.s.hasLogout() {
		// ImapTest ends every script with LOGOUT on the first connection.
		g := &Group{Conn: 1, Commands: []Command{{Text: "logout", Reply: "ok",
			reply: []arg{{kind: kindAtom, str: "ok"}}, parts: []cmdPart{{text: "logout"}}}}}
		if err := r.runGroup(g, true); err != nil {
			return err
		}
	}
	return nil
}

func (r *runner) afterGroup(g *Group) error {
	for _, o := range g.Output {
		s, err := r.m.expandCommand(o)
		if err != nil {
			return &failure{reason: "!output: " + err.Error(), line: g.Line}
		}
		r.output = append(r.output, s)
	}
	if g.Sleep > 0 {
		t := time.NewTimer(g.Sleep)
		defer t.Stop()
		select {
		case <-r.ctx.Done():
			return r.ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// hasLogout reports whether the script logs out itself (ImapTest then adds
// no final LOGOUT).
func (s *Script) hasLogout() bool {
	for i := range s.Groups {
		g := &s.Groups[i]
		if g.haveBye() {
			return true
		}
		for _, c := range g.Commands {
			if strings.EqualFold(c.Text, "logout") {
				return true
			}
		}
	}
	return false
}

// groupRun is the state of the group being executed.
type groupRun struct {
	g           *Group
	c           *conn
	logout      bool     // the group logs out: extra untagged responses are fine
	tags        []string // wire tag per command
	sent        []string // command as sent, for reports
	pending     map[string]int
	found       []bool
	best        []bestMatch
	mismatches  int
	firstExtra  string
	ignoreExtra bool
}

type bestMatch struct {
	count int
	got   string
}

func (r *runner) runGroup(g *Group, synthetic bool) error {
	if g.Conn < 1 || g.Conn > len(r.conns) {
		return fmt.Errorf("group at line %d uses connection %d of %d", g.Line, g.Conn, len(r.conns))
	}
	c := r.conns[g.Conn-1]
	gr := &groupRun{
		g:           g,
		c:           c,
		logout:      synthetic,
		pending:     map[string]int{},
		found:       make([]bool, len(g.Untagged)),
		best:        make([]bestMatch, len(g.Untagged)),
		ignoreExtra: r.s.IgnoreExtraUntagged,
		tags:        make([]string, len(g.Commands)),
		sent:        make([]string, len(g.Commands)),
	}
	r.m.resetSeqmap(c.exists)
	if len(g.Commands) == 0 {
		// banner check: the group's patterns are matched against the greeting
		if err := r.untagged(gr, c.greeting); err != nil {
			return err
		}
		return r.finishGroup(gr)
	}
	if c.closed {
		return &failure{reason: fmt.Sprintf("connection %d is already closed", c.n), line: g.Commands[0].Line,
			command: g.Commands[0].Text}
	}
	for i := range g.Commands {
		if strings.EqualFold(g.Commands[i].Text, "logout") || g.haveBye() {
			gr.logout = true
		}
		if err := r.send(gr, i); err != nil {
			return err
		}
	}
	if err := c.flush(); err != nil {
		return r.ioFailure(c, g.Commands[0].Line, gr.sent[0], err)
	}
	for len(gr.pending) > 0 {
		resp, err := c.readResponse()
		if err != nil {
			return r.readFailed(gr, err)
		}
		if err := r.dispatch(gr, resp); err != nil {
			return err
		}
	}
	if gr.logout {
		c.closed = true
	}
	return r.finishGroup(gr)
}

// readFailed handles a read error in a group: a disconnection after an
// expected BYE ends the group if every open command accepts any reply.
func (r *runner) readFailed(gr *groupRun, err error) error {
	c := gr.c
	first := gr.g.Commands[0]
	if r.ctx.Err() == nil && gr.g.haveBye() && c.seenBye && isEOF(err) {
		c.closed = true
		for _, i := range gr.pending {
			cmd := gr.g.Commands[i]
			if len(cmd.reply) != 1 || cmd.reply[0].kind != kindAtom || cmd.reply[0].str != "" {
				return &failure{reason: `disconnected after BYE before the tagged reply; only "" allows that`,
					line: cmd.Line, command: gr.sent[i], expected: cmd.Reply}
			}
		}
		gr.pending = map[string]int{}
		return r.finishGroup(gr)
	}
	if isEOF(err) {
		return &failure{reason: fmt.Sprintf("connection %d: unexpected disconnection", c.n), line: first.Line,
			command: gr.sent[0]}
	}
	return r.ioFailure(c, first.Line, gr.sent[0], err)
}

// isEOF reports whether the server closed the connection.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)
}

// send writes command i of the group. Synchronising literals wait for the
// server's continuation request; responses read meanwhile are dispatched.
func (r *runner) send(gr *groupRun, i int) error {
	c := gr.c
	cmd := &gr.g.Commands[i]
	tag := c.nextTag()
	gr.tags[i] = tag
	gr.pending[tag] = i

	parts := make([]cmdPart, len(cmd.parts))
	copy(parts, cmd.parts)
	var shown strings.Builder
	for k := range parts {
		s, err := r.m.expandCommand(parts[k].text)
		if err != nil {
			return &failure{reason: err.Error(), line: cmd.Line, command: cmd.Text}
		}
		parts[k].text = s
	}
	if len(parts) == 1 {
		p, err := r.appendMessage(c, parts[0].text)
		if err != nil {
			return err
		}
		if p != nil {
			parts = p
		}
	}
	for _, p := range parts {
		shown.WriteString(p.text)
		if p.hasLit {
			fmt.Fprintf(&shown, "%s<%d bytes>", literalMarker(p), len(p.lit))
		}
	}
	gr.sent[i] = shown.String()
	r.noteCommand(c, parts[0].text)

	if err := c.write([]byte(tag + " ")); err != nil {
		return r.ioFailure(c, cmd.Line, gr.sent[i], err)
	}
	for _, p := range parts {
		if err := c.write([]byte(p.text)); err != nil {
			return r.ioFailure(c, cmd.Line, gr.sent[i], err)
		}
		if !p.hasLit {
			continue
		}
		if err := c.write([]byte(literalMarker(p) + "\r\n")); err != nil {
			return r.ioFailure(c, cmd.Line, gr.sent[i], err)
		}
		// Always a synchronising literal: it works on every server and
		// exercises the continuation round trip a proxy must relay.
		ok, err := r.waitContinuation(gr, tag)
		if err != nil || !ok {
			return err // !ok: the server already answered, the command is over
		}
		if err := c.write(p.lit); err != nil {
			return r.ioFailure(c, cmd.Line, gr.sent[i], err)
		}
	}
	if err := c.write([]byte("\r\n")); err != nil {
		return r.ioFailure(c, cmd.Line, gr.sent[i], err)
	}
	return nil
}

func literalMarker(p cmdPart) string {
	m := "{" + strconv.Itoa(len(p.lit)) + "}"
	if p.lit8 {
		m = "~" + m
	}
	return m
}

// appendMessage expands ImapTest's APPEND shorthands: a bare "append"
// appends the next message to the connection's mailbox ($mailbox or the
// last one it selected), and "append <mailbox> [flags] [date]" without a
// message body appends the next message there.
func (r *runner) appendMessage(c *conn, text string) ([]cmdPart, error) {
	var args string
	switch {
	case strings.EqualFold(text, "append"):
		args = quote(c.mailbox)
	case len(text) > 7 && strings.EqualFold(text[:7], "append ") && !appendHasBody(text[7:]):
		args = text[7:]
	default:
		return nil, nil
	}
	msg, err := r.nextMessage()
	if err != nil {
		return nil, err
	}
	return []cmdPart{{text: "APPEND " + args + " ", lit: msg, hasLit: true}, {}}, nil
}

// appendHasBody mirrors ImapTest: mailbox [(flags)] ["date"] followed by a
// literal or CATENATE means the script supplies the message.
func appendHasBody(s string) bool {
	p := &parser{b: []byte(s)}
	args, err := p.parseList(0)
	if err != nil || len(args) == 0 {
		return false
	}
	i := 0
	if i+1 < len(args) && args[i+1].kind == kindList {
		i++
	}
	if i+1 < len(args) && args[i+1].kind == kindString {
		i++
	}
	return i+1 < len(args) && (args[i+1].kind == kindLiteral || args[i+1].isAtom("catenate"))
}

// noteCommand updates connection state a command changes on sending.
func (r *runner) noteCommand(c *conn, text string) {
	name, rest, _ := strings.Cut(text, " ")
	switch strings.ToUpper(name) {
	case "SELECT", "EXAMINE":
		c.exists = 0
		p := &parser{b: []byte(rest)}
		if args, err := p.parseList(0); err == nil && len(args) > 0 {
			if mb, ok := args[0].astring(); ok {
				c.mailbox = mb
			}
		}
	}
}

// waitContinuation flushes and reads until the server asks for the
// literal. It returns false when the command's tagged reply came instead.
func (r *runner) waitContinuation(gr *groupRun, tag string) (bool, error) {
	c := gr.c
	i := gr.pending[tag]
	if err := c.flush(); err != nil {
		return false, r.ioFailure(c, gr.g.Commands[i].Line, gr.sent[i], err)
	}
	for {
		resp, err := c.readResponse()
		if err != nil {
			return false, r.readFailed(gr, err)
		}
		if resp.tag == "+" {
			return true, nil
		}
		if err := r.dispatch(gr, resp); err != nil {
			return false, err
		}
		if _, open := gr.pending[tag]; !open {
			return false, nil
		}
	}
}

// dispatch handles one response read during a group.
func (r *runner) dispatch(gr *groupRun, resp *response) error {
	first := gr.g.Commands[0]
	if resp.err != nil {
		return &failure{reason: "malformed response: " + resp.err.Error(), line: first.Line,
			command: gr.sent[0], got: resp.String()}
	}
	switch resp.tag {
	case "+":
		return &failure{reason: "unexpected continuation request", line: first.Line,
			command: gr.sent[0], got: resp.String()}
	case "*":
		return r.untagged(gr, resp)
	}
	i, ok := gr.pending[resp.tag]
	if !ok {
		return &failure{reason: "tagged reply for no pending command", line: first.Line,
			command: gr.sent[0], got: resp.String()}
	}
	delete(gr.pending, resp.tag)
	cmd := gr.g.Commands[i]
	r.m.vars["tag"] = resp.tag
	n := r.m.matchArgs(cmd.reply, resp.args, int(^uint(0)>>1), true)
	delete(r.m.vars, "tag")
	r.m.added = r.m.added[:0]
	if n != matchFull {
		want := cmd.Reply
		if want == "" {
			want = `"" (any)`
		}
		return &failure{reason: "unexpected tagged reply", line: cmd.Line, command: gr.sent[i],
			expected: r.m.expandForDisplay(want), got: resp.String()}
	}
	if resp.args[0].isAtom("OK") {
		switch strings.ToUpper(firstWord(gr.sent[i])) {
		case "CLOSE", "UNSELECT":
			gr.c.exists = 0
		}
	}
	return nil
}

// untagged matches one untagged response against the group's patterns
// (ImapTest's test_handle_untagged_match): a response may satisfy several
// "*" patterns, must satisfy no "!" pattern, and with
// ignore_extra_untagged: no must satisfy at least one.
func (r *runner) untagged(gr *groupRun, resp *response) error {
	args := resp.args
	r.track(gr.c, args)
	g := gr.g
	if len(g.Untagged) == 0 && (gr.ignoreExtra || gr.logout) {
		return nil
	}
	prefix := false
	if args[0].kind == kindAtom {
		switch strings.ToUpper(args[0].str) {
		case "OK", "NO", "BAD", "BYE":
			prefix = true
		}
	}
	tag := ""
	if len(gr.tags) > 0 {
		tag = gr.tags[0]
	}
	foundSome := false
	for i, ut := range g.Untagged {
		if gr.found[i] {
			continue
		}
		if tag != "" {
			r.m.vars["tag"] = tag
		}
		r.m.added = r.m.added[:0]
		n := r.m.matchArgs(ut.args, args, int(^uint(0)>>1), prefix)
		if tag != "" {
			delete(r.m.vars, "tag")
		}
		if n == matchFull {
			if ut.Existence == MustNotExist {
				return &failure{reason: "forbidden untagged reply", line: ut.Line, command: gr.firstSent(),
					expected: "no reply matching " + r.m.expandForDisplay("* "+ut.Text), got: resp.String()}
			}
			gr.found[i] = true
			foundSome = true
			r.m.added = r.m.added[:0]
			if g.Ordered {
				break
			}
			continue
		}
		if gr.best[i].count < n || gr.best[i].got == "" {
			gr.best[i] = bestMatch{count: n, got: resp.String()}
		}
		r.m.revert()
		if g.Ordered && ut.Existence == MustExist {
			break
		}
	}
	if !foundSome {
		gr.mismatches++
		if !gr.ignoreExtra && gr.firstExtra == "" {
			gr.firstExtra = resp.String()
		}
	}
	if len(args) >= 2 && args[1].isAtom("EXPUNGE") {
		if n, err := strconv.ParseUint(args[0].str, 10, 32); err == nil {
			r.m.expunge(uint32(n))
		}
	}
	return nil
}

func (gr *groupRun) firstSent() string {
	if len(gr.sent) > 0 {
		return gr.sent[0]
	}
	return "(greeting)"
}

func (r *runner) finishGroup(gr *groupRun) error {
	missing, first := 0, -1
	for i, ut := range gr.g.Untagged {
		if ut.Existence == MustExist && !gr.found[i] {
			missing++
			if first < 0 {
				first = i
			}
		}
	}
	if missing > 0 {
		ut := gr.g.Untagged[first]
		got := gr.best[first].got
		if got == "" {
			got = fmt.Sprintf("(no candidate among %d unmatched untagged replies)", gr.mismatches)
		} else {
			got = "best candidate: " + got
		}
		return &failure{reason: fmt.Sprintf("missing %d untagged replies (%d mismatches)", missing, gr.mismatches),
			line: ut.Line, command: gr.firstSent(), expected: r.m.expandForDisplay(ut.Existence.prefix() + ut.Text), got: got}
	}
	if gr.firstExtra != "" {
		return &failure{reason: fmt.Sprintf("%d unexpected untagged replies", gr.mismatches),
			line: gr.g.Line, command: gr.firstSent(), got: gr.firstExtra}
	}
	return nil
}
