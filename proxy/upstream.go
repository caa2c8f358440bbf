package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// upstreamConn is one SMTP client connection to an internal server.
//
// Written by hand rather than with go-smtp's client for three reasons the
// gateway cannot do without: replies must be relayed to the sender
// verbatim (go-smtp's client reformats multi-line replies and strips
// enhanced codes), every step must obey a context, and MAIL/RCPT are
// pipelined (RFC 2920) to save round trips.
type upstreamConn struct {
	addr    string
	conn    net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	ext     map[string]string // EHLO keywords (upper case) and their parameters
	created time.Time
	used    time.Time
	dirty   bool // a transaction was started and not finished
	broken  bool // a network error happened: never reuse
}

// upstreamError is a network-level failure talking to an upstream: the
// client gets 451 4.4.1 and the message stays with the sender.
type upstreamError struct {
	addr string
	op   string
	err  error
}

func (e *upstreamError) Error() string {
	return fmt.Sprintf("upstream %s: %s: %v", e.addr, e.op, e.err)
}

func (e *upstreamError) Unwrap() error { return e.err }

// upstreamTimeouts bound each step of talking to an upstream.
type upstreamTimeouts struct {
	connect, command, data time.Duration
}

func dialUpstream(ctx context.Context, addr, helo string, to upstreamTimeouts) (*upstreamConn, *Reply, error) {
	dctx, cancel := context.WithTimeout(ctx, to.connect)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, nil, &upstreamError{addr, "connect", err}
	}
	u := &upstreamConn{addr: addr, conn: conn, br: bufio.NewReaderSize(conn, 4096), bw: bufio.NewWriterSize(conn, 32*1024),
		created: time.Now()}
	u.used = u.created
	greet, err := u.read(ctx, to.connect)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if greet.Code != 220 {
		u.quit()
		return nil, greet, &upstreamError{addr, "greeting", fmt.Errorf("%s", greet)}
	}
	r, err := u.cmd(ctx, to.command, "EHLO "+helo)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	u.ext = map[string]string{}
	if r.Code == 250 {
		for _, l := range r.Lines[1:] {
			if len(l) < 4 {
				continue
			}
			k, v, _ := strings.Cut(l[4:], " ")
			u.ext[strings.ToUpper(k)] = v
		}
	} else {
		if r, err = u.cmd(ctx, to.command, "HELO "+helo); err != nil {
			conn.Close()
			return nil, nil, err
		}
		if r.Code != 250 {
			u.quit()
			return nil, r, &upstreamError{addr, "HELO", fmt.Errorf("%s", r)}
		}
	}
	return u, nil, nil
}

func (u *upstreamConn) has(ext string) bool {
	_, ok := u.ext[ext]
	return ok
}

// deadline arms the connection for one step: the step's timeout, cut
// short by the context's deadline or cancellation.
func (u *upstreamConn) deadline(ctx context.Context, d time.Duration) (stop func() bool) {
	t := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(t) {
		t = dl
	}
	u.conn.SetDeadline(t)
	return context.AfterFunc(ctx, func() { u.conn.SetDeadline(time.Now()) })
}

func (u *upstreamConn) fail(op string, err error) error {
	u.broken = true
	return &upstreamError{u.addr, op, err}
}

// cmd sends one command line and reads its reply.
func (u *upstreamConn) cmd(ctx context.Context, d time.Duration, line string) (*Reply, error) {
	u.used = time.Now()
	stop := u.deadline(ctx, d)
	defer stop()
	u.bw.WriteString(line)
	u.bw.WriteString("\r\n")
	if err := u.bw.Flush(); err != nil {
		return nil, u.fail(verbOf(line), err)
	}
	return u.readReply(verbOf(line))
}

func verbOf(line string) string {
	v, _, _ := strings.Cut(line, " ")
	return v
}

// read reads one reply under its own deadline.
func (u *upstreamConn) read(ctx context.Context, d time.Duration) (*Reply, error) {
	stop := u.deadline(ctx, d)
	defer stop()
	return u.readReply("greeting")
}

