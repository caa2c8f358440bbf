package mailproxy

import (
	"bufio"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// fetchAll logs in with c and returns every message of INBOX, as fetched.
func fetchAll(t *testing.T, c *imapclient.Client) []string {
	t.Helper()
	if err := c.Login(alice, password).Wait(); err != nil {
		t.Fatalf("login: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("select: %v", err)
	}
	sec := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{sec}}).Collect()
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.FindBodySection(sec)))
	}
	return out
}

func TestIMAPSameAsDirect(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "imap", upstream: Upstream{Addr: up.imap}, serverTLS: up.proxyServerTLSCf})
	dc, err := imapclient.DialInsecure(up.imap, nil)
	if err != nil {
		t.Fatal(err)
	}
	direct := fetchAll(t, dc)
	dc.Close()
	if len(direct) != 3 || direct[1] != testMessages[1] {
		t.Fatalf("direct: %q", direct)
	}
	for _, tt := range []struct {
		name string
		dial func(exists chan<- uint32) (*imapclient.Client, error)
	}{
		{"implicit TLS", func(exists chan<- uint32) (*imapclient.Client, error) {
			return imapclient.DialTLS(p.tls, &imapclient.Options{TLSConfig: up.client, UnilateralDataHandler: existsHandler(exists)})
		}},
		{"STARTTLS", func(exists chan<- uint32) (*imapclient.Client, error) {
			return imapclient.DialStartTLS(p.plain, &imapclient.Options{TLSConfig: up.client, UnilateralDataHandler: existsHandler(exists)})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			exists := make(chan uint32, 10)
			c, err := tt.dial(exists)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := fetchAll(t, c)
			if len(got) < len(direct) || strings.Join(got[:len(direct)], "\x00") != strings.Join(direct, "\x00") {
				t.Errorf("through the proxy %d messages, direct %d, differ", len(got), len(direct))
			}
			// After login the client knows the upstream's capabilities.
			if caps := c.Caps(); !caps.Has(imap.CapIdle) || !caps.Has(imap.CapMove) {
				t.Errorf("caps after login %v", caps)
			}
			idle, err := c.Idle()
			if err != nil {
				t.Fatal(err)
			}
			n := uint32(len(direct))
			if _, err := up.store.Deliver(alice, strings.NewReader("Subject: new\r\n\r\nnew\r\n")); err != nil {
				t.Fatal(err)
			}
			select {
			case got := <-exists:
				if got <= n {
					t.Errorf("EXISTS %d", got)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no EXISTS during IDLE")
			}
			if err := idle.Close(); err != nil {
				t.Fatal(err)
			}
			if err := idle.Wait(); err != nil {
				t.Fatal(err)
			}
			if err := c.Logout().Wait(); err != nil {
				t.Fatal(err)
			}
		})
	}
	ev := p.waitEvents(t, "imap.proxy_session", 2)
	if e := ev[0]; e["user.name"] != alice || e["moat.upstream"] != up.imap || e["tls.established"] != true {
		t.Errorf("event %v", e)
	}
}

func existsHandler(ch chan<- uint32) *imapclient.UnilateralDataHandler {
	return &imapclient.UnilateralDataHandler{Mailbox: func(d *imapclient.UnilateralDataMailbox) {
		if d.NumMessages != nil {
			select {
			case ch <- *d.NumMessages:
			default:
			}
		}
	}}
}

// Commands pipelined right after LOGIN reach the upstream; the client's
// tag and the upstream's capabilities answer the LOGIN.
func TestIMAPPipelined(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "imap", upstream: Upstream{Addr: up.imap}, clearOK: true})
	c := dialLine(t, p.plain, nil)
	c.expect("* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] proxy.test IMAP4rev1 proxy ready")
	c.send("x1 LOGIN " + alice + " " + password + "\r\nx2 SELECT INBOX\r\nx3 LOGOUT\r\n")
	ok := c.expect("x1 OK [CAPABILITY IMAP4rev1 ")
	if !strings.Contains(ok, "IDLE") || !strings.HasSuffix(ok, "] Logged in") {
		t.Errorf("login reply %q", ok)
	}
	lines := c.until("x2 ")
	if !strings.HasPrefix(lines[len(lines)-1], "x2 OK") || !strings.Contains(strings.Join(lines, "\n"), "* 3 EXISTS") {
		t.Errorf("SELECT: %q", lines)
	}
	c.until("x3 OK")
	c.closed()
}

