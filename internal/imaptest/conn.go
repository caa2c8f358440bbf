package imaptest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

const (
	maxLine     = 1 << 20   // one response line
	maxResponse = 128 << 20 // one response, literals included
)

// conn is one script connection: raw IMAP over a net.Conn, no client
// library, so that the bytes on the wire are exactly what the script says.
type conn struct {
	n       int // 1-based script connection number
	nc      net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration
	tr      *transcript
	aborted atomic.Bool // the run's context ended: every deadline is in the past

	unlogged []byte // written since the last flush, for the transcript
	tagSeq   int
	exists   int    // messages in the selected mailbox, from EXISTS/EXPUNGE
	mailbox  string // where a bare "append" goes: $mailbox, then the last SELECTed one
	seenBye  bool   // server sent BYE
	closed   bool   // logged out or disconnected: no more commands
	preauth  bool
	greeting *response
	caps     []string
}

// response is one server response: tag is "*", "+" or a command tag.
type response struct {
	tag  string
	args []arg
	raw  []byte
	err  error // the response could not be parsed
}

func (r *response) String() string { return shorten(string(bytes.TrimRight(r.raw, "\r\n")), 600) }

func newConn(n int, nc net.Conn, timeout time.Duration, tr *transcript) *conn {
	return &conn{n: n, nc: nc, r: bufio.NewReaderSize(nc, 64<<10), w: bufio.NewWriter(nc), timeout: timeout, tr: tr}
}

func (c *conn) nextTag() string {
	c.tagSeq++
	return fmt.Sprintf("%d.%d", c.n, c.tagSeq)
}

func (c *conn) write(b []byte) error {
	c.unlogged = append(c.unlogged, b...)
	_, err := c.w.Write(b)
	return err
}

func (c *conn) flush() error {
	if len(c.unlogged) > 0 {
		c.tr.add(fmt.Sprintf("C%d", c.n), c.unlogged)
		c.unlogged = c.unlogged[:0]
	}
	if err := c.setDeadline(c.nc.SetWriteDeadline); err != nil {
		return err
	}
	return c.w.Flush()
}

// setDeadline arms the per-response timeout, or a past deadline once the
// run was aborted (checked after setting, so an abort racing with this
// call still wins).
func (c *conn) setDeadline(set func(time.Time) error) error {
	if err := set(time.Now().Add(c.timeout)); err != nil {
		return err
	}
	if c.aborted.Load() {
		return set(pastDeadline)
	}
	return nil
}

// abort makes every blocked or future read and write fail at once.
func (c *conn) abort() {
	c.aborted.Store(true)
	_ = c.nc.SetDeadline(pastDeadline)
}

var pastDeadline = time.Unix(1, 0)

// readLine reads one line including its LF.
func (c *conn) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := c.r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, fmt.Errorf("response line longer than %d bytes", maxLine)
		}
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// readResponse reads one complete response, following literals.
func (c *conn) readResponse() (*response, error) {
	if err := c.setDeadline(c.nc.SetReadDeadline); err != nil {
		return nil, err
	}
	var buf []byte
	for first := true; ; first = false {
		line, err := c.readLine()
		if err != nil {
			if len(buf) > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		buf = append(buf, line...)
		if first && isStatusLine(line) {
			break // resp-text never carries literals
		}
		n, ok := trailingLiteral(line)
		if !ok {
			break
		}
		if n > maxLiteral || len(buf)+n > maxResponse {
			return nil, fmt.Errorf("literal of %d bytes is too large", n)
		}
		off := len(buf)
		buf = append(buf, make([]byte, n)...)
		if _, err := io.ReadFull(c.r, buf[off:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	c.tr.add(fmt.Sprintf("S%d", c.n), buf)
	return parseResponse(buf), nil
}

func parseResponse(buf []byte) *response {
	r := &response{raw: buf}
	tag, rest, _ := bytes.Cut(buf, []byte(" "))
	r.tag = string(bytes.TrimRight(tag, "\r\n"))
	if r.tag == "+" {
		return r
	}
	if r.tag == "" {
		r.err = errors.New("empty response line")
		return r
	}
	r.args, r.err = parseArgs(rest)
	if r.err == nil && len(r.args) == 0 {
		r.err = errors.New("response without content")
	}
	return r
}

// isStatusLine reports whether a first response line is a status response
// or a continuation request.
func isStatusLine(line []byte) bool {
	tag, rest, _ := bytes.Cut(line, []byte(" "))
	if string(bytes.TrimRight(tag, "\r\n")) == "+" {
		return true
	}
	word, _, _ := bytes.Cut(rest, []byte(" "))
	return isStatusWord(string(bytes.TrimRight(word, "\r\n")))
}

// trailingLiteral reports whether a line ends with a literal announcement
// ({n}, {n+} or ~{n}) and returns n.
func trailingLiteral(line []byte) (int, bool) {
	line = bytes.TrimRight(line, "\r\n")
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 1 {
		return 0, false
	}
	digits := bytes.TrimSuffix(line[open+1:len(line)-1], []byte("+"))
	if len(digits) == 0 || len(digits) > 10 {
		return 0, false
	}
	n, err := strconv.Atoi(string(digits))
	if err != nil || n < 0 {
		return 0, false
	}
	before := line[open-1]
	if before == '~' && open >= 2 {
		before = line[open-2]
	}
	if before != ' ' && before != '(' {
		return 0, false
	}
	return n, true
}

// transcript keeps the last lines exchanged, for failure reports.
type transcript struct {
	lines []string
}

const transcriptLines = 60

func (t *transcript) add(who string, b []byte) {
	s := strings.TrimRight(string(b), "\r\n")
	t.lines = append(t.lines, who+": "+shorten(strconv.Quote(s), 300))
	if len(t.lines) > transcriptLines {
		t.lines = t.lines[len(t.lines)-transcriptLines:]
	}
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// quote renders s as an IMAP quoted string.
func quote(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			sb.WriteByte('\\')
		}
		sb.WriteByte(s[i])
	}
	sb.WriteByte('"')
	return sb.String()
}
