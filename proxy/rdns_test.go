package proxy

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"moat/internal/dnstest"
)

func TestConfirmedName(t *testing.T) {
	dns := dnstest.New(t,
		"7.2.0.192.in-addr.arpa. 300 IN PTR Mail.Example.NET.",
		"mail.example.net. 300 IN A 192.0.2.7",
		"8.2.0.192.in-addr.arpa. 300 IN PTR forged.bank.example.",
		"forged.bank.example. 300 IN A 198.51.100.1",
		"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR v6.example.net.",
		"v6.example.net. 300 IN AAAA 2001:db8::1",
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for ip, want := range map[string]string{
		"192.0.2.7":   "mail.example.net", // confirmed, case folded
		"192.0.2.8":   "",                 // the name points elsewhere
		"192.0.2.9":   "",                 // no PTR
		"2001:db8::1": "v6.example.net",
	} {
		if got := confirmedName(ctx, dns.Resolver(), netip.MustParseAddr(ip)); got != want {
			t.Errorf("confirmedName(%s) = %q, want %q", ip, got, want)
		}
	}
}
