package proxy

import (
	"bytes"
	"strings"

	"github.com/emersion/go-msgauth/authres"
)

// authResults renders the Authentication-Results header (RFC 8601) for
// what the checks found, with moat's hostname as authserv-id, one method
// per folded line. A message no method looked at gets "none".
func authResults(authservID, helo string, t *txn) string {
	var results []authres.Result
	a := &t.auth
	if a.SPF != nil {
		r := &authres.SPFResult{Value: authres.ResultValue(a.SPF.Result), Reason: clean(a.SPF.Reason)}
		if a.SPF.Identity == "helo" {
			r.Helo = helo
		} else {
			r.From = a.SPF.Sender
		}
		results = append(results, r)
	}
	if a.DKIMDone {
		for _, d := range a.DKIM {
			results = append(results, &authres.GenericResult{Method: "dkim", Value: authres.ResultValue(d.Result),
				Params: map[string]string{"reason": clean(d.Reason), "header.d": d.Domain, "header.i": d.Identifier,
					"header.s": d.Selector, "header.a": d.Algorithm, "header.b": d.HeaderB}})
		}
		if len(a.DKIM) == 0 {
			results = append(results, &authres.DKIMResult{Value: authres.ResultNone})
		}
	}
	if a.DMARC != nil {
		results = append(results, &authres.GenericResult{Method: "dmarc", Value: authres.ResultValue(a.DMARC.Result),
			Params: map[string]string{"reason": clean(a.DMARC.Reason), "header.from": a.DMARC.FromDomain, "policy.applied": a.DMARC.Policy}})
	}
	var b strings.Builder
	b.WriteString("Authentication-Results: ")
	b.WriteString(authservID)
	if len(results) == 0 {
		b.WriteString("; none\r\n")
		return b.String()
	}
	prefix := authservID + "; "
	for _, r := range results {
		b.WriteString(";\r\n\t")
		b.WriteString(strings.TrimSpace(strings.TrimPrefix(authres.Format(authservID, []authres.Result{r}), prefix)))
	}
	b.WriteString("\r\n")
	return b.String()
}

// clean keeps a reason on one line of printable text: it comes from DNS
// records and libraries, and a header must not be broken by it.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// stripAuthResults removes Authentication-Results fields that claim our
// authserv-id (RFC 8601 section 5): a sender must not be able to forge
// results downstream systems trust because they name this gateway.
// header is the raw header section with CRLF line ends.
func stripAuthResults(header []byte, authservID string) []byte {
	if !hasField(header, "Authentication-Results") {
		return header // the common case: nothing to copy
	}
	var out bytes.Buffer
	lines := bytes.SplitAfter(header, []byte("\r\n"))
	drop := false
	for _, l := range lines {
		if len(l) > 0 && (l[0] == ' ' || l[0] == '\t') {
			if !drop {
				out.Write(l)
			}
			continue
		}
		drop = false
		name, value, ok := bytes.Cut(l, []byte(":"))
		if ok && strings.EqualFold(strings.TrimSpace(string(name)), "Authentication-Results") {
			// The value may be folded: take the field whole to find the id.
			drop = strings.EqualFold(authservIDOf(fieldValue(lines, l, value)), authservID)
		}
		if !drop {
			out.Write(l)
		}
	}
	return out.Bytes()
}

// hasField reports whether the header section has a field of that name,
// without allocating (it runs for every message).
func hasField(header []byte, name string) bool {
	for len(header) > 0 {
		line := header
		if i := bytes.IndexByte(header, '\n'); i >= 0 {
			line, header = header[:i+1], header[i+1:]
		} else {
			header = nil
		}
		// Names match as stripAuthResults matches them: white space
		// before the colon (RFC 5322 obsolete syntax) does not hide one.
		if n, _, ok := bytes.Cut(line, []byte(":")); ok && strings.EqualFold(string(bytes.TrimSpace(n)), name) {
			return true
		}
	}
	return false
}

// fieldValue joins the first line's value with its continuation lines.
func fieldValue(lines [][]byte, first, value []byte) string {
	v := string(value)
	for i, l := range lines {
		if &l[0] != &first[0] {
			continue
		}
		for _, c := range lines[i+1:] {
			if len(c) == 0 || (c[0] != ' ' && c[0] != '\t') {
				break
			}
			v += string(c)
		}
		break
	}
	return v
}

// authservIDOf returns the authserv-id of an Authentication-Results value:
// the first token, comments and white space removed.
func authservIDOf(v string) string {
	var b strings.Builder
	depth := 0
	for _, r := range v {
		switch {
		case r == '(':
			depth++
		case r == ')' && depth > 0:
			depth--
		case depth > 0:
		case r == ';':
			return strings.TrimSpace(b.String())
		case r == ' ' || r == '\t' || r == '\r' || r == '\n':
			if b.Len() > 0 {
				return b.String()
			}
		default:
			b.WriteRune(r)
		}
	}
	return strings.TrimSpace(b.String())
}
