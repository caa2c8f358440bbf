package imaptest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// initVars sets ImapTest's predefined variables: $user, $username,
// $domain, $password (and $user2... for the other connections, all the
// same user), $mailbox and $mailbox_url.
func (r *runner) initVars() {
	v := r.m.vars
	user := r.t.User
	username, domain, ok := strings.Cut(user, "@")
	if !ok {
		domain, _, _ = net.SplitHostPort(r.t.Addr)
	}
	for i := 1; i <= r.s.Connections; i++ {
		suffix := ""
		if i > 1 {
			suffix = strconv.Itoa(i)
		}
		v["user"+suffix] = user
		v["username"+suffix] = username
		v["domain"+suffix] = domain
		v["password"+suffix] = r.t.Password
	}
	v["mailbox"] = r.t.Mailbox
	v["mailbox_url"] = url.PathEscape(r.t.Mailbox)
}

// abort unblocks every connection when the context ends.
func (r *runner) abort() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.abort()
	}
}

func (r *runner) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		_ = c.nc.Close()
	}
}

func (r *runner) dial() error {
	d := &net.Dialer{Timeout: r.t.Timeout}
	for i := 1; i <= r.s.Connections; i++ {
		nc, err := d.DialContext(r.ctx, "tcp", r.t.Addr)
		if err != nil {
			return fmt.Errorf("dial connection %d: %w", i, err)
		}
		if r.t.TLS != nil {
			cfg := r.t.TLS.Clone()
			if cfg.ServerName == "" {
				cfg.ServerName, _, _ = net.SplitHostPort(r.t.Addr)
			}
			tc := tls.Client(nc, cfg)
			hctx, cancel := context.WithTimeout(r.ctx, r.t.Timeout)
			err = tc.HandshakeContext(hctx)
			cancel()
			if err != nil {
				nc.Close()
				return fmt.Errorf("TLS handshake on connection %d: %w", i, err)
			}
			nc = tc
		}
		c := newConn(i, nc, r.t.Timeout, r.tr)
		c.mailbox = r.t.Mailbox
		r.mu.Lock()
		r.conns = append(r.conns, c)
		if r.ctx.Err() != nil {
			c.abort() // the cancel callback may already have run
		}
		r.mu.Unlock()
		g, err := c.readResponse()
		if err != nil {
			return r.ioFailure(c, 0, "", err)
		}
		c.greeting = g
		switch {
		case g.tag == "*" && len(g.args) > 0 && g.args[0].isAtom("OK"):
		case g.tag == "*" && len(g.args) > 0 && g.args[0].isAtom("PREAUTH"):
			c.preauth = true
		default:
			return &failure{reason: "malformed greeting", got: g.String()}
		}
	}
	return nil
}

// ioFailure turns a read/write error into a Fail (or the context error).
func (r *runner) ioFailure(c *conn, line int, cmd string, err error) error {
	if r.ctx.Err() != nil {
		return r.ctx.Err()
	}
	var ne net.Error
	reason := fmt.Sprintf("connection %d: %v", c.n, err)
	if errors.As(err, &ne) && ne.Timeout() {
		reason = fmt.Sprintf("connection %d: no response within %v", c.n, c.timeout)
	}
	return &failure{reason: reason, line: line, command: cmd}
}

// simple sends one set-up command and waits for its tagged reply; each
// untagged response also goes to onUntagged.
func (r *runner) simple(c *conn, text string, lit []byte, onUntagged func([]arg)) (*response, error) {
	tag := c.nextTag()
	line := tag + " " + text
	if lit != nil {
		line += fmt.Sprintf(" {%d}", len(lit))
	}
	if err := c.write([]byte(line + "\r\n")); err != nil {
		return nil, r.ioFailure(c, 0, text, err)
	}
	if err := c.flush(); err != nil {
		return nil, r.ioFailure(c, 0, text, err)
	}
	sentLit := lit == nil
	for i := 0; ; i++ {
		resp, err := c.readResponse()
		if err != nil {
			return nil, r.ioFailure(c, 0, text, err)
		}
		if resp.err != nil {
			return nil, &failure{reason: "malformed response: " + resp.err.Error(), command: text, got: resp.String()}
		}
		switch {
		case resp.tag == "+" && !sentLit:
			sentLit = true
			if err := c.write(append(append([]byte(nil), lit...), '\r', '\n')); err != nil {
				return nil, r.ioFailure(c, 0, text, err)
			}
			if err := c.flush(); err != nil {
				return nil, r.ioFailure(c, 0, text, err)
			}
		case resp.tag == "+":
			return nil, &failure{reason: "unexpected continuation request", command: text, got: resp.String()}
		case resp.tag == "*":
			r.track(c, resp.args)
			if onUntagged != nil {
				onUntagged(resp.args)
			}
		case resp.tag == tag:
			return resp, nil
		default:
			return nil, &failure{reason: "reply with unknown tag", command: text, got: resp.String()}
		}
	}
}

