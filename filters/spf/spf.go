// Package spf is the "spf" check: RFC 7208 check_host() of the client IP
// against the MAIL FROM domain, or against the HELO name for the null
// sender. The evaluation itself is blitiri.com.ar/go/spf; this package
// picks the identity, validates the domain, bounds the time, and explains
// the result.
package spf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	libspf "blitiri.com.ar/go/spf"
	"golang.org/x/net/idna"

	"moat/filters"
)

// Identities checked (RFC 7208 section 2.3 and 2.4).
const (
	IdentityMailFrom = "mailfrom"
	IdentityHelo     = "helo"
)

// Evaluate runs check_host() for one SMTP transaction and says why it
// came out as it did.
//
// With a MAIL FROM address (mailFrom != "") the identity is "mailfrom" and
// the domain is the address's domain; an address with no local part
// ("@example.com") is checked as postmaster@example.com (section 4.3). For
// the null sender (mailFrom == "") the identity is "helo": the HELO name is
// checked with the sender postmaster@<helo> (section 2.3), so %{s} and %{l}
// macros expand as the RFC says.
//
// A domain that is not a multi-label domain name (a bare word, a domain
// literal, an empty or over-long label) gives "none" without any DNS
// lookup (section 4.3). Every SPF record fetched, the domain's own and
// those reached by include and redirect, is checked against the section 12
// grammar first: a malformed one is a permerror whose Reason names the
// domain, the record and the term at fault (the library alone would stop
// at the first match and miss errors after it). DNS goes only to r, and a
// nil r gives temperror. The caller's ctx bounds the
// whole evaluation: once it is done every lookup fails, and the result is
// temperror whatever the library concluded (section 4.6.4 asks for a time
// limit whose expiry gives temperror).
func Evaluate(ctx context.Context, r filters.Resolver, ip netip.Addr, helo, mailFrom string) filters.SPFResult {
	res := filters.SPFResult{Identity: IdentityMailFrom, Sender: mailFrom}
	var domain string
	if mailFrom == "" {
		res.Identity = IdentityHelo
		domain = helo
		res.Sender = "postmaster@" + helo
	} else {
		at := strings.LastIndexByte(mailFrom, '@')
		if at < 0 {
			res.Result = filters.None
			res.Reason = fmt.Sprintf("MAIL FROM %q has no domain", mailFrom)
			return res
		}
		domain = mailFrom[at+1:]
		if at == 0 {
			res.Sender = "postmaster" + mailFrom
		}
	}
	res.Domain = domain
	d, why := checkDomain(domain)
	if why != "" {
		res.Result = filters.None
		res.Reason = fmt.Sprintf("%s %q is not a domain SPF can check: %s", res.Identity, domain, why)
		return res
	}
	if d != domain {
		// Trailing dot removed or an IDN turned into A-labels: check that
		// name, and keep %{s} and %{o} consistent with it.
		res.Domain = d
		res.Sender = res.Sender[:len(res.Sender)-len(domain)] + d
	}
	if !ip.IsValid() {
		res.Result = filters.PermError
		res.Reason = "no valid client IP address"
		return res
	}
	if r == nil {
		res.Result = filters.TempError
		res.Reason = "no DNS resolver"
		return res
	}
	heloName := helo
	if res.Identity == IdentityHelo {
		heloName = res.Domain
	}

	var tr tracer
	result, err := libspf.CheckHostWithSender(net.IP(ip.Unmap().AsSlice()), heloName, res.Sender,
		libspf.WithResolver(checkedResolver{r}), libspf.WithContext(ctx), libspf.WithTraceFunc(tr.trace))
	res.Result = string(result)
	if expired(ctx) && result != libspf.TempError {
		res.Result = filters.TempError
		res.Reason = fmt.Sprintf("%s: the SPF evaluation ran out of time (%s)", res.Domain, tr.reason(res.Domain, result, err))
		return res
	}
	res.Reason = tr.reason(res.Domain, result, err)
	return res
}

// expired reports whether ctx is done or its deadline has passed (a
// lookup's own timer can fire a moment before the context's).
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// checkDomain returns the domain to check (lower case, no trailing dot,
// A-labels) or, when it cannot be checked, why (RFC 7208 section 4.3:
// malformed or not multi-label gives "none").
func checkDomain(d string) (string, string) {
	d = strings.TrimSuffix(d, ".")
	switch {
	case d == "":
		return "", "empty"
	case strings.HasPrefix(d, "["):
		return "", "an address literal"
	}
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			a, err := idna.Lookup.ToASCII(d)
			if err != nil {
				return "", "not a valid internationalized domain name"
			}
			d = a
			break
		}
	}
	d = strings.ToLower(d)
	if len(d) > 253 {
		return "", "longer than 253 characters"
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return "", "not a fully qualified (multi-label) name"
	}
	for _, l := range labels {
		if l == "" {
			return "", "an empty label"
		}
		if len(l) > 63 {
			return "", "a label longer than 63 characters"
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Sprintf("character %q", c)
			}
		}
	}
	if tld := labels[len(labels)-1]; strings.Trim(tld, "0123456789") == "" {
		return "", "an IP address, not a name"
	}
	return d, ""
}

// tracer rebuilds, from the library's trace calls, which record each
// check_host() call evaluated and which term ended it, so that a result can
// name the record and term that decided it. It knows the trace formats of
// blitiri.com.ar/go/spf v1.6.0; should they change, the reasons get vaguer
// (the results do not change), and the tests say so.
type tracer struct {
	root, cur *frame
}

