package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// XCLIENT is Postfix's SMTP extension (XCLIENT_README) by which a trusted
// front end (a proxy, a content filter) tells the server whom it speaks
// for. Only clients in smtp.trusted_proxies see it in EHLO and may use it.

// xclientCapability is the EHLO line: the attributes moat takes.
const xclientCapability = "XCLIENT ADDR PORT NAME REVERSE_NAME HELO PROTO LOGIN DESTADDR DESTPORT"

var (
	replyXclientDenied = reply(550, "5.7.0", "Insufficient authorization")
	replyXclientInTx   = reply(503, "5.5.1", "Mail transaction in progress")
)

// xclient is one XCLIENT command's attributes; a nil field was not given,
// and "" stands for [UNAVAILABLE] or [TEMPUNAVAIL].
type xclient struct {
	addr  *netip.Addr
	port  *uint16
	name  *string
	helo  *string
	proto *string
	login *string
}

// parseXclient reads the attributes of an XCLIENT command: NAME=VALUE
// pairs, values in xtext (RFC 3461 section 4).
func parseXclient(arg string) (*xclient, error) {
	fields := strings.Fields(arg)
	if len(fields) == 0 {
		return nil, errors.New("no attributes")
	}
	x := &xclient{}
	for _, f := range fields {
		k, raw, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("bad attribute %q", f)
		}
		v, err := xtextDecode(raw)
		if err != nil {
			return nil, fmt.Errorf("attribute %s: %w", k, err)
		}
		unavailable := v == "[UNAVAILABLE]" || v == "[TEMPUNAVAIL]"
		if unavailable {
			v = ""
		}
		switch strings.ToUpper(k) {
		case "ADDR":
			// [UNAVAILABLE] is refused too: every check needs an address.
			a, err := netip.ParseAddr(trimIPv6Tag(v))
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("bad ADDR %q", v)
			}
			a = a.Unmap()
			x.addr = &a
		case "PORT":
			var p uint16
			if !unavailable {
				n, err := strconv.ParseUint(v, 10, 16)
				if err != nil {
					return nil, fmt.Errorf("bad PORT %q", v)
				}
				p = uint16(n)
			}
			x.port = &p
		case "NAME":
			if !unavailable && !validDomainName(v) {
				return nil, fmt.Errorf("bad NAME %q", v)
			}
			v = strings.ToLower(strings.TrimSuffix(v, "."))
			x.name = &v
		case "HELO":
			if len(v) > 255 || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
				return nil, fmt.Errorf("bad HELO %q", v)
			}
			x.helo = &v
		case "PROTO":
			v = strings.ToUpper(v)
			if v != "SMTP" && v != "ESMTP" && !unavailable {
				return nil, fmt.Errorf("bad PROTO %q", v)
			}
			x.proto = &v
		case "LOGIN":
			if len(v) > 255 || strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }) {
				return nil, fmt.Errorf("bad LOGIN %q", v)
			}
			x.login = &v
		case "REVERSE_NAME", "DESTADDR", "DESTPORT":
			// Taken and ignored: moat does its own FCrDNS, and serves
			// one address per listener.
		default:
			return nil, fmt.Errorf("bad attribute name %q", k)
		}
	}
	return x, nil
}

// trimIPv6Tag drops the "IPV6:" that Postfix puts before IPv6 addresses.
func trimIPv6Tag(v string) string {
	if len(v) > 5 && strings.EqualFold(v[:5], "IPV6:") {
		return v[5:]
	}
	return v
}

// validDomainName is a loose host name check: labels of letters, digits,
// hyphens and underscores.
func validDomainName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// xtextDecode undoes xtext: "+XX" is the byte XX in upper-case hex.
func xtextDecode(s string) (string, error) {
	if !strings.Contains(s, "+") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+3 > len(s) {
			return "", errors.New("truncated xtext escape")
		}
		n, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", errors.New("bad xtext escape")
		}
		b.WriteByte(byte(n))
		i += 2
	}
	return b.String(), nil
}

// cmdXclient replaces what moat knows of the client by what the trusted
// front end says, then starts the session again with a new greeting, as
// Postfix does: HELO and login are those of the command (or none), TLS
// stays.
func (s *session) cmdXclient(ctx context.Context, arg string) {
	if !s.xclientOK {
		s.bad(replyXclientDenied)
		return
	}
	if s.tx != nil {
		s.bad(replyXclientInTx)
		return
	}
	x, err := parseXclient(arg)
	if err != nil {
		s.bad(reply(501, "5.5.4", "Syntax: XCLIENT attribute=value ...: %s", err.Error()))
		return
	}
	before := s.remote
	if x.addr != nil || x.port != nil {
		ip, port := s.remote.Addr(), s.remote.Port()
		if x.addr != nil {
			ip = *x.addr
		}
		if x.port != nil {
			port = *x.port
		}
		if !s.proxy.IsValid() {
			s.proxy = s.remote
		}
		s.remote = netip.AddrPortFrom(ip, port)
		s.trusted = s.cfg().Trusted(ip)
		s.tarpit = tarpitDelay(s.cfg(), ip, s.trusted)
	}
	switch {
	case x.name != nil:
		s.rdns = &rdns{done: make(chan struct{}), name: *x.name}
		close(s.rdns.done)
	case x.addr != nil:
		s.lookupRDNS(ctx)
	}
	s.helo, s.esmtp, s.user = "", false, ""
	if x.helo != nil {
		s.helo = *x.helo
	}
	if x.proto != nil {
		s.esmtp = *x.proto == "ESMTP"
	}
	if x.login != nil {
		s.user = *x.login
	}
	s.srv.log.Event("smtp.xclient",
		zap.String("moat.session_id", s.id),
		zap.String("moat.listener", s.l.name),
		zap.String("moat.proxy_ip", ipString(before.Addr())),
		zap.String("source.ip", ipString(s.remote.Addr())),
		zap.Uint16("source.port", s.remote.Port()),
		zap.String("source.domain", s.clientName()),
		zap.String("moat.helo", s.helo),
		zap.String("user.name", s.user),
	)
	s.send(reply(220, "", "%s ESMTP moat", s.cfg().Hostname))
}

// ipString is ip as events write it; "" for the unknown address of
// XCLIENT ADDR=[UNAVAILABLE].
func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.Unmap().String()
}

// prefixConn is a connection whose first bytes were read already.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
