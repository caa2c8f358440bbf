package proxy

import (
	"bufio"
	"errors"
	"io"
)

// Problems found in a message's bytes. They do not stop the reading: the
// session keeps reading to the real end of data so that it stays in step
// with the client, then refuses the message.
var (
	errBareNewline  = errors.New("bare CR or bare LF")
	errNUL          = errors.New("NUL byte")
	errTooBig       = errors.New("message too big")
	errHeaderTooBig = errors.New("header too big")
)

// content receives a message's bytes after the wire framing is removed
// (dot-unstuffed DATA or raw BDAT chunks). It rejects or normalises bare CR,
// bare LF and NUL, so that the stored message has CRLF line ends only and
// nothing in it can end DATA early at the next hop once it is dot-stuffed
// again; it counts the size against the limit (discarding beyond it), and
// keeps a copy of the header section.
type content struct {
	out       io.Writer
	normalize bool  // normalise instead of rejecting
	max       int64 // message size limit
	maxHeader int

	size    int64
	problem error // the first problem found
	ioErr   error // writing to out failed
	pendCR  bool  // the last byte seen was a CR

	header    []byte
	inHeader  bool
	crlfTail  int // CRLFs just emitted at the end of the header so far (2 ends it)
	headerEnd int64
}

func newContent(out io.Writer, normalize bool, max int64, maxHeader int) *content {
	return &content{out: out, normalize: normalize, max: max, maxHeader: maxHeader, inHeader: true, crlfTail: 1}
}

func (c *content) flag(err error) {
	if c.problem == nil {
		c.problem = err
	}
}

var crlf = []byte("\r\n")

// Write implements io.Writer; it never fails, problems are kept in c.
func (c *content) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if c.pendCR {
			c.pendCR = false
			if p[0] == '\n' {
				c.emit(crlf)
				p = p[1:]
				continue
			}
			c.bare()
		}
		i := indexSpecial(p)
		if i < 0 {
			c.emit(p)
			break
		}
		c.emit(p[:i])
		switch p[i] {
		case '\r':
			c.pendCR = true
		case '\n':
			c.bare()
		case 0:
			if !c.normalize {
				c.flag(errNUL)
			}
		}
		p = p[i+1:]
	}
	return n, nil
}

// special marks the bytes content must look at: CR, LF and NUL.
var special = [256]bool{'\r': true, '\n': true, 0: true}

// indexSpecial is bytes.IndexAny(p, "\r\n\x00") without building the
// byte set on every call (this runs for every chunk of every message).
func indexSpecial(p []byte) int {
	for i, b := range p {
		if special[b] {
			return i
		}
	}
	return -1
}

// bare handles a bare CR or LF: normalised to CRLF, or flagged.
func (c *content) bare() {
	if c.normalize {
		c.emit(crlf)
		return
	}
	c.flag(errBareNewline)
}

// finish is called at the end of the message.
func (c *content) finish() {
	if c.pendCR {
		c.pendCR = false
		c.bare()
	}
	if c.inHeader {
		c.headerEnd = c.size
	}
}

func (c *content) emit(p []byte) {
	if len(p) == 0 {
		return
	}
	if c.inHeader {
		c.trackHeader(p)
	}
	c.size += int64(len(p))
	if c.size > c.max {
		c.flag(errTooBig)
	}
	if c.problem != nil || c.ioErr != nil {
		return // the message will be refused: discard
	}
	if _, err := c.out.Write(p); err != nil {
		c.ioErr = err
	}
}

// trackHeader copies header bytes and finds the empty line that ends the
// header section. Emitted text has CRLF line ends only.
func (c *content) trackHeader(p []byte) {
	for i, b := range p {
		switch {
		case b == '\r':
		case b == '\n':
			c.crlfTail++
			if c.crlfTail == 2 {
				c.inHeader = false
				end := i + 1
				c.header = append(c.header, p[:end]...)
				c.headerEnd = c.size + int64(end)
				return
			}
		default:
			c.crlfTail = 0
		}
	}
	c.header = append(c.header, p...)
	if len(c.header) > c.maxHeader {
		c.flag(errHeaderTooBig)
		c.inHeader = false
	}
}

// readDotData reads a DATA body from r up to the line "." (RFC 5321
// section 4.1.1.4) and writes it, dot-unstuffed, to c.
//
// Only CRLF "." CRLF ends the data: a line starts on the wire only after
// CRLF, so "\n.\n", "\r.\r", "\n.\r\n" and the like are content (and then
// refused or normalised by c). moat reads DATA itself because go-smtp's
// reader drops bytes in "\r\n.\n" and "\r\n.\r" and misses the terminator
// in "\r\r\n.\r\n".
func readDotData(r *bufio.Reader, c *content) error {
	atLineStart := true // the previous wire bytes were CRLF (or DATA just began)
	prevCR := false     // the previous chunk ended with CR
	for {
		line, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
		if atLineStart && len(line) > 0 && line[0] == '.' {
			if len(line) == 3 && line[1] == '\r' && line[2] == '\n' {
				c.finish()
				return nil
			}
			line = line[1:]
		}
		c.Write(line)
		// The next chunk starts a wire line when this one ended in CRLF,
		// split or not across the two chunks.
		if n := len(line); n > 0 && line[n-1] == '\n' {
			atLineStart = (n >= 2 && line[n-2] == '\r') || (n == 1 && prevCR)
			prevCR = false
		} else {
			atLineStart = false
			prevCR = n > 0 && line[n-1] == '\r'
		}
	}
}
