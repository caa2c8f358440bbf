package mailproxy

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// IMAP limits of the login phase.
const (
	maxIMAPLine     = 8 << 10 // one line, without its CRLF
	maxLiteral      = 8 << 10 // one literal
	maxLiterals     = 2       // LOGIN's user name and password
	maxIMAPTokens   = 128     // arguments, parentheses included
	maxIMAPTagBytes = 64
)

// tokenKind tells the arguments of a command apart.
type tokenKind int

const (
	tokAtom   tokenKind = iota // an atom; NIL is one
	tokString                  // a quoted string or a literal
	tokOpen                    // (
	tokClose                   // )
)

type imapToken struct {
	Kind  tokenKind
	Value string
}

// imapCommand is one command of the pre-authentication phase.
type imapCommand struct {
	Tag  string
	Name string // upper case
	Args []imapToken
}

var (
	errIMAPSyntax  = errors.New("syntax error")
	errIMAPTag     = errors.New("invalid tag")
	errIMAPNUL     = errors.New("NUL byte in command")
	errIMAPTooMany = errors.New("too many arguments")
)

// isAtomChar reports whether b is an ATOM-CHAR of RFC 3501, or a ']' when
// astring is set (ASTRING-CHAR).
func isAtomChar(b byte, astring bool) bool {
	if b <= 0x20 || b >= 0x7f {
		return false
	}
	switch b {
	case '(', ')', '{', '%', '*', '"', '\\':
		return false
	case ']':
		return astring
	}
	return true
}

// validTag reports whether t is a tag: ASTRING-CHARs but '+'.
func validTag(t []byte) bool {
	if len(t) == 0 || len(t) > maxIMAPTagBytes {
		return false
	}
	for _, b := range t {
		if b == '+' || !isAtomChar(b, true) {
			return false
		}
	}
	return true
}

// commandTag returns the tag of a command line, "" when it has none valid.
func commandTag(line []byte) string {
	tag, _, _ := bytes.Cut(line, []byte{' '})
	if !validTag(tag) {
		return ""
	}
	return string(tag)
}

// literalAtEnd reports whether a line ends with a synchronising literal's
// announcement {n}, and n.
func literalAtEnd(line []byte) (int, bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	n, ok := parseLiteralLen(line[i+1 : len(line)-1])
	return n, ok
}

// parseLiteralLen reads the digits of a literal's length, at most 9 of
// them (RFC 3501 allows up to 2^32-1; the login phase wants far less).
func parseLiteralLen(d []byte) (int, bool) {
	if len(d) == 0 || len(d) > 9 {
		return 0, false
	}
	n := 0
	for _, b := range d {
		if b < '0' || b > '9' {
			return 0, false
		}
		n = n*10 + int(b-'0')
	}
	return n, true
}

