package imapd

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"moat/auth"
	"moat/internal/tlsutil"
	"moat/store/mailbox"
)

const (
	alice    = "alice@example.test"
	bob      = "bob@example.test"
	password = "secret"
)

// fakeAuth stands in for auth.Service: fixed users, cleartext allowed or
// not for every client, and a record of the requests.
type fakeAuth struct {
	clearOK atomic.Bool
	mu      sync.Mutex
	reqs    []auth.Request
}

func (a *fakeAuth) Login(_ context.Context, r auth.Request) (string, error) {
	a.mu.Lock()
	logged := r
	logged.Password = ""
	a.reqs = append(a.reqs, logged)
	a.mu.Unlock()
	if !r.TLS && !a.clearOK.Load() {
		return "", auth.ErrPlaintext
	}
	switch u := strings.ToLower(r.User); {
	case u == "locked@example.test":
		return "", fmt.Errorf("login: %w", auth.ErrLocked)
	case (u == alice || u == bob) && r.Password == password:
		return u, nil
	}
	return "", fmt.Errorf("login: %w", auth.ErrFailed)
}

func (a *fakeAuth) PlaintextAllowed(_ netip.Addr, tls bool) bool { return tls || a.clearOK.Load() }

func (a *fakeAuth) last() auth.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reqs[len(a.reqs)-1]
}

type harness struct {
	t          testing.TB
	dir        string
	store      *mailbox.Store
	auth       *fakeAuth
	srv        *Server
	plain, tls string // listener addresses
	client     *tls.Config
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), auth: &fakeAuth{}}
	h.store = mailbox.Open(h.dir)
	cert, _, err := tlsutil.SelfSigned(filepath.Join(h.dir, "tls"), "imap.test")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	h.client = &tls.Config{RootCAs: pool, ServerName: "imap.test"}
	h.start(&tls.Config{Certificates: []tls.Certificate{*cert}})
	return h
}

func (h *harness) start(tc *tls.Config) {
	h.srv = New(Options{Store: h.store, Auth: h.auth, TLSConfig: tc, Hostname: "imap.test"})
	serve := func(l Listener) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			h.t.Fatal(err)
		}
		go h.srv.Serve(ln, l)
		return ln.Addr().String()
	}
	h.plain = serve(Listener{Name: "imap"})
	h.tls = serve(Listener{Name: "imaps", ImplicitTLS: true})
	h.t.Cleanup(func() { h.srv.Close() })
}

// restart is a process restart: a new store and server on the same data.
func (h *harness) restart() {
	h.srv.Close()
	h.store = mailbox.Open(h.dir)
	cert, _, _ := tlsutil.SelfSigned(filepath.Join(h.dir, "tls"), "imap.test")
	h.start(&tls.Config{Certificates: []tls.Certificate{*cert}})
}

func (h *harness) options(u *imapclient.UnilateralDataHandler) *imapclient.Options {
	return &imapclient.Options{
		TLSConfig:             h.client,
		UnilateralDataHandler: u,
		Dialer:                &net.Dialer{Timeout: 5 * time.Second},
	}
}

func (h *harness) dial(mode string, u *imapclient.UnilateralDataHandler) *imapclient.Client {
	h.t.Helper()
	var c *imapclient.Client
	var err error
	switch mode {
	case "tls":
		c, err = imapclient.DialTLS(h.tls, h.options(u))
	case "starttls":
		c, err = imapclient.DialStartTLS(h.plain, h.options(u))
	default:
		c, err = imapclient.DialInsecure(h.plain, h.options(u))
	}
	if err != nil {
		h.t.Fatal(err)
	}
	if err := c.WaitGreeting(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// login opens an IMAPS session as user.
func (h *harness) login(user string, u *imapclient.UnilateralDataHandler) *imapclient.Client {
	h.t.Helper()
	c := h.dial("tls", u)
	if err := c.Login(user, password).Wait(); err != nil {
		h.t.Fatal(err)
	}
	return c
}

func (h *harness) deliver(user, raw string) {
	h.t.Helper()
	if _, err := h.store.Deliver(user, strings.NewReader(raw)); err != nil {
		h.t.Fatal(err)
	}
}

func code(err error) imap.ResponseCode {
	var ie *imap.Error
	if errors.As(err, &ie) {
		return ie.Code
	}
	return ""
}

func message(n int, subject string) string {
	return fmt.Sprintf("From: Sender <sender@example.net>\r\nTo: alice@example.test\r\n"+
		"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\nSubject: %s\r\nMessage-Id: <m%d@example.net>\r\n"+
		"Content-Type: text/plain\r\n\r\nHello number %d.\r\n", subject, n, n)
}

func fetchAll(t testing.TB, c *imapclient.Client, set imap.NumSet, o *imap.FetchOptions) []*imapclient.FetchMessageBuffer {
	t.Helper()
	msgs, err := c.Fetch(set, o).Collect()
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func uidList(msgs []*imapclient.FetchMessageBuffer) []imap.UID {
	var out []imap.UID
	for _, m := range msgs {
		out = append(out, m.UID)
	}
	return out
}

func flagIn(flags []imap.Flag, f imap.Flag) bool {
	for _, x := range flags {
		if strings.EqualFold(string(x), string(f)) {
			return true
		}
	}
	return false
}

// raw is a line-level IMAP dialogue, for what imapclient does not send.
type raw struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	n    int
}

func (h *harness) raw(mode string) *raw {
	h.t.Helper()
	var conn net.Conn
	var err error
	if mode == "tls" {
		conn, err = tls.Dial("tcp", h.tls, h.client)
	} else {
		conn, err = net.Dial("tcp", h.plain)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	r := &raw{t: h.t, conn: conn, r: bufio.NewReader(conn)}
	r.line() // greeting
	return r
}

func (r *raw) line() string {
	r.t.Helper()
	l, err := r.r.ReadString('\n')
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	return strings.TrimRight(l, "\r\n")
}

// cmd sends a command and returns the untagged lines and the tagged one.
func (r *raw) cmd(s string) (untagged []string, tagged string) {
	r.t.Helper()
	r.n++
	tag := fmt.Sprintf("r%d", r.n)
	fmt.Fprintf(r.conn, "%s %s\r\n", tag, s)
	for range 10000 {
		l := r.line()
		if strings.HasPrefix(l, tag+" ") {
			return untagged, strings.TrimPrefix(l, tag+" ")
		}
		untagged = append(untagged, l)
	}
	r.t.Fatal("no tagged response")
	return nil, ""
}
