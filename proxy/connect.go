package proxy

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// proxyHeaderTimeout bounds the wait for the PROXY header: a proxy sends
// it at once, in the connection's first segment.
const proxyHeaderTimeout = 5 * time.Second

var (
	replyPregreet = reply(554, "5.7.1", "Protocol error: talked before the greeting")
)

// connect runs what comes before the greeting: the PROXY header (which
// names the client every later decision is about), the connection
// limits, and the pregreet test. It reports whether the session goes on;
// when not, it has ended the session.
func (s *session) connect() bool {
	if s.l.conf.ProxyProtocol && !s.readProxyHeader() {
		return false
	}
	ip := s.remote.Addr()
	s.trusted = s.cfg().Trusted(ip)
	// As Postfix's smtpd_authorized_xclient_hosts, decided once, on the
	// client as the PROXY header named it: XCLIENT does not change it.
	s.xclientOK = s.cfg().TrustedProxy(ip)
	if r := s.srv.limits.admit(ip, &s.cfg().SMTP.Limits, s.trusted); r != nil {
		s.send(r)
		s.flush()
		s.end("limit")
		return false
	}
	s.admitted = ip
	s.tarpit = tarpitDelay(s.cfg(), ip, s.trusted)
	return true
}

// readProxyHeader reads the PROXY protocol header (v1 or v2) a trusted
// proxy sends first and makes its source the client. The header is read
// with github.com/pires/go-proxyproto's Read on the session's own reader,
// after the trust decision: its Listener wrapper decides trust per
// listener policy and hides the proxy's own address, which the event and
// the LOCAL health checks need.
func (s *session) readProxyHeader() bool {
	peer := s.remote
	if !s.cfg().TrustedProxy(peer.Addr()) {
		s.end("proxy_untrusted")
		return false
	}
	s.dc.set(0, proxyHeaderTimeout)
	h, err := proxyproto.Read(s.br)
	if err != nil {
		s.srv.log.Debug("smtp.proxy_error", sessionFields(s, "PROXY header: "+err.Error())...)
		s.end("proxy_error")
		return false
	}
	src, ok, err := proxySource(h)
	if err != nil {
		s.srv.log.Debug("smtp.proxy_error", sessionFields(s, "PROXY header: "+err.Error())...)
		s.end("proxy_error")
		return false
	}
	if ok {
		s.proxy, s.remote = peer, src
	}
	return true
}

// proxySource returns the client a PROXY header names. ok is false for a
// v2 LOCAL header (the proxy's own health check) and a v1 UNKNOWN one:
// the connection then stands for the proxy itself.
func proxySource(h *proxyproto.Header) (src netip.AddrPort, ok bool, err error) {
	if h.Command.IsLocal() || h.TransportProtocol.IsUnspec() {
		return netip.AddrPort{}, false, nil
	}
	a, isTCP := h.SourceAddr.(*net.TCPAddr)
	if !isTCP || a == nil {
		return netip.AddrPort{}, false, errors.New("not a TCP source address")
	}
	ap := a.AddrPort()
	ip := ap.Addr().Unmap()
	if !ip.IsValid() || ip.IsUnspecified() {
		return netip.AddrPort{}, false, errors.New("no source address")
	}
	return netip.AddrPortFrom(ip, ap.Port()), true, nil
}

// pregreet is postscreen's greet test: on MX listeners, with
// smtp.limits.pregreet_wait set, the greeting waits that long, and a
// client that talks in the meantime (spambots that do not wait for it)
// is refused. Trusted networks skip the wait.
func (s *session) pregreet() bool {
	wait := s.cfg().SMTP.Limits.PregreetWait.D()
	if wait <= 0 || s.trusted || s.l.name != "mx" || s.l.conf.ImplicitTLS {
		return true
	}
	s.dc.set(0, wait)
	_, err := s.br.Peek(1)
	var ne net.Error
	switch {
	case err == nil:
		s.send(replyPregreet)
		s.flush()
		s.end("pregreet")
		return false
	case errors.As(err, &ne) && ne.Timeout():
		return true
	default: // the client went away
		s.end("client_error")
		return false
	}
}
