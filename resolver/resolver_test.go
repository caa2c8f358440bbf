package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"moat/internal/dnstest"
	"moat/metrics"
)

// lookupAs runs the lookup named kind and returns its answer as strings.
func lookupAs(ctx context.Context, r *Resolver, kind, name string) ([]string, error) {
	var out []string
	switch kind {
	case "TXT":
		return r.LookupTXT(ctx, name)
	case "MX":
		mx, err := r.LookupMX(ctx, name)
		for _, m := range mx {
			out = append(out, fmt.Sprintf("%d %s", m.Pref, m.Host))
		}
		return out, err
	case "IP":
		ips, err := r.LookupIPAddr(ctx, name)
		for _, ip := range ips {
			out = append(out, ip.String())
		}
		return out, err
	case "PTR":
		return r.LookupAddr(ctx, name)
	case "A":
		as, err := r.LookupA(ctx, name)
		for _, a := range as {
			out = append(out, a.String())
		}
		return out, err
	}
	panic("unknown lookup " + kind)
}

func TestLookups(t *testing.T) {
	arpa4, _ := dns.ReverseAddr("192.0.2.1")
	arpa6, _ := dns.ReverseAddr("2001:db8::1")
	s := dnstest.New(t,
		`txt.test. 300 IN TXT "v=spf1 -all"`,
		`chunks.test. 300 IN TXT "v=DKIM1; k=rsa; " "p=MIGfMA0" "GCSqGSIb3"`,
		`multi.test. 300 IN TXT "one"`, `multi.test. 300 IN TXT "two"`,
		"mx.test. 300 IN MX 20 b.mx.test.", "mx.test. 300 IN MX 10 a.mx.test.", "mx.test. 300 IN MX 20 c.mx.test.",
		"null-mx.test. 300 IN MX 0 .",
		"host.test. 300 IN A 192.0.2.1", "host.test. 300 IN AAAA 2001:db8::1", "host.test. 300 IN A 192.0.2.2",
		"v4.test. 300 IN A 192.0.2.3", "v6.test. 300 IN AAAA 2001:db8::3",
		"2.0.0.127.bl.test. 300 IN A 127.0.0.2", "2.0.0.127.bl.test. 300 IN A 127.0.0.4",
		arpa4+" 300 IN PTR mail.example.test.", arpa6+" 300 IN PTR mail6.example.test.",
	)
	r, _ := newResolver(t, []string{s.Addr}, nil)
	tests := []struct {
		name, kind, q string
		want          []string
		queries       int64 // at the server; -1: not checked (may be cached)
	}{
		{"TXT", "TXT", "txt.test", []string{"v=spf1 -all"}, 1},
		{"TXT chunks joined", "TXT", "chunks.test", []string{"v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3"}, 1},
		{"TXT one string per record", "TXT", "multi.test", []string{"one", "two"}, 1},
		{"MX sorted by preference", "MX", "mx.test", []string{"10 a.mx.test.", "20 b.mx.test.", "20 c.mx.test."}, 1},
		{"null MX", "MX", "null-mx.test.", []string{"0 ."}, 1},
		{"A and AAAA", "IP", "host.test", []string{"192.0.2.1", "192.0.2.2", "2001:db8::1"}, 2},
		{"A only", "IP", "v4.test", []string{"192.0.2.3"}, 2},
		{"AAAA only", "IP", "v6.test", []string{"2001:db8::3"}, 2},
		{"IPv4 literal, no query", "IP", "192.0.2.7", []string{"192.0.2.7"}, 0},
		{"IPv6 literal, no query", "IP", "2001:db8::7", []string{"2001:db8::7"}, 0},
		{"PTR IPv4", "PTR", "192.0.2.1", []string{"mail.example.test."}, 1},
		{"PTR IPv6", "PTR", "2001:db8::1", []string{"mail6.example.test."}, 1},
		{"PTR IPv4-mapped IPv6", "PTR", "::ffff:192.0.2.1", []string{"mail.example.test."}, -1}, // the IPv4 name
		{"DNSBL A", "A", "2.0.0.127.bl.test", []string{"127.0.0.2", "127.0.0.4"}, 1},
		{"DNSBL A, other case and a dot", "A", "2.0.0.127.BL.Test.", []string{"127.0.0.2", "127.0.0.4"}, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Queries()
			got, err := lookupAs(context.Background(), r, tc.kind, tc.q)
			if err != nil {
				t.Fatalf("%s %s: %v", tc.kind, tc.q, err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("%s %s = %q, want %q", tc.kind, tc.q, got, tc.want)
			}
			if n := s.Queries() - before; tc.queries >= 0 && n != tc.queries {
				t.Errorf("%s %s: %d queries at the server, want %d", tc.kind, tc.q, n, tc.queries)
			}
		})
	}
}

// TestResultsAreCopies: a caller that changes what it got does not change
// the cache.
func TestResultsAreCopies(t *testing.T) {
	s := dnstest.New(t, `txt.test. 300 IN TXT "v=spf1 -all"`, "mx.test. 300 IN MX 10 a.mx.test.")
	r, _ := newResolver(t, []string{s.Addr}, nil)
	ctx := context.Background()
	txt, _ := r.LookupTXT(ctx, "txt.test")
	txt[0] = "changed"
	mx, _ := r.LookupMX(ctx, "mx.test")
	mx[0].Host = "changed."
	if txt, _ := r.LookupTXT(ctx, "txt.test"); txt[0] != "v=spf1 -all" {
		t.Errorf("TXT after the caller changed it: %q", txt)
	}
	if mx, _ := r.LookupMX(ctx, "mx.test"); mx[0].Host != "a.mx.test." {
		t.Errorf("MX after the caller changed it: %q", mx[0].Host)
	}
}

