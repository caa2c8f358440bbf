package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"moat/auth"
)

type state int

const (
	stateAuthorization state = iota
	stateTransaction
)

// autologoutWrite bounds the last write to a client that went idle.
const autologoutWrite = 5 * time.Second

// session is one client connection.
type session struct {
	srv      *Server
	listener Listener
	raw      net.Conn // the TCP connection; closing it aborts the session
	conn     net.Conn // raw, or the TLS connection over it
	remote   netip.AddrPort
	tls      bool
	ctx      context.Context // ends with the session, or at a forced shutdown
	cancel   context.CancelFunc

	br  *bufio.Reader
	out *deadlineWriter
	bw  *bufio.Writer

	state state // guarded by the server's sessions lock: Shutdown reads it

	started bool   // a command line was read
	user    string // from USER, waiting for PASS
	bad     int    // bad commands so far
	quit    bool   // end the session after this command

	account string   // the canonical user name after login
	drop    Maildrop // in the TRANSACTION state
	msgs    []Message
	deleted []bool
}

func newSession(s *Server, c net.Conn, l Listener) *session {
	ctx, cancel := context.WithCancel(context.Background())
	out := &deadlineWriter{conn: c, timeout: s.o.IdleTimeout}
	return &session{
		srv: s, listener: l, raw: c, conn: c, remote: remoteAddr(c),
		ctx: ctx, cancel: cancel,
		br: bufio.NewReader(c), out: out, bw: bufio.NewWriterSize(out, 16<<10),
	}
}

// Abort cuts the session off (accept.Session); the caller holds the
// sessions' lock.
func (c *session) Abort() {
	c.cancel()
	c.raw.Close()
}

// Busy reports a session Shutdown lets finish (accept.Session).
func (c *session) Busy() bool { return c.state != stateAuthorization }

// Serve runs the session (accept.Session).
func (c *session) Serve() {
	defer c.srv.sessions.Done(c)
	defer c.raw.Close()
	defer c.cancel()
	defer c.closeMaildrop()
	defer func() {
		// One client must not take the gateway down with it.
		if v := recover(); v != nil {
			c.logError("panic", fmt.Errorf("%v\n%s", v, debug.Stack()))
		}
	}()

	if c.listener.ImplicitTLS {
		cfg := c.srv.tls.Load()
		if cfg == nil {
			c.logError("tls", errors.New("implicit TLS listener without a TLS configuration"))
			return
		}
		if !c.startTLS(cfg) {
			return
		}
	}
	c.reply("+OK " + c.srv.o.Hostname + " POP3 ready")
	for !c.quit {
		line, err := c.readLine()
		if err != nil {
			c.readFailed(err)
			break
		}
		c.handle(line)
	}
	c.bw.Flush()
}

func (c *session) closeMaildrop() {
	if c.drop != nil {
		if err := c.drop.Close(); err != nil {
			c.logError("close maildrop", err)
		}
	}
}

// handle runs one command line.
func (c *session) handle(line []byte) {
	c.started = true
	cmd, err := parseCommand(line)
	if (err != nil || !known[cmd.Name]) && foreignProtocol(line) {
		c.quit = true // not a POP3 client: answer nothing
		return
	}
	if len(line)+2 > maxCommandLine && (err != nil || cmd.Name != "AUTH") {
		c.reply("-ERR line too long")
		c.quit = true
		return
	}
	switch {
	case err != nil:
		c.fail("-ERR " + err.Error())
		return
	case !known[cmd.Name]:
		c.fail("-ERR unknown command")
		return
	}
	if c.state == stateAuthorization {
		c.authorization(cmd)
	} else {
		c.transaction(cmd)
	}
}

// known lists every keyword this server understands, in either state.
var known = map[string]bool{
	"CAPA": true, "QUIT": true, "USER": true, "PASS": true, "AUTH": true, "STLS": true, "APOP": true,
	"STAT": true, "LIST": true, "UIDL": true, "RETR": true, "TOP": true, "DELE": true, "RSET": true, "NOOP": true,
}