func TestIMAPLoginForms(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "imap", upstream: Upstream{Addr: up.imap}, clearOK: true, allow: true})
	tests := []struct {
		name string
		in   []string // sent one at a time, each answered by one line
		want []string
	}{
		{"quoted", []string{`a LOGIN "alice@example.test" "secret"`}, []string{"a OK [CAPABILITY"}},
		{"literals", []string{"a LOGIN {18}", alice + " {6}", password}, []string{"+ ", "+ ", "a OK [CAPABILITY"}},
		{"AUTHENTICATE IR", []string{"a AUTHENTICATE PLAIN " + plainIR(alice, password)}, []string{"a OK [CAPABILITY"}},
		{"AUTHENTICATE continuation", []string{"a AUTHENTICATE PLAIN", plainIR(alice, password)}, []string{"+ ", "a OK [CAPABILITY"}},
		{"AUTHENTICATE cancelled", []string{"a AUTHENTICATE PLAIN", "*"}, []string{"+ ", "a BAD Authentication cancelled"}},
		{"wrong password", []string{"a LOGIN " + alice + " wrong"}, []string{"a NO [AUTHENTICATIONFAILED] Authentication failed"}},
		{"no route", []string{"a LOGIN bob@elsewhere.test secret"}, []string{"a NO [AUTHENTICATIONFAILED] Authentication failed"}},
		{"bad user name", []string{"a LOGIN bob secret"}, []string{"a NO [AUTHENTICATIONFAILED] Authentication failed"}},
		{"ID", []string{`a ID ("name" "test" "version" NIL)`}, []string{`* ID ("name" "moat")`, "a OK ID completed"}},
		{"CAPABILITY", []string{"a CAPABILITY"}, []string{"* CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN", "a OK CAPABILITY completed"}},
		{"NOOP", []string{"a NOOP"}, []string{"a OK NOOP completed"}},
		{"LOGOUT", []string{"a LOGOUT"}, []string{"* BYE", "a OK LOGOUT completed"}},
		{"SELECT before login", []string{"a SELECT INBOX"}, []string{"a NO Log in first"}},
		{"unknown", []string{"a XYZZY"}, []string{"a BAD Unknown command"}},
		{"bad tag", []string{"+ NOOP"}, []string{"* BAD invalid tag"}},
		{"NUL", []string{"a NO\x00OP"}, []string{"a BAD NUL byte in command"}},
		{"literal elsewhere", []string{"a ID {5}"}, []string{"a BAD Literal not accepted here"}},
		{"literal too long", []string{"a LOGIN {100000}"}, []string{"a BAD Literal not accepted here"}},
		{"STARTTLS without TLS", []string{"a STARTTLS"}, []string{"a BAD STARTTLS not available"}},
		{"HTTP", []string{"POST / HTTP/1.1"}, []string{"* BYE Not an IMAP client"}},
		{"HTTP in a password", []string{`a LOGIN ` + alice + ` "GET / HTTP/1.1"`}, []string{"a NO [AUTHENTICATIONFAILED]"}},
		{"TLS hello", []string{"\x16\x03\x01\x00\xa5\x01\x00"}, []string{"* BYE Not an IMAP client"}},
		{"long line", []string{"a LOGIN " + strings.Repeat("x", 9000)}, []string{"* BYE Line too long"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialLine(t, p.plain, nil)
			c.expect("* OK")
			for i, in := range tt.in {
				c.send(in + "\r\n")
				if i < len(tt.in)-1 {
					c.expect(tt.want[i])
				}
			}
			for _, w := range tt.want[len(tt.in)-1:] {
				c.expect(w)
			}
		})
	}
}