// faults answers the queries dnstest has no switch for.
func faults(w dns.ResponseWriter, req *dns.Msg) bool {
	m := new(dns.Msg)
	m.SetReply(req)
	switch q := dnstest.QName(req); q {
	case "refused.test.":
		m.Rcode = dns.RcodeRefused
	case "notimp.test.":
		m.Rcode = dns.RcodeNotImplemented
	case "formerr.test.": // as many servers do: no question section
		m.Rcode = dns.RcodeFormatError
		m.Question = nil
	case "malformed.test.": // the answer's RDATA cut short
		m.Answer = []dns.RR{mustRR(`malformed.test. 300 IN TXT "a record cut short"`)}
		b, err := m.Pack()
		if err != nil {
			panic(err)
		}
		w.Write(b[:len(b)-4])
		return true
	case "tcp-mismatch.test.": // truncated over UDP, another question over TCP
		if isTCP(w) {
			m.Question[0].Name = "other.test."
			m.Answer = []dns.RR{mustRR(`other.test. 300 IN TXT "other"`)}
		} else {
			m.Truncated = true
		}
	case "nosoa.test.": // NXDOMAIN without the SOA RFC 2308 asks for
		m.Rcode = dns.RcodeNameError
	default:
		var ttl, minimum int
		switch {
		case strings.HasPrefix(q, "inline"):
			inlineChain(m, q)
		case strings.HasPrefix(q, "soa"): // "soaTTL-MINIMUM.test.": NXDOMAIN with that SOA
			fmt.Sscanf(q, "soa%d-%d.", &ttl, &minimum)
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{mustRR(fmt.Sprintf("test. %d IN SOA ns.test. hostmaster.test. 1 3600 600 86400 %d", ttl, minimum))}
		default:
			return false
		}
	}
	w.WriteMsg(m)
	return true
}

// inlineChain answers "inlineN.test." with a chain of N CNAMEs and the TXT
// record at its end, all in one answer, in scrambled order, among records
// of other names and types.
func inlineChain(m *dns.Msg, q string) {
	var n int
	fmt.Sscanf(q, "inline%d.", &n)
	name := func(i int) string {
		if i == 0 {
			return q
		}
		return fmt.Sprintf("l%d.%s", i, q)
	}
	m.Answer = append(m.Answer,
		mustRR(fmt.Sprintf(`%s 300 IN TXT "end"`, name(n))),
		mustRR(`noise.test. 300 IN TXT "noise"`),
		mustRR(fmt.Sprintf("%s 300 IN A 192.0.2.9", name(n))))
	for i := n; i >= 1; i-- {
		m.Answer = append(m.Answer, mustRR(fmt.Sprintf("%s 300 IN CNAME %s", name(i-1), name(i))))
	}
}

