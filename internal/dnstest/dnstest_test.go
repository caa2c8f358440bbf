package dnstest

import (
	"context"
	"errors"
	"net"
	"testing"
)

func TestServer(t *testing.T) {
	s := New(t, `example.test. 300 IN TXT "v=spf1 -all"`, "mail.example.test. 300 IN A 192.0.2.1", "sub.deep.example.test. 60 IN A 192.0.2.2")
	r := s.Resolver()
	ctx := context.Background()
	txt, err := r.LookupTXT(ctx, "example.test")
	if err != nil || len(txt) != 1 || txt[0] != "v=spf1 -all" {
		t.Errorf("TXT = %v, %v", txt, err)
	}
	ips, err := r.LookupIPAddr(ctx, "mail.example.test")
	if err != nil || len(ips) != 1 || ips[0].IP.String() != "192.0.2.1" {
		t.Errorf("A = %v, %v", ips, err)
	}
	_, err = r.LookupTXT(ctx, "nothing.example.test")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("missing name: %v", err)
	}
	s.ServFail("broken.example.test")
	_, err = r.LookupTXT(ctx, "broken.example.test")
	if !errors.As(err, &de) || !de.IsTemporary {
		t.Errorf("SERVFAIL: %v", err)
	}
	if s.QueriesFor("example.test") == 0 {
		t.Error("queries not counted")
	}
}