func TestIMAPCleartextRefused(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "imap", upstream: Upstream{Addr: up.imap}, serverTLS: up.proxyServerTLSCf})
	c := dialLine(t, p.plain, nil)
	c.expect("* OK [CAPABILITY IMAP4rev1 SASL-IR ID STARTTLS LOGINDISABLED]")
	c.send("a LOGIN " + alice + " " + password + "\r\n")
	c.expect("a NO [PRIVACYREQUIRED] Cleartext authentication not allowed, use STARTTLS first")
	c.send("b AUTHENTICATE PLAIN " + plainIR(alice, password) + "\r\n")
	c.expect("b NO [PRIVACYREQUIRED]")
	ev := p.waitEvents(t, "imap.login", 1)
	if ev[0]["moat.reason"] != "plaintext_refused" {
		t.Errorf("event %v", ev[0])
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("%d upstream connections", n)
	}
}

// What a man in the middle adds after STARTTLS in clear never runs.
func TestIMAPSTARTTLSInjection(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "imap", upstream: Upstream{Addr: up.imap}, serverTLS: up.proxyServerTLSCf})
	c := dialLine(t, p.plain, nil)
	c.expect("* OK")
	c.send("a STARTTLS\r\nb LOGIN " + alice + " " + password + "\r\nc NOOP\r\n")
	c.expect("a OK Begin TLS negotiation now")
	c.startTLS(up.client)
	c.send("d CAPABILITY\r\n")
	c.expect("* CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN")
	c.expect("d OK")
	if n := up.conns.Load(); n != 0 {
		t.Errorf("%d upstream connections", n)
	}
}

// Failures are counted by the auth service: after three, even the right
// password is refused without asking the upstream.
func TestIMAPLockout(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "imap", upstream: Upstream{Addr: up.imap}, clearOK: true})
	c := dialLine(t, p.plain, nil)
	c.expect("* OK")
	for i := range 3 {
		c.send("a LOGIN " + alice + " wrong\r\n")
		c.expect("a NO [AUTHENTICATIONFAILED] Authentication failed")
		if n := up.conns.Load(); n != int64(i+1) {
			t.Fatalf("after %d failures %d upstream connections", i+1, n)
		}
	}
	c.send("b LOGIN " + alice + " " + password + "\r\n")
	c.expect("b NO [UNAVAILABLE]")
	c.expect("* BYE")
	c.closed()
	if n := up.conns.Load(); n != 3 {
		t.Errorf("%d upstream connections, want 3", n)
	}
	ev := p.waitEvents(t, "imap.login", 4)
	if ev[2]["moat.lockout"] != "ip" || ev[3]["moat.reason"] != "locked_ip" || ev[0]["moat.upstream"] != up.imap {
		t.Errorf("events %v", ev)
	}
}

func TestIMAPUpstreamTLSAndFailures(t *testing.T) {
	up := startUpstreams(t, testMessages)
	other := newCA(t)
	tests := []struct {
		name string
		u    Upstream
		want string
	}{
		{"implicit", Upstream{Addr: up.imaps, TLS: TLSImplicit, RootCAs: up.ca.pool, ServerName: "upstream.test"}, "a OK [CAPABILITY"},
		{"starttls", Upstream{Addr: up.imap, TLS: TLSStartTLS, RootCAs: up.ca.pool, ServerName: "upstream.test"}, "a OK [CAPABILITY"},
		{"wrong CA", Upstream{Addr: up.imaps, TLS: TLSImplicit, RootCAs: other.pool, ServerName: "upstream.test"}, "a NO [UNAVAILABLE]"},
		{"starttls wrong CA", Upstream{Addr: up.imap, TLS: TLSStartTLS, RootCAs: other.pool, ServerName: "upstream.test"}, "a NO [UNAVAILABLE]"},
		{"down", Upstream{Addr: "127.0.0.1:1"}, "a NO [UNAVAILABLE]"},
		{"not IMAP", Upstream{Addr: up.pop3}, "a NO [UNAVAILABLE]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxy(t, proxyOptions{protocol: "imap", upstream: tt.u, serverTLS: up.proxyServerTLSCf})
			c := dialLine(t, p.tls, up.client)
			c.expect("* OK")
			c.send("a LOGIN " + alice + " " + password + "\r\n")
			c.expect(tt.want)
		})
	}
}

