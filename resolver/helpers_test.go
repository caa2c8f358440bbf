package resolver

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// clock is an injected Config.Now that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newResolver returns a resolver for servers on a fake clock, with a
// short Timeout and one attempt unless edit says otherwise.
func newResolver(t testing.TB, servers []string, edit func(*Config)) (*Resolver, *clock) {
	t.Helper()
	clk := newClock()
	c := Config{Servers: servers, Timeout: time.Second, Attempts: 1, Now: clk.Now}
	if edit != nil {
		edit(&c)
	}
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return r, clk
}

// waitFor polls cond until it holds, failing the test after 5 seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// deadAddr returns a loopback UDP address nothing listens on: queries
// there fail at once with "connection refused".
func deadAddr(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// The error predicates of the libraries moat hands the resolver to,
// restated so that TestErrors checks every case against them;
// TestLibraries runs the libraries themselves.

// spfTemporary is blitiri.com.ar/go/spf v1.6.0 isTemporary (spf.go):
// exactly a *net.DNSError whose Temporary() is true → TempError.
func spfTemporary(err error) bool {
	derr, ok := err.(*net.DNSError)
	return ok && derr.Temporary()
}

// spfNotFound is spf's isNotFound: exactly a *net.DNSError with
// IsNotFound → None, or a void lookup. Any error that is neither this
// nor temporary is a PermError.
func spfNotFound(err error) bool {
	derr, ok := err.(*net.DNSError)
	return ok && derr.IsNotFound
}

// msgauthTemporary is go-msgauth v0.7.0 dkim/query.go and
// dmarc/lookup.go: a net.Error whose Temporary() is true → temperror.
func msgauthTemporary(err error) bool {
	ne, ok := err.(net.Error)
	//lint:ignore SA1019 this is what go-msgauth calls.
	return ok && ne.Temporary()
}

// dmarcNoPolicy is go-msgauth dmarc/lookup.go: a *net.DNSError with
// IsNotFound → ErrNoPolicy.
func dmarcNoPolicy(err error) bool {
	derr, ok := err.(*net.DNSError)
	return ok && derr.IsNotFound
}

// reply writes a reply to req with rcode and the given records.
func reply(w dns.ResponseWriter, req *dns.Msg, rcode int, rrs ...dns.RR) {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.Answer = rrs
	w.WriteMsg(m)
}

// mustRR parses one zone-file line; it panics on a typo, since handlers
// run outside the test goroutine.
func mustRR(s string) dns.RR {
	r, err := dns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return r
}

func isTCP(w dns.ResponseWriter) bool { return w.LocalAddr().Network() == "tcp" }
