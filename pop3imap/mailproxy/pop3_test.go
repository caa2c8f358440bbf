package mailproxy

import (
	"encoding/base64"
	"io"
	"strings"
	"testing"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// pop3Transcript logs in with login (the lines to send and the number of
// status lines to read back), then sends the same transaction and returns
// every byte that came back after the login.
func pop3Transcript(t *testing.T, addr string, login []string) string {
	t.Helper()
	c := dialLine(t, addr, nil)
	c.expect("+OK")
	for _, l := range login {
		c.send(l + "\r\n")
		s := c.line()
		if !strings.HasPrefix(s, "+") {
			t.Fatalf("%q: %q", l, s)
		}
	}
	c.send("STAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nRETR 2\r\nRETR 3\r\nTOP 3 2\r\nQUIT\r\n")
	out, err := io.ReadAll(c.br)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestPOP3SameBytesAsDirect(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "pop3", upstream: Upstream{Addr: up.pop3}, clearOK: true})
	direct := pop3Transcript(t, up.pop3, []string{"USER " + alice, "PASS " + password})
	if !strings.Contains(direct, "second\r\n..dot line\r\n") {
		t.Fatalf("direct transcript %q", direct[:200])
	}
	for _, tt := range []struct {
		name  string
		login []string
	}{
		{"USER", []string{"USER " + alice, "PASS " + password}},
		{"AUTH PLAIN initial response", []string{"AUTH PLAIN " + plainIR(alice, password)}},
		{"AUTH PLAIN continuation", []string{"AUTH PLAIN", plainIR(alice, password)}},
		{"upper-case user", []string{"USER Alice@Example.TEST", "PASS " + password}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := pop3Transcript(t, p.plain, tt.login); got != direct {
				t.Errorf("through the proxy:\n%.300q\ndirect:\n%.300q", got, direct)
			}
		})
	}
	ev := p.waitEvents(t, "pop3.proxy_session", 4)
	if e := ev[0]; e["user.name"] != alice || e["moat.upstream"] != up.pop3 || e["destination.bytes"].(int64) < int64(len(direct)) ||
		e["source.ip"] != "127.0.0.1" {
		t.Errorf("event %v", e)
	}
	login := p.waitEvents(t, "pop3.login", 4)
	if e := login[0]; e["event.outcome"] != "success" || e["moat.upstream"] != up.pop3 || e["moat.mechanism"] != "USER" {
		t.Errorf("login event %v", e)
	}
}

func TestPOP3Pipelined(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "pop3", upstream: Upstream{Addr: up.pop3}, clearOK: true})
	c := dialLine(t, p.plain, nil)
	c.expect("+OK proxy.test POP3 proxy ready")
	c.send("USER " + alice + "\r\nPASS " + password + "\r\nSTAT\r\nQUIT\r\n")
	c.expect("+OK send PASS")
	c.expect("+OK Logged in")
	c.expect("+OK 3 ")
	c.expect("+OK upstream.test POP3 server signing off")
	c.closed()
}

