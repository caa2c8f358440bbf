package proxy

import (
	"strings"
	"testing"

	"moat/filters"
)

func TestStripAuthResults(t *testing.T) {
	header := "From: a@example.net\r\n" +
		"Authentication-Results: mx.test; spf=pass smtp.mailfrom=forged@example.net\r\n" +
		"Authentication-Results: (comment) MX.TEST;\r\n\tdkim=pass header.d=forged.example\r\n" +
		"Authentication-Results: other.example; spf=fail\r\n" +
		"Authentication-Results: mx.test.evil.example; spf=pass\r\n" +
		"Subject: x\r\n\r\n"
	if got := string(stripAuthResults([]byte("From: a\r\nAuthentication-Results : mx.test; dkim=pass\r\n\r\n"), "mx.test")); got != "From: a\r\n\r\n" {
		t.Errorf("a space before the colon hid a forged field: %q", got)
	}
	got := string(stripAuthResults([]byte(header), "mx.test"))
	want := "From: a@example.net\r\n" +
		"Authentication-Results: other.example; spf=fail\r\n" +
		"Authentication-Results: mx.test.evil.example; spf=pass\r\n" +
		"Subject: x\r\n\r\n"
	if got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
	plain := "From: a@example.net\r\n\r\n"
	if got := string(stripAuthResults([]byte(plain), "mx.test")); got != plain {
		t.Errorf("changed a header without Authentication-Results: %q", got)
	}
}

func TestAuthResultsHeader(t *testing.T) {
	tx := &txn{}
	if got := authResults("mx.test", "client.example", tx); got != "Authentication-Results: mx.test; none\r\n" {
		t.Errorf("no results: %q", got)
	}
	tx.auth = filters.Auth{
		SPF:      &filters.SPFResult{Result: "pass", Identity: "mailfrom", Domain: "example.net", Sender: "a@example.net"},
		DKIM:     []filters.DKIMResult{{Result: "fail", Domain: "example.net", Selector: "s1", HeaderB: "abcdefgh", Reason: "body hash\r\ndid not verify"}},
		DKIMDone: true,
		DMARC:    &filters.DMARCResult{Result: "fail", FromDomain: "example.net", Policy: "reject"},
	}
	got := authResults("mx.test", "client.example", tx)
	for _, want := range []string{
		"Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@example.net;\r\n\tdkim=fail reason=",
		"header.d=example.net", "header.s=s1", "header.b=abcdefgh",
		";\r\n\tdmarc=fail header.from=example.net policy.applied=reject\r\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("header lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "\r\n") != 4 {
		t.Errorf("a reason broke the header:\n%q", got)
	}
}
