package dnstest

import (
	"fmt"
	"net"
	"strings"

	"github.com/miekg/dns"
)

// AddZonedata loads the zonedata of one scenario of the openspf SPF test
// suite (rfc7208-tests.yml, rfc4408-tests.yml) as decoded from YAML: a map
// from domain name to a list whose items are either a one-key map
// {TYPE: value} or the bare word TIMEOUT.
//
// It follows the suite's own driver (pyspf test/testspf.py):
//
//   - A, AAAA, PTR, CNAME: a string. MX: [preference, exchange].
//   - TXT and SPF: a string, or a list of strings that are the
//     character-strings of ONE record. Several items are several records.
//     Strings longer than 255 bytes are split into several
//     character-strings of one record, as a DNS server would.
//   - SPF (type 99) records are served as TXT records too when the name has
//     no TXT item of its own ("TXT: NONE" counts as one, and is otherwise
//     only a marker).
//   - TIMEOUT: queries for the name go unanswered (Silent). In the driver a
//     query still gets an answer when a record of its type comes before
//     TIMEOUT in the list. This server silences names, not types: when
//     records other than type SPF come before TIMEOUT, they are served and
//     the name is not silenced (queries for other types then get an empty
//     answer instead of a timeout); type SPF records do not count, since
//     no RFC 7208 checker asks for type 99. In the RFC 7208 suite only
//     spftimeout.example.net (TXT, then TIMEOUT) is served rather than
//     silenced, and only its TXT record is ever asked for.
//
// YAML "\xNN" escapes decode to code points U+0000..U+00FF; the suite means
// them as raw bytes (a UTF-8 byte-order mark, stray 0x80), so a string whose
// code points all fit in a byte is served byte for byte.
//
// The driver's other rule, that a missing name beginning with "error."
// times out, is not reproduced: neither suite's zonedata relies on it.
func (s *Server) AddZonedata(zonedata map[string][]any) error {
	for name, items := range zonedata {
		owner := dns.Fqdn(strings.ToLower(name))
		hasTXT := false
		for _, it := range items {
			if m, ok := it.(map[string]any); ok {
				if _, ok := m["TXT"]; ok {
					hasTXT = true
				}
			}
		}
		var rrs, spfCopies []dns.RR
		timeout, answered := false, false
		for _, it := range items {
			if w, ok := it.(string); ok {
				if w != "TIMEOUT" {
					return fmt.Errorf("dnstest: zonedata %s: unknown item %q", name, w)
				}
				timeout = !answered
				break // the driver never looks past TIMEOUT
			}
			m, ok := it.(map[string]any)
			if !ok || len(m) != 1 {
				return fmt.Errorf("dnstest: zonedata %s: item %v is not a one-key map", name, it)
			}
			for typ, v := range m {
				rr, err := zoneRR(owner, typ, v)
				if err != nil {
					return fmt.Errorf("dnstest: zonedata %s: %w", name, err)
				}
				if rr == nil { // NONE marker
					continue
				}
				if spf, ok := rr.(*dns.SPF); ok && !hasTXT {
					spfCopies = append(spfCopies, &dns.TXT{Hdr: hdr(owner, dns.TypeTXT), Txt: spf.Txt})
				}
				rrs = append(rrs, rr)
				answered = answered || rr.Header().Rrtype != dns.TypeSPF
			}
		}
		if timeout {
			s.Silent(owner)
		}
		s.AddRR(rrs...)
		s.AddRR(spfCopies...)
	}
	return nil
}

func hdr(owner string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: owner, Rrtype: t, Class: dns.ClassINET, Ttl: 300}
}

// zoneRR builds one record; it returns nil for the "NONE" marker.
func zoneRR(owner, typ string, v any) (dns.RR, error) {
	str := func() (string, error) {
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("%s value %v is not a string", typ, v)
		}
		return s, nil
	}
	switch typ {
	case "A", "AAAA":
		s, err := str()
		if err != nil {
			return nil, err
		}
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("%s value %q is not an address", typ, s)
		}
		if typ == "A" {
			if ip.To4() == nil {
				return nil, fmt.Errorf("value %q of an A record is not IPv4", s)
			}
			return &dns.A{Hdr: hdr(owner, dns.TypeA), A: ip.To4()}, nil
		}
		return &dns.AAAA{Hdr: hdr(owner, dns.TypeAAAA), AAAA: ip.To16()}, nil
	case "PTR", "CNAME":
		s, err := str()
		if err != nil {
			return nil, err
		}
		if typ == "PTR" {
			return &dns.PTR{Hdr: hdr(owner, dns.TypePTR), Ptr: dns.Fqdn(s)}, nil
		}
		return &dns.CNAME{Hdr: hdr(owner, dns.TypeCNAME), Target: dns.Fqdn(s)}, nil
	case "MX":
		l, ok := v.([]any)
		if !ok || len(l) != 2 {
			return nil, fmt.Errorf("MX value %v is not [preference, exchange]", v)
		}
		pref, ok := l[0].(int)
		host, ok2 := l[1].(string)
		if !ok || !ok2 || pref < 0 || pref > 65535 {
			return nil, fmt.Errorf("MX value %v is not [preference, exchange]", v)
		}
		return &dns.MX{Hdr: hdr(owner, dns.TypeMX), Preference: uint16(pref), Mx: dns.Fqdn(host)}, nil
	case "TXT", "SPF":
		var parts []string
		switch x := v.(type) {
		case string:
			if x == "NONE" {
				return nil, nil
			}
			parts = []string{x}
		case []any:
			parts = []string{}
			for _, p := range x {
				s, ok := p.(string)
				if !ok {
					return nil, fmt.Errorf("%s value %v holds a non-string", typ, v)
				}
				parts = append(parts, s)
			}
		default:
			return nil, fmt.Errorf("%s value %v is neither a string nor a list", typ, v)
		}
		txt := txtStrings(parts)
		if typ == "TXT" {
			return &dns.TXT{Hdr: hdr(owner, dns.TypeTXT), Txt: txt}, nil
		}
		return &dns.SPF{Hdr: hdr(owner, dns.TypeSPF), Txt: txt}, nil
	}
	return nil, fmt.Errorf("unsupported record type %q", typ)
}

// txtStrings turns the suite's strings into miekg/dns character-strings:
// bytes as meant (see latin1Bytes), at most 255 bytes each, with the
// backslash escaped because miekg/dns reads Txt in presentation form.
func txtStrings(parts []string) []string {
	out := make([]string, 0, len(parts))
	for _, p := range parts {
		b := latin1Bytes(p)
		for {
			n := min(len(b), 255)
			out = append(out, strings.ReplaceAll(b[:n], `\`, `\\`))
			b = b[n:]
			if len(b) == 0 {
				break
			}
		}
	}
	return out
}

// latin1Bytes maps a string whose code points are all below 256 to those
// bytes (so "\xEF\xBB\xBF" in YAML is the UTF-8 BOM it stands for); any
// other string stays UTF-8.
func latin1Bytes(s string) string {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if r > 0xFF {
			return s
		}
		b = append(b, byte(r))
	}
	return string(b)
}