func TestPOP3Replies(t *testing.T) {
	up := startUpstreams(t, testMessages)
	tests := []struct {
		name    string
		clearOK bool
		in      string
		want    []string // the status lines after the greeting
		closed  bool
	}{
		{"CAPA", true, "CAPA\r\n", []string{"+OK Capability list follows", "USER", "SASL PLAIN", "STLS", "RESP-CODES",
			"AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION moat", "."}, false},
		{"CAPA without cleartext", false, "CAPA\r\n", []string{"+OK Capability list follows", "STLS", "RESP-CODES",
			"AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION moat", "."}, false},
		{"wrong password", true, "USER " + alice + "\r\nPASS nope\r\n", []string{"+OK send PASS", "-ERR [AUTH] Authentication failed"}, false},
		{"no route", true, "USER bob@elsewhere.test\r\nPASS " + password + "\r\n", []string{"+OK send PASS", "-ERR [AUTH] Authentication failed"}, false},
		{"cleartext refused", false, "USER " + alice + "\r\n", []string{"-ERR [AUTH] Cleartext authentication not allowed, use STLS first"}, false},
		{"APOP", true, "APOP alice x\r\n", []string{"-ERR APOP not supported"}, false},
		{"before login", true, "STAT\r\n", []string{"-ERR command not valid before login"}, false},
		{"unknown", true, "XYZZY\r\n", []string{"-ERR unknown command"}, false},
		{"NUL", true, "US\x00ER\r\n", []string{"-ERR invalid characters in command line"}, false},
		{"auth cancel", true, "AUTH PLAIN\r\n*\r\n", []string{"+ ", "-ERR authentication cancelled"}, false},
		{"authzid", true, "AUTH PLAIN " + b64("bob@example.test\x00"+alice+"\x00x") + "\r\n", []string{"-ERR [AUTH] authorization identity not permitted"}, false},
		{"long line", true, "USER " + strings.Repeat("a", 300) + "\r\n", []string{"-ERR line too long"}, true},
		{"very long line", true, strings.Repeat("a", 20000) + "\r\n", []string{"-ERR line too long"}, true},
		{"HTTP", true, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", []string{"-ERR not a POP3 client"}, true},
		{"TLS hello", true, "\x16\x03\x01\x00\xa5\x01\x00", []string{"-ERR not a POP3 client"}, true},
		{"too many bad", true, strings.Repeat("X\r\n", 10), append(repeat("-ERR unknown command", 9), "-ERR too many bad commands"), true},
		{"QUIT", true, "QUIT\r\n", []string{"+OK proxy.test POP3 proxy signing off"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, proxyOptions{protocol: "pop3", upstream: Upstream{Addr: up.pop3}, clearOK: tt.clearOK,
				serverTLS: up.proxyServerTLSCf})
			c := dialLine(t, p.plain, nil)
			c.expect("+OK")
			c.send(tt.in)
			for _, w := range tt.want {
				if got := c.line(); got != w {
					t.Fatalf("got %q, want %q", got, w)
				}
			}
			if tt.closed {
				c.closed()
			}
		})
	}
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// After STLS, what the client pipelined in clear is dropped; the session
// goes on inside TLS.
func TestPOP3STLSInjection(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "pop3", upstream: Upstream{Addr: up.pop3}, serverTLS: up.proxyServerTLSCf})
	c := dialLine(t, p.plain, nil)
	c.expect("+OK")
	c.send("STLS\r\nUSER " + alice + "\r\nPASS " + password + "\r\n")
	c.expect("+OK Begin TLS negotiation")
	c.startTLS(up.client)
	c.send("PASS " + password + "\r\n")
	c.expect("-ERR USER first")
	c.send("USER " + alice + "\r\nPASS " + password + "\r\nSTAT\r\n")
	c.expect("+OK send PASS")
	c.expect("+OK Logged in")
	c.expect("+OK 3 ")
}

// The upstream over implicit TLS and over STLS, its certificate checked
// against the CA; another CA fails the login as unavailable.
func TestPOP3UpstreamTLS(t *testing.T) {
	up := startUpstreams(t, testMessages)
	other := newCA(t)
	tests := []struct {
		name string
		u    Upstream
		want string
	}{
		{"implicit", Upstream{Addr: up.pop3s, TLS: TLSImplicit, RootCAs: up.ca.pool, ServerName: "upstream.test"}, "+OK Logged in"},
		{"starttls", Upstream{Addr: up.pop3, TLS: TLSStartTLS, RootCAs: up.ca.pool, ServerName: "upstream.test"}, "+OK Logged in"},
		{"wrong CA", Upstream{Addr: up.pop3s, TLS: TLSImplicit, RootCAs: other.pool, ServerName: "upstream.test"}, "-ERR [SYS/TEMP]"},
		{"wrong name", Upstream{Addr: up.pop3s, TLS: TLSImplicit, RootCAs: up.ca.pool}, "-ERR [SYS/TEMP]"},
		{"down", Upstream{Addr: "127.0.0.1:1"}, "-ERR [SYS/TEMP]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, proxyOptions{protocol: "pop3", upstream: tt.u, serverTLS: up.proxyServerTLSCf})
			c := dialLine(t, p.tls, up.client)
			c.expect("+OK")
			c.send("USER " + alice + "\r\nPASS " + password + "\r\n")
			c.expect("+OK send PASS")
			c.expect(tt.want)
		})
	}
}
