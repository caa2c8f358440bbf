package imaptest

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// argKind is the type of one parsed IMAP argument. Atoms, quoted strings and
// literals all compare as strings ("astring"); NIL and lists only match their
// own kind, as in ImapTest.
type argKind uint8

const (
	kindAtom argKind = iota
	kindString
	kindLiteral
	kindNil
	kindList
)

// arg is one IMAP argument of a response or of an expected-response pattern.
type arg struct {
	kind argKind
	str  string // atom, string or literal contents
	list []arg  // kindList
	lit8 bool   // literal was ~{n}
}

func (a arg) astring() (string, bool) {
	switch a.kind {
	case kindAtom, kindString, kindLiteral:
		return a.str, true
	}
	return "", false
}

func (a arg) isAtom(s string) bool {
	return a.kind == kindAtom && strings.EqualFold(a.str, s)
}

// maxLiteral bounds a single literal in a response or script so that a broken
// server cannot make the runner allocate without limit.
const maxLiteral = 64 << 20

var errMissingData = errors.New("missing data")

// parser tokenises IMAP arguments the way ImapTest's scripts and the
// responses they are compared with need: written by hand because no Go IMAP
// library exposes a generic (schema-free) argument parser, and the matcher
// must see atoms, strings, literals and lists exactly as sent.
type parser struct {
	b   []byte
	pos int
}

// parseArgs parses a whole line (without tag). Status responses (OK, NO,
// BAD, BYE, PREAUTH) are split into the status word, the bracketed response
// code parsed as arguments, and the human-readable text as plain
// space-separated atoms: resp-text may contain any characters, so it must
// never be a parse error.
func parseArgs(b []byte) ([]arg, error) {
	p := &parser{b: b}
	p.skipSpaces()
	first, ok := p.peekWord()
	if ok && isStatusWord(first) {
		return p.parseStatus(), nil
	}
	args, err := p.parseList(0)
	if err != nil {
		return nil, err
	}
	return args, nil
}

func isStatusWord(w string) bool {
	switch strings.ToUpper(w) {
	case "OK", "NO", "BAD", "BYE", "PREAUTH":
		return true
	}
	return false
}

func (p *parser) peekWord() (string, bool) {
	i := p.pos
	for i < len(p.b) && p.b[i] != ' ' && p.b[i] != '\r' && p.b[i] != '\n' {
		i++
	}
	if i == p.pos {
		return "", false
	}
	return string(p.b[p.pos:i]), true
}

func (p *parser) skipSpaces() {
	for p.pos < len(p.b) && p.b[p.pos] == ' ' {
		p.pos++
	}
}

func (p *parser) atEOL() bool {
	return p.pos >= len(p.b) || p.b[p.pos] == '\r' || p.b[p.pos] == '\n'
}

func (p *parser) parseStatus() []arg {
	word, _ := p.peekWord()
	args := []arg{{kind: kindAtom, str: word}}
	p.pos += len(word)
	p.skipSpaces()
	if p.pos < len(p.b) && p.b[p.pos] == '[' {
		save := p.pos
		code, err := p.parseCode()
		if err == nil {
			args = append(args, code...)
		} else {
			p.pos = save
		}
	}
	end := bytes.IndexAny(p.b[p.pos:], "\r\n")
	if end < 0 {
		end = len(p.b) - p.pos
	}
	for _, w := range bytes.Split(p.b[p.pos:p.pos+end], []byte(" ")) {
		if len(w) > 0 {
			args = append(args, arg{kind: kindAtom, str: string(w)})
		}
	}
	p.pos += end
	return args
}

// parseCode parses "[CODE args...]" as ordinary arguments, stopping after
// the top-level atom that ends with ']'.
func (p *parser) parseCode() ([]arg, error) {
	var args []arg
	for !p.atEOL() {
		a, err := p.parseOne(0)
		if err != nil {
			return nil, err
		}
		args = append(args, a)
		p.skipSpaces()
		if a.kind == kindAtom && strings.HasSuffix(a.str, "]") {
			return args, nil
		}
	}
	return args, nil
}

// parseList parses arguments until ')' (depth > 0) or end of line.
func (p *parser) parseList(depth int) ([]arg, error) {
	args := []arg{}
	for {
		p.skipSpaces()
		if p.atEOL() {
			if depth > 0 {
				return nil, errors.New("missing ')'")
			}
			return args, nil
		}
		if depth > 0 && p.b[p.pos] == ')' {
			p.pos++
			return args, nil
		}
		a, err := p.parseOne(depth)
		if err != nil {
			return nil, err
		}
		args = append(args, a)
	}
}

