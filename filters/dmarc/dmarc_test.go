package dmarc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dmarc"

	"moat/filters"
	"moat/internal/dnstest"
)

func TestOrgDomain(t *testing.T) {
	for in, want := range map[string]string{
		"example.com":           "example.com",
		"Mail.Example.COM.":     "example.com",
		"a.b.c.example.co.uk":   "example.co.uk",
		"foo.cacophony.za.org":  "cacophony.za.org", // za.org is a public suffix (private section)
		"yo.mom.za.org":         "mom.za.org",
		"a.b.c.edu.ar":          "c.edu.ar",
		"co.uk":                 "co.uk", // a public suffix is its own
		"com":                   "com",
		"host.unknown-tld-test": "host.unknown-tld-test", // not on the list: the default rule "*"
		"sub.zero_pct.com":      "zero_pct.com",
	} {
		if got := OrgDomain(in); got != want {
			t.Errorf("OrgDomain(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAligned(t *testing.T) {
	r, s := dmarc.AlignmentMode(dmarc.AlignmentRelaxed), dmarc.AlignmentStrict
	tests := []struct {
		a, b string
		mode dmarc.AlignmentMode
		want bool
	}{
		{"example.com", "example.com", s, true},
		{"Example.COM.", "example.com", s, true},
		{"mail.example.com", "example.com", s, false},
		{"mail.example.com", "example.com", r, true},
		{"a.example.com", "b.example.com", r, true},
		{"example.com", "example.net", r, false},
		{"example.co.uk", "other.co.uk", r, false}, // different organizations under one suffix
		{"a.mom.za.org", "b.za.org", r, false},
		{"", "example.com", r, false},
		{"example..com", "example.com", r, false},
	}
	for _, tc := range tests {
		if got := Aligned(tc.a, tc.b, tc.mode); got != tc.want {
			t.Errorf("Aligned(%q, %q, %s) = %v, want %v", tc.a, tc.b, tc.mode, got, tc.want)
		}
	}
}

func TestFromDomain(t *testing.T) {
	tests := []struct {
		name, header, want string
		err                error // nil: success; errAny: any error
	}{
		{name: "plain", header: "From: a@example.com\r\n\r\n", want: "example.com"},
		{name: "display name, case", header: "Subject: x\nFROM: Alice <Alice@Mail.Example.COM>\n\n", want: "mail.example.com"},
		{name: "folded", header: "From: \"Alice Example\"\r\n <a@example.com>\r\nTo: b@example.net\r\n\r\n", want: "example.com"},
		{name: "encoded word in unknown charset", header: "From: =?x-unknown?q?Al=E9?= <a@example.com>\n\n", want: "example.com"},
		{name: "space before colon", header: "From : a@example.com\n\n", want: "example.com"},
		{name: "IDN", header: "From: a@bücher.example\n\n", want: "xn--bcher-kva.example"},
		{name: "From in the body is not a header", header: "From: a@example.com\n\nFrom: b@example.net\n", want: "example.com"},
		{name: "no From", header: "Subject: x\n\n", err: ErrNoFrom},
		{name: "two From fields", header: "From: a@example.com\nFrom: b@example.net\n\n", err: ErrMultipleFrom},
		{name: "two addresses", header: "From: a@example.com, b@example.net\n\n", err: ErrFromAddresses},
		{name: "two addresses, same domain", header: "From: a@example.com, b@example.com\n\n", err: ErrFromAddresses},
		{name: "empty group", header: "From: undisclosed-senders:;\n\n", err: ErrFromAddresses},
		{name: "garbage", header: "From: not an address\n\n", err: errAny},
		{name: "address literal", header: "From: a@[192.0.2.1]\n\n", err: errAny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromDomain([]byte(tc.header))
			switch {
			case tc.err == nil && err != nil:
				t.Fatalf("error %v", err)
			case tc.err == errAny && err == nil, tc.err != nil && tc.err != errAny && !errors.Is(err, tc.err):
				t.Fatalf("got %q, %v; want error %v", got, err, tc.err)
			case tc.err == nil && got != tc.want:
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

var errAny = errors.New("any error")

// dmarcDNS is the zone the unit tests share.
func dmarcDNS(t *testing.T) *dnstest.Server {
	t.Helper()
	srv := dnstest.New(t,
		`_dmarc.example.com. 300 IN TXT "v=DMARC1; p=reject; sp=quarantine"`,
		`_dmarc.own.example.com. 300 IN TXT "v=DMARC1; p=none"`,
		`_dmarc.nosp.test. 300 IN TXT "v=DMARC1; p=quarantine"`,
		`_dmarc.strict.test. 300 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"`,
		`_dmarc.half.test. 300 IN TXT "v=DMARC1; p=reject; pct=50"`,
		`_dmarc.halfq.test. 300 IN TXT "v=DMARC1; p=quarantine; pct=50"`,
		`_dmarc.halfn.test. 300 IN TXT "v=DMARC1; p=none; pct=50"`,
		`_dmarc.full.test. 300 IN TXT "v=DMARC1; p=reject; pct=100"`,
		`_dmarc.upper.test. 300 IN TXT "V = DMARC1; P=Reject; ADKIM=S"`,
		`_dmarc.two.test. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.two.test. 300 IN TXT "v=DMARC1; p=none"`,
		`_dmarc.bad.test. 300 IN TXT "v=DMARC1; p=bogus"`,
		`_dmarc.rua.test. 300 IN TXT "v=DMARC1; p=bogus; rua=mailto:agg@rua.test"`,
		`_dmarc.other.test. 300 IN TXT "some-verification=abc"`,
		`_dmarc.sub.other.test. 300 IN TXT "v=spf1 -all"`,
		`_dmarc.badsub.test. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.x.badsub.test. 300 IN TXT "v=DMARC1; p=reject; pct=500"`,
	)
	srv.ServFail("_dmarc.servfail.test")
	return srv
}

func TestEvaluate(t *testing.T) {
	srv := dmarcDNS(t)
	r := srv.Resolver()
	spfPass := func(d string) filters.SPFResult { return filters.SPFResult{Result: filters.Pass, Domain: d} }
	spfFail := filters.SPFResult{Result: filters.Fail, Domain: "elsewhere.net"}
	dkimPass := func(d string) []filters.DKIMResult { return []filters.DKIMResult{{Result: filters.Pass, Domain: d}} }
	tests := []struct {
		name      string
		from      string
		spf       filters.SPFResult
		dkim      []filters.DKIMResult
		intN      int // what the random source returns; -1: must not be called
		want      string
		policy    string
		requested string
		policyAt  string
		spfAl     bool
		dkimAl    bool
		reason    string
	}{
		{name: "SPF aligned relaxed", from: "example.com", spf: spfPass("bounce.example.com"), intN: -1,
			want: filters.Pass, policy: "none", policyAt: "example.com", spfAl: true},
		{name: "DKIM aligned", from: "example.com", spf: spfFail, dkim: dkimPass("example.com"), intN: -1,
			want: filters.Pass, policy: "none", dkimAl: true},
		{name: "DKIM fail does not align", from: "example.com", spf: spfFail,
			dkim: []filters.DKIMResult{{Result: filters.Fail, Domain: "example.com"}}, intN: -1,
			want: filters.Fail, policy: "reject", requested: "reject", reason: "no DKIM signature passed"},
		{name: "one of two signatures aligned", from: "example.com", spf: spfFail,
			dkim: []filters.DKIMResult{{Result: filters.Pass, Domain: "esp.net"}, {Result: filters.Pass, Domain: "mail.example.com"}},
			intN: -1, want: filters.Pass, dkimAl: true},
		{name: "p for the domain itself", from: "example.com", spf: spfFail, intN: -1,
			want: filters.Fail, policy: "reject", requested: "reject", policyAt: "example.com", reason: "p=reject at _dmarc.example.com"},
		{name: "sp for a subdomain via fallback", from: "a.b.example.com", spf: spfFail, intN: -1,
			want: filters.Fail, policy: "quarantine", requested: "quarantine", policyAt: "example.com", reason: "sp=quarantine"},
		{name: "subdomain with its own record uses p", from: "own.example.com", spf: spfFail, intN: -1,
			want: filters.Fail, policy: "none", requested: "none", policyAt: "own.example.com"},
		{name: "no sp: p for subdomains", from: "sub.nosp.test", spf: spfFail, intN: -1,
			want: filters.Fail, policy: "quarantine", policyAt: "nosp.test"},
		{name: "strict SPF misaligned", from: "strict.test", spf: spfPass("mail.strict.test"),
			dkim: dkimPass("mail.strict.test"), intN: -1, want: filters.Fail, policy: "reject"},
		{name: "strict exact match", from: "strict.test", spf: spfPass("Strict.Test."), intN: -1,
			want: filters.Pass, spfAl: true},
		{name: "values without case", from: "upper.test", dkim: dkimPass("a.upper.test"), intN: -1,
			want: filters.Fail, policy: "reject"},
		{name: "pct inside the sample", from: "half.test", intN: 49, want: filters.Fail, policy: "reject", requested: "reject",
			reason: "inside the sample"},
		{name: "pct outside: reject becomes quarantine", from: "half.test", intN: 50, want: filters.Fail,
			policy: "quarantine", requested: "reject", reason: "outside the sample"},
		{name: "pct outside: quarantine becomes none", from: "halfq.test", intN: 99, want: filters.Fail,
			policy: "none", requested: "quarantine"},
		{name: "pct outside: none stays none", from: "halfn.test", intN: 99, want: filters.Fail, policy: "none"},
		{name: "pct=100 always applies", from: "full.test", intN: -1, want: filters.Fail, policy: "reject"},
		{name: "pct does not touch a pass", from: "half.test", spf: spfPass("half.test"), intN: -1, want: filters.Pass, policy: "none",
			spfAl: true},
		{name: "no record anywhere", from: "mail.nowhere.test", intN: -1, want: filters.None, policy: "none",
			reason: "_dmarc.nowhere.test"},
		{name: "two records: none", from: "two.test", intN: -1, want: filters.None, reason: "2 DMARC records"},
		{name: "malformed record: permerror naming it", from: "bad.test", intN: -1, want: filters.PermError,
			reason: `"v=DMARC1; p=bogus" at _dmarc.bad.test`},
		{name: "malformed record at the From domain stops the fallback", from: "x.badsub.test", intN: -1,
			want: filters.PermError, reason: "_dmarc.x.badsub.test"},
		{name: "invalid p with rua counts as p=none", from: "rua.test", intN: -1, want: filters.Fail, policy: "none"},
		{name: "non-DMARC TXT is skipped", from: "sub.other.test", intN: -1, want: filters.None},
		{name: "SERVFAIL: temperror", from: "servfail.test", intN: -1, want: filters.TempError, reason: "_dmarc.servfail.test"},
		{name: "not a domain", from: "exa mple.com", intN: -1, want: filters.PermError},
		{name: "aligned SPF temperror: temperror", from: "example.com",
			spf: filters.SPFResult{Result: filters.TempError, Domain: "example.com"}, intN: -1,
			want: filters.TempError, policy: "none", reason: "SPF for example.com had a temporary error"},
		{name: "aligned DKIM temperror: temperror", from: "example.com", spf: spfFail,
			dkim: []filters.DKIMResult{{Result: filters.TempError, Domain: "example.com"}}, intN: -1,
			want: filters.TempError, reason: "DKIM d=example.com"},
		{name: "unaligned temperror stays fail", from: "example.com",
			spf: filters.SPFResult{Result: filters.TempError, Domain: "other.net"}, intN: -1,
			want: filters.Fail, policy: "reject"},
		{name: "temperror does not spoil a pass", from: "example.com", spf: filters.SPFResult{Result: filters.TempError, Domain: "example.com"},
			dkim: dkimPass("example.com"), intN: -1, want: filters.Pass, dkimAl: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := Evaluator{IntN: func(n int) int {
				if n != 100 {
					t.Errorf("IntN(%d), want IntN(100)", n)
				}
				if tc.intN < 0 {
					t.Error("random source used")
				}
				return tc.intN
			}}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			o := e.evaluate(ctx, r, tc.from, tc.spf, tc.dkim)
			if o.Result != tc.want {
				t.Errorf("result %s, want %s (%s)", o.Result, tc.want, o.Reason)
			}
			if tc.policy != "" && o.Policy != tc.policy {
				t.Errorf("policy %q, want %q (%s)", o.Policy, tc.policy, o.Reason)
			}
			if tc.requested != "" && o.requested != tc.requested {
				t.Errorf("requested %q, want %q", o.requested, tc.requested)
			}
			if tc.policyAt != "" && o.PolicyDomain != tc.policyAt {
				t.Errorf("policy domain %q, want %q", o.PolicyDomain, tc.policyAt)
			}
			if o.SPFAligned != tc.spfAl || o.DKIMAligned != tc.dkimAl {
				t.Errorf("aligned spf=%v dkim=%v, want %v %v", o.SPFAligned, o.DKIMAligned, tc.spfAl, tc.dkimAl)
			}
			if !strings.Contains(o.Reason, tc.reason) || o.Reason == "" {
				t.Errorf("reason %q does not say %q", o.Reason, tc.reason)
			}
		})
	}
}

func TestEvaluateNoResolver(t *testing.T) {
	if got := Evaluate(context.Background(), nil, "example.com", filters.SPFResult{}, nil); got.Result != filters.TempError {
		t.Errorf("%+v", got)
	}
}

// A dead DNS server gives temperror when the caller's deadline passes.
func TestEvaluateDeadDNS(t *testing.T) {
	srv := dnstest.New(t)
	srv.Silent("_dmarc.dead.test")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if got := Evaluate(ctx, srv.Resolver(), "dead.test", filters.SPFResult{}, nil); got.Result != filters.TempError {
		t.Errorf("%+v", got)
	}
}

func TestCheck(t *testing.T) {
	srv := dnstest.New(t,
		`_dmarc.example.com. 300 IN TXT "v=DMARC1; p=reject"`,
		`example.com. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
	)
	r := srv.Resolver()
	msg := []byte("From: Alice <alice@example.com>\r\nSubject: hi\r\n\r\nbody\r\n")
	newTxn := func(ip string) *filters.Txn {
		return &filters.Txn{
			ClientIP: netip.MustParseAddr(ip), Helo: "client.example.net", From: "alice@example.com",
			Header: headerOf(msg), Message: func() io.Reader { return bytes.NewReader(msg) },
			DNS: r, Auth: &filters.Auth{},
		}
	}
	calls := 0
	signed := func(_ context.Context, _ filters.Resolver, m io.Reader) ([]filters.DKIMResult, error) {
		calls++
		if b, _ := io.ReadAll(m); !bytes.Equal(b, msg) {
			t.Errorf("verifier read %q", b)
		}
		return []filters.DKIMResult{{Result: filters.Pass, Domain: "example.com"}}, nil
	}

	c := NewCheck(nil)
	if c.Name() != "dmarc" || len(c.Stages()) != 1 || c.Stages()[0] != filters.StageData {
		t.Fatalf("name %q stages %v", c.Name(), c.Stages())
	}
	if _, ok := c.Run(context.Background(), filters.StageMail, newTxn("192.0.2.1")); ok {
		t.Error("result before DATA")
	}

	t.Run("SPF evaluated and stored, no verifier means unsigned", func(t *testing.T) {
		txn := newTxn("198.51.100.1")
		res, ok := NewCheck(nil).Run(context.Background(), filters.StageData, txn)
		if !ok || res.Value != filters.Fail || res.Fields["policy"] != "reject" || res.Fields["domain"] != "example.com" ||
			res.Fields["spf_aligned"] != false || res.Fields["dkim_aligned"] != false || res.Fields["policy_domain"] != "example.com" {
			t.Errorf("%+v", res)
		}
		if txn.Auth.SPF == nil || txn.Auth.SPF.Result != filters.Fail || txn.Auth.DKIMDone || txn.Auth.DMARC == nil {
			t.Errorf("auth %+v", txn.Auth)
		}
		// Reported again, not evaluated again.
		n := srv.Queries()
		txn.Auth.DMARC.Reason = "stored"
		if res, _ := NewCheck(nil).Run(context.Background(), filters.StageData, txn); res.Reason != "stored" || srv.Queries() != n {
			t.Errorf("second run: %+v", res)
		}
	})
	t.Run("SPF pass aligned", func(t *testing.T) {
		res, _ := NewCheck(nil).Run(context.Background(), filters.StageData, newTxn("192.0.2.1"))
		if res.Value != filters.Pass || res.Fields["spf_aligned"] != true || res.Fields["policy"] != "none" {
			t.Errorf("%+v", res)
		}
	})
	t.Run("verifier called and stored", func(t *testing.T) {
		txn := newTxn("198.51.100.1")
		calls = 0
		res, _ := NewCheck(signed).Run(context.Background(), filters.StageData, txn)
		if res.Value != filters.Pass || res.Fields["dkim_aligned"] != true || calls != 1 {
			t.Errorf("%+v, %d calls", res, calls)
		}
		if !txn.Auth.DKIMDone || len(txn.Auth.DKIM) != 1 {
			t.Errorf("auth %+v", txn.Auth)
		}
	})
	t.Run("DKIM already done: verifier not called", func(t *testing.T) {
		txn := newTxn("198.51.100.1")
		txn.Auth.DKIMDone = true
		calls = 0
		res, _ := NewCheck(signed).Run(context.Background(), filters.StageData, txn)
		if res.Value != filters.Fail || calls != 0 {
			t.Errorf("%+v, %d calls", res, calls)
		}
	})
	t.Run("verifier error turns a fail into temperror", func(t *testing.T) {
		broken := func(context.Context, filters.Resolver, io.Reader) ([]filters.DKIMResult, error) {
			return nil, errors.New("spool read failed")
		}
		txn := newTxn("198.51.100.1")
		res, _ := NewCheck(broken).Run(context.Background(), filters.StageData, txn)
		if res.Value != filters.TempError || !strings.Contains(res.Reason, "spool read failed") || txn.Auth.DKIMDone {
			t.Errorf("%+v", res)
		}
		// ... but not a pass that SPF gave.
		res, _ = NewCheck(broken).Run(context.Background(), filters.StageData, newTxn("192.0.2.1"))
		if res.Value != filters.Pass {
			t.Errorf("%+v", res)
		}
	})
	t.Run("two From addresses: permerror", func(t *testing.T) {
		txn := newTxn("192.0.2.1")
		txn.Header = []byte("From: a@example.com, b@example.org\r\n\r\n")
		res, _ := NewCheck(nil).Run(context.Background(), filters.StageData, txn)
		if res.Value != filters.PermError || res.Fields["policy"] != "none" || txn.Auth.DMARC == nil {
			t.Errorf("%+v", res)
		}
	})
	t.Run("pct sampling through the option", func(t *testing.T) {
		srv := dnstest.New(t, `_dmarc.example.com. 300 IN TXT "v=DMARC1; p=reject; pct=10"`)
		txn := newTxn("198.51.100.1")
		txn.DNS = srv.Resolver()
		txn.Auth.SPF = &filters.SPFResult{Result: filters.Fail, Domain: "example.com"}
		res, _ := NewCheck(nil, WithIntN(func(int) int { return 10 })).Run(context.Background(), filters.StageData, txn)
		if res.Value != filters.Fail || res.Fields["policy"] != "quarantine" {
			t.Errorf("%+v", res)
		}
	})
	t.Run("without Auth", func(t *testing.T) {
		txn := newTxn("192.0.2.1")
		txn.Auth = nil
		if res, _ := NewCheck(signed).Run(context.Background(), filters.StageData, txn); res.Value != filters.Pass {
			t.Errorf("%+v", res)
		}
	})
}

func BenchmarkFromDomain(b *testing.B) {
	h := []byte("Received: from a by b\r\n\tfor <x@example.net>; Mon, 1 Jan 2024 00:00:00 +0000\r\n" +
		"From: =?utf-8?q?Al=C3=AFce?= <alice@mail.example.com>\r\nTo: x@example.net\r\nSubject: hello\r\n\r\n")
	for b.Loop() {
		if _, err := FromDomain(h); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAlignedRelaxed(b *testing.B) {
	for b.Loop() {
		if !Aligned("bounce.mail.example.co.uk", "news.example.co.uk", dmarc.AlignmentRelaxed) {
			b.Fatal("not aligned")
		}
	}
}