// must sends a set-up command that has to succeed.
func (r *runner) must(c *conn, text string, lit []byte) error {
	resp, err := r.simple(c, text, lit, nil)
	if err != nil {
		return err
	}
	if !resp.args[0].isAtom("OK") {
		return &failure{reason: "start-up command failed", command: text, expected: "OK", got: resp.String()}
	}
	return nil
}

// setup brings every connection to the script's start-up state.
func (r *runner) setup() error {
	s := r.s
	first := r.conns[0]
	if s.State == StateNonAuth {
		if err := r.capabilities(first); err != nil {
			return err
		}
		return r.checkCaps(first)
	}
	for _, c := range r.conns {
		if c.preauth {
			continue
		}
		if err := r.must(c, "LOGIN "+quote(r.t.User)+" "+quote(r.t.Password), nil); err != nil {
			return err
		}
	}
	if err := r.capabilities(first); err != nil {
		return err
	}
	if err := r.checkCaps(first); err != nil {
		return err
	}
	if err := r.deleteMailboxes(first); err != nil {
		return err
	}
	if s.State >= StateCreated && !strings.EqualFold(r.t.Mailbox, "INBOX") {
		if err := r.must(first, "CREATE "+quote(r.t.Mailbox), nil); err != nil {
			return err
		}
	}
	if s.State >= StateAppended {
		n := s.Messages
		if n == MessagesAll {
			n = len(r.t.Messages)
		}
		for range n {
			msg, err := r.nextMessage()
			if err != nil {
				return err
			}
			if err := r.must(first, "APPEND "+quote(r.t.Mailbox), msg); err != nil {
				return err
			}
		}
	}
	if s.State >= StateSelected {
		for _, c := range r.conns {
			c.exists = 0
			if err := r.must(c, "SELECT "+quote(r.t.Mailbox), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *runner) nextMessage() ([]byte, error) {
	if len(r.t.Messages) == 0 {
		return nil, errors.New("script appends messages but Target.Messages is empty")
	}
	m := r.t.Messages[r.msgIdx%len(r.t.Messages)]
	r.msgIdx++
	return m, nil
}

func (r *runner) capabilities(c *conn) error {
	c.caps = nil
	resp, err := r.simple(c, "CAPABILITY", nil, nil)
	if err != nil {
		return err
	}
	if !resp.args[0].isAtom("OK") {
		return &failure{reason: "CAPABILITY failed", command: "CAPABILITY", got: resp.String()}
	}
	return nil
}

func (r *runner) checkCaps(c *conn) error {
	for _, want := range r.s.Capabilities {
		if !containsFold(c.caps, want) {
			return &skipped{reason: "server lacks capability " + want}
		}
	}
	return nil
}

// deleteMailboxes removes what earlier runs left under $mailbox, like
// ImapTest's "auth" state: LIST and LSUB "$mailbox*", then DELETE and
// UNSUBSCRIBE what they name. Failures are ignored (\Noselect parents).
func (r *runner) deleteMailboxes(c *conn) error {
	pattern := quote(r.t.Mailbox + "*")
	var boxes, subs []string
	collect := func(into *[]string, name string) func([]arg) {
		return func(a []arg) {
			if len(a) >= 4 && a[0].isAtom(name) && a[1].kind == kindList {
				if mb, ok := a[3].astring(); ok {
					*into = append(*into, mb)
				}
			}
		}
	}
	if _, err := r.simple(c, `LIST "" `+pattern, nil, collect(&boxes, "LIST")); err != nil {
		return err
	}
	if _, err := r.simple(c, `LSUB "" `+pattern, nil, collect(&subs, "LSUB")); err != nil {
		return err
	}
	byNameDesc := func(l []string) {
		sort.Slice(l, func(i, j int) bool { return strings.ToLower(l[i]) > strings.ToLower(l[j]) })
	}
	byNameDesc(boxes)
	byNameDesc(subs)
	for _, b := range boxes {
		if _, err := r.simple(c, "DELETE "+quote(b), nil, nil); err != nil {
			return err
		}
	}
	for _, b := range subs {
		if _, err := r.simple(c, "UNSUBSCRIBE "+quote(b), nil, nil); err != nil {
			return err
		}
	}
	return nil
}

// track follows the state every untagged response may change.
func (r *runner) track(c *conn, args []arg) {
	if len(args) == 0 {
		return
	}
	if len(args) >= 2 && args[0].kind == kindAtom {
		if n, err := strconv.Atoi(args[0].str); err == nil {
			switch {
			case args[1].isAtom("EXISTS"):
				c.exists = n
			case args[1].isAtom("EXPUNGE") && c.exists > 0:
				c.exists--
			}
		}
	}
	switch {
	case args[0].isAtom("BYE"):
		c.seenBye = true
	case args[0].isAtom("CAPABILITY"):
		c.caps = c.caps[:0]
		for _, a := range args[1:] {
			if s, ok := a.astring(); ok {
				c.caps = append(c.caps, s)
			}
		}
	}
}

// logoutAll politely ends every open connection (after a Skip).
func (r *runner) logoutAll() {
	for _, c := range r.conns {
		if !c.closed {
			_, _ = r.simple(c, "LOGOUT", nil, nil)
			c.closed = true
		}
	}
}