// authorization runs a command in the AUTHORIZATION state.
func (c *session) authorization(cmd command) {
	switch cmd.Name {
	case "CAPA":
		c.capa()
	case "USER":
		c.cmdUser(cmd)
	case "PASS":
		c.cmdPass(cmd)
	case "AUTH":
		c.cmdAuth(cmd)
	case "STLS":
		c.cmdSTLS(cmd)
	case "QUIT":
		c.reply("+OK " + c.srv.o.Hostname + " POP3 server signing off")
		c.quit = true
	case "APOP":
		c.fail("-ERR APOP not supported")
	default:
		c.fail("-ERR command not valid before login")
	}
}

// transaction runs a command in the TRANSACTION state.
func (c *session) transaction(cmd command) {
	switch cmd.Name {
	case "CAPA":
		c.capa()
	case "STAT":
		if c.args(cmd, 0) {
			n, size := c.count()
			c.reply(fmt.Sprintf("+OK %d %d", n, size))
		}
	case "LIST":
		c.cmdList(cmd)
	case "UIDL":
		c.cmdUIDL(cmd)
	case "RETR":
		c.cmdRetr(cmd)
	case "TOP":
		c.cmdTop(cmd)
	case "DELE":
		c.cmdDele(cmd)
	case "RSET":
		if c.args(cmd, 0) {
			clear(c.deleted)
			n, size := c.count()
			c.reply(fmt.Sprintf("+OK maildrop has %d messages (%d octets)", n, size))
		}
	case "NOOP":
		if c.args(cmd, 0) {
			c.reply("+OK")
		}
	case "QUIT":
		c.update()
	default:
		c.fail("-ERR command not valid after login")
	}
}

// capa answers CAPA (RFC 2449) with what applies in the current state.
func (c *session) capa() {
	lines := []string{"+OK Capability list follows", "TOP", "UIDL"}
	if c.state == stateAuthorization {
		if c.plaintextOK() {
			lines = append(lines, "USER", "SASL PLAIN")
		}
		if c.stlsOffered() {
			lines = append(lines, "STLS")
		}
		lines = append(lines, "RESP-CODES", "AUTH-RESP-CODE")
	} else {
		lines = append(lines, "RESP-CODES")
	}
	lines = append(lines, "PIPELINING", "EXPIRE NEVER", "IMPLEMENTATION moat", ".")
	c.reply(strings.Join(lines, "\r\n"))
}

// plaintextOK reports whether a password may be read on this connection
// now. Checked at each use: a configuration reload may change it.
func (c *session) plaintextOK() bool {
	return c.tls || c.srv.o.Auth.PlaintextAllowed(c.remote.Addr(), false)
}

func (c *session) stlsOffered() bool { return !c.tls && c.srv.tls.Load() != nil }

// refusePlaintext answers a login attempt on a connection where passwords
// may not travel in clear.
func (c *session) refusePlaintext() {
	if c.stlsOffered() {
		c.fail("-ERR [AUTH] Cleartext authentication not allowed, use STLS first")
	} else {
		c.fail("-ERR [AUTH] Cleartext authentication not allowed")
	}
}

func (c *session) cmdUser(cmd command) {
	name := strings.TrimSpace(cmd.Rest)
	if !c.plaintextOK() {
		if name != "" {
			// Through the authority, with no password, so that the
			// refused attempt is a pop3.login event (a client set up to
			// send passwords in clear is worth an admin's attention);
			// it answers ErrPlaintext without looking further.
			c.login("USER", name, "")
			return
		}
		c.refusePlaintext()
		return
	}
	if name == "" {
		c.fail("-ERR missing user name")
		return
	}
	c.user = name
	c.reply("+OK send PASS")
}

func (c *session) cmdPass(cmd command) {
	user := c.user
	c.user = ""
	if user == "" {
		c.fail("-ERR USER first")
		return
	}
	if !c.plaintextOK() {
		c.refusePlaintext()
		return
	}
	// RFC 1939: PASS has one argument, so spaces belong to the password.
	c.login("USER", user, cmd.Rest)
}

