package proxy

import (
	"errors"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Address is an envelope mailbox from MAIL FROM or RCPT TO. The zero
// Address is the null reverse-path <>.
type Address struct {
	Local    string // as sent (quoted local parts keep their quotes)
	Domain   string // as sent
	NonASCII bool   // needs SMTPUTF8 (RFC 6531)
}

// IsNull reports the null reverse-path <>.
func (a Address) IsNull() bool { return a.Local == "" && a.Domain == "" }

func (a Address) String() string {
	if a.IsNull() {
		return ""
	}
	return a.Local + "@" + a.Domain
}

// ASCIIDomain returns the domain in lower-case A-label form for routing;
// an address literal is returned as it is.
func (a Address) ASCIIDomain() string {
	d := strings.TrimSuffix(a.Domain, ".")
	if strings.HasPrefix(d, "[") {
		return d
	}
	if ascii, err := idna.Lookup.ToASCII(d); err == nil {
		return strings.ToLower(ascii)
	}
	return strings.ToLower(d)
}

// canonical is a with its domain in the form it stands for: a domain with
// non-ASCII in it goes through the UTS #46 lookup mapping (full-width and
// other compatibility forms, upper case, NFC) and back to Unicode, so
// "bob@ｅｘａｍｐｌｅ.com" becomes "bob@example.com" and "BÜCHER.de"
// "bücher.de". Routing already looked at the mapped name; without this the
// internal server, the policies' patterns, greylist triplets and events
// would see a look-alike spelling of it. An ASCII domain, an address
// literal and a domain that does not convert stay as sent; the local part
// always does.
func (a Address) canonical() Address {
	d := a.Domain
	if isASCII(d) || strings.HasPrefix(d, "[") {
		return a
	}
	ascii, err := idna.Lookup.ToASCII(strings.TrimSuffix(d, "."))
	if err != nil {
		return a
	}
	u, err := idna.Lookup.ToUnicode(ascii)
	if err != nil {
		return a
	}
	a.Domain = strings.ToLower(u)
	a.NonASCII = !isASCII(a.Local) || !isASCII(a.Domain)
	return a
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// param is one ESMTP parameter of MAIL or RCPT (RFC 5321 section 4.1.2).
type param struct {
	Key, Value string // Key upper-cased
	HasValue   bool
}

var (
	errPathSyntax  = errors.New("path syntax")
	errParamSyntax = errors.New("parameter syntax")
)

// parseArg parses the argument of MAIL ("FROM:<path> params") or RCPT
// ("TO:<path> params"), prefix naming the keyword with its colon. Like
// Postfix, it accepts spaces after the colon; it requires angle brackets.
// Source routes (@a,@b:) are dropped as RFC 5321 section 4.1.2 says.
//
// Written by hand: the address rules of RFC 5321 and 6531 are small and
// exact, and the libraries at hand parse RFC 5322 addresses instead.
func parseArg(arg, prefix string, allowNull bool) (Address, []param, error) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return Address{}, nil, errPathSyntax
	}
	s := strings.TrimLeft(arg[len(prefix):], " ")
	if !strings.HasPrefix(s, "<") {
		return Address{}, nil, errPathSyntax
	}
	end := closingBracket(s)
	if end < 0 {
		return Address{}, nil, errPathSyntax
	}
	path, rest := s[1:end], s[end+1:]
	if len(path) > 256 {
		return Address{}, nil, errPathSyntax
	}
	if strings.HasPrefix(path, "@") {
		i := strings.IndexByte(path, ':')
		if i < 0 {
			return Address{}, nil, errPathSyntax
		}
		path = path[i+1:]
	}
	var addr Address
	if path == "" {
		if !allowNull {
			return Address{}, nil, errPathSyntax
		}
	} else {
		var err error
		if addr, err = parseMailbox(path); err != nil {
			return Address{}, nil, err
		}
	}
	params, err := parseParams(rest)
	if err != nil {
		return Address{}, nil, err
	}
	return addr, params, nil
}

// closingBracket returns the index of the '>' closing the path that s
// opens, skipping quoted strings, or -1.
func closingBracket(s string) int {
	inQuote := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '>':
			return i
		}
	}
	return -1
}

func parseParams(s string) ([]param, error) {
	if s == "" {
		return nil, nil
	}
	if s[0] != ' ' {
		return nil, errParamSyntax
	}
	var ps []param
	for _, f := range strings.Fields(s) {
		k, v, has := strings.Cut(f, "=")
		if k == "" || (has && v == "") {
			return nil, errParamSyntax
		}
		for i := 0; i < len(k); i++ {
			if !isAlnum(k[i]) && !(i > 0 && k[i] == '-') {
				return nil, errParamSyntax
			}
		}
		ps = append(ps, param{Key: strings.ToUpper(k), Value: v, HasValue: has})
	}
	return ps, nil
}

// parseMailbox checks Local-part "@" (Domain / address-literal).
func parseMailbox(s string) (Address, error) {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return Address{}, errPathSyntax
	}
	local, domain := s[:at], s[at+1:]
	if !utf8.ValidString(s) || len(local) > 64 || len(domain) > 255 {
		return Address{}, errPathSyntax
	}
	a := Address{Local: local, Domain: domain}
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			a.NonASCII = true
			break
		}
	}
	if !validLocal(local) || !validDomain(domain) {
		return Address{}, errPathSyntax
	}
	return a, nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// atext of RFC 5322, plus UTF-8 (RFC 6531).
func isAtext(c byte) bool {
	return isAlnum(c) || strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0 || c >= 0x80
}

func validLocal(s string) bool {
	if strings.HasPrefix(s, `"`) {
		if len(s) < 2 || !strings.HasSuffix(s, `"`) {
			return false
		}
		q := s[1 : len(s)-1]
		for i := 0; i < len(q); i++ {
			c := q[i]
			switch {
			case c == '\\':
				i++
				if i >= len(q) || q[i] < 32 || q[i] == 127 {
					return false
				}
			case c == '"' || c < 32 || c == 127:
				return false
			}
		}
		return true
	}
	for _, atom := range strings.Split(s, ".") {
		if atom == "" {
			return false
		}
		for i := 0; i < len(atom); i++ {
			if !isAtext(atom[i]) {
				return false
			}
		}
	}
	return true
}

func validDomain(s string) bool {
	if strings.HasPrefix(s, "[") {
		if !strings.HasSuffix(s, "]") {
			return false
		}
		lit := s[1 : len(s)-1]
		if v6, ok := strings.CutPrefix(lit, "IPv6:"); ok {
			a, err := netip.ParseAddr(v6)
			return err == nil && a.Is6()
		}
		a, err := netip.ParseAddr(lit)
		return err == nil && a.Is4()
	}
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isAlnum(c) && c != '-' && c < 0x80 {
				return false
			}
		}
	}
	return true
}

// senderRouted reports a local part that names another destination in
// one of the old sender-routing notations: "%" (the percent hack), "!"
// (UUCP bang paths) or "@" (inside quotes). Quotes and escapes do not
// hide them.
func senderRouted(local string) bool {
	return strings.ContainsAny(local, "%!@")
}