func TestErrors(t *testing.T) {
	s := dnstest.New(t,
		`txt.test. 300 IN TXT "x"`, "host.test. 300 IN A 192.0.2.1", "a.sub.test. 300 IN A 192.0.2.2",
		"loop1.test. 300 IN CNAME loop2.test.", "loop2.test. 300 IN CNAME loop1.test.")
	s.ServFail("servfail.test")
	s.Silent("silent.test")
	icpt := s.Intercept(t, faults)
	dead := deadAddr(t)
	type flags struct{ notFound, temporary, timeout bool }
	notFound := flags{notFound: true}
	temporary := flags{temporary: true}
	timeout := flags{temporary: true, timeout: true}
	permanent := flags{}
	tests := []struct {
		name     string
		server   string // default: icpt
		kind, q  string
		want     flags
		text     string // in Err
		noServer bool   // invalid input: no query, no Server
	}{
		{name: "NXDOMAIN", kind: "TXT", q: "nothing.test", want: notFound, text: "no such host"},
		{name: "NODATA", kind: "TXT", q: "host.test", want: notFound, text: "no TXT record"},
		{name: "NODATA, empty non-terminal", kind: "TXT", q: "sub.test", want: notFound, text: "no TXT record"},
		{name: "MX NXDOMAIN", kind: "MX", q: "nothing.test", want: notFound, text: "no such host"},
		{name: "PTR NXDOMAIN", kind: "PTR", q: "192.0.2.99", want: notFound, text: "no such host"},
		{name: "DNSBL not listed", kind: "A", q: "3.0.0.127.bl.test", want: notFound, text: "no such host"},
		{name: "IP NXDOMAIN", kind: "IP", q: "nothing.test", want: notFound, text: "no such host"},
		{name: "IP NODATA", kind: "IP", q: "txt.test", want: notFound, text: "no A or AAAA record"},
		{name: "SERVFAIL", kind: "TXT", q: "servfail.test", want: temporary, text: "SERVFAIL"},
		{name: "IP SERVFAIL", kind: "IP", q: "servfail.test", want: temporary, text: "SERVFAIL"},
		{name: "REFUSED", kind: "TXT", q: "refused.test", want: temporary, text: "REFUSED"},
		{name: "NOTIMP", kind: "TXT", q: "notimp.test", want: temporary, text: "NOTIMP"},
		{name: "timeout", kind: "TXT", q: "silent.test", want: timeout, text: "i/o timeout"},
		{name: "dead server", server: dead, kind: "TXT", q: "txt.test", want: temporary, text: "connection refused"},
		{name: "FORMERR", kind: "TXT", q: "formerr.test", want: permanent, text: "FORMERR"},
		{name: "malformed reply", kind: "TXT", q: "malformed.test", want: permanent, text: "malformed reply"},
		{name: "reply to another question over TCP", kind: "TXT", q: "tcp-mismatch.test", want: permanent, text: "does not match"},
		{name: "CNAME loop", kind: "TXT", q: "loop1.test", want: permanent, text: "more than 8 CNAMEs"},
		{name: "9 CNAMEs in one answer", kind: "TXT", q: "inline9.test", want: permanent, text: "more than 8 CNAMEs"},
		{name: "empty name", kind: "TXT", q: "", want: notFound, noServer: true},
		{name: "empty label", kind: "TXT", q: "a..test", want: notFound, noServer: true},
		{name: "leading dot", kind: "MX", q: ".test", want: notFound, noServer: true},
		{name: "label starts with a hyphen", kind: "TXT", q: "-a.test", want: notFound, noServer: true},
		{name: "label ends with a hyphen", kind: "A", q: "a-.test", want: notFound, noServer: true},
		{name: "label of 64", kind: "TXT", q: strings.Repeat("a", 64) + ".test", want: notFound, noServer: true},
		{name: "name of 254", kind: "TXT", q: strings.Repeat("a.", 126) + "ab", want: notFound, noServer: true},
		{name: "space", kind: "TXT", q: "a b.test", want: notFound, noServer: true},
		{name: "SPF macro local part", kind: "IP", q: "user+tag._spf.test", want: notFound, noServer: true},
		{name: "all digits", kind: "TXT", q: "192.0.2.1", want: notFound, noServer: true},
		{name: "not an IP address", kind: "PTR", q: "mail.test", want: notFound, noServer: true},
		{name: "empty host", kind: "IP", q: "", want: notFound, noServer: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			server := icpt
			if tc.server != "" {
				server = tc.server
			}
			r, _ := newResolver(t, []string{server}, func(c *Config) { c.Timeout = 200 * time.Millisecond })
			_, err := lookupAs(context.Background(), r, tc.kind, tc.q)
			de, ok := err.(*net.DNSError) // unwrapped, as spf and go-msgauth need it
			if !ok {
				t.Fatalf("%s %q: error %T %v, want *net.DNSError", tc.kind, tc.q, err, err)
			}
			got := flags{notFound: de.IsNotFound, temporary: de.IsTemporary, timeout: de.IsTimeout}
			if got != tc.want {
				t.Errorf("%s %q: %v: flags %+v, want %+v", tc.kind, tc.q, err, got, tc.want)
			}
			if !strings.Contains(de.Err, tc.text) {
				t.Errorf("%s %q: Err %q, want it to contain %q", tc.kind, tc.q, de.Err, tc.text)
			}
			wantName := tc.q
			if tc.kind == "PTR" && !tc.noServer {
				wantName, _ = dns.ReverseAddr(tc.q)
			}
			if de.Name != wantName {
				t.Errorf("%s %q: Name %q, want %q", tc.kind, tc.q, de.Name, wantName)
			}
			switch wantServer := server; {
			case tc.noServer && (de.Server != "" || r.Stats().Queries != 0):
				t.Errorf("%s %q: Server %q after %d queries, want no query", tc.kind, tc.q, de.Server, r.Stats().Queries)
			case !tc.noServer && de.Server != wantServer:
				t.Errorf("%s %q: Server %q, want %q", tc.kind, tc.q, de.Server, wantServer)
			}
			// What the libraries make of it.
			temp := tc.want.temporary || tc.want.timeout
			if spfTemporary(err) != temp || msgauthTemporary(err) != temp {
				t.Errorf("%s %q: spf/go-msgauth temporary = %v/%v, want %v", tc.kind, tc.q, spfTemporary(err), msgauthTemporary(err), temp)
			}
			if spfNotFound(err) != tc.want.notFound || dmarcNoPolicy(err) != tc.want.notFound {
				t.Errorf("%s %q: spf/dmarc not found = %v/%v, want %v", tc.kind, tc.q, spfNotFound(err), dmarcNoPolicy(err), tc.want.notFound)
			}
		})
	}
}

func TestTruncatedRetriesOverTCP(t *testing.T) {
	long := strings.Repeat("x", 250)
	s := dnstest.New(t, fmt.Sprintf(`big.test. 300 IN TXT "%s" "%s" "%s"`, long, long, long))
	s.Truncate("big.test")
	r, _ := newResolver(t, []string{s.Addr}, nil)
	txt, err := r.LookupTXT(context.Background(), "big.test")
	if err != nil || len(txt) != 1 || txt[0] != long+long+long {
		t.Fatalf("LookupTXT = %d records, %v; want the whole record", len(txt), err)
	}
	if n := s.QueriesFor("big.test"); n != 2 {
		t.Errorf("%d queries at the server, want 2 (UDP, then TCP)", n)
	}
	if n := r.Stats().Queries; n != 2 {
		t.Errorf("Stats.Queries = %d, want 2", n)
	}
}

