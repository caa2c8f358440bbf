package pop3

import (
	"bytes"
	"errors"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		line string
		want command
		err  error
	}{
		{"STAT", command{Name: "STAT", Args: []string{}}, nil},
		{"list 1", command{Name: "LIST", Args: []string{"1"}, Rest: "1"}, nil},
		{"TOP  1   2 ", command{Name: "TOP", Args: []string{"1", "2"}, Rest: " 1   2 "}, nil},
		{"PASS  two  spaces ", command{Name: "PASS", Args: []string{"two", "spaces"}, Rest: " two  spaces "}, nil},
		{"PASS pässwörd", command{Name: "PASS", Args: []string{"pässwörd"}, Rest: "pässwörd"}, nil},
		{"", command{}, errEmptyLine},
		{" STAT", command{}, errBadKeyword},
		{"ST4T", command{}, errBadKeyword},
		{strings.Repeat("A", 41), command{}, errBadKeyword},
		{"USER a\x00b", command{}, errControlByte},
		{"USER\ta", command{}, errControlByte},
		{"NOOP\x7f", command{}, errControlByte},
	}
	for _, tt := range tests {
		got, err := parseCommand([]byte(tt.line))
		if !errors.Is(err, tt.err) || err == nil && (got.Name != tt.want.Name || got.Rest != tt.want.Rest ||
			!slices.Equal(got.Args, tt.want.Args)) {
			t.Errorf("parseCommand(%q) = %+v, %v; want %+v, %v", tt.line, got, err, tt.want, tt.err)
		}
	}
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"USER alice", "PASS pass word", "TOP 1 10", "list", "AUTH PLAIN =", "GET / HTTP/1.1", "\x16\x03\x01", "a\x00b"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		cmd, err := parseCommand(line)
		if err != nil {
			return
		}
		if cmd.Name == "" || strings.ToUpper(cmd.Name) != cmd.Name || strings.ContainsAny(cmd.Name, " \r\n") {
			t.Fatalf("name %q", cmd.Name)
		}
		if !strings.EqualFold(cmd.Name, strings.SplitN(string(line), " ", 2)[0]) {
			t.Fatalf("name %q from %q", cmd.Name, line)
		}
		if !slices.Equal(cmd.Args, strings.Fields(cmd.Rest)) {
			t.Fatalf("args %q, rest %q", cmd.Args, cmd.Rest)
		}
		for _, a := range cmd.Args {
			if a == "" || strings.ContainsAny(a, " \r\n\x00") {
				t.Fatalf("argument %q", a)
			}
		}
		if strings.ContainsAny(cmd.Rest, "\r\n\x00") {
			t.Fatalf("rest %q", cmd.Rest)
		}
		if n, ok := parseNumber(cmd.Rest); ok && (n < 0 || n > 999_999_999) {
			t.Fatalf("number %d", n)
		}
	})
}

