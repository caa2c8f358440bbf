package proxy

import (
	"context"
	"net/netip"
	"strings"
	"time"

	"moat/filters"
)

// rdns is the client's forward-confirmed reverse DNS name (FCrDNS), looked
// up in the background from the moment the client connects: the PTR name
// counts only when it resolves back to the client's address. It feeds the
// event's source.domain and the Received header; nobody waits for it.
type rdns struct {
	done chan struct{}
	name string // "" when unknown or not confirmed
}

func (s *session) lookupRDNS(ctx context.Context) {
	// rd, not s.rdns, in the goroutine: XCLIENT may replace s.rdns.
	rd := &rdns{done: make(chan struct{})}
	s.rdns = rd
	r := s.rt.DNS
	ip := s.remote.Addr().Unmap()
	// A loopback client has no name worth a query.
	if r == nil || ip.IsLoopback() {
		close(rd.done)
		return
	}
	timeout := 2*s.cfg().DNS.Timeout.D() + time.Second
	go func() {
		defer close(rd.done)
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		rd.name = confirmedName(ctx, r, ip)
	}()
}

// confirmedName returns the first PTR name of ip that resolves back to
// ip, lower-cased without the final dot, or "".
func confirmedName(ctx context.Context, r filters.Resolver, ip netip.Addr) string {
	names, err := r.LookupAddr(ctx, ip.String())
	if err != nil {
		return ""
	}
	for _, n := range names {
		n = strings.TrimSuffix(strings.ToLower(n), ".")
		addrs, err := r.LookupIPAddr(ctx, n)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
				return n
			}
		}
	}
	return ""
}

// clientName returns the confirmed name when the lookup has finished, "".
func (s *session) clientName() string {
	if s.rdns == nil {
		return ""
	}
	select {
	case <-s.rdns.done:
		return s.rdns.name
	default:
		return ""
	}
}
