package spf

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"moat/filters"
	"moat/internal/dnstest"
)

func TestEvaluate(t *testing.T) {
	srv := dnstest.New(t,
		`example.test. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`mail.example.test. 300 IN TXT "v=spf1 a -all"`,
		`mail.example.test. 300 IN A 192.0.2.25`,
		`bad.example.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all bogus"`,
		`badinc.example.test. 300 IN TXT "v=spf1 include:bad.example.test -all"`,
		`soft.example.test. 300 IN TXT "v=spf1 ~all"`,
		`neutral.example.test. 300 IN TXT "v=spf1 ?all"`,
		`two.example.test. 300 IN TXT "v=spf1 -all"`,
		`two.example.test. 300 IN TXT "v=spf1 +all"`,
		`macro.example.test. 300 IN TXT "v=spf1 exists:%{l}.allow.example.test -all"`,
		`postmaster.allow.example.test. 300 IN A 127.0.0.2`,
		`nospf.example.test. 300 IN TXT "google-site-verification=abc"`,
		`v6.example.test. 300 IN TXT "v=spf1 ip6:2001:db8::/32 -all"`,
		`broken.example.test. 300 IN TXT "v=spf1 include:servfail.example.test -all"`,
	)
	srv.ServFail("servfail.example.test")
	r := srv.Resolver()
	ip := netip.MustParseAddr

	tests := []struct {
		name             string
		ip               netip.Addr
		helo, from       string
		want             string
		identity, domain string
		sender           string
		reason           []string // substrings the reason must hold
	}{
		{name: "mailfrom pass", ip: ip("192.0.2.7"), helo: "client.example.net", from: "alice@example.test",
			want: filters.Pass, identity: "mailfrom", domain: "example.test", sender: "alice@example.test",
			reason: []string{"example.test", `"ip4:192.0.2.0/24"`}},
		{name: "mailfrom fail", ip: ip("198.51.100.1"), helo: "client.example.net", from: "alice@example.test",
			want: filters.Fail, identity: "mailfrom", domain: "example.test", reason: []string{`"all"`}},
		{name: "softfail", ip: ip("198.51.100.1"), from: "a@soft.example.test", want: filters.SoftFail},
		{name: "neutral", ip: ip("198.51.100.1"), from: "a@neutral.example.test", want: filters.Neutral},
		{name: "domain case and trailing dot", ip: ip("192.0.2.7"), from: "alice@Example.TEST.",
			want: filters.Pass, domain: "example.test", sender: "alice@example.test"},
		{name: "null sender checks HELO", ip: ip("192.0.2.25"), helo: "mail.example.test", from: "",
			want: filters.Pass, identity: "helo", domain: "mail.example.test", sender: "postmaster@mail.example.test"},
		{name: "null sender HELO fail", ip: ip("192.0.2.26"), helo: "mail.example.test", from: "",
			want: filters.Fail, identity: "helo", domain: "mail.example.test"},
		{name: "null sender macro sees postmaster", ip: ip("203.0.113.9"), helo: "macro.example.test", from: "",
			want: filters.Pass, identity: "helo"},
		{name: "no local part is postmaster", ip: ip("203.0.113.9"), from: "@macro.example.test",
			want: filters.Pass, sender: "postmaster@macro.example.test"},
		{name: "IPv4-mapped IPv6 client is IPv4", ip: ip("::ffff:192.0.2.7"), from: "a@example.test", want: filters.Pass},
		{name: "IPv6 pass", ip: ip("2001:db8::5"), from: "a@v6.example.test", want: filters.Pass},
		{name: "malformed record is permerror naming it", ip: ip("192.0.2.1"), from: "a@bad.example.test",
			want: filters.PermError, domain: "bad.example.test",
			reason: []string{"bad.example.test", `"v=spf1 ip4:192.0.2.1 -all bogus"`, `"bogus"`}},
		{name: "malformed included record names it", ip: ip("192.0.2.1"), from: "a@badinc.example.test",
			want: filters.PermError, domain: "badinc.example.test",
			reason: []string{"badinc.example.test", `"include:bad.example.test"`, "bad.example.test", `"bogus"`}},
		{name: "two records", ip: ip("192.0.2.1"), from: "a@two.example.test", want: filters.PermError,
			reason: []string{"two.example.test", "more than one SPF record"}},
		{name: "no record", ip: ip("192.0.2.1"), from: "a@nospf.example.test", want: filters.None,
			reason: []string{"no SPF record"}},
		{name: "no such domain", ip: ip("192.0.2.1"), from: "a@nowhere.example.test", want: filters.None},
		{name: "SERVFAIL in include", ip: ip("192.0.2.1"), from: "a@broken.example.test", want: filters.TempError,
			reason: []string{"servfail.example.test"}},
		{name: "HELO not a FQDN", ip: ip("192.0.2.1"), helo: "localhost", from: "", want: filters.None,
			identity: "helo", reason: []string{"multi-label"}},
		{name: "address literal", ip: ip("192.0.2.1"), from: "a@[192.0.2.1]", want: filters.None},
		{name: "no domain at all", ip: ip("192.0.2.1"), from: "postmaster", want: filters.None},
		{name: "invalid client IP", ip: netip.Addr{}, from: "a@example.test", want: filters.PermError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got := Evaluate(ctx, r, tc.ip, tc.helo, tc.from)
			if got.Result != tc.want {
				t.Errorf("result %s, want %s (reason %q)", got.Result, tc.want, got.Reason)
			}
			if tc.identity != "" && got.Identity != tc.identity {
				t.Errorf("identity %q, want %q", got.Identity, tc.identity)
			}
			if tc.domain != "" && got.Domain != tc.domain {
				t.Errorf("domain %q, want %q", got.Domain, tc.domain)
			}
			if tc.sender != "" && got.Sender != tc.sender {
				t.Errorf("sender %q, want %q", got.Sender, tc.sender)
			}
			if got.Reason == "" {
				t.Error("empty reason")
			}
			for _, s := range tc.reason {
				if !strings.Contains(got.Reason, s) {
					t.Errorf("reason %q does not mention %s", got.Reason, s)
				}
			}
		})
	}
}

