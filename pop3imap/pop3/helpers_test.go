package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"moat/audit"
	"moat/auth"
	"moat/internal/tlsutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testUsers are the fake authenticator's accounts. "locked" and "broken"
// get auth.ErrLocked and auth.ErrUnavailable whatever the password.
var testUsers = map[string]string{"alice": "secret", "bob": "hunter2", "carol": "pass word"}

// fakeAuth stands in for auth.Service: no delays, no lockout state.
type fakeAuth struct {
	plaintext atomic.Bool // PlaintextAllowed without TLS

	mu   sync.Mutex
	reqs []auth.Request
}

func (a *fakeAuth) Login(ctx context.Context, r auth.Request) (string, error) {
	a.mu.Lock()
	a.reqs = append(a.reqs, r)
	a.mu.Unlock()
	if !a.PlaintextAllowed(r.Remote.Addr(), r.TLS) {
		// As auth.Service does: nothing else is looked at.
		return "", fmt.Errorf("login %s: %w", r.User, auth.ErrPlaintext)
	}
	switch r.User {
	case "locked":
		return "", fmt.Errorf("login %s: %w", r.User, auth.ErrLocked)
	case "broken":
		return "", fmt.Errorf("login %s: %w", r.User, auth.ErrUnavailable)
	}
	if pw, ok := testUsers[r.User]; ok && pw == r.Password {
		return r.User + "@example.test", nil
	}
	return "", fmt.Errorf("login %s: %w", r.User, auth.ErrFailed)
}

func (a *fakeAuth) PlaintextAllowed(_ netip.Addr, tls bool) bool { return tls || a.plaintext.Load() }

func (a *fakeAuth) requests() []auth.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.reqs)
}

// Messages with these contents misbehave in the fake backend.
const (
	failOpen = "!fail-open"
	failRead = "!fail-read"
)

// fakeBackend keeps maildrops in memory and records what sessions did.
type fakeBackend struct {
	closed chan string // the user, at every Maildrop.Close

	mu         sync.Mutex
	boxes      map[string][]string // canonical user → messages
	locked     map[string]bool
	commits    map[string][][]int
	failCommit bool
}

func newFakeBackend(boxes map[string][]string) *fakeBackend {
	return &fakeBackend{
		closed: make(chan string, 64),
		boxes:  boxes, locked: map[string]bool{}, commits: map[string][][]int{},
	}
}

func (b *fakeBackend) OpenMaildrop(user string) (Maildrop, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.locked[user] {
		return nil, fmt.Errorf("open %s: %w", user, ErrInUse)
	}
	b.locked[user] = true
	return &fakeDrop{b: b, user: user, msgs: slices.Clone(b.boxes[user])}, nil
}

// commitsOf returns the Commit calls made for user.
func (b *fakeBackend) commitsOf(user string) [][]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.commits[user])
}

// waitClosed waits for the next Maildrop.Close.
func (b *fakeBackend) waitClosed(t testing.TB) string {
	t.Helper()
	select {
	case u := <-b.closed:
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("maildrop not closed")
		return ""
	}
}

type fakeDrop struct {
	b    *fakeBackend
	user string
	msgs []string
	done bool
}

func (d *fakeDrop) Messages() ([]Message, error) {
	ms := make([]Message, len(d.msgs))
	for i, m := range d.msgs {
		ms[i] = Message{UID: fmt.Sprintf("uid%d", i+1), Size: int64(len(m))}
	}
	return ms, nil
}

func (d *fakeDrop) Open(i int) (io.ReadCloser, error) {
	switch {
	case i < 0 || i >= len(d.msgs):
		return nil, fmt.Errorf("open message %d: out of range", i)
	case d.msgs[i] == failOpen:
		return nil, errors.New("open message: disk on fire")
	case d.msgs[i] == failRead:
		return io.NopCloser(io.MultiReader(strings.NewReader("Subject: x\r\n"), errReader{})), nil
	}
	return io.NopCloser(strings.NewReader(d.msgs[i])), nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("read: disk on fire") }

func (d *fakeDrop) Commit(deleted []int) error {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	d.b.commits[d.user] = append(d.b.commits[d.user], slices.Clone(deleted))
	if d.b.failCommit {
		return errors.New("commit: disk on fire")
	}
	return nil
}

func (d *fakeDrop) Close() error {
	if d.done {
		panic("maildrop closed twice")
	}
	d.done = true
	d.b.mu.Lock()
	delete(d.b.locked, d.user)
	d.b.mu.Unlock()
	select {
	case d.b.closed <- d.user:
	default:
	}
	return nil
}

// The default maildrop of alice (RFC 1939 style examples).
var (
	msg1 = "From: bob@example.test\r\nSubject: first\r\n\r\nline one\r\nline two\r\n"
	msg2 = "Subject: dots\r\n\r\n.\r\n..x\r\n.end\r\n"
	msg3 = "Subject: no final newline\r\n\r\nlast line"
)

type testEnv struct {
	srv   *Server
	addr  string
	auth  *fakeAuth
	back  *fakeBackend
	logs  *observer.ObservedLogs
	tls   *tls.Config // the server's, when made
	roots *x509.CertPool
	dir   string
}

// envOptions tune startServer.
type envOptions struct {
	o         Options
	listener  Listener
	boxes     map[string][]string // default: alice has msg1-3
	noTLS     bool                // no TLSConfig
	plaintext bool                // cleartext logins allowed
}

