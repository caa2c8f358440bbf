package imaptest

import (
	"strings"
	"testing"
)

func TestParseArgs(t *testing.T) {
	tests := []struct {
		name, in, want, err string
	}{
		{name: "fetch", in: `1 FETCH (UID 5 FLAGS (\Seen $Junk))`, want: `1 FETCH (UID 5 FLAGS (\Seen $Junk))`},
		{name: "literal", in: "1 FETCH (BODY[] {5}\r\nhe)lo UID 2)", want: `1 FETCH (BODY[] {5}"he)lo" UID 2)`},
		{name: "literal8 and LF only", in: "1 FETCH (BINARY[1] ~{2}\na\n)", want: `1 FETCH (BINARY[1] ~{2}"a\n")`},
		{name: "literal+", in: "x {1+}\r\nz", want: `x {1}"z"`},
		{name: "not a literal", in: `x {foo} {1}x`, want: `x {foo} {1}x`},
		{name: "quoted escapes", in: `LIST () "/" "a\"b\\c"`, want: `LIST () "/" "a\"b\\c"`},
		{name: "NIL", in: `1 FETCH (ENVELOPE (NIL "nil" nil))`, want: `1 FETCH (ENVELOPE (NIL "nil" NIL))`},
		{name: "section with list", in: `1 FETCH (BODY[HEADER.FIELDS (FROM)] "x")`, want: `1 FETCH (BODY[HEADER.FIELDS (FROM) ] "x")`},
		{name: "status with code", in: "OK [UIDVALIDITY 123] UIDs valid\r\n", want: `OK [UIDVALIDITY 123] UIDs valid`},
		{name: "status code with list", in: `OK [PERMANENTFLAGS (\Seen \*)] Limited`, want: `OK [PERMANENTFLAGS (\Seen \*) ] Limited`},
		{name: "status text is free", in: `NO [TRYCREATE] Mailbox "x (does {3} not exist`, want: `NO [TRYCREATE] Mailbox "x (does {3} not exist`},
		{name: "unterminated code", in: `BAD [oops (`, want: `BAD [oops (`},
		{name: "top-level paren is an atom", in: `SEARCH 1) 2`, want: `SEARCH 1) 2`},
		{name: "empty", in: "", want: ``},
		{name: "unbalanced list", in: `1 FETCH (UID 1`, err: "missing ')'"},
		{name: "unterminated string", in: `LIST () "/" "abc`, err: `missing '"'`},
		{name: "short literal", in: "x {5}\r\nab", err: "missing data"},
		{name: "huge literal", in: "x {999999999}\r\n", err: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, err := parseArgs([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, %v; want error %q", formatArgs(args), err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := formatArgs(args); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		name     string
		pattern  string            // as after "* " in a script
		response string            // untagged response without "* "
		vars     map[string]string // known before matching
		want     bool
		captured map[string]string
	}{
		{name: "capture", pattern: "1 fetch (uid $uid1)", response: "1 FETCH (UID 42)",
			want: true, captured: map[string]string{"uid1": "42"}},
		{name: "known variable must repeat", pattern: "1 fetch (uid $uid1)", response: "1 FETCH (UID 42)",
			vars: map[string]string{"uid1": "41"}},
		{name: "fetch items in any order, extra items allowed", pattern: "1 fetch (uid 3 flags (\\seen))",
			response: `1 FETCH (FLAGS (\Seen \Recent) MODSEQ (4) UID 3)`, want: true},
		{name: "flags may not have extra flags", pattern: "1 fetch (flags (\\seen))",
			response: `1 FETCH (FLAGS (\Seen \Flagged))`},
		{name: "flags may not miss flags", pattern: "1 fetch (flags (\\seen \\flagged))",
			response: `1 FETCH (FLAGS (\Seen))`},
		{name: "$ matches an atom or a list", pattern: "1 fetch (uid $ flags $)",
			response: `1 FETCH (FLAGS (\Seen) UID 9)`, want: true},
		{name: "$ does not match a missing argument", pattern: "search $", response: "SEARCH"},
		{name: "literal equals quoted string, case-insensitively", pattern: "1 fetch (body[] {5}\r\nhello)",
			response: `1 FETCH (BODY[] "HELLO")`, want: true},
		{name: "literal content differs", pattern: "1 fetch (body[] {5}\r\nhello)",
			response: "1 FETCH (BODY[] {5}\r\nhellp)"},
		{name: "status items unordered", pattern: "status $mailbox (messages 1 unseen 0)",
			response: "STATUS box (UNSEEN 0 MESSAGES 1 RECENT 0)", vars: map[string]string{"mailbox": "box"}, want: true},
		{name: "status value differs", pattern: "status $mailbox (messages 1)",
			response: "STATUS box (MESSAGES 2)", vars: map[string]string{"mailbox": "box"}},
		{name: "list flags unordered with extras", pattern: "list () $sep $mailbox${sep}test",
			response: `LIST (\HasNoChildren) "/" box/test`, vars: map[string]string{"mailbox": "box"},
			want: true, captured: map[string]string{"sep": "/"}},
		{name: "banned flag", pattern: `list ($!unordered $!ban=\noselect \subscribed) / x`,
			response: `LIST (\Subscribed \NoSelect) "/" x`},
		{name: "ban only applies to extras", pattern: `list ($!unordered $!ban=\noselect \subscribed) / x`,
			response: `LIST (\Subscribed \Marked) "/" x`, want: true},
		{name: "ordered list must match exactly", pattern: "search 1 2", response: "SEARCH 1 2 3"},
		{name: "status response prefix", pattern: "ok [uidvalidity $uv]", response: "OK [UIDVALIDITY 7] UIDs valid",
			want: true, captured: map[string]string{"uv": "7"}},
		{name: "status code differs", pattern: "ok [uidnext $n]", response: "OK [UIDVALIDITY 7] UIDs valid"},
		{name: "skip to ]", pattern: "ok [capability $] done", response: "OK [CAPABILITY IMAP4rev1 IDLE] done here", want: true},
		{name: "case-sensitive part", pattern: "list () $ ${case:INBOX}", response: `LIST () "/" inbox`},
		{name: "case-sensitive part matches", pattern: "list () $ ${case:INBOX}", response: `LIST () "/" INBOX`, want: true},
		{name: "$$ is a dollar", pattern: "1 fetch (flags ($$hello))", response: `1 FETCH (FLAGS ($Hello))`, want: true},
		{name: "capture stops at the next pattern character", pattern: "esearch (tag $tag) uid all $a:$b",
			response: `ESEARCH (TAG "1.5") UID ALL 3:9`, vars: map[string]string{"tag": "1.5"}, want: true,
			captured: map[string]string{"a": "3", "b": "9"}},
		{name: "NIL matches only NIL", pattern: "1 fetch (envelope (NIL))", response: `1 FETCH (ENVELOPE ("NIL"))`},
		{name: "modseq must grow", pattern: "1 fetch (modseq ($modseq5))", response: "1 FETCH (MODSEQ (3))",
			vars: map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pat, err := parseExpectArgs(tt.pattern)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := parseArgs([]byte(tt.response))
			if err != nil {
				t.Fatal(err)
			}
			m := newMatcher()
			for k, v := range tt.vars {
				m.vars[k] = v
			}
			prefix := len(resp) > 0 && (resp[0].isAtom("OK") || resp[0].isAtom("NO"))
			got := m.matchArgs(pat, resp, 1<<30, prefix) == matchFull
			if got != tt.want {
				t.Fatalf("match = %v, want %v\npattern  %s\nresponse %s", got, tt.want, formatArgs(pat), formatArgs(resp))
			}
			for k, v := range tt.captured {
				if m.vars[k] != v {
					t.Errorf("$%s = %q, want %q", k, m.vars[k], v)
				}
			}
		})
	}
}

// TestRelativeSequences checks $N against a server that expunges messages
// 1 and 3 of 4, announced as "1 EXPUNGE" then "2 EXPUNGE".
func TestRelativeSequences(t *testing.T) {
	m := newMatcher()
	m.resetSeqmap(4)
	want := func(n uint32, s string) {
		t.Helper()
		if got := m.relSeq(n); got != s {
			t.Errorf("$%d = %s, want %s", n, got, s)
		}
	}
	want(3, "3")
	m.expunge(1)
	want(1, "<expunged>")
	want(3, "2")
	m.expunge(2)
	want(3, "<expunged>")
	want(2, "1")
	want(4, "2")
	want(5, "<out of range>")
	want(0, "<zero seq>")
}

func TestExpandCommand(t *testing.T) {
	m := newMatcher()
	m.vars["mailbox"] = "box"
	m.vars["uid1"] = "7"
	m.resetSeqmap(3)
	tests := []struct{ in, want, err string }{
		{in: "select $mailbox", want: "select box"},
		{in: "create ${mailbox}2", want: "create box2"},
		{in: "store 1 flags ($$a) $", want: "store 1 flags ($a) $"},
		{in: "fetch $3 (uid) $uid1", want: "fetch 3 (uid) 7"},
		{in: "fetch $unknown", err: "uninitialized variable $unknown"},
		{in: "fetch ${open", err: "missing '}'"},
	}
	for _, tt := range tests {
		got, err := m.expandCommand(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: got %q, %v; want error %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: got %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestLoadMbox(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
		err      bool
	}{
		{name: "two messages, LF to CRLF, blank separator line kept",
			in:   "From a@b  Fri Feb 22 17:06:23 2008\nSubject: 1\n\nbody1\n\nFrom a@b  Fri Feb 22 17:06:23 2008 +0200\nSubject: 2\r\n\r\nbody2\n",
			want: []string{"Subject: 1\r\n\r\nbody1\r\n\r\n", "Subject: 2\r\n\r\nbody2\r\n"}},
		{name: "From line without a date is text",
			in:   "From a@b Fri Feb 22 17:06:23 2008\n\nFrom here on\n>From quoted\n",
			want: []string{"\r\nFrom here on\r\n>From quoted\r\n"}},
		{name: "no final newline",
			in:   "From a@b Fri Feb 22 17:06:23 2008\nx",
			want: []string{"x"}},
		{name: "not an mbox", in: "Subject: x\n\nbody\n", err: true},
		{name: "empty", in: "", err: true},
		{name: "only separators", in: "From a@b Fri Feb 22 17:06:23 2008\n", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msgs, err := LoadMbox([]byte(tt.in))
			if tt.err {
				if err == nil {
					t.Fatalf("got %q, want error", msgs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != len(tt.want) {
				t.Fatalf("got %d messages %q, want %d", len(msgs), msgs, len(tt.want))
			}
			for i := range msgs {
				if string(msgs[i]) != tt.want[i] {
					t.Errorf("message %d = %q, want %q", i+1, msgs[i], tt.want[i])
				}
			}
		})
	}
}