// A DNS server that never answers gives temperror once the caller's
// deadline passes, not after the resolver's own retries.
func TestEvaluateDeadDNS(t *testing.T) {
	srv := dnstest.New(t)
	srv.Silent("dead.example.test")
	const deadline = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	got := Evaluate(ctx, srv.Resolver(), netip.MustParseAddr("192.0.2.1"), "h.example.net", "a@dead.example.test")
	took := time.Since(start)
	if got.Result != filters.TempError {
		t.Errorf("result %s (%s), want temperror", got.Result, got.Reason)
	}
	if took > deadline+2*time.Second {
		t.Errorf("took %v with a %v deadline", took, deadline)
	}
	if !strings.Contains(got.Reason, "dead.example.test") {
		t.Errorf("reason %q does not name the domain", got.Reason)
	}
}

// A deadline that passes while a ptr lookup hangs would let the library
// carry on (ptr errors only mean "no match") to the "-all": the time
// limit must still give temperror.
func TestEvaluateDeadlineBeatsLaterTerms(t *testing.T) {
	srv := dnstest.New(t, `ptr.example.test. 300 IN TXT "v=spf1 ptr -all"`)
	srv.Silent("1.2.0.192.in-addr.arpa")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	got := Evaluate(ctx, srv.Resolver(), netip.MustParseAddr("192.0.2.1"), "h.example.net", "a@ptr.example.test")
	if got.Result != filters.TempError {
		t.Errorf("result %s (%s), want temperror", got.Result, got.Reason)
	}
}

func TestEvaluateNoResolver(t *testing.T) {
	got := Evaluate(context.Background(), nil, netip.MustParseAddr("192.0.2.1"), "h.example.net", "a@example.test")
	if got.Result != filters.TempError {
		t.Errorf("result %s, want temperror", got.Result)
	}
}

func TestCheck(t *testing.T) {
	srv := dnstest.New(t, `example.test. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`)
	c := NewCheck()
	if c.Name() != "spf" || len(c.Stages()) != 1 || c.Stages()[0] != filters.StageMail {
		t.Fatalf("name %q stages %v", c.Name(), c.Stages())
	}
	txn := &filters.Txn{
		ClientIP: netip.MustParseAddr("198.51.100.1"), Helo: "client.example.net", From: "a@example.test",
		DNS: srv.Resolver(), Auth: &filters.Auth{},
	}
	if _, ok := c.Run(context.Background(), filters.StageRcpt, txn); ok {
		t.Error("result at RCPT")
	}
	res, ok := c.Run(context.Background(), filters.StageMail, txn)
	if !ok {
		t.Fatal("no result at MAIL")
	}
	if res.Check != "spf" || res.Value != filters.Fail || res.Reason == "" ||
		res.Fields["domain"] != "example.test" || res.Fields["identity"] != "mailfrom" {
		t.Errorf("result %+v", res)
	}
	if txn.Auth.SPF == nil || txn.Auth.SPF.Result != filters.Fail {
		t.Fatalf("Auth.SPF = %+v", txn.Auth.SPF)
	}

	// Evaluated once per transaction: a second run reuses Auth.SPF.
	n := srv.Queries()
	txn.Auth.SPF.Reason = "stored"
	res, _ = c.Run(context.Background(), filters.StageMail, txn)
	if res.Reason != "stored" || srv.Queries() != n {
		t.Errorf("second run evaluated again: %+v, %d queries after %d", res, srv.Queries(), n)
	}

	// Without Auth the check still works and stores nothing.
	txn.Auth = nil
	txn.ClientIP = netip.MustParseAddr("192.0.2.9")
	if res, _ = c.Run(context.Background(), filters.StageMail, txn); res.Value != filters.Pass {
		t.Errorf("without Auth: %+v", res)
	}
}