// TestQueries: EDNS0 with 1232 bytes, a new random ID for each query, and
// UDP replies bigger than 512 bytes read whole.
func TestQueries(t *testing.T) {
	long := strings.Repeat("y", 250)
	s := dnstest.New(t, fmt.Sprintf(`big.test. 300 IN TXT "%s" "%s" "%s"`, long, long, long))
	var mu sync.Mutex
	var ids []uint16
	var sizes []uint16
	icpt := s.Intercept(t, func(w dns.ResponseWriter, req *dns.Msg) bool {
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, req.Id)
		var size uint16
		if opt := req.IsEdns0(); opt != nil {
			size = opt.UDPSize()
		}
		sizes = append(sizes, size)
		return false
	})
	r, clk := newResolver(t, []string{icpt}, nil)
	for range 3 {
		txt, err := r.LookupTXT(context.Background(), "big.test")
		if err != nil || len(txt) != 1 || len(txt[0]) != 750 {
			t.Fatalf("LookupTXT = %d records, %v", len(txt), err)
		}
		clk.Advance(time.Hour)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 3 || (ids[0] == ids[1] && ids[1] == ids[2]) {
		t.Errorf("query IDs %v, want three random ones", ids)
	}
	if !slices.Equal(sizes, []uint16{1232, 1232, 1232}) {
		t.Errorf("EDNS0 UDP sizes %v, want 1232 each", sizes)
	}
	if n := s.QueriesFor("big.test"); n != 3 {
		t.Errorf("%d queries at the server, want 3 (UDP only)", n)
	}
}

// TestStrayUDPRepliesIgnored: datagrams that do not answer the question
// are dropped and the real reply still counts (RFC 5452).
func TestStrayUDPRepliesIgnored(t *testing.T) {
	s := dnstest.New(t, `spoof.test. 300 IN TXT "real"`)
	icpt := s.Intercept(t, func(w dns.ResponseWriter, req *dns.Msg) bool {
		w.Write([]byte{0, 1, 2})                            // not DNS
		w.Write([]byte{byte(req.Id >> 8), byte(req.Id), 0}) // its ID, but no header
		wrongID := new(dns.Msg)
		wrongID.SetReply(req)
		wrongID.Id++
		wrongID.Answer = []dns.RR{mustRR(`spoof.test. 300 IN TXT "wrong id"`)}
		w.WriteMsg(wrongID)
		other := new(dns.Msg)
		other.SetReply(req)
		other.Question[0].Name = "evil.test."
		other.Answer = []dns.RR{mustRR(`evil.test. 300 IN TXT "other question"`)}
		w.WriteMsg(other)
		query := req.Copy() // not a response
		w.WriteMsg(query)
		return false
	})
	r, _ := newResolver(t, []string{icpt}, nil)
	txt, err := r.LookupTXT(context.Background(), "spoof.test")
	if err != nil || !slices.Equal(txt, []string{"real"}) {
		t.Fatalf("LookupTXT = %q, %v; want [real]", txt, err)
	}
	if n := r.Stats().Queries; n != 1 {
		t.Errorf("Stats.Queries = %d, want 1", n)
	}
}

