package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Intercept starts a second listener, UDP and TCP on one new loopback
// port, in front of the same records: each query that arrives there goes
// to fn first. fn may answer (w.WriteMsg with any message, or w.Write
// with raw bytes), stay silent, or block until a test lets it go on; it
// returns false to let the server answer as it would on Addr. This makes
// the faults New has no switch for: other reply codes, malformed or
// mismatched replies, queries held until released. Queries fn handles
// itself are not counted by Queries and QueriesFor. The listener stops
// when the test ends.
func (s *Server) Intercept(t testing.TB, fn func(w dns.ResponseWriter, req *dns.Msg) bool) (addr string) {
	t.Helper()
	pc, ln, err := listenPair()
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		if !fn(w, req) {
			s.serve(w, req)
		}
	})
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	var ready sync.WaitGroup
	ready.Add(2)
	udp.NotifyStartedFunc = ready.Done
	tcp.NotifyStartedFunc = ready.Done
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	ready.Wait()
	t.Cleanup(func() {
		udp.Shutdown()
		tcp.Shutdown()
	})
	return pc.LocalAddr().String()
}

// listenPair listens on UDP and TCP on one free loopback port. The UDP
// port the kernel picks may be taken for TCP (by any connection's local
// end), so it tries a few ports.
func listenPair() (net.PacketConn, net.Listener, error) {
	var err error
	for range 20 {
		var pc net.PacketConn
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		var ln net.Listener
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
	}
	return nil, nil, fmt.Errorf("dnstest: no loopback port free for both UDP and TCP: %w", err)
}

// QName returns the lower-case question name of req ("" if it has none),
// for Intercept functions that pick the queries they handle.
func QName(req *dns.Msg) string {
	if len(req.Question) == 0 {
		return ""
	}
	return strings.ToLower(req.Question[0].Name)
}
