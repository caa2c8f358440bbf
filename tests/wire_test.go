package tests

import "bytes"

// The RFC 5321 reading of DATA, written out so tests can compute what a
// correct relay must forward.

// rfcData returns the DATA bytes up to (and including the CRLF before) the
// first CRLF.CRLF of payload, which starts right after the DATA command's
// CRLF, and the offset after the terminator. ok is false when payload
// holds no terminator.
func rfcData(payload []byte) (data []byte, end int, ok bool) {
	if bytes.HasPrefix(payload, []byte(".\r\n")) {
		return nil, 3, true
	}
	i := bytes.Index(payload, []byte("\r\n.\r\n"))
	if i < 0 {
		return nil, 0, false
	}
	return payload[:i+2], i + 5, true
}

// rfcUnstuff removes one leading dot from each line; a line starts at the
// beginning of data and after CRLF (bare CR or LF do not end a line).
func rfcUnstuff(data []byte) []byte {
	out := make([]byte, 0, len(data))
	lineStart := true
	for i, c := range data {
		if lineStart && c == '.' {
			lineStart = false
			continue
		}
		out = append(out, c)
		lineStart = c == '\n' && i > 0 && data[i-1] == '\r'
	}
	return out
}

// dotStuff doubles the dot at the start of every line, as a sender must.
func dotStuff(msg []byte) []byte {
	out := make([]byte, 0, len(msg)+8)
	lineStart := true
	for i, c := range msg {
		if lineStart && c == '.' {
			out = append(out, '.')
		}
		out = append(out, c)
		lineStart = c == '\n' && i > 0 && msg[i-1] == '\r'
	}
	return out
}

// hasBareOrNUL reports whether b holds a NUL, a CR not followed by LF or an
// LF not preceded by CR.
func hasBareOrNUL(b []byte) bool {
	for i, c := range b {
		switch {
		case c == 0:
			return true
		case c == '\r' && (i+1 == len(b) || b[i+1] != '\n'):
			return true
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			return true
		}
	}
	return false
}

// normalizeBare is what smtp.bare_newline: normalize promises: NUL bytes
// removed, every bare CR and every bare LF turned into CRLF.
func normalizeBare(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte{0}, nil)
	out := make([]byte, 0, len(b)+8)
	for i := 0; i < len(b); i++ {
		switch {
		case b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
		case b[i] == '\r' || b[i] == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, b[i])
		}
	}
	return out
}