// cmdAuth runs AUTH (RFC 5034); PLAIN is the only mechanism.
func (c *session) cmdAuth(cmd command) {
	if len(cmd.Args) == 0 {
		// Not in RFC 5034, but clients such as Outlook send it to list
		// the mechanisms.
		lines := []string{"+OK SASL mechanisms follow"}
		if c.plaintextOK() {
			lines = append(lines, "PLAIN")
		}
		c.reply(strings.Join(append(lines, "."), "\r\n"))
		return
	}
	if !strings.EqualFold(cmd.Args[0], "PLAIN") {
		c.fail("-ERR unsupported authentication mechanism")
		return
	}
	if len(cmd.Args) > 2 {
		c.fail("-ERR too many arguments")
		return
	}
	if !c.plaintextOK() {
		// A client that sent an initial response has already sent its
		// password in clear; it is not looked at.
		c.refusePlaintext()
		return
	}
	var resp string
	if len(cmd.Args) == 2 {
		resp = cmd.Args[1]
	} else {
		c.reply("+ ")
		line, err := c.readLine()
		if err != nil {
			c.readFailed(err)
			c.quit = true
			return
		}
		resp = string(line)
	}
	user, password, problem := DecodePlain(resp)
	if problem != "" {
		c.fail(problem)
		return
	}
	c.login("PLAIN", user, password)
}

// login checks the credentials, opens the maildrop and enters the
// TRANSACTION state.
func (c *session) login(mechanism, user, password string) {
	name, err := c.srv.o.Auth.Login(c.ctx, auth.Request{
		Protocol: "pop3", Mechanism: mechanism, Listener: c.listener.Name,
		Remote: c.remote, TLS: c.tls, User: user, Password: password,
	})
	switch {
	case err == nil:
	case c.ctx.Err() != nil: // shutting down
		c.quit = true
		return
	case errors.Is(err, auth.ErrFailed):
		c.fail("-ERR [AUTH] Authentication failed")
		return
	case errors.Is(err, auth.ErrLocked):
		c.reply("-ERR [SYS/TEMP] Too many failed logins, try again later")
		c.quit = true
		return
	case errors.Is(err, auth.ErrPlaintext):
		c.refusePlaintext()
		return
	case errors.Is(err, auth.ErrUnavailable):
		c.fail("-ERR [SYS/TEMP] Authentication temporarily unavailable")
		return
	default:
		c.logError("login", err)
		c.fail("-ERR [SYS/TEMP] Authentication temporarily unavailable")
		return
	}
	c.account = name
	drop, err := c.srv.o.Backend.OpenMaildrop(name)
	if errors.Is(err, ErrInUse) {
		c.fail("-ERR [IN-USE] Mailbox already locked")
		return
	}
	if err != nil {
		c.logError("open maildrop", err)
		c.fail("-ERR [SYS/TEMP] Unable to open maildrop")
		return
	}
	msgs, err := drop.Messages()
	if err != nil {
		c.logError("list maildrop", err)
		if err := drop.Close(); err != nil {
			c.logError("close maildrop", err)
		}
		c.fail("-ERR [SYS/TEMP] Unable to read maildrop")
		return
	}
	c.drop = drop // closed when the session ends, whatever happens next
	if !c.srv.enterTransaction(c) {
		c.reply("-ERR [SYS/TEMP] Server shutting down")
		c.quit = true
		return
	}
	c.msgs, c.deleted = msgs, make([]bool, len(msgs))
	n, size := c.count()
	c.reply(fmt.Sprintf("+OK maildrop has %d messages (%d octets)", n, size))
}

// cmdSTLS starts TLS (RFC 2595).
func (c *session) cmdSTLS(cmd command) {
	cfg := c.srv.tls.Load()
	if c.tls || cfg == nil {
		c.fail("-ERR STLS not available")
		return
	}
	if !c.args(cmd, 0) {
		return
	}
	c.reply("+OK Begin TLS negotiation")
	if c.bw.Flush() != nil {
		c.quit = true
		return
	}
	// Whatever the client sent after STLS in clear is still in br and is
	// dropped with it: it could have been injected by a man in the middle
	// to run inside the TLS session (CVE-2011-0411 and its kin).
	if !c.startTLS(cfg) {
		c.quit = true
		return
	}
	c.user = "" // RFC 2595: back to the start of AUTHORIZATION
}

