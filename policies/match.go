package policies

import (
	"fmt"
	"net/netip"
	"strings"

	"go.yaml.in/yaml/v3"
	"golang.org/x/net/idna"

	"moat/internal/yamlx"
)

// AddrPattern matches envelope addresses, ignoring case:
//
//	user@example.com   that one address
//	*@example.com      any user at example.com (not its subdomains)
//	@example.com       the same
//	*                  any address, the null sender included
//
// No other wildcard is allowed.
type AddrPattern struct {
	src    string
	any    bool   // "*"
	local  string // "" = any user; lower case
	domain string // lower case, no trailing dot
}

// ParseAddrPattern parses one pattern of the syntax above.
func ParseAddrPattern(s string) (AddrPattern, error) {
	t := strings.TrimSpace(s)
	if t == "*" {
		return AddrPattern{src: t, any: true}, nil
	}
	at := strings.LastIndexByte(t, '@')
	if at < 0 {
		hint := ""
		if t != "" && !strings.ContainsAny(t, "* \t") {
			hint = fmt.Sprintf(" (did you mean %q?)", "@"+t)
		}
		return AddrPattern{}, fmt.Errorf("want user@example.com, *@example.com, @example.com or *, got %q%s", s, hint)
	}
	local, domain := t[:at], t[at+1:]
	if local == "*" {
		local = ""
	}
	if strings.ContainsAny(local, "*@ \t\r\n") {
		return AddrPattern{}, fmt.Errorf("want user@example.com, *@example.com, @example.com or *, got %q (the only wildcard is * as the whole user part)", s)
	}
	d, err := parseDomain(domain)
	if err != nil {
		return AddrPattern{}, fmt.Errorf("%q: %v", s, err)
	}
	return AddrPattern{src: t, local: strings.ToLower(local), domain: d}, nil
}

// String returns the pattern as written.
func (p AddrPattern) String() string { return p.src }

// UnmarshalYAML implements yamlx.Unmarshaler.
func (p *AddrPattern) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want an address pattern such as *@example.com, got %s", kindName(n))
	}
	v, err := ParseAddrPattern(n.Value)
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// Match reports whether the envelope address addr ("" for the null sender)
// matches p.
func (p AddrPattern) Match(addr string) bool {
	if p.any {
		return true
	}
	local, domain, ok := splitAddr(addr)
	if !ok || domain != p.domain {
		return false
	}
	return p.local == "" || p.local == local
}

// splitAddr lower-cases addr, drops angle brackets and a trailing dot on
// the domain, and splits it at its last '@'.
func splitAddr(addr string) (local, domain string, ok bool) {
	a := strings.TrimSpace(addr)
	a = strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">")
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 {
		return "", "", false
	}
	return strings.ToLower(a[:at]), asciiDomain(strings.TrimSuffix(a[at+1:], ".")), true
}

// asciiDomain is domain lower-cased in its ASCII form: the UTS #46 lookup
// mapping (golang.org/x/net/idna) turns U-labels into A-labels and maps
// full-width and other compatibility forms, so that "ｅｘａｍｐｌｅ.com",
// "EXAMPLE.com", "bücher.example" and "xn--bcher-kva.example" compare as
// the names they stand for and a look-alike spelling cannot slip past a
// pattern. A name that does not convert is only lower-cased.
func asciiDomain(domain string) string {
	for i := 0; i < len(domain); i++ {
		if domain[i] >= 0x80 {
			if a, err := idna.Lookup.ToASCII(domain); err == nil {
				return strings.ToLower(a)
			}
			break
		}
	}
	return strings.ToLower(domain)
}

// Domain is a domain name, stored in lower case without a trailing dot.
type Domain string

// UnmarshalYAML implements yamlx.Unmarshaler.
func (d *Domain) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a domain such as example.com, got %s", kindName(n))
	}
	v, err := parseDomain(n.Value)
	if err != nil {
		return err
	}
	*d = Domain(v)
	return nil
}

// Match reports whether the domain of the address addr is d.
func (d Domain) Match(addr string) bool {
	_, domain, ok := splitAddr(addr)
	return ok && domain == string(d)
}

func parseDomain(s string) (string, error) {
	t := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if strings.HasPrefix(t, "@") {
		return "", fmt.Errorf("want a domain such as example.com, got %q (write it without the @)", s)
	}
	if t == "" || len(t) > 253 || strings.HasPrefix(t, ".") || strings.Contains(t, "..") {
		return "", fmt.Errorf("want a domain such as example.com, got %q", s)
	}
	for _, r := range t {
		if r <= ' ' || r == 0x7f || strings.ContainsRune("@*/\\,;:<>()[]\"'", r) {
			return "", fmt.Errorf("want a domain such as example.com, got %q", s)
		}
	}
	return asciiDomain(t), nil
}

// matchPrefix returns the first prefix of list that holds a.
func matchPrefix(list []yamlx.Prefix, a netip.Addr) (netip.Prefix, bool) {
	if !a.IsValid() {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	for _, p := range list {
		if p.P().Contains(a) {
			return p.P(), true
		}
	}
	return netip.Prefix{}, false
}

// matchAddr returns the first pattern of list that matches addr.
func matchAddr(list []AddrPattern, addr string) (AddrPattern, bool) {
	for _, p := range list {
		if p.Match(addr) {
			return p, true
		}
	}
	return AddrPattern{}, false
}

// matches reports whether a transaction falls under a (any criterion).
func (a *AppliesTo) matches(rcpt, from string, client netip.Addr) bool {
	if _, ok := matchAddr(a.Recipients, rcpt); ok && rcpt != "" {
		return true
	}
	for _, d := range a.RecipientDomains {
		if d.Match(rcpt) {
			return true
		}
	}
	if _, ok := matchAddr(a.Senders, from); ok {
		return true
	}
	_, ok := matchPrefix(a.Clients, client)
	return ok
}

// exact reports whether p names one address.
func (p AddrPattern) exact() bool { return !p.any && p.local != "" }