// fakeIMAP is a tiny IMAP upstream that records what it is sent and
// accepts alice.
type fakeIMAP struct {
	addr  string
	mu    sync.Mutex
	lines []string
}

func startFakeIMAP(t testing.TB, greeting string) *fakeIMAP {
	t.Helper()
	ln := listen(t)
	f := &fakeIMAP{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.serve(c, greeting)
			}()
		}
	}()
	return f
}

func (f *fakeIMAP) serve(c net.Conn, greeting string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	c.Write([]byte(greeting + "\r\n"))
	for range 10000 {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		f.mu.Lock()
		f.lines = append(f.lines, line)
		f.mu.Unlock()
		tag, rest, _ := strings.Cut(line, " ")
		var reply string
		switch cmd, _, _ := strings.Cut(strings.ToUpper(rest), " "); {
		case !validTag([]byte(tag)) || rest == "":
			reply = "* BAD no command"
		case cmd == "CAPABILITY":
			reply = "* CAPABILITY IMAP4rev1 ID\r\n" + tag + " OK done"
		case cmd == "ID":
			reply = `* ID ("name" "fake")` + "\r\n" + tag + " OK done"
		case cmd == "LOGIN" && rest == "LOGIN "+alice+" "+password || rest == `LOGIN "`+alice+`" "`+password+`"`:
			reply = tag + " OK [CAPABILITY IMAP4rev1 IDLE X-FAKE] welcome"
		case cmd == "LOGIN":
			reply = tag + " NO [AUTHENTICATIONFAILED] no"
		case cmd == "LOGOUT":
			c.Write([]byte("* BYE bye\r\n" + tag + " OK done\r\n"))
			return
		default:
			reply = tag + " OK done"
		}
		if _, err := c.Write([]byte(reply + "\r\n")); err != nil {
			return
		}
	}
}

func (f *fakeIMAP) sent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

// The ID with the client's address reaches the upstream before LOGIN,
// along with what the client said of itself (but not its x- fields).
func TestIMAPForwardsID(t *testing.T) {
	f := startFakeIMAP(t, "* OK fake ready")
	p := startProxy(t, proxyOptions{protocol: "imap", upstream: Upstream{Addr: f.addr}, clearOK: true})
	c := dialLine(t, p.plain, nil)
	c.expect("* OK")
	c.send(`i ID ("name" "Thunderbird" "x-originating-ip" "6.6.6.6")` + "\r\n")
	c.expect(`* ID ("name" "moat")`)
	c.expect("i OK")
	c.send("a LOGIN " + alice + " " + password + "\r\n")
	c.expect("a OK [CAPABILITY IMAP4rev1 IDLE X-FAKE] Logged in")
	local := c.c.LocalAddr().(*net.TCPAddr)
	sent := f.sent()
	if len(sent) != 3 || !strings.HasPrefix(sent[0], "M1 CAPABILITY") {
		t.Fatalf("upstream got %q", sent)
	}
	want := `M2 ID ("x-originating-ip" "127.0.0.1" "x-originating-port" "` + strconv.Itoa(local.Port) +
		`" "x-connected-ip" "127.0.0.1" "x-connected-port" "` + p.plain[strings.LastIndexByte(p.plain, ':')+1:] +
		`" "name" "Thunderbird")`
	if sent[1] != want {
		t.Errorf("ID sent\n%s\nwant\n%s", sent[1], want)
	}
	if sent[2] != `M3 LOGIN "`+alice+`" "`+password+`"` {
		t.Errorf("LOGIN sent %q", sent[2])
	}
}
