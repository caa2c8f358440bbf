// Command benchdns is the authoritative DNS server of the benchmark: it
// answers, on loopback, every lookup the checks of case (c) make, so a
// benchmark run never waits on the network. It serves:
//
//   - three DNSBL zones (bl1/bl2/bl3.bench.test) listing only the test
//     address 127.0.0.2, so the client 127.0.0.1 gets NXDOMAIN (not listed);
//   - SPF for the sender domain: "v=spf1 ip4:127.0.0.1 -all" (pass);
//   - the DKIM key TXT of the signing selector (read from -dkim-txt, which
//     `loadgen -genkey` writes);
//   - DMARC for the sender domain: p=reject, so a failure would show.
//
// Every other name is NXDOMAIN with an SOA (negative caching works).
//
//	benchdns -addr 127.0.0.1:15353 -domain bench.example -selector bench -dkim-txt key.txt
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/miekg/dns"
)

// Zones are the DNSBL zones case (c) queries; bench/matrix.sh names the
// same three in its policy file.
var Zones = []string{"bl1.bench.test", "bl2.bench.test", "bl3.bench.test"}

func main() {
	addr := flag.String("addr", "127.0.0.1:15353", "UDP and TCP address to serve on")
	domain := flag.String("domain", "bench.example", "the sender domain (SPF, DKIM d=, DMARC)")
	selector := flag.String("selector", "bench", "the DKIM selector")
	keyFile := flag.String("dkim-txt", "", "file holding the DKIM key record text (v=DKIM1; k=...; p=...)")
	flag.Parse()
	if *keyFile == "" {
		log.Fatal("benchdns: -dkim-txt is required")
	}
	key, err := os.ReadFile(*keyFile)
	if err != nil {
		log.Fatalf("benchdns: %v", err)
	}
	records, err := zone(*domain, *selector, strings.TrimSpace(string(key)))
	if err != nil {
		log.Fatalf("benchdns: %v", err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) { answer(w, req, records) })
	udp := &dns.Server{Addr: *addr, Net: "udp", Handler: h}
	tcp := &dns.Server{Addr: *addr, Net: "tcp", Handler: h}
	errc := make(chan error, 2)
	go func() { errc <- udp.ListenAndServe() }()
	go func() { errc <- tcp.ListenAndServe() }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-errc:
		log.Fatalf("benchdns: %v", err)
	case <-sig:
		udp.Shutdown()
		tcp.Shutdown()
	}
}

// zone builds the records, by lower-case owner name.
func zone(domain, selector, dkimTXT string) (map[string][]dns.RR, error) {
	d := dns.Fqdn(strings.ToLower(domain))
	lines := []string{
		d + ` 300 IN A 127.0.0.1`,
		d + ` 300 IN MX 10 ` + d,
		d + ` 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.` + d + ` 300 IN TXT "v=DMARC1; p=reject"`,
	}
	for _, z := range Zones {
		lines = append(lines,
			`2.0.0.127.`+z+`. 300 IN A 127.0.0.2`,
			`2.0.0.127.`+z+`. 300 IN TXT "listed for testing"`)
	}
	m := map[string][]dns.RR{}
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			return nil, fmt.Errorf("record %q: %w", l, err)
		}
		m[rr.Header().Name] = append(m[rr.Header().Name], rr)
	}
	// A 2048-bit key is longer than one 255-byte character-string: split it.
	owner := selector + "._domainkey." + d
	m[owner] = append(m[owner], &dns.TXT{
		Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300},
		Txt: split(dkimTXT, 255),
	})
	return m, nil
}

func split(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

func answer(w dns.ResponseWriter, req *dns.Msg, records map[string][]dns.RR) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	rrs, ok := records[strings.ToLower(q.Name)]
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype {
			m.Answer = append(m.Answer, rr)
		}
	}
	if len(m.Answer) == 0 {
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		m.Ns = []dns.RR{&dns.SOA{
			Hdr: dns.RR_Header{Name: "bench.test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
			Ns:  "ns.bench.test.", Mbox: "hostmaster.bench.test.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 60,
		}}
	}
	// Over UDP a reply too big for the client's buffer must say so (TC=1)
	// instead of being cut; the client then asks again over TCP.
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		size := dns.MinMsgSize
		if o := req.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}
