package mailproxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"moat/audit"
	"moat/auth"
	"moat/pop3imap/imapd"
	"moat/pop3imap/pop3"
	"moat/pop3imap/storeadapter"
	"moat/store/mailbox"
)

const (
	alice    = "alice@example.test"
	password = "secret"
)

// upstreamAuth is the internal server's own user list: alice only.
type upstreamAuth struct{}

func (upstreamAuth) Login(_ context.Context, r auth.Request) (string, error) {
	if u := strings.ToLower(r.User); u == alice && r.Password == password {
		return u, nil
	}
	return "", auth.ErrFailed
}

func (upstreamAuth) PlaintextAllowed(netip.Addr, bool) bool { return true }

// noUsers is the proxy's user list: empty, every login goes upstream.
type noUsers struct{}

func (noUsers) Verify(string, string) bool { return false }

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "moat test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// server returns a server configuration with a certificate for host.
func (ca *testCA) server(t testing.TB, host string) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// counting counts the connections a listener accepts.
type counting struct {
	net.Listener
	n *atomic.Int64
}

func (l counting) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// upstreams are moat's own POP3 and IMAP servers over one store, as the
// internal servers: cleartext, implicit TLS and STARTTLS with a
// certificate for upstream.test from the test's CA.
type upstreams struct {
	store            *mailbox.Store
	ca               *testCA
	pop3, pop3s      string
	imap, imaps      string
	conns            atomic.Int64 // connections accepted, all listeners
	popSrv           *pop3.Server
	imapSrv          *imapd.Server
	client           *tls.Config // trusts the CA, for direct connections
	proxyServerTLSCf *tls.Config // the proxy's own certificate
}

var testMessages = []string{
	"From: a@example.org\r\nSubject: one\r\n\r\nfirst\r\n",
	"From: b@example.org\r\nSubject: two\r\n\r\nsecond\r\n.dot line\r\n",
	"From: c@example.org\r\nSubject: three\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 4000),
}

func startUpstreams(t testing.TB, msgs []string) *upstreams {
	t.Helper()
	u := &upstreams{store: mailbox.Open(t.TempDir()), ca: newCA(t)}
	for _, m := range msgs {
		if _, err := u.store.Deliver(alice, strings.NewReader(m)); err != nil {
			t.Fatal(err)
		}
	}
	stls := u.ca.server(t, "upstream.test")
	u.client = &tls.Config{RootCAs: u.ca.pool, ServerName: "proxy.test"}
	u.proxyServerTLSCf = u.ca.server(t, "proxy.test")
	u.popSrv = pop3.New(pop3.Options{Backend: storeadapter.Backend{Store: u.store}, Auth: upstreamAuth{},
		TLSConfig: stls, Hostname: "upstream.test"})
	u.imapSrv = imapd.New(imapd.Options{Store: u.store, Auth: upstreamAuth{}, TLSConfig: stls, Hostname: "upstream.test"})
	serve := func(f func(net.Listener)) string {
		ln := listen(t)
		go f(counting{ln, &u.conns})
		return ln.Addr().String()
	}
	u.pop3 = serve(func(ln net.Listener) { u.popSrv.Serve(ln, pop3.Listener{Name: "pop3"}) })
	u.pop3s = serve(func(ln net.Listener) { u.popSrv.Serve(ln, pop3.Listener{Name: "pop3s", ImplicitTLS: true}) })
	u.imap = serve(func(ln net.Listener) { u.imapSrv.Serve(ln, imapd.Listener{Name: "imap"}) })
	u.imaps = serve(func(ln net.Listener) { u.imapSrv.Serve(ln, imapd.Listener{Name: "imaps", ImplicitTLS: true}) })
	t.Cleanup(func() {
		u.imapSrv.Close()
		u.popSrv.Shutdown(context.Background())
	})
	return u
}

// proxy is a mailproxy.Server in front of an upstream, with a real
// auth.Service whose events are recorded.
type proxy struct {
	srv        *Server
	svc        *auth.Service
	logs       *observer.ObservedLogs
	plain, tls string // listener addresses: cleartext (STLS/STARTTLS) and implicit TLS
}