// readReply reads one possibly multi-line reply, keeping its lines as
// they came for verbatim relaying.
func (u *upstreamConn) readReply(op string) (*Reply, error) {
	r := &Reply{}
	var text []string
	for n := 0; ; n++ {
		if n == 100 {
			return nil, u.fail(op, errors.New("reply has over 100 lines"))
		}
		line, err := u.br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, u.fail(op, err)
		}
		if len(line) > 2048 {
			return nil, u.fail(op, errors.New("reply line too long"))
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return nil, u.fail(op, fmt.Errorf("malformed reply %q", line))
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 200 || code > 599 || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
			return nil, u.fail(op, fmt.Errorf("malformed reply %q", line))
		}
		if n > 0 && code != r.Code {
			return nil, u.fail(op, fmt.Errorf("reply code changed within a reply: %q", line))
		}
		r.Code = code
		r.Lines = append(r.Lines, line)
		t := ""
		if len(line) > 4 {
			t = line[4:]
		}
		if len(line) == 3 || line[3] == ' ' {
			enh, rest := splitEnhanced(t)
			r.Enhanced = enh
			text = append(text, rest)
			r.Text = strings.Join(text, "\n")
			return r, nil
		}
		_, rest := splitEnhanced(t)
		text = append(text, rest)
	}
}

// splitEnhanced splits "5.1.1 text" into the enhanced code and the text.
func splitEnhanced(s string) (string, string) {
	code, rest, _ := strings.Cut(s, " ")
	parts := strings.Split(code, ".")
	if len(parts) != 3 || (code[0] != '2' && code[0] != '4' && code[0] != '5') {
		return "", s
	}
	for _, p := range parts {
		if _, err := strconv.Atoi(p); err != nil || len(p) == 0 || len(p) > 3 {
			return "", s
		}
	}
	return code, rest
}

// mailParams are what MAIL FROM carries upstream.
type mailParams struct {
	from     string
	size     int64
	utf8     bool
	eightBit bool
}

func (u *upstreamConn) mailLine(p mailParams) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<")
	b.WriteString(p.from)
	b.WriteByte('>')
	if p.size > 0 && u.has("SIZE") {
		fmt.Fprintf(&b, " SIZE=%d", p.size)
	}
	if p.eightBit && u.has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME")
	}
	if p.utf8 {
		b.WriteString(" SMTPUTF8")
	}
	return b.String()
}

// begin sends MAIL, the RCPTs and, when withData, DATA, pipelined when
// the upstream allows (RFC 2920: DATA may end a group), and returns their
// replies: rr[i] for the i-th recipient, dr for DATA (nil when not sent).
// Without pipelining, DATA is sent only when MAIL and every RCPT got 2xx.
// A network failure returns an error; refusals are replies. When dr is
// 354 the caller must send the message, or abort; see abortData.
func (u *upstreamConn) begin(ctx context.Context, d time.Duration, p mailParams, rcpts []string, withData bool) (mr *Reply, rr []*Reply, dr *Reply, err error) {
	u.dirty = true
	u.used = time.Now()
	if !u.has("PIPELINING") {
		if mr, err = u.cmd(ctx, d, u.mailLine(p)); err != nil || mr.Code != 250 {
			return mr, nil, nil, err
		}
		ok := true
		for _, rc := range rcpts {
			r, err := u.cmd(ctx, d, "RCPT TO:<"+rc+">")
			if err != nil {
				return mr, nil, nil, err
			}
			ok = ok && (r.Code == 250 || r.Code == 251)
			rr = append(rr, r)
		}
		if withData && ok {
			dr, err = u.cmd(ctx, d, "DATA")
		}
		return mr, rr, dr, err
	}
	stop := u.deadline(ctx, d)
	defer stop()
	u.bw.WriteString(u.mailLine(p))
	u.bw.WriteString("\r\n")
	for _, rc := range rcpts {
		u.bw.WriteString("RCPT TO:<" + rc + ">\r\n")
	}
	if withData {
		u.bw.WriteString("DATA\r\n")
	}
	if err := u.bw.Flush(); err != nil {
		return nil, nil, nil, u.fail("MAIL", err)
	}
	if mr, err = u.readReply("MAIL"); err != nil {
		return nil, nil, nil, err
	}
	rr = make([]*Reply, len(rcpts))
	for i := range rcpts {
		if rr[i], err = u.readReply("RCPT"); err != nil {
			return mr, nil, nil, err
		}
	}
	if withData {
		if dr, err = u.readReply("DATA"); err != nil {
			return mr, rr, nil, err
		}
	}
	return mr, rr, dr, nil
}

