package content

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"strings"

	"github.com/emersion/go-message/charset"
)

// field is one header field: its name as written and its value unfolded
// (line breaks removed, RFC 5322 section 2.2.3) and trimmed of the spaces
// around it. The value is not decoded.
type field struct {
	name, value string
}

// parseFields splits a header section into its fields, leniently: a line
// that is neither a field nor a continuation (no colon, a name with a
// space or a control character, an mbox "From " line) is skipped, as mail
// readers skip it. It stops at the first empty line.
func parseFields(b []byte) []field {
	var out []field
	var name string
	var val strings.Builder
	open := false
	flush := func() {
		if open {
			out = append(out, field{name: name, value: strings.Trim(val.String(), " \t")})
		}
		open = false
		val.Reset()
	}
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if open {
				val.Write(line)
			}
			continue
		}
		flush()
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			continue
		}
		n := bytes.TrimRight(line[:i], " \t")
		if !validFieldName(n) {
			continue
		}
		name, open = string(n), true
		val.Write(line[i+1:])
	}
	flush()
	return out
}

// validFieldName: RFC 5322 field names are printable ASCII but ':'.
func validFieldName(n []byte) bool {
	if len(n) == 0 {
		return false
	}
	for _, c := range n {
		if c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// maxHeaderBytes bounds a message's header section (go-message's default).
const maxHeaderBytes = 1 << 20

// errHeaderTooBig is returned for a header section over maxHeaderBytes.
var errHeaderTooBig = errors.New("header section larger than 1 MiB")

// readHeader reads a header section, up to and including the empty line
// that ends it (or to the end of r, for a message without a body).
func readHeader(br *bufio.Reader) ([]byte, error) {
	var h []byte
	atLineStart := true
	for {
		chunk, err := br.ReadSlice('\n')
		if len(h)+len(chunk) > maxHeaderBytes {
			return nil, errHeaderTooBig
		}
		blank := atLineStart && (string(chunk) == "\n" || string(chunk) == "\r\n")
		h = append(h, chunk...)
		switch {
		case err == bufio.ErrBufferFull:
			atLineStart = false
			continue
		case err == io.EOF:
			return h, nil
		case err != nil:
			return nil, err
		}
		if blank {
			return h, nil
		}
		atLineStart = true
	}
}

// wordDecoder decodes RFC 2047 encoded words in any charset go-message's
// charset package knows.
var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

// decodeWords decodes the encoded words of a header value; when a charset
// is unknown it returns the value as it is.
func decodeWords(v string) string {
	if !strings.Contains(v, "=?") {
		return v
	}
	d, err := wordDecoder.DecodeHeader(v)
	if err != nil {
		return v
	}
	return d
}