func (p *parser) parseOne(depth int) (arg, error) {
	switch c := p.b[p.pos]; {
	case c == '(':
		if depth >= 100 {
			return arg{}, errors.New("lists nested too deeply")
		}
		p.pos++
		l, err := p.parseList(depth + 1)
		if err != nil {
			return arg{}, err
		}
		return arg{kind: kindList, list: l}, nil
	case c == '"':
		return p.parseQuoted()
	case c == '{' || (c == '~' && p.pos+1 < len(p.b) && p.b[p.pos+1] == '{'):
		if a, ok, err := p.parseLiteral(); ok || err != nil {
			return a, err
		}
	}
	return p.parseAtom(depth), nil
}

func (p *parser) parseQuoted() (arg, error) {
	p.pos++
	var sb strings.Builder
	for p.pos < len(p.b) {
		c := p.b[p.pos]
		switch c {
		case '"':
			p.pos++
			return arg{kind: kindString, str: sb.String()}, nil
		case '\\':
			if p.pos+1 < len(p.b) {
				p.pos++
				c = p.b[p.pos]
			}
		case '\r', '\n':
			return arg{}, errors.New("line break in quoted string")
		}
		sb.WriteByte(c)
		p.pos++
	}
	return arg{}, errors.New("missing '\"'")
}

// parseLiteral reads {n}, {n+} or ~{n} followed by CRLF (or LF) and n bytes.
// ok is false when the text only looks like the start of a literal, in which
// case it is an atom.
func (p *parser) parseLiteral() (arg, bool, error) {
	i := p.pos
	lit8 := false
	if p.b[i] == '~' {
		lit8 = true
		i++
	}
	i++ // '{'
	j := i
	for j < len(p.b) && p.b[j] >= '0' && p.b[j] <= '9' {
		j++
	}
	if j == i || j-i > 10 {
		return arg{}, false, nil
	}
	n, err := strconv.ParseUint(string(p.b[i:j]), 10, 64)
	if err != nil {
		return arg{}, false, nil
	}
	if j < len(p.b) && p.b[j] == '+' { // LITERAL+ / LITERAL-
		j++
	}
	if j >= len(p.b) || p.b[j] != '}' {
		return arg{}, false, nil
	}
	j++
	switch {
	case j+1 < len(p.b) && p.b[j] == '\r' && p.b[j+1] == '\n':
		j += 2
	case j < len(p.b) && p.b[j] == '\n':
		j++
	case j >= len(p.b) || (j+1 == len(p.b) && p.b[j] == '\r'):
		return arg{}, false, errMissingData
	default:
		return arg{}, false, nil
	}
	if n > maxLiteral {
		return arg{}, false, fmt.Errorf("literal of %d bytes is too large", n)
	}
	if uint64(len(p.b)-j) < n {
		return arg{}, false, errMissingData
	}
	p.pos = j + int(n)
	return arg{kind: kindLiteral, str: string(p.b[j:p.pos]), lit8: lit8}, true, nil
}

func (p *parser) parseAtom(depth int) arg {
	start := p.pos
	for p.pos < len(p.b) {
		c := p.b[p.pos]
		if c == ' ' || c == '\r' || c == '\n' || (c == '(' && p.pos > start) || (c == ')' && depth > 0) {
			break
		}
		p.pos++
	}
	if p.pos == start { // a lone '(' can't get here; guard against no progress anyway
		p.pos++
	}
	s := string(p.b[start:p.pos])
	if strings.EqualFold(s, "NIL") {
		return arg{kind: kindNil}
	}
	return arg{kind: kindAtom, str: s}
}

// formatArgs renders arguments for error messages, close to the wire form.
func formatArgs(args []arg) string {
	var sb strings.Builder
	writeArgs(&sb, args)
	return sb.String()
}

func writeArgs(sb *strings.Builder, args []arg) {
	for i, a := range args {
		if i > 0 {
			sb.WriteByte(' ')
		}
		switch a.kind {
		case kindAtom:
			sb.WriteString(a.str)
		case kindNil:
			sb.WriteString("NIL")
		case kindString:
			sb.WriteString(strconv.Quote(a.str))
		case kindLiteral:
			if a.lit8 {
				sb.WriteByte('~')
			}
			fmt.Fprintf(sb, "{%d}", len(a.str))
			sb.WriteString(strconv.Quote(a.str))
		case kindList:
			sb.WriteByte('(')
			writeArgs(sb, a.list)
			sb.WriteByte(')')
		}
	}
}
