package spf

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"moat/filters"
)

// RFC 7208 section 4.6: "if there are any syntax errors anywhere in the
// record, check_host() returns immediately with the result permerror".
// blitiri.com.ar/go/spf reads records term by term and stops at the first
// match, so it misses errors after a match and does not check domain-spec,
// macro or CIDR syntax. Evaluate therefore hands the library a resolver
// (checkedResolver) that checks every SPF record against the section 12
// ABNF as it is fetched, and turns a malformed one into a permanent
// lookup error, which the library reports as permerror for that
// check_host() call (and so for an include or redirect that led to it).

// SyntaxError is a malformed SPF record: the domain it was published at,
// the record, and the term at fault.
type SyntaxError struct {
	Domain, Record, Term, Problem string
}

func (e *SyntaxError) Error() string {
	if e.Term == "" {
		return fmt.Sprintf("malformed SPF record %q at %s: %s", e.Record, e.Domain, e.Problem)
	}
	return fmt.Sprintf("malformed SPF record %q at %s: term %q: %s", e.Record, e.Domain, e.Term, e.Problem)
}

// checkedResolver checks the SPF records that LookupTXT returns.
type checkedResolver struct {
	filters.Resolver
}

// LookupTXT returns the TXT records, or a *SyntaxError when the name holds
// exactly one SPF record and it is malformed. The library takes any error
// that is not a *net.DNSError as permanent: permerror.
func (c checkedResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	txts, err := c.Resolver.LookupTXT(ctx, name)
	if err != nil {
		return txts, err
	}
	// Select records exactly as the library does (v=spf1, alone or
	// followed by a space, any case); several are its own permerror.
	var recs []string
	for _, t := range txts {
		l := strings.ToLower(t)
		if strings.HasPrefix(l, "v=spf1 ") || l == "v=spf1" {
			recs = append(recs, t)
		}
	}
	if len(recs) == 1 {
		if term, problem := checkRecord(recs[0]); problem != "" {
			return nil, &SyntaxError{Domain: strings.TrimSuffix(name, "."), Record: recs[0], Term: term, Problem: problem}
		}
	}
	return txts, nil
}

// checkRecord checks an SPF record against RFC 7208 section 12. It returns
// the offending term and what is wrong with it, or "" when the record is
// well formed. Names and keywords are case-insensitive.
func checkRecord(rec string) (term, problem string) {
	for i := 0; i < len(rec); i++ {
		if c := rec[i]; c != ' ' && (c < 0x21 || c > 0x7e) {
			return "", fmt.Sprintf("byte 0x%02x at offset %d: only printable US-ASCII and spaces are allowed", c, i)
		}
	}
	fields := strings.Split(rec, " ")
	if !strings.EqualFold(fields[0], "v=spf1") {
		return fields[0], "the record must start with v=spf1"
	}
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		if f == "" {
			continue // 1*SP between terms, *SP at the end
		}
		if p := checkTerm(f, seen); p != "" {
			return f, p
		}
	}
	return "", ""
}

// checkTerm checks one directive or modifier.
func checkTerm(f string, seen map[string]bool) string {
	// modifier = name "=" macro-string, name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
	if eq := strings.IndexByte(f, '='); eq > 0 && isName(f[:eq]) {
		name, val := strings.ToLower(f[:eq]), f[eq+1:]
		switch name {
		case "redirect", "exp":
			if seen[name] {
				return name + "= appears more than once"
			}
			seen[name] = true
			return checkDomainSpec(val)
		}
		// Never expanded, so any macro letter will do.
		return checkMacroString(val, true)
	}
	if strings.ContainsRune("+-?~", rune(f[0])) {
		f = f[1:]
	}
	mech, arg, hasArg := f, "", false
	if i := strings.IndexAny(f, ":/"); i >= 0 {
		mech, arg, hasArg = f[:i], f[i:], true
	}
	switch strings.ToLower(mech) {
	case "all":
		if hasArg {
			return "all takes no argument"
		}
		return ""
	case "include", "exists":
		if !strings.HasPrefix(arg, ":") {
			return mech + " needs :domain"
		}
		return checkDomainSpec(arg[1:])
	case "ptr":
		if !hasArg {
			return ""
		}
		if !strings.HasPrefix(arg, ":") {
			return "ptr takes no CIDR length"
		}
		return checkDomainSpec(arg[1:])
	case "a", "mx":
		rest := arg
		if strings.HasPrefix(rest, ":") {
			rest = rest[1:]
			// The domain-spec may hold "/" itself; the CIDR lengths are
			// whatever dual-cidr-length matches at the end.
			dom, cidr := splitDualCIDR(rest)
			if p := checkDomainSpec(dom); p != "" {
				return p
			}
			rest = cidr
		}
		return checkDualCIDR(rest)
	case "ip4":
		if !strings.HasPrefix(arg, ":") {
			return "ip4 needs :address"
		}
		addr, cidr, _ := strings.Cut(arg[1:], "/")
		if !isIP4(addr) {
			return fmt.Sprintf("%q is not an IPv4 address", addr)
		}
		if strings.Contains(arg[1:], "/") && !isCIDR(cidr, 32) {
			return fmt.Sprintf("/%s is not a CIDR length from 0 to 32", cidr)
		}
		return ""
	case "ip6":
		if !strings.HasPrefix(arg, ":") {
			return "ip6 needs :address"
		}
		a := arg[1:]
		addr, cidr, hasCIDR := a, "", false
		if i := strings.IndexByte(a, '/'); i >= 0 {
			addr, cidr, hasCIDR = a[:i], a[i+1:], true
		}
		ip, err := netip.ParseAddr(addr)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return fmt.Sprintf("%q is not an IPv6 address", addr)
		}
		if hasCIDR && !isCIDR(cidr, 128) {
			return fmt.Sprintf("/%s is not a CIDR length from 0 to 128", cidr)
		}
		return ""
	}
	return fmt.Sprintf("%q is not a mechanism (all, include, a, mx, ptr, ip4, ip6, exists) or a modifier (name=value)", mech)
}