// abortData abandons a transaction whose DATA got 354 when the message
// must not be sent after all: only closing the connection does that.
func (u *upstreamConn) abortData() {
	u.broken = true
	u.conn.Close()
}

// rcpt sends one RCPT (recipient verification during the client's RCPT).
func (u *upstreamConn) rcpt(ctx context.Context, d time.Duration, rc string) (*Reply, error) {
	return u.cmd(ctx, d, "RCPT TO:<"+rc+">")
}

// data sends DATA, the message dot-stuffed, and the final dot, and returns
// the upstream's reply to the DATA command when it is not 354, or else
// its reply to the end of data.
func (u *upstreamConn) data(ctx context.Context, to upstreamTimeouts, msg io.Reader) (*Reply, error) {
	r, err := u.cmd(ctx, to.command, "DATA")
	if err != nil || r.Code != 354 {
		return r, err
	}
	return u.sendData(ctx, to, msg)
}

// sendData sends the message, dot-stuffed, and the final dot after a 354,
// and returns the upstream's reply to the end of data.
func (u *upstreamConn) sendData(ctx context.Context, to upstreamTimeouts, msg io.Reader) (*Reply, error) {
	stop := u.deadline(ctx, to.data)
	defer stop()
	dw := &dotWriter{w: u.bw, atLineStart: true}
	if _, err := io.Copy(dw, msg); err != nil {
		var ue *upstreamError
		if errors.As(err, &ue) {
			return nil, err
		}
		// Reading the spool failed: the message must not be completed.
		u.broken = true
		return nil, fmt.Errorf("reading spooled message: %w", err)
	}
	if err := dw.close(); err != nil {
		return nil, u.fail("DATA", err)
	}
	if err := u.bw.Flush(); err != nil {
		return nil, u.fail("DATA", err)
	}
	r, err := u.readReply("end of data")
	if err == nil {
		u.dirty = false
	}
	return r, err
}

// reset ends an unfinished transaction so the connection can be reused.
func (u *upstreamConn) reset(ctx context.Context, d time.Duration) {
	if u.broken || !u.dirty {
		return
	}
	r, err := u.cmd(ctx, d, "RSET")
	if err != nil || r.Code != 250 {
		u.broken = true
		return
	}
	u.dirty = false
}

// quit says goodbye without waiting long and closes the connection.
func (u *upstreamConn) quit() {
	if !u.broken {
		u.conn.SetDeadline(time.Now().Add(2 * time.Second))
		u.bw.WriteString("QUIT\r\n")
		if u.bw.Flush() == nil {
			u.br.ReadString('\n')
		}
	}
	u.conn.Close()
}

// dotWriter writes message text with a leading dot doubled on every line
// (RFC 5321 section 4.5.2) and, on close, the final CRLF "." CRLF. The text
// has CRLF line ends only (package proxy's content guarantees it), so a
// line starts exactly after "\n".
type dotWriter struct {
	w           *bufio.Writer
	atLineStart bool
	last        byte
}

func (d *dotWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if d.atLineStart && p[0] == '.' {
			if err := d.w.WriteByte('.'); err != nil {
				return 0, err
			}
		}
		i := bytes.IndexByte(p, '\n')
		var chunk []byte
		if i < 0 {
			chunk, p = p, nil
			d.atLineStart = false
		} else {
			chunk, p = p[:i+1], p[i+1:]
			d.atLineStart = true
		}
		if _, err := d.w.Write(chunk); err != nil {
			return 0, &upstreamError{op: "DATA", err: err}
		}
		d.last = chunk[len(chunk)-1]
	}
	return n, nil
}