func TestTimeouts(t *testing.T) {
	s := dnstest.New(t, `txt.test. 300 IN TXT "x"`)
	s.Silent("silent.test")
	second := s.Intercept(t, func(dns.ResponseWriter, *dns.Msg) bool { return false })

	t.Run("every attempt of every server", func(t *testing.T) {
		const timeout = 100 * time.Millisecond
		r, _ := newResolver(t, []string{s.Addr, second}, func(c *Config) { c.Timeout, c.Attempts = timeout, 2 })
		start := time.Now()
		_, err := r.LookupTXT(context.Background(), "silent.test")
		elapsed := time.Since(start)
		de, ok := err.(*net.DNSError)
		if !ok || !de.IsTimeout || !de.IsTemporary || de.Server != second {
			t.Fatalf("LookupTXT: %#v, want a temporary timeout from %s", err, second)
		}
		if limit := 4*timeout + 500*time.Millisecond; elapsed > limit {
			t.Errorf("took %v, want at most Timeout×Attempts×servers (%v) and a margin", elapsed, 4*timeout)
		}
		if n := r.Stats().Queries; n != 4 {
			t.Errorf("Stats.Queries = %d, want 4", n)
		}
		waitFor(t, "4 queries at the server", func() bool { return s.QueriesFor("silent.test") == 4 })
	})

	t.Run("ctx deadline first", func(t *testing.T) {
		r, _ := newResolver(t, []string{s.Addr}, func(c *Config) { c.Timeout, c.Attempts = 10*time.Second, 2 })
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := r.LookupTXT(ctx, "silent.test")
		if elapsed := time.Since(start); elapsed > time.Second {
			t.Errorf("took %v with a 100ms deadline", elapsed)
		}
		de, ok := err.(*net.DNSError)
		if !ok || !de.IsTimeout || !de.IsTemporary || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("LookupTXT: %#v, want a temporary timeout", err)
		}
		if de.Name != "silent.test" || de.Server != s.Addr {
			t.Errorf("Name %q, Server %q", de.Name, de.Server)
		}
	})

	t.Run("ctx canceled", func(t *testing.T) {
		r, _ := newResolver(t, []string{s.Addr}, func(c *Config) { c.Timeout = 10 * time.Second })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		before := s.QueriesFor("silent.test")
		go func() {
			_, err := r.LookupTXT(ctx, "silent.test")
			done <- err
		}()
		waitFor(t, "the query", func() bool { return s.QueriesFor("silent.test") > before })
		cancel()
		select {
		case err := <-done:
			de, ok := err.(*net.DNSError)
			if !ok || !de.IsTemporary || de.IsTimeout || de.IsNotFound || !errors.Is(err, context.Canceled) {
				t.Errorf("LookupTXT: %#v, want temporary, canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("LookupTXT still waiting 5s after its context was canceled")
		}
	})

	t.Run("ctx already done", func(t *testing.T) {
		r, _ := newResolver(t, []string{s.Addr}, nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := r.LookupTXT(ctx, "txt.test")
		if !spfTemporary(err) || r.Stats().Queries != 0 {
			t.Errorf("LookupTXT: %v after %d queries, want a temporary error and none", err, r.Stats().Queries)
		}
	})
}

func TestServerOrder(t *testing.T) {
	s := dnstest.New(t, `txt.test. 300 IN TXT "x"`)
	var mu sync.Mutex
	var log []string
	servfail := func(tag string) func(dns.ResponseWriter, *dns.Msg) bool {
		return func(w dns.ResponseWriter, req *dns.Msg) bool {
			mu.Lock()
			log = append(log, tag)
			mu.Unlock()
			reply(w, req, dns.RcodeServerFailure)
			return true
		}
	}
	x, y := s.Intercept(t, servfail("x")), s.Intercept(t, servfail("y"))

	t.Run("in order, Attempts rounds", func(t *testing.T) {
		r, _ := newResolver(t, []string{x, y}, func(c *Config) { c.Attempts = 2 })
		_, err := r.LookupTXT(context.Background(), "txt.test")
		de, ok := err.(*net.DNSError)
		if !ok || !de.IsTemporary || de.Server != y {
			t.Fatalf("LookupTXT: %#v, want SERVFAIL from %s", err, y)
		}
		mu.Lock()
		defer mu.Unlock()
		if want := []string{"x", "y", "x", "y"}; !slices.Equal(log, want) {
			t.Errorf("servers asked %v, want %v", log, want)
		}
	})
	for _, tc := range []struct {
		name  string
		first string
	}{
		{"after a dead server", deadAddr(t)},
		{"after a silent server", s.Intercept(t, func(dns.ResponseWriter, *dns.Msg) bool { return true })},
		{"after SERVFAIL", x},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newResolver(t, []string{tc.first, s.Addr}, func(c *Config) { c.Timeout = 100 * time.Millisecond })
			txt, err := r.LookupTXT(context.Background(), "txt.test")
			if err != nil || !slices.Equal(txt, []string{"x"}) {
				t.Fatalf("LookupTXT = %q, %v", txt, err)
			}
			if n := r.Stats().Queries; n != 2 {
				t.Errorf("Stats.Queries = %d, want 2", n)
			}
		})
	}
}

func TestCacheTTL(t *testing.T) {
	s := dnstest.New(t,
		`ttl300.test. 300 IN TXT "x"`,
		`two.test. 200 IN TXT "x"`, `two.test. 100 IN TXT "y"`,
		`ttl5.test. 5 IN TXT "x"`,
		`ttl0.test. 0 IN TXT "x"`,
		`ttl2d.test. 172800 IN TXT "x"`,
		`ttl2h.test. 7200 IN TXT "x"`,
		"alias50.test. 50 IN CNAME target300.test.", `target300.test. 300 IN TXT "x"`,
		"host.test. 300 IN A 192.0.2.1",
		"alias30.test. 30 IN CNAME host.test.",
	)
	s.ServFail("servfail.test")
	s.Silent("silent.test")
	icpt := s.Intercept(t, faults)
	tests := []struct {
		name string
		edit func(*Config)
		q    string
		want time.Duration // how long the answer is cached; 0: not at all
	}{
		{name: "record TTL", q: "ttl300.test", want: 300 * time.Second},
		{name: "lowest TTL of the answer", q: "two.test", want: 100 * time.Second},
		{name: "MinTTL floor", q: "ttl5.test", want: DefaultMinTTL},
		{name: "TTL 0 gets the floor", q: "ttl0.test", want: DefaultMinTTL},
		{name: "MinTTL set", edit: func(c *Config) { c.MinTTL = time.Second }, q: "ttl5.test", want: 5 * time.Second},
		{name: "MaxTTL ceiling", q: "ttl2d.test", want: DefaultMaxTTL},
		{name: "MaxTTL set", edit: func(c *Config) { c.MaxTTL = time.Hour }, q: "ttl2h.test", want: time.Hour},
		{name: "CNAME TTL counts", edit: func(c *Config) { c.MinTTL = time.Second }, q: "alias50.test", want: 50 * time.Second},
		{name: "NXDOMAIN", q: "nothing.test", want: 60 * time.Second}, // dnstest's SOA: TTL and MINIMUM 60
		{name: "NXDOMAIN: NegMaxTTL", edit: func(c *Config) { c.NegMaxTTL = 10 * time.Second }, q: "nothing.test", want: 10 * time.Second},
		{name: "NXDOMAIN: SOA TTL below MINIMUM", q: "soa20-40.test", want: 20 * time.Second},
		{name: "NXDOMAIN: MINIMUM below SOA TTL", q: "soa40-20.test", want: 20 * time.Second},
		{name: "NXDOMAIN: no floor", q: "soa3-3.test", want: 3 * time.Second},
		{name: "NXDOMAIN: SOA TTL 0", q: "soa0-0.test", want: 0},
		{name: "NXDOMAIN without SOA", q: "nosoa.test", want: 0},
		{name: "NODATA", q: "host.test", want: 60 * time.Second},
		{name: "NODATA after a CNAME", q: "alias30.test", want: 30 * time.Second},
		{name: "SERVFAIL", q: "servfail.test", want: FailureTTL},
		{name: "timeout", q: "silent.test", want: FailureTTL},
		{name: "FORMERR", q: "formerr.test", want: FailureTTL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, clk := newResolver(t, []string{icpt}, func(c *Config) {
				c.Timeout = 50 * time.Millisecond
				if tc.edit != nil {
					tc.edit(c)
				}
			})
			ctx := context.Background()
			r.LookupTXT(ctx, tc.q)
			sent := r.Stats().Queries
			if sent == 0 {
				t.Fatal("no query sent")
			}
			if tc.want > 0 {
				clk.Advance(tc.want - time.Second)
				r.LookupTXT(ctx, tc.q)
				if n := r.Stats().Queries; n != sent {
					t.Fatalf("a second before expiry: %d more queries, want it cached", n-sent)
				}
				clk.Advance(time.Second)
			}
			r.LookupTXT(ctx, tc.q)
			if n := r.Stats().Queries; n == sent {
				t.Errorf("after %v: still cached", tc.want)
			}
		})
	}
}

