// Package dnstest runs an authoritative DNS server on loopback for tests:
// zone data from zone-file lines, NXDOMAIN with an SOA for names it does
// not hold (so negative caching can be tested), and faults (SERVFAIL,
// silence, truncation) per name. No test needs the internet.
package dnstest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Server answers for whatever records it holds, UDP and TCP on one port.
type Server struct {
	Addr string // host:port

	mu       sync.Mutex
	records  map[string][]dns.RR // by lower-case FQDN
	servfail map[string]bool
	silent   map[string]bool
	truncate map[string]bool // answer over UDP truncated (TC=1, no answers)
	delay    time.Duration
	negTTL   uint32
	queries  atomic.Int64
	byName   map[string]int
	udp, tcp *dns.Server
}

// New starts a server and stops it when the test ends. Records are
// zone-file lines such as "example.com. 300 IN TXT \"v=spf1 -all\"".
func New(t testing.TB, records ...string) *Server {
	t.Helper()
	s := &Server{records: map[string][]dns.RR{}, servfail: map[string]bool{}, silent: map[string]bool{},
		truncate: map[string]bool{}, byName: map[string]int{}, negTTL: 60}
	for _, r := range records {
		if err := s.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	pc, ln, err := listenPair()
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = pc.LocalAddr().String()
	mux := dns.HandlerFunc(s.serve)
	s.udp = &dns.Server{PacketConn: pc, Handler: mux}
	s.tcp = &dns.Server{Listener: ln, Handler: mux}
	var ready sync.WaitGroup
	ready.Add(2)
	s.udp.NotifyStartedFunc = ready.Done
	s.tcp.NotifyStartedFunc = ready.Done
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	ready.Wait()
	t.Cleanup(func() {
		s.udp.Shutdown()
		s.tcp.Shutdown()
	})
	return s
}

// Add adds one record in zone-file form.
func (s *Server) Add(record string) error {
	rr, err := dns.NewRR(record)
	if err != nil {
		return fmt.Errorf("dnstest: %q: %w", record, err)
	}
	if rr == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	name := strings.ToLower(rr.Header().Name)
	s.records[name] = append(s.records[name], rr)
	return nil
}

// AddRR adds records already built.
func (s *Server) AddRR(rrs ...dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rr := range rrs {
		name := strings.ToLower(rr.Header().Name)
		s.records[name] = append(s.records[name], rr)
	}
}

// ServFail makes queries for name answer SERVFAIL.
func (s *Server) ServFail(name string) { s.set(s.servfail, name) }

// Silent makes queries for name go unanswered (a dead or slow server).
func (s *Server) Silent(name string) { s.set(s.silent, name) }

// Truncate makes UDP answers for name come back truncated, so the client
// must retry over TCP.
func (s *Server) Truncate(name string) { s.set(s.truncate, name) }

func (s *Server) set(m map[string]bool, name string) {
	s.mu.Lock()
	m[strings.ToLower(dns.Fqdn(name))] = true
	s.mu.Unlock()
}

// SetDelay delays every answer.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Queries returns how many queries arrived in all.
func (s *Server) Queries() int64 { return s.queries.Load() }

// QueriesFor returns how many queries arrived for name (any type).
func (s *Server) QueriesFor(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byName[strings.ToLower(dns.Fqdn(name))]
}

// Resolver returns a net.Resolver that asks only this server.
func (s *Server) Resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, s.Addr)
	}}
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	s.byName[name]++
	delay, silent, servfail := s.delay, s.silent[name], s.servfail[name]
	truncate := s.truncate[name] && w.LocalAddr().Network() == "udp"
	rrs := s.records[name]
	exists := len(rrs) > 0 || s.hasDescendant(name)
	var answer []dns.RR
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			answer = append(answer, dns.Copy(rr))
		}
	}
	// Follow one CNAME, as a resolver would see it in the answer.
	if len(answer) == 0 && q.Qtype != dns.TypeCNAME {
		for _, rr := range rrs {
			if c, ok := rr.(*dns.CNAME); ok {
				answer = append(answer, dns.Copy(c))
				for _, t := range s.records[strings.ToLower(c.Target)] {
					if t.Header().Rrtype == q.Qtype {
						answer = append(answer, dns.Copy(t))
					}
				}
			}
		}
	}
	negTTL := s.negTTL
	s.mu.Unlock()
	if silent {
		return
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	switch {
	case servfail:
		m.Rcode = dns.RcodeServerFailure
	case truncate:
		m.Truncated = true
	case len(answer) > 0:
		m.Answer = answer
	default:
		if !exists {
			m.Rcode = dns.RcodeNameError
		}
		m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: zoneOf(name), Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: negTTL},
			Ns: "ns.test.", Mbox: "hostmaster.test.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: negTTL}}
	}
	w.WriteMsg(m)
}

// hasDescendant reports an empty non-terminal: a name with no records of
// its own but names below it (NODATA, not NXDOMAIN).
func (s *Server) hasDescendant(name string) bool {
	for n := range s.records {
		if strings.HasSuffix(n, "."+name) {
			return true
		}
	}
	return false
}

func zoneOf(name string) string {
	labels := dns.SplitDomainName(name)
	if len(labels) <= 2 {
		return dns.Fqdn(name)
	}
	return dns.Fqdn(strings.Join(labels[len(labels)-2:], "."))
}
