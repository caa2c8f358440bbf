package imaptest

import (
	"bytes"
	"errors"
	"regexp"
)

// fromLine matches an mbox separator: "From sender date", where the date
// has an hh:mm(:ss) time and a four-digit year (asctime style, optionally
// followed by a zone). Like ImapTest, a "From " line without a date is
// message text, not a separator.
var fromLine = regexp.MustCompile(`^From \S+\s+.*\b\d{1,2}:\d{2}(:\d{2})?\b.*\b\d{4}\b`)

// LoadMbox splits an mbox file into messages with CRLF line endings, as
// ImapTest's mbox source does: each message is every line after its From_
// line up to the next From_ line (the blank line before a separator is
// part of the message), bare LF becomes CRLF and ">From " is left alone.
func LoadMbox(b []byte) ([][]byte, error) {
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 {
		return nil, errors.New("empty mbox")
	}
	if !isFromLine(lines[0]) {
		return nil, errors.New("mbox does not start with a From_ line")
	}
	var msgs [][]byte
	var cur []byte
	for _, l := range lines {
		if isFromLine(l) {
			// A From_ line right after another one (an empty body) keeps
			// the current message open, as in ImapTest.
			if len(cur) > 0 {
				msgs = append(msgs, cur)
				cur = nil
			}
			continue
		}
		cur = appendCRLF(cur, l)
	}
	if len(cur) > 0 {
		msgs = append(msgs, cur)
	}
	if len(msgs) == 0 {
		return nil, errors.New("mbox has no messages")
	}
	return msgs, nil
}

func isFromLine(l []byte) bool {
	return bytes.HasPrefix(l, []byte("From ")) && fromLine.Match(bytes.TrimRight(l, "\r\n"))
}

func appendCRLF(dst, line []byte) []byte {
	body, nl := bytes.CutSuffix(line, []byte("\n"))
	dst = append(dst, body...)
	if !nl {
		return dst
	}
	if len(body) == 0 || body[len(body)-1] != '\r' {
		dst = append(dst, '\r')
	}
	return append(dst, '\n')
}