func TestCacheKey(t *testing.T) {
	s := dnstest.New(t, `a.test. 300 IN TXT "x"`, "a.test. 300 IN A 192.0.2.1")
	r, _ := newResolver(t, []string{s.Addr}, nil)
	ctx := context.Background()
	for _, q := range []string{"a.test", "A.Test", "a.test.", "A.TEST."} {
		if txt, err := r.LookupTXT(ctx, q); err != nil || !slices.Equal(txt, []string{"x"}) {
			t.Fatalf("LookupTXT(%q) = %q, %v", q, txt, err)
		}
	}
	if n := s.QueriesFor("a.test"); n != 1 {
		t.Errorf("one name in four spellings: %d queries, want 1", n)
	}
	if _, err := r.LookupA(ctx, "a.test"); err != nil {
		t.Fatal(err)
	}
	if n := s.QueriesFor("a.test"); n != 2 {
		t.Errorf("TXT then A: %d queries, want 2", n)
	}
	if st := r.Stats(); st.Hits != 3 || st.Misses != 2 {
		t.Errorf("Stats = %+v, want 3 hits and 2 misses", st)
	}
}

// gate holds the queries for one name at the server until released.
type gate struct {
	name    string
	release chan struct{}
}

func newGate(name string) *gate { return &gate{name: dns.Fqdn(name), release: make(chan struct{})} }

func (g *gate) hold(_ dns.ResponseWriter, req *dns.Msg) bool {
	if dnstest.QName(req) == g.name {
		select {
		case <-g.release:
		case <-time.After(10 * time.Second): // a failed test must not hang the server
		}
	}
	return false
}

func TestCoalescing(t *testing.T) {
	s := dnstest.New(t, `same.test. 300 IN TXT "x"`)
	g := newGate("same.test")
	r, _ := newResolver(t, []string{s.Intercept(t, g.hold)}, func(c *Config) { c.Timeout = 10 * time.Second })
	coalesced, missed := testutil.ToFloat64(metrics.DNS.Coalesced), testutil.ToFloat64(metrics.DNS.CacheMiss)
	const callers = 50
	errs := make(chan error, callers)
	for range callers {
		go func() {
			txt, err := r.LookupTXT(context.Background(), "same.test")
			if err == nil && !slices.Equal(txt, []string{"x"}) {
				err = fmt.Errorf("got %q", txt)
			}
			errs <- err
		}()
	}
	waitFor(t, "50 callers waiting", func() bool { return r.Stats().Misses == callers })
	close(g.release)
	for range callers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := s.QueriesFor("same.test"); n != 1 {
		t.Errorf("%d queries at the server, want 1", n)
	}
	if st := r.Stats(); st.Queries != 1 || st.Coalesced != callers-1 {
		t.Errorf("Stats = %+v, want 1 query and %d coalesced", st, callers-1)
	}
	if c, m := testutil.ToFloat64(metrics.DNS.Coalesced)-coalesced, testutil.ToFloat64(metrics.DNS.CacheMiss)-missed; c != callers-1 || m != 1 {
		t.Errorf("metrics: %v coalesced and %v missed, want %d and 1", c, m, callers-1)
	}
}

// TestCallerLeaves: a caller whose context ends stops waiting; the query
// goes on for the others, and its answer is cached.
func TestCallerLeaves(t *testing.T) {
	s := dnstest.New(t, `shared.test. 300 IN TXT "x"`)
	g := newGate("shared.test")
	r, _ := newResolver(t, []string{s.Intercept(t, g.hold)}, func(c *Config) { c.Timeout = 10 * time.Second })
	leaving, cancel := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() {
		_, err := r.LookupTXT(leaving, "shared.test")
		left <- err
	}()
	waitFor(t, "the first caller", func() bool { return r.Stats().Misses == 1 })
	stays := make(chan error, 1)
	go func() {
		txt, err := r.LookupTXT(context.Background(), "shared.test")
		if err == nil && !slices.Equal(txt, []string{"x"}) {
			err = fmt.Errorf("got %q", txt)
		}
		stays <- err
	}()
	waitFor(t, "the second caller", func() bool { return r.Stats().Misses == 2 })
	cancel()
	if err := <-left; !errors.Is(err, context.Canceled) || !spfTemporary(err) {
		t.Errorf("canceled caller: %v, want a temporary canceled error", err)
	}
	close(g.release)
	if err := <-stays; err != nil {
		t.Errorf("the caller that stayed: %v", err)
	}
	if _, err := r.LookupTXT(context.Background(), "shared.test"); err != nil {
		t.Error(err)
	}
	if n := s.QueriesFor("shared.test"); n != 1 {
		t.Errorf("%d queries at the server, want 1", n)
	}
	if st := r.Stats(); st.Hits != 1 || st.Coalesced != 1 {
		t.Errorf("Stats = %+v, want 1 hit and 1 coalesced", st)
	}
}

