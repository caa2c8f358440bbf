package imaptest

import (
	"fmt"
	"strconv"
	"strings"
)

// matcher compares server responses with expected patterns, following
// ImapTest's test-exec.c: strings compare case-insensitively, $name
// captures a value the first time and must repeat it afterwards, $ matches
// any one argument (or list), $N is the current sequence number of message
// N as it was when the group started, and $! directives choose between
// ordered and unordered list matching.
type matcher struct {
	vars   map[string]string
	added  []string // captured by the current match attempt
	seqmap []uint32 // initial sequence → current sequence (0 = expunged)

	modseqIdx uint32
	modseqVal uint64
}

func newMatcher() *matcher { return &matcher{vars: map[string]string{}} }

// resetSeqmap starts a group's relative sequence map for n messages.
func (m *matcher) resetSeqmap(n int) {
	m.seqmap = m.seqmap[:0]
	for i := 1; i <= n; i++ {
		m.seqmap = append(m.seqmap, uint32(i))
	}
}

// expunge updates the relative sequence map after "* seq EXPUNGE".
func (m *matcher) expunge(seq uint32) {
	if seq == 0 || int(seq) > len(m.seqmap) {
		return // beyond the initial count: came after an EXISTS
	}
	for i := int(seq) - 1; i < len(m.seqmap); i++ {
		switch {
		case m.seqmap[i] == seq:
			m.seqmap[i] = 0
		case m.seqmap[i] > seq:
			m.seqmap[i]--
		}
	}
}

func (m *matcher) relSeq(n uint32) string {
	switch {
	case n == 0:
		return "<zero seq>"
	case int(n) > len(m.seqmap):
		return "<out of range>"
	case m.seqmap[n-1] == 0:
		return "<expunged>"
	}
	return strconv.FormatUint(uint64(m.seqmap[n-1]), 10)
}

// revert forgets the variables captured by a failed attempt.
func (m *matcher) revert() {
	for _, k := range m.added {
		delete(m.vars, k)
	}
	m.added = m.added[:0]
}

