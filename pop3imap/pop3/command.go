package pop3

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"

	"moat/auth"
)

// Line limits. RFC 2449 caps a command line at 255 octets with its CRLF;
// AUTH lines (an initial response or a continuation) may be longer since a
// PLAIN response carries a user name and a password in base64.
const (
	maxCommandLine = 255
	maxAuthLine    = 2048
)

// MaxCommandLine and MaxAuthLine are the line limits above, for other
// POP3 front ends (the proxy's login phase).
const (
	MaxCommandLine = maxCommandLine
	MaxAuthLine    = maxAuthLine
)

// Command is a parsed command line, as ParseCommand returns it.
type Command = command

// ParseCommand is this server's command-line parser, shared with the
// proxy's login phase so that both read POP3 the same way.
func ParseCommand(line []byte) (Command, error) { return parseCommand(line) }

// command is one parsed command line.
type command struct {
	Name string   // the keyword, upper case
	Args []string // the arguments; runs of spaces count as one separator
	Rest string   // everything after the keyword and its one space, verbatim (PASS)
}

var (
	errEmptyLine   = errors.New("empty command line")
	errBadKeyword  = errors.New("invalid command keyword")
	errControlByte = errors.New("invalid characters in command line")
)

// parseCommand splits a command line (without its line ending) into the
// keyword and its arguments. The keyword is 1-40 ASCII letters and the
// line may not hold control characters such as NUL; bytes above 0x7F are
// left to the arguments (passwords may be UTF-8).
func parseCommand(line []byte) (command, error) {
	if len(line) == 0 {
		return command{}, errEmptyLine
	}
	for _, b := range line {
		if b < 0x20 || b == 0x7f {
			return command{}, errControlByte
		}
	}
	kw, rest, _ := bytes.Cut(line, []byte{' '})
	if len(kw) == 0 || len(kw) > 40 {
		return command{}, errBadKeyword
	}
	for _, b := range kw {
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z') {
			return command{}, errBadKeyword
		}
	}
	r := string(rest)
	return command{Name: strings.ToUpper(string(kw)), Args: strings.Fields(r), Rest: r}, nil
}

// parseNumber reads a message number or line count: 1 to 9 ASCII digits,
// so no sign, no spaces and no overflow.
func parseNumber(s string) (int, bool) {
	if len(s) == 0 || len(s) > 9 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}

// httpMethods start the request line of an HTTP/1.x request.
var httpMethods = []string{"GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ", "CONNECT ", "TRACE ", "PATCH "}

// foreignProtocol reports whether a line that is not a POP3 command is
// another protocol's opening: an HTTP request line (a browser lured into
// talking to the POP3 port, as in the ALPACA attack) or a TLS record.
// Such a session is ended at once rather than answered.
func foreignProtocol(line []byte) bool {
	if len(line) > 0 && line[0] == tlsHandshakeRecord {
		return true
	}
	for _, m := range httpMethods {
		if len(line) >= len(m) && strings.EqualFold(string(line[:len(m)]), m) {
			return true
		}
	}
	return bytes.Contains(line, []byte(" HTTP/1.")) || bytes.Contains(line, []byte(" HTTP/2"))
}

// tlsHandshakeRecord is the first byte of a TLS ClientHello.
const tlsHandshakeRecord = 0x16

// DecodePlain reads an AUTH PLAIN response line (RFC 5034: base64 of
// RFC 4616's message, "=" for empty, "*" to cancel). On failure it
// returns the -ERR reply to send instead of credentials. The POP3 server
// and the proxy's login phase share it.
func DecodePlain(resp string) (user, password, errReply string) {
	if resp == "*" {
		return "", "", "-ERR authentication cancelled"
	}
	var data []byte
	if resp != "=" {
		var err error
		if data, err = base64.StdEncoding.DecodeString(resp); err != nil {
			return "", "", "-ERR invalid base64 in response"
		}
	}
	_, user, password, err := auth.ParsePlain(data)
	switch {
	case errors.Is(err, auth.ErrPlainAuthzid):
		return "", "", "-ERR [AUTH] authorization identity not permitted"
	case err != nil:
		return "", "", "-ERR [AUTH] malformed PLAIN response"
	}
	return user, password, ""
}