// startTLS runs the server side of the TLS handshake on the raw connection
// and reads and writes through TLS from then on.
func (c *session) startTLS(cfg *tls.Config) bool {
	tc := tls.Server(c.raw, cfg)
	ctx, cancel := context.WithTimeout(c.ctx, handshakeTimeout)
	defer cancel()
	if err := c.raw.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return false
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		c.srv.o.Log.Debug("pop3.tls", zap.String("source.ip", c.remote.Addr().String()),
			zap.String("error.message", err.Error()))
		return false
	}
	c.conn, c.tls = tc, true
	c.br = bufio.NewReader(tc)
	c.out.conn = tc
	return true
}

// message reads a message-number argument and returns its index, or
// answers -ERR. Deleted messages are not accessible.
func (c *session) message(arg string) (int, bool) {
	n, ok := parseNumber(arg)
	if !ok {
		c.fail("-ERR invalid message number")
		return 0, false
	}
	if n < 1 || n > len(c.msgs) || c.deleted[n-1] {
		c.reply("-ERR no such message")
		return 0, false
	}
	return n - 1, true
}

// args checks the argument count and answers -ERR when it is wrong.
func (c *session) args(cmd command, n int) bool {
	if len(cmd.Args) != n {
		c.fail("-ERR wrong number of arguments")
		return false
	}
	return true
}

// count returns the number and total size of the messages not deleted.
func (c *session) count() (n int, size int64) {
	for i, m := range c.msgs {
		if !c.deleted[i] {
			n++
			size += m.Size
		}
	}
	return n, size
}

func (c *session) cmdList(cmd command) {
	c.listing(cmd, func(i int) string { return strconv.FormatInt(c.msgs[i].Size, 10) })
}

func (c *session) cmdUIDL(cmd command) {
	c.listing(cmd, func(i int) string { return c.msgs[i].UID })
}

// listing answers LIST or UIDL: one message's line, or all of them.
func (c *session) listing(cmd command, field func(i int) string) {
	switch len(cmd.Args) {
	case 0:
		var b strings.Builder
		if cmd.Name == "LIST" {
			n, size := c.count()
			fmt.Fprintf(&b, "+OK %d messages (%d octets)\r\n", n, size)
		} else {
			b.WriteString("+OK unique-id listing follows\r\n")
		}
		for i := range c.msgs {
			if !c.deleted[i] {
				fmt.Fprintf(&b, "%d %s\r\n", i+1, field(i))
			}
		}
		b.WriteString(".")
		c.reply(b.String())
	case 1:
		if i, ok := c.message(cmd.Args[0]); ok {
			c.reply(fmt.Sprintf("+OK %d %s", i+1, field(i)))
		}
	default:
		c.fail("-ERR wrong number of arguments")
	}
}

func (c *session) cmdRetr(cmd command) {
	if !c.args(cmd, 1) {
		return
	}
	if i, ok := c.message(cmd.Args[0]); ok {
		c.sendMessage(i, fmt.Sprintf("+OK %d octets", c.msgs[i].Size), func(w io.Writer, r io.Reader) error {
			_, err := io.Copy(w, r)
			return err
		})
	}
}

func (c *session) cmdTop(cmd command) {
	if !c.args(cmd, 2) {
		return
	}
	i, ok := c.message(cmd.Args[0])
	if !ok {
		return
	}
	lines, ok := parseNumber(cmd.Args[1])
	if !ok {
		c.fail("-ERR invalid line count")
		return
	}
	c.sendMessage(i, "+OK top of message follows", func(w io.Writer, r io.Reader) error {
		return copyTop(w, r, lines)
	})
}

// sendMessage answers RETR or TOP: status, then message i through body,
// dot-stuffed. Once the status is out a failure cannot be answered, so a
// failing store ends the session (without UPDATE).
func (c *session) sendMessage(i int, status string, body func(io.Writer, io.Reader) error) {
	rc, err := c.drop.Open(i)
	if err != nil {
		c.logError("open message", err)
		c.reply("-ERR [SYS/TEMP] Unable to read message")
		return
	}
	defer rc.Close()
	c.reply(status)
	src := &readErrs{r: rc}
	dw := newDotWriter(c.bw)
	err = body(dw, src)
	if err == nil {
		err = dw.Close()
	}
	if err != nil {
		if src.err != nil {
			c.logError("read message", src.err)
		}
		c.quit = true
	}
}

