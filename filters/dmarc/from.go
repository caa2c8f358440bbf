package dmarc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"

	"golang.org/x/net/idna"
)

// Errors FromDomain returns. RFC 7489 section 6.6.1 leaves messages with
// no From field, several From fields or several From addresses to the
// receiver ("typically rejected"); moat gives them the DMARC result
// permerror with the reason, and the policy (dmarc: { permerror: … })
// decides what that costs. honor_policy does not apply, since no domain's
// policy was found.
var (
	ErrNoFrom        = errors.New("the message has no From header field")
	ErrMultipleFrom  = errors.New("the message has more than one From header field")
	ErrFromAddresses = errors.New("the From field does not hold exactly one address")
)

// FromDomain returns the RFC5322.From domain of a message, in lower case
// (IDNs in A-label form), from its raw header section (what Txn.Header
// holds; CRLF or LF line ends, folded lines allowed). There must be exactly
// one From field holding exactly one mailbox; anything else is an error
// (ErrNoFrom, ErrMultipleFrom, ErrFromAddresses, or a parse error).
func FromDomain(header []byte) (string, error) {
	var from []string
	for _, f := range headerFields(header) {
		name, value, ok := bytes.Cut(f, []byte(":"))
		if ok && strings.EqualFold(strings.TrimRight(string(name), " \t"), "From") {
			from = append(from, string(value))
		}
	}
	switch len(from) {
	case 0:
		return "", ErrNoFrom
	case 1:
	default:
		return "", ErrMultipleFrom
	}
	addrs, err := addressParser.ParseList(unfold(from[0]))
	if err != nil {
		return "", fmt.Errorf("the From field %q is not a valid address list: %w", strings.TrimSpace(unfold(from[0])), err)
	}
	if len(addrs) != 1 {
		return "", fmt.Errorf("%w (it holds %d)", ErrFromAddresses, len(addrs))
	}
	at := strings.LastIndexByte(addrs[0].Address, '@')
	if at < 0 {
		return "", fmt.Errorf("the From address %q has no domain", addrs[0].Address)
	}
	d, err := normalize(addrs[0].Address[at+1:])
	if err != nil {
		return "", fmt.Errorf("the From address %q: %w", addrs[0].Address, err)
	}
	return d, nil
}

// addressParser reads addresses whatever the charset of encoded display
// names: only the address matters here.
var addressParser = &mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// headerFields splits a header section into fields, continuation lines
// kept with their field. It stops at the empty line.
func headerFields(h []byte) [][]byte {
	var fields [][]byte
	for len(h) > 0 {
		line := h
		if i := bytes.IndexByte(h, '\n'); i >= 0 {
			line, h = h[:i+1], h[i+1:]
		} else {
			h = nil
		}
		trimmed := bytes.TrimRight(line, "\r\n")
		if len(trimmed) == 0 {
			break
		}
		if (trimmed[0] == ' ' || trimmed[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1] = append(fields[len(fields)-1], line...)
			continue
		}
		fields = append(fields, append([]byte(nil), line...))
	}
	return fields
}

// unfold removes the line breaks of a folded field value.
func unfold(v string) string {
	v = strings.ReplaceAll(v, "\r\n", "")
	return strings.ReplaceAll(v, "\n", "")
}

// normalize returns a domain in the form DMARC compares: lower case, no
// trailing dot, A-labels. It refuses empty labels and other junk.
func normalize(d string) (string, error) {
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return "", errors.New("empty domain")
	}
	if strings.HasPrefix(d, "[") {
		return "", fmt.Errorf("%q is an address literal, not a domain", d)
	}
	a := d
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			var err error
			if a, err = idna.Lookup.ToASCII(d); err != nil {
				return "", fmt.Errorf("%q is not a valid domain: %w", d, err)
			}
			break
		}
	}
	a = strings.ToLower(a)
	for _, l := range strings.Split(a, ".") {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("%q is not a valid domain", d)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("%q is not a valid domain", d)
			}
		}
	}
	if len(a) > 253 {
		return "", fmt.Errorf("%q is too long for a domain", d)
	}
	return a, nil
}
