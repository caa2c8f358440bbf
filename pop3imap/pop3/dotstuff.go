package pop3

import (
	"bufio"
	"io"
)

// dotWriter writes the body of a multi-line response (RFC 1939 section 3):
// every line ends with CRLF and a line that starts with "." gets a second
// one. Close ends the body with the ".\r\n" terminator.
//
// Stored messages should have CRLF line endings, but a bare LF or a bare
// CR is turned into CRLF rather than passed on: a client that splits lines
// on either (Python's poplib strips a leading CR, for one) would otherwise
// see a line start that was not stuffed, and could take an unstuffed "."
// for the terminator and read the rest of the message as replies. With
// every line ending normalized the terminator cannot occur before Close,
// whatever the stored bytes are.
type dotWriter struct {
	w     io.Writer
	start bool // the next byte starts a line
	cr    bool // the last input byte was a CR whose LF has not been seen yet
	err   error
}

func newDotWriter(w io.Writer) *dotWriter { return &dotWriter{w: w, start: true} }

func (d *dotWriter) put(s string) {
	if d.err == nil {
		_, d.err = io.WriteString(d.w, s)
	}
}

func (d *dotWriter) putBytes(b []byte) {
	if d.err == nil && len(b) > 0 {
		_, d.err = d.w.Write(b)
	}
}

// Write writes p as message data; it returns len(p) unless the underlying
// writer fails.
func (d *dotWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && d.err == nil {
		if d.cr {
			d.cr = false
			d.start = true
			if p[0] == '\n' {
				d.put("\n")
				p = p[1:]
				continue
			}
			d.put("\n") // a bare CR ends the line
		}
		if d.start && p[0] == '.' {
			d.put(".")
		}
		d.start = false
		i := 0
		for i < len(p) && p[i] != '\r' && p[i] != '\n' {
			i++
		}
		d.putBytes(p[:i])
		if i == len(p) {
			break
		}
		if p[i] == '\n' {
			d.put("\r\n") // a bare LF
			d.start = true
		} else {
			d.put("\r")
			d.cr = true
		}
		p = p[i+1:]
	}
	if d.err != nil {
		return 0, d.err
	}
	return n, nil
}

// Close ends the last line if the data did not, then writes the
// terminator. It does not close the underlying writer.
func (d *dotWriter) Close() error {
	if d.cr {
		d.put("\n")
		d.cr, d.start = false, true
	}
	if !d.start {
		d.put("\r\n")
	}
	d.put(".\r\n")
	return d.err
}

// copyTop copies the header of message r, the blank line after it and the
// first n lines of the body to w (the TOP command). A message without a
// blank line is all header and is copied whole.
func copyTop(w io.Writer, r io.Reader, n int) error {
	br := bufio.NewReader(r)
	inBody := false
	start := true // at the start of a line
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if inBody && start && n == 0 {
				return nil
			}
			if _, werr := w.Write(line); werr != nil {
				return werr
			}
			complete := line[len(line)-1] == '\n'
			switch {
			case !complete:
			case inBody:
				n--
			case start && (len(line) == 1 || len(line) == 2 && line[0] == '\r'):
				inBody = true
			}
			start = complete
		}
		switch err {
		case nil, bufio.ErrBufferFull:
		case io.EOF:
			return nil
		default:
			return err
		}
	}
}
