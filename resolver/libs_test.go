package resolver

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
	"github.com/miekg/dns"

	"moat/internal/dnstest"
)

// TestLibraries runs the libraries moat hands the resolver to, on each
// kind of answer: their results depend on the exact error type and flags.
func TestLibraries(t *testing.T) {
	s := dnstest.New(t,
		`ok.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.ok.test. 300 IN TXT "v=DMARC1; p=reject"`,
	)
	for _, n := range []string{"servfail.test", "_dmarc.servfail.test", "sel._domainkey.servfail.test"} {
		s.ServFail(n)
	}
	for _, n := range []string{"silent.test", "_dmarc.silent.test", "sel._domainkey.silent.test"} {
		s.Silent(n)
	}
	icpt := s.Intercept(t, func(w dns.ResponseWriter, req *dns.Msg) bool {
		if !strings.HasSuffix(dnstest.QName(req), "formerr.test.") {
			return false
		}
		reply(w, req, dns.RcodeFormatError)
		return true
	})
	r, _ := newResolver(t, []string{icpt}, func(c *Config) { c.Timeout = 100 * time.Millisecond })
	ctx := context.Background()
	lookupTXT := func(name string) ([]string, error) { return r.LookupTXT(ctx, name) }

	type outcome int
	const (
		ok outcome = iota
		none
		temp
		perm
	)
	tests := []struct {
		domain string
		spf    spf.Result
		dmarc  outcome
		dkim   outcome
	}{
		{"ok.test", spf.Pass, ok, perm}, // no DKIM key published: permerror
		{"nothing.test", spf.None, none, perm},
		{"servfail.test", spf.TempError, temp, temp},
		{"silent.test", spf.TempError, temp, temp},
		{"formerr.test", spf.PermError, perm, perm},
	}
	for _, tc := range tests {
		t.Run(tc.domain, func(t *testing.T) {
			res, err := spf.CheckHostWithSender(net.ParseIP("192.0.2.1"), "helo.test", "user@"+tc.domain,
				spf.WithResolver(r), spf.WithContext(ctx))
			if res != tc.spf {
				t.Errorf("spf: %s (%v), want %s", res, err, tc.spf)
			}

			rec, err := dmarc.LookupWithOptions(tc.domain, &dmarc.LookupOptions{LookupTXT: lookupTXT})
			var got outcome
			switch {
			case err == nil && rec.Policy == dmarc.PolicyReject:
				got = ok
			case errors.Is(err, dmarc.ErrNoPolicy):
				got = none
			case dmarc.IsTempFail(err):
				got = temp
			default:
				got = perm
			}
			if got != tc.dmarc {
				t.Errorf("dmarc: %v (outcome %d), want outcome %d", err, got, tc.dmarc)
			}

			msg := "DKIM-Signature: v=1; a=rsa-sha256; d=" + tc.domain + "; s=sel; h=from; bh=AAAA; b=AAAA\r\n" +
				"From: user@" + tc.domain + "\r\n\r\nbody\r\n"
			vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookupTXT})
			if err != nil || len(vs) != 1 {
				t.Fatalf("dkim: %d verifications, %v", len(vs), err)
			}
			switch verr := vs[0].Err; {
			case dkim.IsTempFail(verr):
				got = temp
			case dkim.IsPermFail(verr):
				got = perm
			default:
				got = ok
			}
			if got != tc.dkim {
				t.Errorf("dkim: %v (outcome %d), want outcome %d", vs[0].Err, got, tc.dkim)
			}
		})
	}
}