func TestCNAME(t *testing.T) {
	s := dnstest.New(t,
		"alias.test. 300 IN CNAME target.test.", `target.test. 300 IN TXT "hello"`,
		"c1.test. 300 IN CNAME c2.test.", "c2.test. 300 IN CNAME c3.test.", "c3.test. 300 IN CNAME end.test.", `end.test. 300 IN TXT "end"`,
		"to-host.test. 300 IN CNAME host.test.", "host.test. 300 IN A 192.0.2.1",
		"to-nothing.test. 300 IN CNAME nothing.test.",
		"mx-alias.test. 300 IN CNAME mx.test.", "mx.test. 300 IN MX 10 in.mx.test.",
	)
	icpt := s.Intercept(t, faults)
	tests := []struct {
		name, kind, q string
		want          []string
		notFound      string // the error's Err, when not found
		queries       int64
	}{
		{name: "target in the same answer", kind: "TXT", q: "alias.test", want: []string{"hello"}, queries: 1},
		{name: "chain the server does not chase", kind: "TXT", q: "c1.test", want: []string{"end"}, queries: 3},
		{name: "8 CNAMEs in one answer", kind: "TXT", q: "inline8.test", want: []string{"end"}, queries: 1},
		{name: "1 CNAME in one answer", kind: "TXT", q: "inline1.test", want: []string{"end"}, queries: 1},
		{name: "A through CNAME", kind: "IP", q: "to-host.test", want: []string{"192.0.2.1"}, queries: 3},
		{name: "MX through CNAME", kind: "MX", q: "mx-alias.test", want: []string{"10 in.mx.test."}, queries: 1},
		{name: "target has no TXT", kind: "TXT", q: "to-host.test", notFound: "no TXT record", queries: 2},
		{name: "target does not exist", kind: "TXT", q: "to-nothing.test", notFound: "no such host", queries: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newResolver(t, []string{icpt}, nil)
			got, err := lookupAs(context.Background(), r, tc.kind, tc.q)
			if tc.notFound != "" {
				de, ok := err.(*net.DNSError)
				if !ok || !de.IsNotFound || de.Err != tc.notFound || de.Name != tc.q {
					t.Errorf("%s %s: %#v, want not found: %s", tc.kind, tc.q, err, tc.notFound)
				}
			} else if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("%s %s = %q, %v; want %q", tc.kind, tc.q, got, err, tc.want)
			}
			if n := r.Stats().Queries; int64(n) != tc.queries {
				t.Errorf("%s %s: %d queries, want %d", tc.kind, tc.q, n, tc.queries)
			}
		})
	}
}

func TestLookupIPAddr(t *testing.T) {
	s := dnstest.New(t,
		"dual.test. 300 IN A 192.0.2.1", "dual.test. 300 IN AAAA 2001:db8::1",
		"half.test. 300 IN A 192.0.2.1", "v6.test. 300 IN AAAA 2001:db8::1", `txt.test. 300 IN TXT "x"`)
	var arrived atomic.Int32
	both := make(chan struct{})
	icpt := s.Intercept(t, func(w dns.ResponseWriter, req *dns.Msg) bool {
		switch q := req.Question[0]; {
		case q.Name == "dual.test.":
			if arrived.Add(1) == 2 {
				close(both)
			}
			select { // each query waits for the other one
			case <-both:
				return false
			case <-time.After(5 * time.Second):
				return true
			}
		case q.Qtype == dns.TypeAAAA && q.Name == "half.test.", q.Qtype == dns.TypeA && q.Name == "v6.test.", q.Qtype == dns.TypeAAAA && q.Name == "txt.test.":
			reply(w, req, dns.RcodeServerFailure)
			return true
		}
		return false
	})
	r, _ := newResolver(t, []string{icpt}, func(c *Config) { c.Timeout = 10 * time.Second })
	for _, tc := range []struct {
		name, q   string
		want      []string
		temporary bool
	}{
		{"A and AAAA in parallel", "dual.test", []string{"192.0.2.1", "2001:db8::1"}, false},
		{"AAAA fails, A answers", "half.test", []string{"192.0.2.1"}, false},
		{"A fails, AAAA answers", "v6.test", []string{"2001:db8::1"}, false},
		{"AAAA fails, A NODATA", "txt.test", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ips, err := lookupAs(context.Background(), r, "IP", tc.q)
			if tc.temporary {
				if !spfTemporary(err) {
					t.Errorf("LookupIPAddr(%s) = %q, %v; want a temporary error", tc.q, ips, err)
				}
			} else if err != nil || !slices.Equal(ips, tc.want) {
				t.Errorf("LookupIPAddr(%s) = %q, %v; want %q", tc.q, ips, err, tc.want)
			}
		})
	}
}