// parseIMAPCommand parses one command as the session read it: its lines
// without their final CRLF, each literal's announcement {n} followed by
// CRLF and the n octets, the rest of the command continuing after them.
// The grammar is RFC 3501's for the commands of the login phase: a tag, a
// command name, and arguments that are atoms, quoted strings (with \\ and
// \" escapes), literals and parenthesised lists. Written by hand because
// go-imap's decoder is internal to it.
func parseIMAPCommand(raw []byte) (imapCommand, error) {
	var cmd imapCommand
	tag, rest, _ := bytes.Cut(raw, []byte{' '})
	if !validTag(tag) {
		return cmd, errIMAPTag
	}
	cmd.Tag = string(tag)
	if bytes.IndexByte(raw, 0) >= 0 {
		return cmd, errIMAPNUL
	}
	name := rest
	if i := bytes.IndexByte(rest, ' '); i >= 0 {
		name, rest = rest[:i], rest[i:]
	} else {
		rest = nil
	}
	if len(name) == 0 || len(name) > 40 {
		return cmd, errIMAPSyntax
	}
	for _, b := range name {
		if !isAtomChar(b, false) {
			return cmd, errIMAPSyntax
		}
	}
	cmd.Name = strings.ToUpper(string(name))
	p := rest
	depth := 0
	for len(p) > 0 {
		if len(cmd.Args) >= maxIMAPTokens {
			return cmd, errIMAPTooMany
		}
		// A space separates arguments; none is needed after '(' or
		// before ')'.
		prevOpen := len(cmd.Args) > 0 && cmd.Args[len(cmd.Args)-1].Kind == tokOpen
		if p[0] == ' ' {
			if prevOpen {
				return cmd, errIMAPSyntax
			}
			p = p[1:]
			if len(p) == 0 || p[0] == ' ' || p[0] == ')' {
				return cmd, errIMAPSyntax
			}
		} else if p[0] != ')' && !prevOpen {
			return cmd, errIMAPSyntax
		}
		var tok imapToken
		var err error
		switch p[0] {
		case '(':
			tok, p = imapToken{Kind: tokOpen}, p[1:]
			depth++
			if depth > 8 {
				return cmd, errIMAPSyntax
			}
		case ')':
			if depth == 0 {
				return cmd, errIMAPSyntax
			}
			tok, p = imapToken{Kind: tokClose}, p[1:]
			depth--
		case '"':
			tok, p, err = parseQuoted(p)
		case '{':
			tok, p, err = parseLiteral(p)
		default:
			i := 0
			for i < len(p) && isAtomChar(p[i], true) {
				i++
			}
			if i == 0 {
				return cmd, errIMAPSyntax
			}
			tok, p = imapToken{Kind: tokAtom, Value: string(p[:i])}, p[i:]
		}
		if err != nil {
			return cmd, err
		}
		cmd.Args = append(cmd.Args, tok)
	}
	if depth != 0 {
		return cmd, errIMAPSyntax
	}
	return cmd, nil
}

// parseQuoted reads a quoted string at the start of p. Octets above 0x7F
// are let through (UTF-8 passwords; Dovecot does the same).
func parseQuoted(p []byte) (imapToken, []byte, error) {
	var b strings.Builder
	for i := 1; i < len(p); i++ {
		switch c := p[i]; c {
		case '"':
			return imapToken{Kind: tokString, Value: b.String()}, p[i+1:], nil
		case '\\':
			if i+1 >= len(p) || p[i+1] != '"' && p[i+1] != '\\' {
				return imapToken{}, nil, errIMAPSyntax
			}
			i++
			b.WriteByte(p[i])
		case '\r', '\n', 0:
			return imapToken{}, nil, errIMAPSyntax
		default:
			b.WriteByte(c)
		}
	}
	return imapToken{}, nil, errIMAPSyntax
}

// parseLiteral reads {n} CRLF and n octets at the start of p.
func parseLiteral(p []byte) (imapToken, []byte, error) {
	end := bytes.IndexByte(p, '}')
	if end < 0 {
		return imapToken{}, nil, errIMAPSyntax
	}
	n, ok := parseLiteralLen(p[1:end])
	if !ok || n > maxLiteral {
		return imapToken{}, nil, errIMAPSyntax
	}
	p = p[end+1:]
	if !bytes.HasPrefix(p, []byte("\r\n")) || len(p) < 2+n {
		return imapToken{}, nil, errIMAPSyntax
	}
	return imapToken{Kind: tokString, Value: string(p[2 : 2+n])}, p[2+n:], nil
}

// quoteIMAP returns s as an IMAP quoted string when it can be one (7-bit
// printable text), else ok is false and s must go as a literal.
func quoteIMAP(s string) (string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			return "", false
		}
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`, true
}

// imapStringArg is s as a quoted string, or NIL-free fallback text for
// fields that may not carry a literal (ID values): control and 8-bit
// octets become '?'.
func imapStringArg(s string) string {
	if q, ok := quoteIMAP(s); ok {
		return q
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c >= 0x7f {
			b[i] = '?'
		}
	}
	q, _ := quoteIMAP(string(b))
	return q
}

// literalLen formats a literal's announcement.
func literalLen(n int) string { return "{" + strconv.Itoa(n) + "}" }