// frame is one check_host() call: the domain, its record, and how it ended.
type frame struct {
	domain, record string
	parent         *frame
	children       []*frame
	done           bool
	term           string // the term that ended the evaluation: "all", "ip4:…", "include:…"; "" for none
	result         string // what this call returned
	detail         string // why, when no term says it
}

func (t *tracer) trace(f string, a ...any) {
	at := func(i int) any {
		if i < len(a) {
			return a[i]
		}
		return nil
	}
	arg := func(i int) string { return fmt.Sprint(at(i)) }
	switch f {
	case "check %q %d %d":
		n := &frame{domain: arg(0), parent: t.cur}
		if t.cur == nil {
			t.root = n
		} else {
			t.cur.children = append(t.cur.children, n)
		}
		t.cur = n
	case "dns record %q":
		if t.cur != nil {
			t.cur.record = arg(0)
			if arg(0) == "" {
				t.ret("", string(libspf.None), "no SPF record")
			}
		}
	case "dns domain not found: %v":
		t.ret("", string(libspf.None), "the domain has no TXT records")
	case "dns temp error: %v":
		t.ret("", string(libspf.TempError), "TXT lookup failed: "+arg(0))
	case "multiple dns records":
		t.ret("", string(libspf.PermError), "more than one SPF record")
	case "dns perm error: %v":
		var se *SyntaxError
		if err, ok := at(0).(error); ok && errors.As(err, &se) {
			if t.cur != nil {
				t.cur.record = se.Record
			}
			d := se.Problem
			if se.Term != "" {
				d = fmt.Sprintf("%q: %s", se.Term, se.Problem)
			}
			t.ret("", string(libspf.PermError), "malformed record: "+d)
			return
		}
		t.ret("", string(libspf.PermError), "TXT lookup failed: "+arg(0))
	case "too many redirects":
		t.ret("", string(libspf.PermError), "more than one redirect= modifier")
	case "unknown field, permerror":
		t.ret("", string(libspf.PermError), "a term that is not a known mechanism or modifier")
	case "fallback to neutral":
		t.ret("", string(libspf.Neutral), "no term matched and there is no redirect=")
	case "all: %v":
		t.ret("all", arg(0), "")
	case "%q %v, %v", "%q: %v, %v":
		t.ret(arg(0), arg(1), errText(at(2)))
	}
}

func errText(v any) string {
	if err, ok := v.(error); ok && err != nil {
		return err.Error()
	}
	return ""
}

// ret ends the current frame.
func (t *tracer) ret(term, result, detail string) {
	if t.cur == nil {
		return
	}
	t.cur.done, t.cur.term, t.cur.result, t.cur.detail = true, term, result, detail
	t.cur = t.cur.parent
}

// reason explains result for domain: the chain of records followed
// (include and redirect), the record and the term that decided.
func (t *tracer) reason(domain string, result libspf.Result, err error) string {
	if t.root == nil || !t.root.done {
		// Nothing traced: the formats changed, or the library returned
		// before evaluating anything.
		if err != nil {
			return fmt.Sprintf("%s: %s (%v)", domain, result, err)
		}
		return fmt.Sprintf("%s: %s", domain, result)
	}
	var chain []*frame
	for n := t.root; n != nil; n = n.delegate() {
		chain = append(chain, n)
	}
	// A redirect or include loop runs to the lookup limit: show its ends.
	const keep = 4
	skipped := 0
	if len(chain) > keep {
		skipped = len(chain) - keep
		chain = append(chain[:2:2], chain[len(chain)-2:]...)
	}
	var b strings.Builder
	for i, n := range chain {
		b.WriteString(n.domain)
		if n.record != "" {
			fmt.Fprintf(&b, " %q", n.record)
		}
		b.WriteString(": ")
		if i == len(chain)-1 {
			b.WriteString(n.explain(string(result)))
			break
		}
		fmt.Fprintf(&b, "%s via %q -> ", n.result, n.term)
		if i == 1 && skipped > 0 {
			fmt.Fprintf(&b, "(%d more) -> ", skipped)
		}
	}
	return b.String()
}

// delegate returns the include or redirect target whose result decided
// this frame's, if any.
func (n *frame) delegate() *frame {
	lt := strings.ToLower(n.term)
	if !strings.HasPrefix(lt, "include:") && !strings.HasPrefix(lt, "redirect=") {
		return nil
	}
	if len(n.children) == 0 {
		return nil
	}
	c := n.children[len(n.children)-1]
	if !c.done {
		return nil
	}
	return c
}

// explain says why the frame ended with its result; final is the overall
// result (an include or redirect target's "none" is the caller's permerror).
func (n *frame) explain(final string) string {
	switch {
	case n.result == string(libspf.None) && final == string(libspf.PermError):
		return n.detail + ", which makes the include or redirect a permerror"
	case n.term == "" && n.detail != "":
		return n.detail
	case n.term == "all":
		return fmt.Sprintf("%s: matched %q", n.result, "all")
	case n.result == string(libspf.PermError) || n.result == string(libspf.TempError):
		d := n.detail
		switch d {
		case libspf.ErrLookupLimitReached.Error():
			d = "more than 10 terms that query DNS (lookup limit)"
		case libspf.ErrVoidLookupLimitReached.Error():
			d = "more than 2 lookups that found nothing (void lookup limit)"
		}
		return fmt.Sprintf("%s at %q: %s", n.result, n.term, d)
	default:
		return fmt.Sprintf("%s: matched %q", n.result, n.term)
	}
}
