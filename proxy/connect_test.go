package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// rawDial connects without reading the greeting.
func rawDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// readAll reads until the server closes the connection.
func readToClose(t *testing.T, c net.Conn) string {
	t.Helper()
	b, err := io.ReadAll(c)
	if errors.Is(err, syscall.ECONNRESET) {
		// Closed with our bytes unread: the kernel answers with a reset.
		return string(b)
	}
	if err != nil {
		t.Fatalf("the server did not close the connection: %v (read %q)", err, b)
	}
	return string(b)
}

func TestLimitsEndToEnd(t *testing.T) {
	ts, logs := startObserved(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [192.0.2.0/24]\n  limits: {connections_per_ip: 1}\n", "")
	first := dial(t, ts.addr)
	c := rawDial(t, ts.addr)
	if got := readToClose(t, c); got != "421 4.7.0 Too many connections from your address, try again later\r\n" {
		t.Errorf("second connection got %q", got)
	}
	ev := connEvents(t, logs, 1)[0]
	if ev["moat.reason"] != "limit" || ev["event.outcome"] != "failure" {
		t.Errorf("event %v", ev)
	}
	first.cmd("QUIT", "221")
	readToClose(t, first.conn)
	// The slot is free again once the first session has ended.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := rawDial(t, ts.addr)
		l, _ := bufio.NewReader(c).ReadString('\n')
		if strings.HasPrefix(l, "220 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refused: %q", l)
		}
	}
}

func TestPregreet(t *testing.T) {
	tests := []struct {
		name    string
		trusted string
		want    string
	}{
		{"early talker refused", "192.0.2.0/24", "554 5.7.1 Protocol error: talked before the greeting\r\n"},
		{"trusted network not tested", "127.0.0.1/32", "220 mx.test ESMTP moat\r\n250 mx.test\r\n221 2.0.0 Bye\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts, logs := startObserved(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: ["+tt.trusted+"]\n  limits: {pregreet_wait: 300ms}\n", "")
			c := rawDial(t, ts.addr)
			if _, err := c.Write([]byte("HELO early.example\r\nQUIT\r\n")); err != nil {
				t.Fatal(err)
			}
			if got := readToClose(t, c); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if strings.HasPrefix(tt.want, "554") {
				if ev := connEvents(t, logs, 1)[0]; ev["moat.reason"] != "pregreet" {
					t.Errorf("event %v", ev)
				}
			}
		})
	}
	t.Run("patient client greeted", func(t *testing.T) {
		ts := startServer(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [192.0.2.0/24]\n  limits: {pregreet_wait: 100ms}\n", "")
		c := dial(t, ts.addr)
		c.cmd("EHLO patient.example", "250")
	})
}

