package mailproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestParseIMAPCommand(t *testing.T) {
	tests := []struct {
		raw  string
		want imapCommand
		err  error
	}{
		{"a NOOP", imapCommand{Tag: "a", Name: "NOOP"}, nil},
		{`a1 login alice "pa ss\"\\"`, imapCommand{Tag: "a1", Name: "LOGIN", Args: []imapToken{{tokAtom, "alice"}, {tokString, `pa ss"\`}}}, nil},
		{"t LOGIN {3}\r\nbob {4}\r\np\r\nw", imapCommand{Tag: "t", Name: "LOGIN", Args: []imapToken{{tokString, "bob"}, {tokString, "p\r\nw"}}}, nil},
		{`x ID ("name" "a" "v" NIL)`, imapCommand{Tag: "x", Name: "ID", Args: []imapToken{{tokOpen, ""}, {tokString, "name"},
			{tokString, "a"}, {tokString, "v"}, {tokAtom, "NIL"}, {tokClose, ""}}}, nil},
		{"x ID ()", imapCommand{Tag: "x", Name: "ID", Args: []imapToken{{tokOpen, ""}, {tokClose, ""}}}, nil},
		{`a LOGIN "pässwörd" x]`, imapCommand{Tag: "a", Name: "LOGIN", Args: []imapToken{{tokString, "pässwörd"}, {tokAtom, "x]"}}}, nil},
		{"", imapCommand{}, errIMAPTag},
		{"+ NOOP", imapCommand{}, errIMAPTag},
		{"a", imapCommand{Tag: "a"}, errIMAPSyntax},
		{"a NOOP ", imapCommand{Tag: "a", Name: "NOOP"}, errIMAPSyntax},
		{"a LOGIN  x y", imapCommand{Tag: "a", Name: "LOGIN"}, errIMAPSyntax},
		{`a LOGIN "x`, imapCommand{Tag: "a", Name: "LOGIN"}, errIMAPSyntax},
		{`a LOGIN "\x"`, imapCommand{Tag: "a", Name: "LOGIN"}, errIMAPSyntax},
		{"a LOGIN {3}\r\nab", imapCommand{Tag: "a", Name: "LOGIN"}, errIMAPSyntax},
		{"a LOGIN {99999}\r\n", imapCommand{Tag: "a", Name: "LOGIN"}, errIMAPSyntax},
		{"a ID (", imapCommand{Tag: "a", Name: "ID"}, errIMAPSyntax},
		{"a ID )", imapCommand{Tag: "a", Name: "ID"}, errIMAPSyntax},
		{`a ID ("x""y")`, imapCommand{Tag: "a", Name: "ID"}, errIMAPSyntax},
		{"a NO\x00OP", imapCommand{Tag: "a"}, errIMAPNUL},
		{"a LOGIN x%", imapCommand{Tag: "a", Name: "LOGIN"}, errIMAPSyntax},
	}
	for _, tt := range tests {
		got, err := parseIMAPCommand([]byte(tt.raw))
		if !errors.Is(err, tt.err) || got.Tag != tt.want.Tag || err == nil && (got.Name != tt.want.Name || !equalTokens(got.Args, tt.want.Args)) {
			t.Errorf("parseIMAPCommand(%q) = %+v, %v; want %+v, %v", tt.raw, got, err, tt.want, tt.err)
		}
	}
}

func equalTokens(a, b []imapToken) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// imapArgSeeds are FuzzIMAPArgs's seeds, also in testdata.
var imapArgSeeds = []string{"a NOOP", `a1 LOGIN alice "pa ss\"\\"`, "t LOGIN {3}\r\nbob {4}\r\np\r\nw",
	`x ID ("name" "a" "v" NIL)`, "x ID ()", "a AUTHENTICATE PLAIN =", "a LOGIN {99999}\r\n", `a ID (("x"))`}

// encodeIMAP writes a command back: strings quoted or as literals.
func encodeIMAP(cmd imapCommand) []byte {
	var b bytes.Buffer
	b.WriteString(cmd.Tag + " " + cmd.Name)
	prev := tokAtom
	for i, a := range cmd.Args {
		if i == 0 || prev != tokOpen && a.Kind != tokClose {
			b.WriteByte(' ')
		}
		switch a.Kind {
		case tokOpen:
			b.WriteByte('(')
		case tokClose:
			b.WriteByte(')')
		case tokAtom:
			b.WriteString(a.Value)
		case tokString:
			if q, ok := quoteIMAP(a.Value); ok {
				b.WriteString(q)
			} else {
				b.WriteString(literalLen(len(a.Value)) + "\r\n" + a.Value)
			}
		}
		prev = a.Kind
	}
	return b.Bytes()
}

func FuzzIMAPArgs(f *testing.F) {
	for _, s := range imapArgSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		cmd, err := parseIMAPCommand(raw)
		if err != nil {
			if cmd.Tag != "" && !validTag([]byte(cmd.Tag)) {
				t.Fatalf("tag %q with error %v", cmd.Tag, err)
			}
			return
		}
		if !validTag([]byte(cmd.Tag)) || cmd.Name == "" || strings.ToUpper(cmd.Name) != cmd.Name {
			t.Fatalf("tag %q name %q", cmd.Tag, cmd.Name)
		}
		depth := 0
		for _, a := range cmd.Args {
			switch a.Kind {
			case tokOpen:
				depth++
			case tokClose:
				depth--
			case tokAtom:
				if a.Value == "" {
					t.Fatal("empty atom")
				}
			}
			if depth < 0 || strings.ContainsRune(a.Value, 0) || len(a.Value) > len(raw) {
				t.Fatalf("args %+v", cmd.Args)
			}
		}
		if depth != 0 {
			t.Fatalf("unbalanced %+v", cmd.Args)
		}
		for _, a := range cmd.Args {
			if _, ok := quoteIMAP(a.Value); !ok && len(a.Value) > maxLiteral {
				return // a long quoted string that only a literal could carry back
			}
		}
		again, err := parseIMAPCommand(encodeIMAP(cmd))
		if err != nil || again.Tag != cmd.Tag || again.Name != cmd.Name || !equalTokens(again.Args, cmd.Args) {
			t.Fatalf("round trip of %q: %+v, %v; want %+v", raw, again, err, cmd)
		}
	})
}

// imapLine matches a response line a client may get: untagged, a
// continuation request, or tagged.
var imapLine = regexp.MustCompile(`^(\* [^\r\n\x00]+|\+( [^\r\n\x00]*)?|[!#$&'+,\-./0-9:;<=>?@A-Z\[^_` + "`" + `a-z|}~\]]+ (OK|NO|BAD) [^\r\n\x00]+)$`)

// exchange sends in to addr, closes the sending side, and returns what
// came back.
func exchange(t *testing.T, addr string, in []byte) ([]byte, bool) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		conn.Write(in) // the proxy may hang up first
		conn.(*net.TCPConn).CloseWrite()
	}()
	out, err := io.ReadAll(conn)
	<-wrote
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: %v", err)
	}
	return out, err != nil
}