type proxyOptions struct {
	protocol  string
	upstream  Upstream
	clearOK   bool // cleartext passwords allowed
	allow     bool // loopback on auth.allow_networks: failures not counted
	noTLS     bool // no client-side TLS
	o         Options
	serverTLS *tls.Config
}

func startProxy(t testing.TB, po proxyOptions) *proxy {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	log := audit.NewZap(zap.New(core))
	p := &proxy{logs: logs}
	set := auth.Settings{AllowPlaintext: po.clearOK, Delays: []time.Duration{time.Millisecond}, MaxFailures: 3}
	if po.allow {
		set.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}
	p.svc = auth.New(noUsers{}, set, log)
	o := po.o
	o.Protocol, o.Auth, o.Log, o.Hostname = po.protocol, p.svc, log, "proxy.test"
	if o.Route == nil {
		o.Route = func(user string) (Upstream, bool) {
			return po.upstream, strings.HasSuffix(user, "@example.test")
		}
	}
	if !po.noTLS {
		o.TLSConfig = po.serverTLS
	}
	p.srv = New(o)
	ln, tln := listen(t), listen(t)
	p.plain, p.tls = ln.Addr().String(), tln.Addr().String()
	done := make(chan struct{}, 2)
	go func() { p.srv.Serve(ln, Listener{Name: "plain"}); done <- struct{}{} }()
	go func() { p.srv.Serve(tln, Listener{Name: "implicit", ImplicitTLS: true}); done <- struct{}{} }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.srv.Shutdown(ctx)
		<-done
		<-done
	})
	return p
}

// events returns the events with this message, as field maps.
func (p *proxy) events(action string) []map[string]any {
	var out []map[string]any
	for _, e := range p.logs.FilterMessage(action).All() {
		out = append(out, e.ContextMap())
	}
	return out
}

// waitEvents polls until n events named action were written.
func (p *proxy) waitEvents(t testing.TB, action string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev := p.events(action)
		if len(ev) >= n {
			return ev
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %s events, want %d: %v", len(ev), action, n, ev)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}

// lineConn is a raw client for exact protocol checks.
type lineConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialLine(t testing.TB, addr string, tc *tls.Config) *lineConn {
	t.Helper()
	var c net.Conn
	var err error
	if tc != nil {
		c, err = tls.Dial("tcp", addr, tc)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &lineConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (l *lineConn) send(s string) {
	l.t.Helper()
	if _, err := l.c.Write([]byte(s)); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lineConn) line() string {
	l.t.Helper()
	s, err := l.br.ReadString('\n')
	if err != nil {
		l.t.Fatalf("read: %v (got %q)", err, s)
	}
	return strings.TrimRight(s, "\r\n")
}

// expect reads a line and requires it to start with prefix.
func (l *lineConn) expect(prefix string) string {
	l.t.Helper()
	s := l.line()
	if !strings.HasPrefix(s, prefix) {
		l.t.Fatalf("got %q, want %q...", s, prefix)
	}
	return s
}

// until reads lines up to one starting with prefix and returns them all.
func (l *lineConn) until(prefix string) []string {
	l.t.Helper()
	var lines []string
	for range 100000 {
		s := l.line()
		lines = append(lines, s)
		if strings.HasPrefix(s, prefix) {
			return lines
		}
	}
	l.t.Fatalf("no %q", prefix)
	return nil
}

// closed requires the server to hang up (after any lines left).
func (l *lineConn) closed() {
	l.t.Helper()
	for range 100 {
		if _, err := l.br.ReadString('\n'); err != nil {
			return
		}
	}
	l.t.Fatal("connection still open")
}

// startTLS upgrades the connection (after STLS/STARTTLS was accepted).
func (l *lineConn) startTLS(tc *tls.Config) {
	l.t.Helper()
	c := tls.Client(l.c, tc)
	if err := c.Handshake(); err != nil {
		l.t.Fatal(err)
	}
	l.c, l.br = c, bufio.NewReader(c)
}

func plainIR(user, pw string) string {
	return b64("\x00" + user + "\x00" + pw)
}
