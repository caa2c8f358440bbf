package config

import (
	"strings"

	"golang.org/x/net/idna"
)

// This file converts internationalized domain names between their Unicode
// form (U-labels, "bücher.example") and their ASCII form (A-labels,
// "xn--bcher-kva.example"), so that a route written one way matches a
// recipient domain written the other way. golang.org/x/net/idna does the
// work with the UTS #46 lookup profile (mapping, NFC, Punycode); labels
// are processed one by one so that a domain with a trailing dot or an odd
// but harmless label still converts.

// toASCII returns domain lower-cased with every non-ASCII label replaced
// by its A-label. It reports false when a label cannot be converted.
func toASCII(domain string) (string, bool) {
	labels := strings.Split(domain, ".")
	for i, l := range labels {
		if isASCII(l) {
			labels[i] = strings.ToLower(l)
			continue
		}
		a, err := idna.Lookup.ToASCII(l)
		if err != nil {
			return "", false
		}
		labels[i] = strings.ToLower(a)
	}
	return strings.Join(labels, "."), true
}

// toUnicode returns domain lower-cased with every A-label replaced by its
// U-label. It reports false when an A-label does not decode.
func toUnicode(domain string) (string, bool) {
	labels := strings.Split(domain, ".")
	for i, l := range labels {
		l = strings.ToLower(l)
		labels[i] = l
		if !strings.HasPrefix(l, "xn--") {
			continue
		}
		u, err := idna.Lookup.ToUnicode(l)
		if err != nil || isASCII(u) {
			// An A-label must stand for a name with non-ASCII in it.
			return "", false
		}
		labels[i] = u
	}
	return strings.Join(labels, "."), true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
