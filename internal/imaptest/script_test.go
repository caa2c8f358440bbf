package imaptest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// describe renders a parsed script compactly for golden comparisons.
func describe(s *Script) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "conns=%d state=%s messages=%d caps=%v ignore_extra=%v\n",
		s.Connections, s.State, s.Messages, s.Capabilities, s.IgnoreExtraUntagged)
	for _, g := range s.Groups {
		fmt.Fprintf(&sb, "group line=%d conn=%d", g.Line, g.Conn)
		if g.Ordered {
			sb.WriteString(" ordered")
		}
		sb.WriteByte('\n')
		for _, c := range g.Commands {
			fmt.Fprintf(&sb, "  cmd line=%d tag=%d reply=%s:", c.Line, c.Tag, formatArgs(c.reply))
			for _, p := range c.parts {
				sb.WriteString(" " + strconv.Quote(p.text))
				if p.hasLit {
					sb.WriteString(" " + literalMarker(p) + strconv.Quote(string(p.lit)))
				}
			}
			sb.WriteByte('\n')
		}
		for _, u := range g.Untagged {
			fmt.Fprintf(&sb, "  %sline=%d %s\n", u.Existence.prefix(), u.Line, formatArgs(u.args))
		}
	}
	return sb.String()
}

func TestParse(t *testing.T) {
	tests := []struct {
		name, script, want string
	}{{
		name:   "method 1 defaults",
		script: "\nok select $mailbox\n* 0 exists\n! 1 exists\n? 0 recent\n\nno bogus\n",
		want: `conns=1 state=selected messages=0 caps=[] ignore_extra=true
group line=2 conn=1
  cmd line=2 tag=0 reply=ok: "select $mailbox"
  * line=3 0 exists
  ! line=4 1 exists
  ? line=5 0 recent
group line=7 conn=1
  cmd line=7 tag=0 reply=no: "bogus"
`,
	}, {
		name:   "headers",
		script: "capabilities: MOVE  UIDPLUS\nconnections: 2\nmessages: all\nstate: Created\nignore_extra_untagged: no\n# comment\n\n2 \"\" delete $mailbox\n",
		want: `conns=2 state=created messages=-1 caps=[MOVE UIDPLUS] ignore_extra=false
group line=8 conn=2
  cmd line=8 tag=0 reply=: "delete $mailbox"
`,
	}, {
		name:   "method 2 reply with response code",
		script: "state: created\n\nexamine $mailbox\n* ok [uidvalidity $uidvalidity]\nok [read-only]\n",
		want: `conns=1 state=created messages=0 caps=[] ignore_extra=true
group line=3 conn=1
  cmd line=3 tag=0 reply=ok [read-only]: "examine $mailbox"
  * line=4 ok [uidvalidity $uidvalidity]
`,
	}, {
		name:   "method 3 pipelined on connection 2",
		script: "connections: 2\n\n2 tag1 status a (messages)\n2 tag2 status b (messages)\n* status a (messages 0)\n2 tag2 ok\n2 tag1 no [nonexistent]\n1 ok noop\n",
		want: `conns=2 state=selected messages=0 caps=[] ignore_extra=true
group line=3 conn=2
  cmd line=3 tag=1 reply=no [nonexistent]: "status a (messages)"
  cmd line=4 tag=2 reply=ok: "status b (messages)"
  * line=5 status a ($!unordered=2 messages 0)
group line=8 conn=1
  cmd line=8 tag=0 reply=ok: "noop"
`,
	}, {
		name:   "literals in a command",
		script: "\nok append $mailbox {{{\nSubject: a\n\nbody\n}}} {{{\nx\n}}}\n",
		want: `conns=1 state=selected messages=0 caps=[] ignore_extra=true
group line=2 conn=1
  cmd line=2 tag=0 reply=ok: "append $mailbox " {18}"Subject: a\r\n\r\nbody" " " {1}"x" ""
`,
	}, {
		name:   "literal8 keeps the file's line ends",
		script: "\nok append $mailbox ~{{{\na\r\n\n}}}\n",
		want: `conns=1 state=selected messages=0 caps=[] ignore_extra=true
group line=2 conn=1
  cmd line=2 tag=0 reply=ok: "append $mailbox " ~{3}"a\r\n" ""
`,
	}, {
		name:   "literal in an expected response and default directives",
		script: "\nok fetch 1 (uid flags body[text])\n* 1 fetch (uid $uid flags (\\seen) body[text] {{{\nbody1\n\n}}})\n",
		want: `conns=1 state=selected messages=0 caps=[] ignore_extra=true
group line=2 conn=1
  cmd line=2 tag=0 reply=ok: "fetch 1 (uid flags body[text])"
  * line=3 1 fetch ($!unordered=2 uid $uid flags ($!unordered $!noextra $!ignore=\recent $!ignore=$HasAttachment $!ignore=$HasNoAttachment \seen) body[text] {7}"body1\r\n")
`,
	}, {
		name:   "explicit directives replace the defaults",
		script: "state: auth\n\nok list \"\" *\n* list ($!unordered $!ban=\\noselect \\subscribed) $sep $name\n",
		want: `conns=1 state=auth messages=0 caps=[] ignore_extra=true
group line=3 conn=1
  cmd line=3 tag=0 reply=ok: "list \"\" *"
  * line=4 list ($!unordered $!ban=\noselect \subscribed) $sep $name
`,
	}, {
		name:   "ifenv blocks and group options",
		script: "\nok noop\n!ordered\n!sleep 10ms\n!ifenv IMAPTEST_SURELY_UNSET_VARIABLE\nok never\n!else\nok always\n!endif\n!ifnenv IMAPTEST_SURELY_UNSET_VARIABLE\nok also\n!endif\n",
		want: `conns=1 state=selected messages=0 caps=[] ignore_extra=true
group line=2 conn=1 ordered
  cmd line=2 tag=0 reply=ok: "noop"
group line=8 conn=1
  cmd line=8 tag=0 reply=ok: "always"
group line=11 conn=1
  cmd line=11 tag=0 reply=ok: "also"
`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse("t", []byte(tt.script))
			if err != nil {
				t.Fatal(err)
			}
			if got := describe(s); got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, script, want string
	}{
		{"missing colon", "state selected\n\nok noop\n", "x:1: missing ':' in header line"},
		{"unknown setting", "colour: blue\n\nok noop\n", `x:1: unknown setting "colour"`},
		{"unknown state", "state: sleeping\n\nok noop\n", `x:1: unknown state value "sleeping"`},
		{"bad connections", "connections: 0\n\nok noop\n", `x:1: invalid connections "0" (1..100)`},
		{"no commands", "state: auth\n\n# nothing\n", "x:3: no commands in file"},
		{"missing reply", "\nselect x\n* 1 exists\n", "x:3: missing reply for command at line 2"},
		{"reply for unknown tag", "\ntag1 noop\ntag2 ok\n", "x:3: reply for unknown tag"},
		{"command before the reply", "\nselect x\nnoop\n", "x:3: missing reply from previous command group"},
		{"missing connection number", "connections: 2\n\nok noop\n", "x:3: missing connection number"},
		{"mixed connections in a pipeline", "connections: 2\n\n1 tag1 noop\n2 tag2 noop\n", "x:4: all pipelined commands must use the same connection"},
		{"reply on wrong connection", "connections: 2\n\n1 noop\n2 ok\n", "x:4: reply for wrong connection"},
		{"tag reused", "\ntag1 noop\ntag1 noop\n", "x:3: tag reused within command group"},
		{"unterminated literal", "\nok append x {{{\nabc\n", "x:2: multi-line literal not ended with }}}"},
		{"unknown directive", "\nok noop\n* 1 fetch ($!shuffle uid 1)\n", "x:3: unknown directive: shuffle"},
		{"odd chain", "\nok noop\n* 1 fetch (uid)\n", "x:3: invalid list argument count 1, chain size 2"},
		{"unbalanced list", "\nok noop\n* 1 fetch (uid 1\n", "x:3: missing ')'"},
		{"else without ifenv", "\nok noop\n!else\n", "x:3: !else without !ifenv"},
		{"unclosed ifenv", "\nok noop\n!ifenv HOME\n", "x:3: !ifenv not closed with !endif"},
		{"maybe bye", "\nok noop\n? bye\n", "x:3: ? BYE is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("x", []byte(tt.script))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want ParseError %q", err, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("got %q, want %q", err, tt.want)
			}
		})
	}
}

// TestParseCopiedScripts parses every script in testdata, and each must
// have messages to append.
func TestParseCopiedScripts(t *testing.T) {
	names, err := ScriptNames(ScriptsDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(names) < 40 {
		t.Fatalf("only %d scripts in %s", len(names), ScriptsDir())
	}
	for _, n := range names {
		s, msgs, err := Load(filepath.Join(ScriptsDir(), n))
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if len(s.Groups) == 0 || len(msgs) == 0 {
			t.Errorf("%s: %d groups, %d messages", n, len(s.Groups), len(msgs))
		}
	}
	for _, f := range []string{"COPYING", "COPYING.MIT", "PROVENANCE.md", "scripted_test.md", "default.mbox"} {
		if _, err := os.Stat(filepath.Join(ScriptsDir(), f)); err != nil {
			t.Error(err)
		}
	}
}