// startServer runs a server on a loopback port with the fake backend and
// authenticator; it is shut down when the test ends.
func startServer(t testing.TB, eo envOptions) *testEnv {
	t.Helper()
	env := &testEnv{dir: t.TempDir(), auth: &fakeAuth{}}
	env.auth.plaintext.Store(eo.plaintext)
	if eo.boxes == nil {
		eo.boxes = map[string][]string{"alice@example.test": {msg1, msg2, msg3}}
	}
	env.back = newFakeBackend(eo.boxes)
	core, logs := observer.New(zap.DebugLevel)
	env.logs = logs

	cert, _, err := tlsutil.SelfSigned(filepath.Join(env.dir, "tls"), "pop.test")
	if err != nil {
		t.Fatal(err)
	}
	env.tls = &tls.Config{Certificates: []tls.Certificate{*cert}}
	env.roots = x509.NewCertPool()
	env.roots.AddCert(cert.Leaf)

	o := eo.o
	o.Backend, o.Auth, o.Log = env.back, env.auth, audit.NewZap(zap.New(core))
	if o.Hostname == "" {
		o.Hostname = "pop.test"
	}
	if !eo.noTLS {
		o.TLSConfig = env.tls
	}
	env.srv = New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- env.srv.Serve(ln, eo.listener) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		for _, e := range logs.FilterFieldKey("moat.operation").All() {
			if e.ContextMap()["moat.operation"] == "panic" {
				t.Errorf("session panicked: %v", e.ContextMap()["error.message"])
			}
		}
	})
	return env
}

// errorEvents returns the pop3.error events' operations.
func (env *testEnv) errorEvents() []string {
	var ops []string
	for _, e := range env.logs.FilterMessage("pop3.error").All() {
		ops = append(ops, fmt.Sprint(e.ContextMap()["moat.operation"]))
	}
	return ops
}

// client is the test side of a connection.
type client struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

// dial connects and reads the greeting.
func (env *testEnv) dial(t testing.TB) *client {
	t.Helper()
	c := env.dialRaw(t)
	if got := c.line(); got != "+OK pop.test POP3 ready" {
		t.Fatalf("greeting %q", got)
	}
	return c
}

// dialRaw connects without reading anything.
func (env *testEnv) dialRaw(t testing.TB) *client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", env.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	return &client{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// login runs USER and PASS for alice.
func (c *client) login() {
	c.t.Helper()
	c.expect("USER alice", "+OK send PASS\r\n")
	if got := c.cmd("PASS secret"); !strings.HasPrefix(got, "+OK maildrop has") {
		c.t.Fatalf("PASS: %q", got)
	}
}

func (c *client) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

func (c *client) send(line string) { c.t.Helper(); c.write(line + "\r\n") }

// line reads one line and returns it without its CRLF, which it requires.
func (c *client) line() string {
	c.t.Helper()
	s, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, s)
	}
	if !strings.HasSuffix(s, "\r\n") {
		c.t.Fatalf("line without CRLF: %q", s)
	}
	return strings.TrimSuffix(s, "\r\n")
}

// cmd sends a command and returns the one-line reply.
func (c *client) cmd(line string) string { c.t.Helper(); c.send(line); return c.line() }

// read reads exactly n bytes.
func (c *client) read(n int) string {
	c.t.Helper()
	buf := make([]byte, n)
	k, err := io.ReadFull(c.r, buf)
	if err != nil {
		c.t.Fatalf("read %d bytes: %v (got %q)", n, err, buf[:k])
	}
	return string(buf)
}

// expect sends a command (unless empty) and requires exactly want back.
func (c *client) expect(line, want string) {
	c.t.Helper()
	if line != "" {
		c.send(line)
	}
	if got := c.read(len(want)); got != want {
		c.t.Fatalf("%q:\n got %q\nwant %q", line, got, want)
	}
}

// eof requires the server to close the connection with nothing more sent.
func (c *client) eof() {
	c.t.Helper()
	rest, err := io.ReadAll(c.r)
	if len(rest) > 0 {
		c.t.Fatalf("expected the connection closed, got %q", rest)
	}
	if err != nil && !isReset(err) {
		c.t.Fatalf("expected EOF: %v", err)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(err.Error(), "reset")
}

// startTLS sends STLS and continues over TLS.
func (c *client) startTLS(env *testEnv) {
	c.t.Helper()
	c.expect("STLS", "+OK Begin TLS negotiation\r\n")
	c.handshake(env)
}

func (c *client) handshake(env *testEnv) {
	c.t.Helper()
	if c.r.Buffered() > 0 {
		c.t.Fatalf("data after the STLS reply: %d bytes", c.r.Buffered())
	}
	tc := tls.Client(c.conn, &tls.Config{RootCAs: env.roots, ServerName: "pop.test"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}

// unstuff reads a multi-line body (after the status line) from b and
// returns it without dot-stuffing, and what follows the terminator. ok is
// false when b has no terminator.
func unstuff(b []byte) (body, rest []byte, ok bool) {
	var out bytes.Buffer
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return out.Bytes(), nil, false
		}
		line := b[:i+1]
		b = b[i+1:]
		if string(line) == ".\r\n" {
			return out.Bytes(), b, true
		}
		if line[0] == '.' {
			line = line[1:]
		}
		out.Write(line)
	}
	return out.Bytes(), nil, false
}