func isVarChar(c byte) bool {
	return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

// varAt reads the variable reference after a '$' at s[i:]: ${name} or
// $name. It returns the name and the index after the reference.
func varAt(s string, i int) (name string, next int, ok bool) {
	if i < len(s) && s[i] == '{' {
		end := strings.IndexByte(s[i+1:], '}')
		if end < 0 {
			return "", 0, false
		}
		return s[i+1 : i+1+end], i + end + 2, true
	}
	j := i
	for j < len(s) && isVarChar(s[j]) {
		j++
	}
	return s[i:j], j, true
}

func parseSeqVar(name string) (uint32, bool) {
	if name == "" || name[0] < '0' || name[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseUint(name, 10, 32)
	return uint32(n), err == nil
}

// expandInput expands pattern against input: known variables are replaced,
// unknown ones capture the input up to the next literal character of the
// pattern. It returns the expanded pattern, whether the comparison is
// case-insensitive, and false on a certain mismatch.
func (m *matcher) expandInput(pat, input string) (string, bool, bool) {
	icase := true
	var out strings.Builder
	si, ii := 0, 0
	for si < len(pat) {
		c := pat[si]
		if c != '$' || (si+1 < len(pat) && pat[si+1] == '$') {
			if c == '$' {
				si++
			}
			if ii >= len(input) || upper(pat[si]) != upper(input[ii]) {
				return "", false, false
			}
			out.WriteByte(pat[si])
			si, ii = si+1, ii+1
			continue
		}
		name, next, ok := varAt(pat, si+1)
		if !ok {
			return "", false, false
		}
		si = next
		var value string
		if n, ok := parseSeqVar(name); ok {
			value = m.relSeq(n)
		} else if v, ok := strings.CutPrefix(name, "case:"); ok {
			value, icase = v, false
		} else if v, ok := m.vars[name]; ok && name != "" {
			value = v
		} else {
			end := m.captureEnd(pat[si:], input, ii)
			value = input[ii:end]
			switch idx, isModseq := modseqIndex(name); {
			case name == "":
				// "$" matches anything and is not kept
			case isModseq:
				value = m.modseq(idx, value)
				m.vars[name] = value
			default:
				m.vars[name] = value
				m.added = append(m.added, name)
			}
		}
		out.WriteString(value)
		for k := 0; k < len(value); k++ {
			if ii >= len(input) || input[ii] != value[k] {
				return "", false, false
			}
			ii++
		}
	}
	return out.String(), icase, true
}

// captureEnd finds where an unknown variable's value ends in input: at the
// first occurrence of the next character the pattern expects.
func (m *matcher) captureEnd(rest, input string, from int) int {
	if rest == "" {
		return len(input)
	}
	term := rest[0]
	if term == '$' && !strings.HasPrefix(rest, "$$") {
		name, _, ok := varAt(rest, 1)
		v := ""
		if ok {
			if n, isSeq := parseSeqVar(name); isSeq {
				v = m.relSeq(n)
			} else if cv, known := m.vars[name]; known {
				v = cv
			}
		}
		if v == "" {
			return len(input)
		}
		term = v[0]
	}
	for i := from; i < len(input); i++ {
		if upper(input[i]) == upper(term) {
			return i
		}
	}
	return len(input)
}

func modseqIndex(name string) (uint32, bool) {
	rest, ok := strings.CutPrefix(name, "modseq")
	if !ok {
		return 0, false
	}
	return parseSeqVar(rest)
}

// modseq enforces that $modseqN values grow at least as fast as their
// indexes; a violation makes the value unmatchable, as in ImapTest.
func (m *matcher) modseq(idx uint32, value string) string {
	v, err := strconv.ParseUint(value, 10, 64)
	if err != nil {
		return "$modseq-not-number"
	}
	if m.modseqIdx > idx {
		return "$modseq-order-mismatch"
	}
	atLeast := m.modseqVal + uint64(idx-m.modseqIdx)
	if v < atLeast {
		m.modseqIdx, m.modseqVal = idx, atLeast
		return fmt.Sprintf("$modseq-at-least-%d", atLeast)
	}
	m.modseqIdx, m.modseqVal = idx, v
	return value
}

// matchFull is the "everything matched" result of matchArgs.
const matchFull = -1

// matchArgs compares pattern with args. It returns matchFull or, on a
// mismatch, how many leading arguments matched (to pick the best near
// miss for the error report). max limits how many pattern arguments are
// compared (a chain of an unordered list). With prefix, extra input
// arguments are allowed and the last pattern string only has to be a
// prefix (status responses carry free text).
func (m *matcher) matchArgs(pattern, args []arg, max int, prefix bool) int {
	ret := 0
	pi, ai := 0, 0
	for ; pi < len(pattern) && max > 0; pi, ai, max = pi+1, ai+1, max-1 {
		p := pattern[pi]
		var a arg
		eol := ai >= len(args)
		if !eol {
			a = args[ai]
		}
		switch p.kind {
		case kindNil:
			if eol || a.kind != kindNil {
				return ret
			}
		case kindAtom, kindString, kindLiteral:
			if p.str == "$" && !eol && a.kind == kindList {
				break // "$" also skips a whole list
			}
			if p.str == "$]" {
				// skip up to and including the atom with ']': "[CAPABILITY $]"
				for ai < len(args) && args[ai].kind == kindAtom && !strings.Contains(args[ai].str, "]") {
					ai++
				}
				break
			}
			if eol {
				return ret
			}
			astr, ok := a.astring()
			if !ok {
				return ret
			}
			mstr, icase, ok := m.expandInput(p.str, astr)
			if !ok {
				return ret
			}
			if prefix && pi == len(pattern)-1 {
				if len(astr) < len(mstr) || !equal(astr[:len(mstr)], mstr, icase) {
					return ret
				}
			} else if !equal(astr, mstr, icase) {
				return ret
			}
		case kindList:
			if eol || a.kind != kindList {
				return ret
			}
			if sub := m.matchList(p.list, a.list); sub != matchFull {
				return ret + sub
			}
		}
		ret++
	}
	if prefix || ai >= len(args) || max == 0 {
		return matchFull
	}
	return ret
}

func equal(a, b string, icase bool) bool {
	if icase {
		return strings.EqualFold(a, b)
	}
	return a == b
}

// matchList compares a pattern list (with its leading $! directives) with
// a response list.
func (m *matcher) matchList(pattern, args []arg) int {
	unordered := false
	chain := 1
	noextra := -1
	var ignores, bans []string
	for len(pattern) > 0 && isDirective(pattern[0]) {
		d := pattern[0].str[2:]
		pattern = pattern[1:]
		switch {
		case strings.HasPrefix(d, "unordered"):
			unordered = true
			if noextra == -1 {
				noextra = 0
			}
			if n, ok := strings.CutPrefix(d, "unordered="); ok {
				if v, err := strconv.Atoi(n); err == nil && v > 0 {
					chain = v
				}
			}
		case d == "ordered":
			unordered = false
		case d == "extra":
			noextra = 0
		case d == "noextra":
			noextra = 1
		case strings.HasPrefix(d, "ignore="):
			ignores = append(ignores, d[len("ignore="):])
		case strings.HasPrefix(d, "ban="):
			bans = append(bans, d[len("ban="):])
		}
	}
	if noextra == -1 {
		noextra = 1
	}
	if !unordered {
		return m.matchArgs(pattern, args, int(^uint(0)>>1), false)
	}
	if len(args)%chain != 0 || len(pattern)%chain != 0 {
		return 0
	}
	matched := make([]bool, len(args))
	ret := 0
	for pi := 0; pi < len(pattern); pi, ret = pi+chain, ret+1 {
		found := false
		for i := 0; i < len(args); i += chain {
			if m.matchArgs(pattern[pi:], args[i:], chain, false) == matchFull {
				matched[i] = true
				found = true
				break
			}
		}
		if !found {
			return ret
		}
	}
	for i := 0; i < len(args); i += chain {
		if matched[i] {
			continue
		}
		s, ok := args[i].astring()
		if !ok {
			continue
		}
		if noextra > 0 && !containsFold(ignores, s) {
			return ret
		}
		if noextra == 0 && containsFold(bans, s) {
			return ret
		}
	}
	return matchFull
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// expandCommand replaces variables in command text before it is sent. An
// unknown variable is an error (ImapTest's test_expand_all).
func (m *matcher) expandCommand(s string) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var out strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		if c != '$' || i == len(s)-1 {
			out.WriteByte(c)
			i++
			continue
		}
		i++
		if s[i] == '$' {
			out.WriteByte('$')
			i++
			continue
		}
		if s[i] == '!' { // directives are not part of commands
			for i < len(s) && s[i] != ' ' {
				i++
			}
			continue
		}
		name, next, ok := varAt(s, i)
		if !ok {
			return "", fmt.Errorf("missing '}' in %q", s)
		}
		i = next
		if n, ok := parseSeqVar(name); ok {
			out.WriteString(m.relSeq(n))
			continue
		}
		v, ok := m.vars[name]
		if !ok {
			return "", fmt.Errorf("uninitialized variable $%s", name)
		}
		out.WriteString(v)
	}
	return out.String(), nil
}

// expandForDisplay expands what is known and leaves unknown variables as
// they are, for error reports.
func (m *matcher) expandForDisplay(s string) string {
	var out strings.Builder
	for i := 0; i < len(s); {
		if s[i] != '$' || i == len(s)-1 {
			out.WriteByte(s[i])
			i++
			continue
		}
		name, next, ok := varAt(s, i+1)
		if !ok || name == "" || strings.HasPrefix(name, "!") {
			out.WriteByte('$')
			i++
			continue
		}
		if n, isSeq := parseSeqVar(name); isSeq {
			out.WriteString(m.relSeq(n))
		} else if v, known := m.vars[name]; known {
			out.WriteString(v)
		} else {
			out.WriteString(s[i:next])
		}
		i = next
	}
	return out.String()
}
