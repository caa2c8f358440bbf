package filters

import (
	"context"
	"net"
)

// Resolver is the DNS every check uses: moat's one caching resolver in
// production, a test server's in tests. It is blitiri.com.ar/go/spf's
// DNSResolver, and *net.Resolver satisfies it. Errors are *net.DNSError,
// never wrapped: IsNotFound for NXDOMAIN and NODATA, IsTemporary or
// IsTimeout for SERVFAIL and timeouts (the SPF and DKIM libraries check
// exactly that type, and take anything else for a permanent error).
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// Auth holds the sender-authentication results of one message, each
// computed once and shared: by the spf, dkim and dmarc checks (DMARC needs
// the other two) and by the Authentication-Results header.
type Auth struct {
	SPF      *SPFResult   // nil until evaluated
	DKIM     []DKIMResult // one per signature; valid when DKIMDone
	DKIMDone bool
	DMARC    *DMARCResult // nil until evaluated
}

// SPFResult is the outcome of an RFC 7208 check_host().
type SPFResult struct {
	Result   string // pass, fail, softfail, neutral, none, temperror, permerror
	Identity string // "mailfrom", or "helo" for the null sender
	Domain   string // the domain checked
	Sender   string // the identity checked: the MAIL FROM address, or postmaster@HELO
	Reason   string // why, naming the record or lookup that decided
}

// DKIMResult is the verification of one DKIM-Signature.
type DKIMResult struct {
	Result     string // pass, fail, neutral, temperror, permerror
	Domain     string // d=
	Selector   string // s=
	Identifier string // i=
	Algorithm  string // a=, e.g. rsa-sha256, ed25519-sha256
	HeaderB    string // the first 8 characters of b=, to tell signatures apart (RFC 6008)
	Reason     string
}

// DMARCResult is the RFC 7489 evaluation of the RFC5322.From domain.
type DMARCResult struct {
	Result       string // pass, fail, none, temperror, permerror
	FromDomain   string // header.from
	PolicyDomain string // where the record was found: the From domain or its organizational domain
	Policy       string // the policy that applies: none, quarantine, reject (sp= for subdomains, after pct)
	SPFAligned   bool
	DKIMAligned  bool
	Reason       string
}