// checkLines requires every complete line of out to satisfy ok.
func checkLines(t *testing.T, out []byte, truncated bool, ok func(line string) bool) {
	t.Helper()
	for len(out) > 0 {
		i := bytes.Index(out, []byte("\r\n"))
		if i < 0 {
			if truncated {
				return
			}
			t.Fatalf("unterminated line %q", out)
		}
		if line := string(out[:i]); !ok(line) {
			t.Fatalf("not a response line: %q", line)
		}
		out = out[i+2:]
	}
}

// FuzzIMAPLogin feeds arbitrary client bytes to a live pre-auth session
// imapLoginSeeds are FuzzIMAPLogin's seeds, also in testdata.
var imapLoginSeeds = []string{
	"a CAPABILITY\r\nb NOOP\r\nc ID (\"name\" \"x\")\r\nd LOGIN " + alice + " " + password + "\r\ne SELECT INBOX\r\nf LOGOUT\r\n",
	"a LOGIN {18}\r\n" + alice + " {6}\r\n" + password + "\r\nb NOOP\r\n",
	"a AUTHENTICATE PLAIN " + plainIR(alice, password) + "\r\nb NOOP\r\n",
	"a AUTHENTICATE PLAIN\r\n" + plainIR(alice, "wrong") + "\r\nb AUTHENTICATE PLAIN\r\n*\r\n",
	"a LOGIN " + alice + " wrong\r\nb LOGIN x y\r\nc SELECT INBOX\r\n",
	"a STARTTLS\r\nb LOGIN " + alice + " " + password + "\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"\x16\x03\x01\x00\xa5\x01\x00",
	"a NO\x00OP\r\n+ x\r\n* y\r\na\r\na LOGIN {99999}\r\nb ID {3}\r\nabc\r\n",
}

