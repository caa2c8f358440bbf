package main

import (
	"net"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestAnswers(t *testing.T) {
	key := "v=DKIM1; k=rsa; p=" + strings.Repeat("A", 392)
	records, err := zone("bench.example", "bench", key)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { answer(w, r, records) })}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })

	tests := []struct {
		name  string
		qtype uint16
		rcode int
		want  string // joined TXT strings or A address; "" for none
	}{
		{"bench.example.", dns.TypeTXT, dns.RcodeSuccess, "v=spf1 ip4:127.0.0.1 -all"},
		{"_dmarc.bench.example.", dns.TypeTXT, dns.RcodeSuccess, "v=DMARC1; p=reject"},
		{"bench._domainkey.bench.example.", dns.TypeTXT, dns.RcodeSuccess, key},
		{"1.0.0.127.bl1.bench.test.", dns.TypeA, dns.RcodeNameError, ""},
		{"1.0.0.127.bl3.bench.test.", dns.TypeA, dns.RcodeNameError, ""},
		{"2.0.0.127.bl2.bench.test.", dns.TypeA, dns.RcodeSuccess, "127.0.0.2"},
		{"bench.example.", dns.TypeAAAA, dns.RcodeSuccess, ""}, // NODATA
	}
	c := &dns.Client{Net: "udp", UDPSize: 4096}
	for _, tt := range tests {
		t.Run(tt.name+dns.TypeToString[tt.qtype], func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion(tt.name, tt.qtype)
			m.SetEdns0(4096, false)
			r, _, err := c.Exchange(m, pc.LocalAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
			}
			got := ""
			for _, rr := range r.Answer {
				switch v := rr.(type) {
				case *dns.TXT:
					got = strings.Join(v.Txt, "")
				case *dns.A:
					got = v.A.String()
				}
			}
			if got != tt.want {
				t.Errorf("answer %q, want %q", got, tt.want)
			}
		})
	}
}