func (d *dotWriter) close() error {
	if !d.atLineStart && d.last != 0 {
		if _, err := d.w.WriteString("\r\n"); err != nil {
			return err
		}
	}
	_, err := d.w.WriteString(".\r\n")
	return err
}

// pool keeps idle upstream connections for reuse across transactions,
// bounded in number per upstream, in idle time and in age.
type pool struct {
	mu          sync.Mutex
	idle        map[string][]*upstreamConn
	maxIdle     int
	idleTimeout time.Duration
	maxAge      time.Duration
	closed      bool
	stop        chan struct{}
	done        chan struct{}
}

func newPool(maxIdle int, idleTimeout, maxAge time.Duration) *pool {
	p := &pool{idle: map[string][]*upstreamConn{}, maxIdle: maxIdle, idleTimeout: idleTimeout, maxAge: maxAge,
		stop: make(chan struct{}), done: make(chan struct{})}
	go p.janitor()
	return p
}

func (p *pool) setLimits(maxIdle int, idleTimeout, maxAge time.Duration) {
	p.mu.Lock()
	p.maxIdle, p.idleTimeout, p.maxAge = maxIdle, idleTimeout, maxAge
	p.mu.Unlock()
}

// get returns an idle connection to addr, or dials one. reused tells the
// caller that a failure may be a connection the upstream had closed, worth
// one retry on a fresh connection.
func (p *pool) get(ctx context.Context, addr, helo string, to upstreamTimeouts) (u *upstreamConn, reused bool, greet *Reply, err error) {
	now := time.Now()
	p.mu.Lock()
	for list := p.idle[addr]; len(list) > 0; list = p.idle[addr] {
		u = list[len(list)-1]
		p.idle[addr] = list[:len(list)-1]
		if now.Sub(u.used) < p.idleTimeout && now.Sub(u.created) < p.maxAge {
			p.mu.Unlock()
			return u, true, nil, nil
		}
		go u.quit()
	}
	p.mu.Unlock()
	u, greet, err = dialUpstream(ctx, addr, helo, to)
	return u, false, greet, err
}

// put returns a connection after use; a broken, dirty, old or surplus one
// is closed instead.
func (p *pool) put(u *upstreamConn) {
	if u.broken || u.dirty {
		u.conn.Close()
		return
	}
	p.mu.Lock()
	if p.closed || len(p.idle[u.addr]) >= p.maxIdle || time.Since(u.created) >= p.maxAge {
		p.mu.Unlock()
		u.quit()
		return
	}
	u.used = time.Now()
	p.idle[u.addr] = append(p.idle[u.addr], u)
	p.mu.Unlock()
}

func (p *pool) janitor() {
	defer close(p.done)
	for {
		p.mu.Lock()
		every := p.idleTimeout / 2
		p.mu.Unlock()
		if every < time.Second {
			every = time.Second
		}
		t := time.NewTimer(every)
		select {
		case <-p.stop:
			t.Stop()
			return
		case <-t.C:
		}
		now := time.Now()
		var old []*upstreamConn
		p.mu.Lock()
		for addr, list := range p.idle {
			keep := list[:0]
			for _, u := range list {
				if now.Sub(u.used) >= p.idleTimeout || now.Sub(u.created) >= p.maxAge {
					old = append(old, u)
				} else {
					keep = append(keep, u)
				}
			}
			p.idle[addr] = keep
		}
		p.mu.Unlock()
		for _, u := range old {
			u.quit()
		}
	}
}

// close ends the janitor and says QUIT on every idle connection.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	var all []*upstreamConn
	for _, list := range p.idle {
		all = append(all, list...)
	}
	p.idle = map[string][]*upstreamConn{}
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	for _, u := range all {
		u.quit()
	}
}