// whose upstream is a fake that accepts alice.
func FuzzIMAPLogin(f *testing.F) {
	for _, s := range imapLoginSeeds {
		f.Add([]byte(s))
	}
	fake := startFakeIMAP(f, "* OK [CAPABILITY IMAP4rev1 ID] fake ready")
	up := startUpstreams(f, nil)
	p := startProxy(f, proxyOptions{protocol: "imap", upstream: Upstream{Addr: fake.addr}, clearOK: true, allow: true,
		serverTLS: up.proxyServerTLSCf, o: Options{MaxBadCommands: 5}})
	f.Fuzz(func(t *testing.T, in []byte) {
		out, truncated := exchange(t, p.plain, in)
		checkLines(t, out, truncated, imapLine.MatchString)
		if e := p.logs.FilterMessage("imap.error").All(); len(e) > 0 {
			t.Fatalf("error events %v", e[0].ContextMap())
		}
	})
}

// fakePOP3 is a tiny POP3 upstream that accepts alice and then answers
// every line with +OK.
func startFakePOP3(t testing.TB) string {
	t.Helper()
	ln := listen(t)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	serve := func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		c.Write([]byte("+OK fake ready\r\n"))
		user, in := "", false
		for range 10000 {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\r\n")
			cmd, arg, _ := strings.Cut(line, " ")
			reply := "+OK"
			switch {
			case in:
			case cmd == "CAPA":
				reply = "+OK\r\nUSER\r\n."
			case cmd == "USER":
				user = arg
			case cmd == "PASS" && user == alice && arg == password:
				in = true
			default:
				reply = "-ERR [AUTH] no"
			}
			if _, err := c.Write([]byte(reply + "\r\n")); err != nil {
				return
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); serve(c) }()
		}
	}()
	return ln.Addr().String()
}

// pop3Lines accepts POP3 status lines and the bodies of the multi-line
// pop3LoginSeeds are FuzzPOP3Login's seeds, also in testdata.
var pop3LoginSeeds = []string{
	"CAPA\r\nUSER " + alice + "\r\nPASS " + password + "\r\nSTAT\r\nQUIT\r\n",
	"AUTH PLAIN " + plainIR(alice, password) + "\r\nLIST\r\n",
	"AUTH PLAIN\r\n" + plainIR(alice, "wrong") + "\r\nAUTH\r\nAUTH PLAIN\r\n*\r\nAUTH X\r\n",
	"USER " + alice + "\r\nPASS wrong\r\nPASS x\r\nAPOP a b\r\nSTAT\r\n",
	"STLS\r\nUSER " + alice + "\r\n",
	"GET / HTTP/1.1\r\n\r\n",
	"\x16\x03\x01\x00\x10",
	"user " + alice + "\npass " + password + "\nretr 1\n",
	"FOO\r\n\x00\r\n\r\nX\r\nY\r\n",
}

// replies the proxy makes itself.
type pop3Lines struct{ body bool }

func (p *pop3Lines) ok(line string) bool {
	switch {
	case p.body:
		p.body = line != "."
		return line != "" && !strings.ContainsAny(line, "\r\n\x00")
	case line == "+OK Capability list follows" || line == "+OK SASL mechanisms follow":
		p.body = true
		return true
	}
	return line == "+OK" || line == "+ " || strings.HasPrefix(line, "+OK ") || strings.HasPrefix(line, "-ERR ") && !strings.ContainsAny(line, "\r\x00")
}

func FuzzPOP3Login(f *testing.F) {
	for _, s := range pop3LoginSeeds {
		f.Add([]byte(s))
	}
	addr := startFakePOP3(f)
	up := startUpstreams(f, nil)
	p := startProxy(f, proxyOptions{protocol: "pop3", upstream: Upstream{Addr: addr}, clearOK: true, allow: true,
		serverTLS: up.proxyServerTLSCf, o: Options{MaxBadCommands: 5}})
	f.Fuzz(func(t *testing.T, in []byte) {
		out, truncated := exchange(t, p.plain, in)
		var pl pop3Lines
		checkLines(t, out, truncated, pl.ok)
		if e := p.logs.FilterMessage("pop3.error").All(); len(e) > 0 {
			t.Fatalf("error events %v", e[0].ContextMap())
		}
	})
}