func isName(s string) bool {
	if s == "" || !isAlpha(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isAlpha(c) && !isDigit(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// splitDualCIDR splits "domain/24//64" into the domain-spec and the
// longest trailing dual-cidr-length.
func splitDualCIDR(s string) (string, string) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' && checkDualCIDR(s[i:]) == "" {
			return s[:i], s[i:]
		}
	}
	return s, ""
}

// checkDualCIDR checks dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ].
func checkDualCIDR(s string) string {
	if s == "" {
		return ""
	}
	v4, v6, dual := s, "", false
	if i := strings.Index(s, "//"); i >= 0 {
		v4, v6, dual = s[:i], s[i+2:], true
	}
	if v4 != "" && (!strings.HasPrefix(v4, "/") || !isCIDR(v4[1:], 32)) {
		return fmt.Sprintf("%q is not a CIDR length from /0 to /32", v4)
	}
	if dual && !isCIDR(v6, 128) {
		return fmt.Sprintf("//%s is not a CIDR length from //0 to //128", v6)
	}
	return ""
}

// isCIDR: "0" / %x31-39 *DIGIT, at most max (no leading zeros).
func isCIDR(s string, max int) bool {
	if s == "" || len(s) > 3 || (s[0] == '0' && len(s) > 1) {
		return false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n <= max
}

// isIP4: four qnums (0-255, no leading zeros).
func isIP4(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if !isCIDR(p, 255) {
			return false
		}
	}
	return net.ParseIP(s) != nil
}

// checkDomainSpec checks domain-spec = macro-string domain-end, with
// domain-end = ( "." toplabel [ "." ] ) / macro-expand.
func checkDomainSpec(s string) string {
	if s == "" {
		return "empty domain"
	}
	if p := checkMacroString(s, false); p != "" {
		return p
	}
	if endsWithMacro(s) {
		return ""
	}
	t := strings.TrimSuffix(s, ".")
	dot := strings.LastIndexByte(t, '.')
	if dot < 0 {
		return fmt.Sprintf("domain %q has a single label; it must end in .toplabel or a macro", s)
	}
	if top := t[dot+1:]; !isTopLabel(top) {
		return fmt.Sprintf("domain %q ends in %q, which is not a valid top label", s, top)
	}
	return ""
}

// endsWithMacro reports whether the macro-string s ends with a
// macro-expand ("%{…}", "%%", "%_" or "%-").
func endsWithMacro(s string) bool {
	if strings.HasSuffix(s, "}") {
		if i := strings.LastIndex(s, "%{"); i >= 0 && !escapedPercent(s, i) {
			return !strings.Contains(s[i:len(s)-1], "}")
		}
	}
	if len(s) >= 2 && s[len(s)-2] == '%' && strings.ContainsRune("%_-", rune(s[len(s)-1])) {
		return !escapedPercent(s, len(s)-2)
	}
	return false
}

// escapedPercent reports whether the '%' at i is the second half of "%%".
func escapedPercent(s string, i int) bool {
	n := 0
	for j := i - 1; j >= 0 && s[j] == '%'; j-- {
		n++
	}
	return n%2 == 1
}

// isTopLabel: ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum ).
func isTopLabel(s string) bool {
	if s == "" {
		return false
	}
	alpha, dash := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isAlpha(c):
			alpha = true
		case isDigit(c):
		case c == '-':
			dash = true
		default:
			return false
		}
	}
	if dash {
		return s[0] != '-' && s[len(s)-1] != '-'
	}
	return alpha
}

// checkMacroString checks macro-string = *( macro-expand / macro-literal );
// exp says whether the exp-only letters c, r and t are allowed.
func checkMacroString(s string, exp bool) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			if c < 0x21 || c > 0x7e {
				return fmt.Sprintf("byte 0x%02x is not allowed", c)
			}
			continue
		}
		if i+1 >= len(s) {
			return "a lone % at the end (write %% for a percent sign)"
		}
		switch s[i+1] {
		case '%', '_', '-':
			i++
			continue
		case '{':
		default:
			return fmt.Sprintf("%q is not a macro (%%{…}, %%%%, %%_ or %%-)", s[i:i+2])
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "unterminated macro " + s[i:]
		}
		if p := checkMacro(s[i+2:i+end], exp); p != "" {
			return p
		}
		i += end
	}
	return ""
}

// checkMacro checks the inside of %{…}: macro-letter transformers *delimiter.
func checkMacro(m string, exp bool) string {
	bad := fmt.Sprintf("%%{%s} is not a valid macro", m)
	if m == "" {
		return bad
	}
	letter := m[0] | 0x20
	switch {
	case strings.IndexByte("slodiphv", letter) >= 0:
	case strings.IndexByte("crt", letter) >= 0:
		if !exp {
			return fmt.Sprintf("%%{%c} is allowed only in explanation text", m[0])
		}
	default:
		return bad
	}
	i := 1
	digits := 0
	for i < len(m) && isDigit(m[i]) {
		digits = digits*10 + int(m[i]-'0')
		i++
	}
	if i > 1 && digits == 0 {
		return fmt.Sprintf("%%{%s}: the number of parts must not be 0", m)
	}
	if i < len(m) && m[i]|0x20 == 'r' {
		i++
	}
	for ; i < len(m); i++ {
		if !strings.ContainsRune(".-+,/_=", rune(m[i])) {
			return bad
		}
	}
	return ""
}