func TestCheckRecord(t *testing.T) {
	good := []string{
		"v=spf1", "v=spf1 ", "V=SPF1 -ALL", "v=spf1 a mx ptr -all", "v=spf1  a  -all  ",
		"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all", "v=spf1 ip6:::ffff:1.2.3.4",
		"v=spf1 a:mail.example.com/24//64 mx//0", "v=spf1 include:_spf.example.com. -all",
		"v=spf1 exists:%{i}._spf.%{d}", "v=spf1 exists:%{l2r-}.%{D}", "v=spf1 redirect=_spf.example.com",
		"v=spf1 exp=explain._spf.%{d} -all", "v=spf1 moo.cow-far_out=man:dog/cat -all",
		"v=spf1 a:foo.example.xn--zckzah", "v=spf1 a:x.1-2", "v=spf1 -all foo=%{t}",
		"v=spf1 a:foo:bar/baz.example.com",
	}
	for _, r := range good {
		if term, p := checkRecord(r); p != "" {
			t.Errorf("%q: term %q: %s", r, term, p)
		}
	}
	bad := map[string]string{ // record: offending term
		"v=spf1 -all moo":                              "moo",
		"v=spf1 ip4:1.2.3.4/032":                       "ip4:1.2.3.4/032",
		"v=spf1 ip4:01.2.3.4":                          "ip4:01.2.3.4",
		"v=spf1 ip6:1.2.3.4":                           "ip6:1.2.3.4",
		"v=spf1 ip6:fe80::1%eth0":                      "ip6:fe80::1%eth0",
		"v=spf1 a:example.com:8080":                    "a:example.com:8080",
		"v=spf1 mx:abc.123":                            "mx:abc.123",
		"v=spf1 include:museum":                        "include:museum",
		"v=spf1 redirect=a.example redirect=b.example": "redirect=b.example",
		"v=spf1 exists:%{r}.example.com":               "exists:%{r}.example.com",
		"v=spf1 exists:%{d0}.example.com":              "exists:%{d0}.example.com",
		"v=spf1 exists:%{x}.example.com":               "exists:%{x}.example.com",
		"v=spf1 a:%{d":                                 "a:%{d",
		"v=spf1 a:foo%":                                "a:foo%",
		"v=spf1 ptr/24":                                "ptr/24",
		"v=spf1 all:x":                                 "all:x",
		"v=spf1 +redirect=x.example":                   "+redirect=x.example",
		"v=spf1 a//129":                                "a//129",
	}
	for r, wantTerm := range bad {
		term, p := checkRecord(r)
		if p == "" || term != wantTerm {
			t.Errorf("%q: term %q (%s), want term %q", r, term, p, wantTerm)
		}
	}
	if _, p := checkRecord("v=spf1 a:ex\tample.com"); p == "" {
		t.Error("tab accepted")
	}
}

func BenchmarkCheckRecord(b *testing.B) {
	rec := "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a:mail.example.com/24 mx include:_spf.example.net exists:%{i}._spf.%{d} ~all"
	for b.Loop() {
		if _, p := checkRecord(rec); p != "" {
			b.Fatal(p)
		}
	}
}

func BenchmarkEvaluate(b *testing.B) {
	srv := dnstest.New(b,
		`example.test. 300 IN TXT "v=spf1 a:mail.example.test include:_spf.example.test -all"`,
		`mail.example.test. 300 IN A 192.0.2.25`,
		`_spf.example.test. 300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"`,
	)
	r := srv.Resolver()
	ip := netip.MustParseAddr("198.51.100.7")
	ctx := context.Background()
	for b.Loop() {
		if res := Evaluate(ctx, r, ip, "h.example.net", "a@example.test"); res.Result != filters.Pass {
			b.Fatal(res)
		}
	}
}