// dotStuff returns what the server sends for a message written in pieces
// of size chunk.
func dotStuff(t testing.TB, data []byte, chunk int) []byte {
	var out bytes.Buffer
	d := newDotWriter(&out)
	for p := data; len(p) > 0; {
		n := min(chunk, len(p))
		if k, err := d.Write(p[:n]); k != n || err != nil {
			t.Fatalf("Write = %d, %v", k, err)
		}
		p = p[n:]
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// normalized is what a client should read back: every line ending CRLF,
// the last line ended.
func normalized(data []byte) []byte {
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	s = strings.ReplaceAll(s, "\n", "\r\n")
	if s != "" && !strings.HasSuffix(s, "\r\n") {
		s += "\r\n"
	}
	return []byte(s)
}

func TestDotWriter(t *testing.T) {
	for _, data := range []string{"", ".", "..", "\r\n.\r\n", "a\r", "a\r\r", "\n.", "\r.", "x\r\n.\r\n.\r\n", ".\n.\r.\r\n."} {
		for _, chunk := range []int{1, 2, 3, 1000} {
			out := dotStuff(t, []byte(data), chunk)
			body, rest, ok := unstuff(out)
			if !ok || len(rest) > 0 || !bytes.Equal(body, normalized([]byte(data))) {
				t.Errorf("%q in chunks of %d: sent %q", data, chunk, out)
			}
		}
	}
}

func FuzzDotStuff(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\n.\r\n..x\r\n"), uint8(0))
	f.Add([]byte("a\n.\nb"), uint8(1))
	f.Add([]byte("a\r.\r\r\n.\r"), uint8(2))
	f.Add([]byte(""), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		out := dotStuff(t, data, int(chunk%64)+1)
		// Every line ends with CRLF: no bare CR or LF for any client to
		// split on.
		for i, b := range out {
			if b == '\r' && (i+1 == len(out) || out[i+1] != '\n') || b == '\n' && (i == 0 || out[i-1] != '\r') {
				t.Fatalf("bare CR or LF at %d in %q", i, out)
			}
		}
		// The terminator is at the end and only there, and unstuffing
		// gives back the message.
		body, rest, ok := unstuff(out)
		if !ok || len(rest) > 0 {
			t.Fatalf("terminator missing or early in %q (rest %q)", out, rest)
		}
		if want := normalized(data); !bytes.Equal(body, want) {
			t.Fatalf("round trip of %q: got %q, want %q", data, body, want)
		}
	})
}

// multiLine matches the status lines of this server's multi-line replies.
var multiLine = regexp.MustCompile(`^\+OK (Capability list follows|SASL mechanisms follow|unique-id listing follows|` +
	`top of message follows|\d+ octets|\d+ messages \(\d+ octets\))$`)

// checkReplies requires out to be a sequence of POP3 replies: status lines
// starting "+OK", "-ERR" or "+ " (a SASL continuation), multi-line bodies
// properly dot-stuffed. truncated allows the last reply to be cut short.
func checkReplies(t *testing.T, out []byte, truncated bool) {
	t.Helper()
	inBody := false
	for len(out) > 0 {
		i := bytes.Index(out, []byte("\r\n"))
		if i < 0 {
			if truncated {
				return
			}
			t.Fatalf("unterminated line %q", out)
		}
		line := string(out[:i])
		out = out[i+2:]
		if strings.ContainsAny(line, "\r\n") {
			t.Fatalf("bare CR or LF in %q", line)
		}
		switch {
		case inBody && line == ".":
			inBody = false
		case inBody:
			if strings.HasPrefix(line, ".") && !strings.HasPrefix(line, "..") {
				t.Fatalf("unstuffed line %q", line)
			}
		case line == "+OK Begin TLS negotiation":
			return // TLS records follow
		case multiLine.MatchString(line):
			inBody = true
		case line == "+OK" || strings.HasPrefix(line, "+OK ") || line == "-ERR" || strings.HasPrefix(line, "-ERR ") || line == "+ ":
		default:
			t.Fatalf("not a reply: %q", line)
		}
	}
	if inBody && !truncated {
		t.Fatal("multi-line reply not terminated")
	}
}

// FuzzSession feeds arbitrary client bytes to a live session. The server
// must not panic or log an internal error, and must answer only with
// well-formed replies.
func FuzzSession(f *testing.F) {
	seeds := []string{
		"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 2\r\nTOP 1 1\r\nDELE 1\r\nRSET\r\nNOOP\r\nQUIT\r\n",
		"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nRETR 3\r\nLIST 9\r\nQUIT\r\n",
		"AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nUIDL 1\r\nDELE 2\r\nQUIT\r\n",
		"AUTH\r\nAUTH PLAIN\r\n*\r\nAUTH X\r\n",
		"STLS\r\nUSER alice\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"\x16\x03\x01\x00\x10",
		"user alice\npass secret\ntop 2 0\nretr 1\n",
		"FOO\r\nBAR\r\n\x00\r\n\r\nX\r\nY\r\nZ\r\nA\r\nB\r\nC\r\nD\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	env := startServer(f, envOptions{plaintext: true, o: Options{IdleTimeout: 10 * time.Second}, boxes: map[string][]string{
		"alice@example.test": {msg1, msg2, msg3, "\n.\r.\n..\r\n.", ""},
	}})
	f.Fuzz(func(t *testing.T, in []byte) {
		conn, err := net.Dial("tcp", env.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			conn.Write(in) // the server may hang up first
			conn.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(conn)
		<-wrote
		if err != nil && !isReset(err) {
			t.Fatalf("read: %v", err)
		}
		checkReplies(t, out, err != nil)
		// The session has ended: its maildrop, if any, is closed.
		if ops := env.errorEvents(); len(ops) > 0 {
			t.Fatalf("error events %v", ops)
		}
	})
}
