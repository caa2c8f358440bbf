package imaptest

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// State is the session state a script starts in (its "state:" header).
// Each state includes the set-up of the ones before it.
type State int

const (
	StateNonAuth  State = iota // connect only
	StateAuth                  // log in, delete $mailbox*
	StateCreated               // ... and CREATE $mailbox
	StateAppended              // ... and APPEND the script's messages
	StateSelected              // ... and SELECT $mailbox on every connection (default)
)

func (s State) String() string {
	switch s {
	case StateNonAuth:
		return "nonauth"
	case StateAuth:
		return "auth"
	case StateCreated:
		return "created"
	case StateAppended:
		return "appended"
	case StateSelected:
		return "selected"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// MessagesAll is Script.Messages for "messages: all".
const MessagesAll = -1

// maxConnections matches ImapTest's limit.
const maxConnections = 100

// Script is a parsed ImapTest scripted test.
type Script struct {
	Name                string
	Capabilities        []string       // required; missing ones make the run Skipped
	Connections         int            // number of connections (1..100)
	Messages            int            // messages appended at start-up; MessagesAll for the whole mbox
	State               State          // start-up state
	IgnoreExtraUntagged bool           // default true
	Users               map[int]string // "user N: ..." headers (connection → user); unsupported by Run
	Groups              []Group
}

// Group is a set of commands sent together (pipelined) on one connection,
// with the untagged responses expected while they run.
type Group struct {
	Conn     int // 1-based connection number
	Line     int
	Commands []Command
	Untagged []Expect
	Ordered  bool          // "!ordered": untagged responses must come in the listed order
	Sleep    time.Duration // "!sleep": pause after the group
	Output   []string      // "!output": lines to expand and report
	pending  int           // parser: commands still waiting for their reply line
}

// Command is one command of a group.
type Command struct {
	Line  int
	Tag   int    // script tag number ("tagN"), 0 when the command has none
	Text  string // command as written, literals inlined as {n}CRLF<data>
	Reply string // expected tagged reply as written: "ok", "no [trycreate]", "" = any
	parts []cmdPart
	reply []arg
}

// cmdPart is command text followed (optionally) by a literal.
type cmdPart struct {
	text   string
	lit    []byte
	hasLit bool
	lit8   bool
}

// Existence says how an expected untagged response line is used.
type Existence int

const (
	MustExist    Existence = iota // "* ..."
	MustNotExist                  // "! ..."
	MayExist                      // "? ..."
)

// Expect is one expected (or forbidden) untagged response.
type Expect struct {
	Line      int
	Existence Existence
	Text      string // the response as written, after "* ", "! " or "? "
	args      []arg
}

func (e Existence) prefix() string {
	switch e {
	case MustNotExist:
		return "! "
	case MayExist:
		return "? "
	}
	return "* "
}

// ParseError is a script syntax error, reported as NAME:LINE: message.
type ParseError struct {
	Name string
	Line int
	Msg  string
}

func (e *ParseError) Error() string { return fmt.Sprintf("%s:%d: %s", e.Name, e.Line, e.Msg) }

type ifenv struct {
	line     int
	elseSeen bool
	skip     bool
}

type scriptParser struct {
	s       *Script
	curLine int // first line of the logical line being parsed
	group   *Group
	ifenvs  []ifenv
	skip    bool
}

// Parse parses an ImapTest script (see testdata/dovecot-imaptest/scripted_test.md).
// The syntax and defaults follow ImapTest's own parser (src/test-parser.c):
// "messages" defaults to 0, multi-line literals are written {{{ ... }}} (or
// ~{{{ ... }}} for literal8, where line ends are kept as LF), and a
// tagged-reply line names its command by tag or, without tag, closes the
// group's only command.
func Parse(name string, script []byte) (*Script, error) {
	s := &Script{Name: name, Connections: 1, State: StateSelected, IgnoreExtraUntagged: true}
	p := &scriptParser{s: s}
	fail := func(line int, format string, a ...any) error {
		return &ParseError{Name: name, Line: line, Msg: fmt.Sprintf(format, a...)}
	}

	lines := bytes.Split(script, []byte("\n"))
	if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	var (
		header      = true
		continues   bool
		binary      bool
		multi       []byte
		lits        []litSpan
		startPos    int
		lastLineEnd int
		startLine   int
	)
	for i, raw := range lines {
		lineNum := i + 1
		if continues {
			if !bytes.HasPrefix(raw, []byte("}}}")) {
				multi = append(multi, raw...)
				lastLineEnd = len(multi)
				if binary {
					multi = append(multi, '\n')
				} else {
					multi = append(multi, '\r', '\n')
				}
				continue
			}
			multi = multi[:lastLineEnd]
			data := append([]byte(nil), multi[startPos:]...)
			marker := fmt.Sprintf("{%d}\r\n", len(data))
			if binary {
				marker = "~" + marker
			}
			multi = append(multi[:startPos], append([]byte(marker), data...)...)
			lits = append(lits, litSpan{at: startPos, data: data, lit8: binary})
			rest := trimCR(raw[3:])
			if bytes.HasSuffix(rest, []byte("{{{")) {
				rest, binary = openLiteral(rest)
				multi = append(multi, rest...)
				startPos, lastLineEnd = len(multi), len(multi)
				continue
			}
			multi = append(multi, rest...)
			continues = false
			raw = multi
		} else {
			startLine = lineNum
			raw = trimCR(raw)
			if len(raw) == 0 {
				header = false
				continue
			}
			if raw[0] == '#' {
				continue
			}
			if bytes.HasSuffix(raw, []byte("{{{")) {
				var head []byte
				head, binary = openLiteral(raw)
				multi = append(multi[:0:0], head...)
				lits = nil
				startPos, lastLineEnd = len(multi), len(multi)
				continues = true
				continue
			}
			lits = nil
		}
		var err error
		p.curLine = startLine
		if header {
			err = p.header(string(raw))
		} else {
			err = p.command(logicalLine{text: string(raw), lits: lits})
		}
		if err != nil {
			return nil, fail(startLine, "%v", err)
		}
	}
	if continues {
		return nil, fail(startLine, "multi-line literal not ended with }}}")
	}
	if len(p.ifenvs) > 0 {
		return nil, fail(p.ifenvs[0].line, "!ifenv not closed with !endif")
	}
	if len(s.Groups) == 0 {
		return nil, fail(len(lines), "no commands in file")
	}
	if g := p.group; g != nil && g.pending > 0 {
		for _, c := range g.Commands {
			if c.reply == nil {
				return nil, fail(len(lines), "missing reply for command at line %d", c.Line)
			}
		}
	}
	return s, nil
}

func trimCR(b []byte) []byte { return bytes.TrimSuffix(b, []byte("\r")) }

// openLiteral strips the trailing {{{ or ~{{{ of a line.
func openLiteral(b []byte) ([]byte, bool) {
	b = b[:len(b)-3]
	if len(b) > 0 && b[len(b)-1] == '~' {
		return b[:len(b)-1], true
	}
	return b, false
}

// litSpan records where a {{{ }}} literal sits in a logical line: the
// marker ({n}CRLF) starts at byte at.
type litSpan struct {
	at   int
	data []byte
	lit8 bool
}

type logicalLine struct {
	text string
	lits []litSpan
}

func (p *scriptParser) header(line string) error {
	s := p.s
	key, value, ok := strings.Cut(line, ":")
	if !ok {
		return fmt.Errorf("missing ':' in header line")
	}
	key = strings.ToLower(strings.TrimRight(key, " "))
	value = strings.TrimSpace(value)
	switch {
	case key == "capabilities":
		s.Capabilities = strings.Fields(value)
	case key == "connections":
		n, err := strconv.Atoi(value)
		if err != nil || n <= 0 || n > maxConnections {
			return fmt.Errorf("invalid connections %q (1..%d)", value, maxConnections)
		}
		s.Connections = n
	case key == "ignore_extra_untagged":
		s.IgnoreExtraUntagged = strings.HasPrefix(value, "y")
	case strings.HasPrefix(key, "user "):
		n, err := strconv.Atoi(key[5:])
		if err != nil || n <= 0 {
			return fmt.Errorf("unknown setting %q", key)
		}
		if n > maxConnections {
			return fmt.Errorf("too many connections")
		}
		if s.Users == nil {
			s.Users = map[int]string{}
		}
		s.Users[n] = value
	case key == "messages":
		if value == "all" {
			s.Messages = MessagesAll
		} else {
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 {
				return fmt.Errorf("invalid messages %q", value)
			}
			s.Messages = n
		}
	case key == "state":
		switch strings.ToLower(value) {
		case "nonauth":
			s.State = StateNonAuth
		case "auth":
			s.State = StateAuth
		case "created":
			s.State = StateCreated
		case "appended":
			s.State = StateAppended
		case "selected":
			s.State = StateSelected
		default:
			return fmt.Errorf("unknown state value %q", value)
		}
	default:
		return fmt.Errorf("unknown setting %q", key)
	}
	return nil
}

// firstWord returns the text up to the first space.
func firstWord(s string) string {
	w, _, _ := strings.Cut(s, " ")
	return w
}

func parseConnIdx(word string) (int, bool) {
	if word == "" || word[0] < '0' || word[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseUint(word, 10, 32)
	if err != nil || n == 0 {
		return 0, false
	}
	return int(n), true
}

// cmdReply recognises an optional "tagN" and a reply word (ok, no, bad or
// "") at the start of line. It returns the reply word ("" for any, "-" for
// none), the tag and the rest of the line.
func cmdReply(line string) (reply string, tag int, rest string) {
	reply, rest = "-", line
	word := firstWord(rest)
	if len(word) > 3 && strings.EqualFold(word[:3], "tag") && len(word) < len(rest) {
		if n, err := strconv.ParseUint(word[3:], 10, 32); err == nil && n > 0 {
			tag, rest = int(n), rest[len(word)+1:]
			word = firstWord(rest)
		}
	}
	switch {
	case strings.EqualFold(word, "ok"), strings.EqualFold(word, "no"), strings.EqualFold(word, "bad"):
		reply = strings.ToLower(word)
	case word == `""`:
		reply = ""
	default:
		return "-", tag, rest
	}
	rest = strings.TrimPrefix(rest[len(word):], " ")
	return reply, tag, rest
}

func isUntagged(line string) (Existence, bool) {
	switch {
	case strings.HasPrefix(line, "* "):
		return MustExist, true
	case strings.HasPrefix(line, "! "):
		return MustNotExist, true
	case strings.HasPrefix(line, "? "):
		return MayExist, true
	}
	return 0, false
}

func (p *scriptParser) command(ll logicalLine) error {
	line := ll.text
	s := p.s
	if env, ok := strings.CutPrefix(line, "!ifenv "); ok {
		return p.pushIfenv(env, false)
	}
	if env, ok := strings.CutPrefix(line, "!ifnenv "); ok {
		return p.pushIfenv(env, true)
	}
	switch line {
	case "!else":
		if len(p.ifenvs) == 0 {
			return fmt.Errorf("!else without !ifenv")
		}
		top := &p.ifenvs[len(p.ifenvs)-1]
		if top.elseSeen {
			return fmt.Errorf("!else already seen")
		}
		top.elseSeen = true
		if !top.skip {
			p.skip = !p.skip
		}
		return nil
	case "!endif":
		if len(p.ifenvs) == 0 {
			return fmt.Errorf("!endif without !ifenv")
		}
		p.skip = p.ifenvs[len(p.ifenvs)-1].skip
		p.ifenvs = p.ifenvs[:len(p.ifenvs)-1]
		return nil
	}
	if p.skip {
		return nil
	}

	g := p.group
	if g != nil {
		if v, ok := strings.CutPrefix(line, "!sleep "); ok {
			d, err := parseSleep(v)
			if err != nil {
				return fmt.Errorf("invalid !sleep value %q: %v", v, err)
			}
			g.Sleep = d
			return nil
		}
		if v, ok := strings.CutPrefix(line, "!output "); ok {
			g.Output = append(g.Output, v)
			return nil
		}
		if line == "!ordered" {
			g.Ordered = true
			return nil
		}
		if ex, ok := isUntagged(line); ok {
			return p.untagged(g, ll, 2, ex)
		}
		if g.pending > 0 {
			noConn := line
			replyConn := 0
			if s.Connections > 1 {
				if n, ok := parseConnIdx(firstWord(noConn)); ok {
					replyConn = n
					_, noConn, _ = strings.Cut(noConn, " ")
				}
			}
			if reply, tag, _ := cmdReply(noConn); reply != "-" {
				if s.Connections > 1 {
					if replyConn == 0 {
						return fmt.Errorf("missing connection number")
					}
					if replyConn != g.Conn {
						return fmt.Errorf("reply for wrong connection")
					}
				}
				return p.finish(g, tag, noConn)
			}
		}
	}

	if g == nil || g.pending == 0 {
		s.Groups = append(s.Groups, Group{Conn: 1, Line: p.curLine})
		g = &s.Groups[len(s.Groups)-1]
		p.group = g
	}
	cmd := Command{Line: p.curLine}
	offset := 0 // bytes removed from the front of line, to keep literal spans valid
	if s.Connections > 1 {
		word := firstWord(line)
		n, ok := parseConnIdx(word)
		if !ok {
			return fmt.Errorf("missing connection number")
		}
		if n > maxConnections {
			return fmt.Errorf("too many connections")
		}
		if len(g.Commands) > 0 && g.Conn != n {
			return fmt.Errorf("all pipelined commands must use the same connection")
		}
		g.Conn = n
		if n > s.Connections {
			s.Connections = n
		}
		if len(word) < len(line) {
			offset = len(word) + 1
		} else {
			offset = len(line)
		}
	}
	reply, tag, rest := cmdReply(line[offset:])
	offset = len(line) - len(rest)
	cmd.Tag = tag
	if tag == 0 {
		if g.pending > 0 || len(g.Commands) > 0 {
			return fmt.Errorf("missing reply from previous command group")
		}
	} else {
		for _, c := range g.Commands {
			if c.Tag == tag {
				return fmt.Errorf("tag reused within command group")
			}
		}
	}
	if len(g.Commands) == 0 {
		if ex, ok := isUntagged(rest); ok {
			// a group of untagged lines only: checks the greeting
			return p.untagged(g, ll, offset+2, ex)
		}
	}
	if reply == "-" {
		g.pending++
	} else {
		cmd.Reply = reply
		cmd.reply = []arg{{kind: kindAtom, str: reply}}
	}
	cmd.Text = rest
	cmd.parts = splitCommand(ll, offset)
	g.Commands = append(g.Commands, cmd)
	return nil
}

func (p *scriptParser) pushIfenv(env string, negate bool) error {
	_, set := os.LookupEnv(env)
	skipBlock := !set
	if negate {
		skipBlock = !skipBlock
	}
	p.ifenvs = append(p.ifenvs, ifenv{line: p.curLine, skip: p.skip})
	if skipBlock {
		p.skip = true
	}
	return nil
}

func parseSleep(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(n) * time.Millisecond, nil
	}
	d, err := time.ParseDuration(strings.ReplaceAll(v, " ", ""))
	if err != nil || d < 0 || d > time.Minute {
		return 0, fmt.Errorf("want milliseconds or a Go duration up to 1m")
	}
	return d, nil
}

// untagged parses an expected untagged line starting at byte off of ll.
func (p *scriptParser) untagged(g *Group, ll logicalLine, off int, ex Existence) error {
	text := ll.text[off:]
	args, err := parseExpectArgs(text)
	if err != nil {
		return err
	}
	if ex == MayExist && isBye(args) {
		return fmt.Errorf("? BYE is not supported")
	}
	g.Untagged = append(g.Untagged, Expect{Line: p.curLine, Existence: ex, Text: text, args: args})
	return nil
}

// parseExpectArgs parses an expected untagged response and adds the
// default $! directives.
func parseExpectArgs(text string) ([]arg, error) {
	args, err := parseArgs([]byte(text))
	if err != nil {
		return nil, err
	}
	replyName := ""
	if len(args) > 0 && args[0].kind == kindAtom && args[0].str != "" {
		replyName = args[0].str
		if c := replyName[0]; c == '$' || (c >= '0' && c <= '9') {
			replyName = ""
			if len(args) > 1 && args[1].kind == kindAtom {
				replyName = args[1].str
			}
		}
	}
	top := &dirCtx{replyName: replyName, chain: 1}
	return top.handle(args)
}

func isBye(args []arg) bool {
	return len(args) > 0 && args[0].kind == kindAtom && len(args[0].str) >= 3 &&
		strings.EqualFold(args[0].str[:3], "BYE")
}

// haveBye reports whether the group expects an untagged BYE.
func (g *Group) haveBye() bool {
	for _, u := range g.Untagged {
		if u.Existence == MustExist && isBye(u.args) {
			return true
		}
	}
	return false
}

// finish records the tagged reply line of a method-2/3 command.
func (p *scriptParser) finish(g *Group, tag int, line string) error {
	var cmd *Command
	for i := range g.Commands {
		if g.Commands[i].Tag == tag {
			cmd = &g.Commands[i]
			break
		}
	}
	if cmd == nil {
		return fmt.Errorf("reply for unknown tag")
	}
	if cmd.reply != nil {
		return fmt.Errorf("command already has a reply")
	}
	text := line
	if tag != 0 {
		_, text, _ = strings.Cut(line, " ")
	}
	args, err := parseArgs([]byte(text))
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return fmt.Errorf("empty reply")
	}
	cmd.reply = args
	cmd.Reply = text
	if args[0].kind == kindString && args[0].str == "" {
		cmd.reply[0] = arg{kind: kindAtom, str: ""}
	}
	g.pending--
	return nil
}

// splitCommand cuts a command (starting at byte off of the logical line)
// into text/literal parts at the {{{ }}} literals.
func splitCommand(ll logicalLine, off int) []cmdPart {
	var parts []cmdPart
	pos := off
	for _, l := range ll.lits {
		if l.at < off {
			continue // literal inside a stripped prefix: impossible, be safe
		}
		marker := fmt.Sprintf("{%d}\r\n", len(l.data))
		if l.lit8 {
			marker = "~" + marker
		}
		parts = append(parts, cmdPart{text: ll.text[pos:l.at], lit: l.data, hasLit: true, lit8: l.lit8})
		pos = l.at + len(marker) + len(l.data)
	}
	parts = append(parts, cmdPart{text: ll.text[pos:]})
	return parts
}