// TestErrorsPerSession: unknown and invalid commands count towards
// smtp.limits.errors_per_session, and 421 ends the session.
func TestErrorsPerSession(t *testing.T) {
	ts := startServer(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [192.0.2.0/24]\n  limits: {errors_per_session: 3}\n", "")
	c := dial(t, ts.addr)
	c.cmd("FOO", "500 5.5.2 Command not recognized")
	c.cmd("MAIL FROM:<a@example.net>", "503 5.5.1")
	c.send("XYZZY\r\n")
	if got := readToClose(t, c.conn); got != "500 5.5.2 Command not recognized\r\n421 4.7.0 Too many errors, closing connection\r\n" {
		t.Errorf("got %q", got)
	}
}

func proxyHeader(t *testing.T, version byte, cmd proxyproto.ProtocolVersionAndCommand, src, dst string) []byte {
	t.Helper()
	h := &proxyproto.Header{Version: version, Command: cmd, TransportProtocol: proxyproto.UNSPEC}
	if src != "" {
		s, _ := net.ResolveTCPAddr("tcp", src)
		d, _ := net.ResolveTCPAddr("tcp", dst)
		h.SourceAddr, h.DestinationAddr = s, d
		h.TransportProtocol = proxyproto.TCPv4
		if s.IP.To4() == nil {
			h.TransportProtocol = proxyproto.TCPv6
		}
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const proxyListener = "smtp:\n  listeners: [{addr: \"127.0.0.1:1\", proxy_protocol: true}]\n  trusted_networks: [192.0.2.0/24]\n"

func TestProxyProtocol(t *testing.T) {
	v1 := func(s string) func(*testing.T) []byte { return func(*testing.T) []byte { return []byte(s) } }
	v2 := func(cmd proxyproto.ProtocolVersionAndCommand, src, dst string) func(*testing.T) []byte {
		return func(t *testing.T) []byte { return proxyHeader(t, 2, cmd, src, dst) }
	}
	tests := []struct {
		name    string
		proxies string
		header  func(*testing.T) []byte
		greeted bool
		ip      string // source.ip of the event
		proxyIP string // moat.proxy_ip; "" none
		reason  string
	}{
		{"v1 IPv4", "127.0.0.1/32", v1("PROXY TCP4 192.0.2.7 198.51.100.1 40001 25\r\n"), true, "192.0.2.7", "127.0.0.1", "quit"},
		{"v1 IPv6", "127.0.0.1/32", v1("PROXY TCP6 2001:db8::7 2001:db8::1 40001 25\r\n"), true, "2001:db8::7", "127.0.0.1", "quit"},
		{"v1 unknown keeps the proxy", "127.0.0.1/32", v1("PROXY UNKNOWN\r\n"), true, "127.0.0.1", "", "quit"},
		{"v2 IPv4", "127.0.0.1/32", v2(proxyproto.PROXY, "192.0.2.8:40002", "198.51.100.1:25"), true, "192.0.2.8", "127.0.0.1", "quit"},
		{"v2 IPv6", "127.0.0.1/32", v2(proxyproto.PROXY, "[2001:db8::8]:40002", "[2001:db8::1]:25"), true, "2001:db8::8", "127.0.0.1", "quit"},
		{"v2 LOCAL health check", "127.0.0.1/32", v2(proxyproto.LOCAL, "", ""), true, "127.0.0.1", "", "quit"},
		{"garbage from a trusted proxy", "127.0.0.1/32", v1("EHLO not-a-proxy.example\r\n"), false, "127.0.0.1", "", "proxy_error"},
		{"bad v1 address", "127.0.0.1/32", v1("PROXY TCP4 192.0.2.999 198.51.100.1 1 25\r\n"), false, "127.0.0.1", "", "proxy_error"},
		{"untrusted sender", "192.0.2.1/32", v1("PROXY TCP4 192.0.2.7 198.51.100.1 40001 25\r\n"), false, "127.0.0.1", "", "proxy_untrusted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts, logs := startObserved(t, proxyListener+"  trusted_proxies: ["+tt.proxies+"]\n", "")
			c := rawDial(t, ts.addr)
			if _, err := c.Write(append(tt.header(t), "QUIT\r\n"...)); err != nil {
				t.Fatal(err)
			}
			got := readToClose(t, c)
			if tt.greeted != strings.HasPrefix(got, "220 ") {
				t.Fatalf("got %q, greeted: want %v", got, tt.greeted)
			}
			if !tt.greeted && got != "" {
				t.Errorf("refused connection got %q, want nothing", got)
			}
			ev := connEvents(t, logs, 1)[0]
			if ev["source.ip"] != tt.ip || ev["moat.reason"] != tt.reason {
				t.Errorf("event source.ip %v reason %v, want %s %s", ev["source.ip"], ev["moat.reason"], tt.ip, tt.reason)
			}
			if p, _ := ev["moat.proxy_ip"].(string); p != tt.proxyIP {
				t.Errorf("moat.proxy_ip %q, want %q", p, tt.proxyIP)
			}
		})
	}
}

// TestProxyProtocolTrustAndLimits: the header's client is the one
// trusted_networks and the limits judge.
func TestProxyProtocolTrustAndLimits(t *testing.T) {
	ts := startServer(t, proxyListener+"  trusted_proxies: [127.0.0.0/8]\n  limits: {connections_per_ip: 1}\n",
		"policy: default\nchecks:\n  size: { max: 100KiB }\n")
	hello := func(src string) (net.Conn, string) {
		c := rawDial(t, ts.addr)
		c.Write([]byte("PROXY TCP4 " + src + " 198.51.100.1 40001 25\r\n"))
		l, _ := bufio.NewReader(c).ReadString('\n')
		return c, l
	}
	c1, l := hello("203.0.113.5")
	if !strings.HasPrefix(l, "220 ") {
		t.Fatalf("first client: %q", l)
	}
	if _, l := hello("203.0.113.5"); !strings.HasPrefix(l, "421 4.7.0 Too many connections from your address") {
		t.Errorf("same client again: %q", l)
	}
	if _, l := hello("203.0.113.6"); !strings.HasPrefix(l, "220 ") {
		t.Errorf("another client: %q", l)
	}
	// A proxied client in trusted_networks is exempt.
	for range 2 {
		if _, l := hello("192.0.2.5"); !strings.HasPrefix(l, "220 ") {
			t.Errorf("trusted client: %q", l)
		}
	}
	c1.Close()
}

// TestProxyProtocolImplicitTLS: the ClientHello may share the PROXY
// header's segment; it must reach the handshake.
func TestProxyProtocolImplicitTLS(t *testing.T) {
	ts := startServer(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\", proxy_protocol: true, implicit_tls: true, mode: submission}]\n  trusted_proxies: [127.0.0.1/32]\n", "")
	c := rawDial(t, ts.addr)
	hdr := []byte("PROXY TCP4 192.0.2.7 198.51.100.1 40001 465\r\n")
	tc := tls.Client(&prefixWriteConn{Conn: c, first: hdr}, &tls.Config{InsecureSkipVerify: true})
	l, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil || !strings.HasPrefix(l, "220 ") {
		t.Fatalf("greeting over TLS: %q %v", l, err)
	}
}

// prefixWriteConn sends first together with the first write (the
// ClientHello), in one segment, as a proxy does.
type prefixWriteConn struct {
	net.Conn
	first []byte
}

func (c *prefixWriteConn) Write(p []byte) (int, error) {
	if c.first != nil {
		b := append(c.first, p...)
		c.first = nil
		_, err := c.Conn.Write(b)
		return len(p), err
	}
	return c.Conn.Write(p)
}