func (c *session) cmdDele(cmd command) {
	if !c.args(cmd, 1) {
		return
	}
	n, ok := parseNumber(cmd.Args[0])
	if ok && n >= 1 && n <= len(c.msgs) && c.deleted[n-1] {
		c.reply(fmt.Sprintf("-ERR message %d already deleted", n))
		return
	}
	if i, ok := c.message(cmd.Args[0]); ok {
		c.deleted[i] = true
		c.reply(fmt.Sprintf("+OK message %d deleted", i+1))
	}
}

// update is QUIT in the TRANSACTION state: the UPDATE state of RFC 1939.
func (c *session) update() {
	c.quit = true
	var del []int
	for i, d := range c.deleted {
		if d {
			del = append(del, i)
		}
	}
	if err := c.drop.Commit(del); err != nil {
		c.logError("commit", err)
		c.reply("-ERR [SYS/TEMP] some deleted messages not removed")
		return
	}
	left := "maildrop empty"
	if n := len(c.msgs) - len(del); n > 0 {
		left = fmt.Sprintf("%d messages left", n)
	}
	c.reply(fmt.Sprintf("+OK %s POP3 server signing off (%s)", c.srv.o.Hostname, left))
}

// reply queues one response (lines joined by CRLF, without the last CRLF).
// It is flushed when no further command is waiting (PIPELINING).
func (c *session) reply(s string) {
	c.bw.WriteString(s)
	if _, err := c.bw.WriteString("\r\n"); err != nil {
		c.quit = true
	}
}

// fail answers a bad command, or ends the session once there were too many.
func (c *session) fail(s string) {
	c.bad++
	if c.bad >= c.srv.o.MaxBadCommands {
		c.reply("-ERR too many bad commands")
		c.quit = true
		return
	}
	c.reply(s)
}

var errLineTooLong = errors.New("line too long")

// readLine reads the next line without its CRLF (or bare LF), after
// flushing the replies when no complete command is waiting. It refuses a
// line longer than maxAuthLine; handle applies the tighter command limit.
func (c *session) readLine() ([]byte, error) {
	if buf, _ := c.br.Peek(c.br.Buffered()); bytes.IndexByte(buf, '\n') < 0 {
		if err := c.bw.Flush(); err != nil {
			return nil, err
		}
	}
	if err := c.conn.SetReadDeadline(time.Now().Add(c.srv.o.IdleTimeout)); err != nil {
		return nil, err
	}
	if !c.started && !c.tls {
		// A TLS client on the cleartext port sends a ClientHello that
		// may hold no LF at all: catch it before waiting for a line.
		if b, err := c.br.Peek(1); err == nil && b[0] == tlsHandshakeRecord {
			return nil, errForeign
		}
	}
	line, err := c.br.ReadSlice('\n')
	switch {
	case err == bufio.ErrBufferFull || len(line) > maxAuthLine:
		return nil, errLineTooLong
	case err != nil:
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

var errForeign = errors.New("not a POP3 client")

// readFailed ends the session after a failed read, answering if useful.
func (c *session) readFailed(err error) {
	c.quit = true
	switch {
	case errors.Is(err, errLineTooLong):
		c.reply("-ERR line too long")
	case errors.Is(err, os.ErrDeadlineExceeded) && c.ctx.Err() == nil:
		c.out.timeout = autologoutWrite
		c.reply("-ERR autologout")
	}
}

func (c *session) logError(op string, err error) {
	fs := []zap.Field{zap.String("moat.operation", op), zap.String("moat.listener", c.listener.Name),
		zap.String("source.ip", c.remote.Addr().String()), zap.String("error.message", err.Error())}
	if c.account != "" {
		fs = append(fs, zap.String("user.name", c.account))
	}
	c.srv.o.Log.Error("pop3.error", fs...)
}

// readErrs remembers a read error, to tell a failing store from a client
// that went away.
type readErrs struct {
	r   io.Reader
	err error
}

func (r *readErrs) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// deadlineWriter gives every write to the client its own deadline, so a
// client that stops reading cannot hold a session forever while a large
// message still gets all the time it needs.
type deadlineWriter struct {
	conn    net.Conn
	timeout time.Duration
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if err := w.conn.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return 0, err
	}
	return w.conn.Write(p)
}

func remoteAddr(c net.Conn) netip.AddrPort {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap
}