func TestStats(t *testing.T) {
	s := dnstest.New(t, `a.test. 300 IN TXT "x"`)
	s.ServFail("broken.test")
	r, _ := newResolver(t, []string{s.Addr}, nil)
	ctx := context.Background()
	r.LookupTXT(ctx, "a.test")       // miss, 1 query
	r.LookupTXT(ctx, "a.test")       // hit
	r.LookupTXT(ctx, "nothing.test") // miss, 1 query, not an error
	r.LookupTXT(ctx, "broken.test")  // miss, 1 query, error
	r.LookupTXT(ctx, "broken.test")  // hit: failures are cached for FailureTTL
	r.LookupTXT(ctx, "")             // invalid: nothing
	want := Stats{Queries: 3, Hits: 2, Misses: 3, Coalesced: 0, Errors: 1}
	if st := r.Stats(); st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
}

func TestNew(t *testing.T) {
	r, err := New(Config{Servers: []string{"192.0.2.53", "192.0.2.54:5353", "2001:db8::53", "[2001:db8::54]", "[2001:db8::55]:53"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.53:53", "192.0.2.54:5353", "[2001:db8::53]:53", "[2001:db8::54]:53", "[2001:db8::55]:53"}
	if got := r.Servers(); !slices.Equal(got, want) {
		t.Errorf("Servers = %q, want %q", got, want)
	}
	if r.timeout != DefaultTimeout || r.attempts != DefaultAttempts || r.minTTL != DefaultMinTTL ||
		r.maxTTL != DefaultMaxTTL || r.negMaxTTL != DefaultNegMaxTTL || r.cache.Len() != 0 {
		t.Errorf("defaults: %+v", r)
	}
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"host name", Config{Servers: []string{"192.0.2.53", "dns.example"}}, `resolver: Servers[1]: want an IP address with an optional port, such as 192.0.2.53:53 or [2001:db8::53]:53, got "dns.example"`},
		{"port 0", Config{Servers: []string{"192.0.2.53:0"}}, `resolver: Servers[0]: "192.0.2.53:0": port 0`},
		{"negative timeout", Config{Timeout: -time.Second}, "resolver: Timeout must not be negative, got -1s"},
		{"negative attempts", Config{Attempts: -1}, "resolver: Attempts must not be negative, got -1"},
		{"negative cache size", Config{CacheSize: -1}, "resolver: CacheSize must not be negative, got -1"},
		{"MinTTL over MaxTTL", Config{MinTTL: 2 * time.Hour, MaxTTL: time.Hour}, "resolver: MinTTL 2h0m0s is more than MaxTTL 1h0m0s"},
		{"negative NegMaxTTL", Config{NegMaxTTL: -time.Second}, "resolver: NegMaxTTL must not be negative, got -1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.c); err == nil || err.Error() != tc.want {
				t.Errorf("New: %v, want %s", err, tc.want)
			}
		})
	}
}

func TestSystemServers(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, path string
		want       []string
	}{
		{"nameservers", write("two", "search example.test\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions ndots:1\n"), []string{"192.0.2.53:53", "[2001:db8::53]:53"}},
		{"no nameserver", write("none", "search example.test\n"), []string{"127.0.0.1:53"}},
		{"no file", filepath.Join(dir, "missing"), []string{"127.0.0.1:53"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := systemServers(tc.path); !slices.Equal(got, tc.want) {
				t.Errorf("systemServers = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestCachedA: the cache alone answers, or says it cannot; what it
// answers is what LookupA answered, a copy, errors included.
func TestCachedA(t *testing.T) {
	s := dnstest.New(t, "2.0.0.127.bl.test. 300 IN A 127.0.0.2", "bl.test. 300 IN SOA ns.bl.test. h.bl.test. 1 1 1 1 300")
	r, _ := newResolver(t, []string{s.Addr}, nil)
	ctx := context.Background()
	for _, name := range []string{"2.0.0.127.bl.test", "1.0.0.127.bl.test"} {
		if _, cached, _ := r.CachedA(name); cached {
			t.Fatalf("%s cached before any lookup", name)
		}
	}
	want, err := r.LookupA(ctx, "2.0.0.127.bl.test")
	if err != nil || len(want) != 1 {
		t.Fatalf("LookupA: %v %v", want, err)
	}
	got, cached, err := r.CachedA("2.0.0.127.bl.TEST")
	if !cached || err != nil || !slices.Equal(got, want) {
		t.Fatalf("CachedA after LookupA: %v %v %v", got, cached, err)
	}
	got[0] = netip.MustParseAddr("192.0.2.1")
	if again, _, _ := r.CachedA("2.0.0.127.bl.test"); again[0] != want[0] {
		t.Error("CachedA handed out the cache's own slice")
	}
	if _, err := r.LookupA(ctx, "1.0.0.127.bl.test"); err == nil {
		t.Fatal("LookupA of an unlisted name: no error")
	}
	var de *net.DNSError
	if _, cached, err := r.CachedA("1.0.0.127.bl.test"); !cached || !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("CachedA of a cached NXDOMAIN: cached %v, %v", cached, err)
	}
	if _, cached, err := r.CachedA("bad..name"); !cached || err == nil {
		t.Errorf("CachedA of an invalid name: cached %v, %v", cached, err)
	}
}
