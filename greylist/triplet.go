package greylist

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Params are one policy's greylisting settings (checks.greylist).
type Params struct {
	// Delay is how long a new triplet waits before a retry passes.
	Delay time.Duration
	// RetryWindow is how long after first sight a retry still counts; a
	// retry later than that starts over (postgrey's --retry-window).
	RetryWindow time.Duration
	// Lifetime is how long a passed triplet is remembered after it was
	// last seen, and how long a network stays auto-allowed.
	Lifetime time.Duration
	// AutoAllowAfter is the number of distinct triplets a client network
	// must pass before all its mail skips greylisting; 0 turns it off.
	AutoAllowAfter int
	// IPv4Prefix and IPv6Prefix group clients into networks: a sending
	// farm retries from another address of the same network. Out of range
	// (0 included) means the default, 24 or 64.
	IPv4Prefix, IPv6Prefix int
}

// DefaultParams are postgrey's and Proxmox Mail Gateway's habits: 5
// minutes, 2 days, 36 days, auto-allow after 5 passes, /24 and /64.
func DefaultParams() Params {
	return Params{
		Delay:          5 * time.Minute,
		RetryWindow:    48 * time.Hour,
		Lifetime:       36 * 24 * time.Hour,
		AutoAllowAfter: 5,
		IPv4Prefix:     24,
		IPv6Prefix:     64,
	}
}

// Validate reports settings that cannot work.
func (p Params) Validate() error {
	var errs []error
	if p.Delay < 0 {
		errs = append(errs, fmt.Errorf("delay %v is negative", p.Delay))
	}
	if p.RetryWindow <= p.Delay {
		errs = append(errs, fmt.Errorf("retry_window %v must be longer than delay %v", p.RetryWindow, p.Delay))
	}
	if p.Lifetime <= 0 {
		errs = append(errs, fmt.Errorf("lifetime %v must be above 0", p.Lifetime))
	}
	if p.AutoAllowAfter < 0 {
		errs = append(errs, fmt.Errorf("auto_allow_after %d is negative", p.AutoAllowAfter))
	}
	if p.IPv4Prefix < 0 || p.IPv4Prefix > 32 {
		errs = append(errs, fmt.Errorf("ipv4_prefix %d is not 1 to 32", p.IPv4Prefix))
	}
	if p.IPv6Prefix < 0 || p.IPv6Prefix > 128 {
		errs = append(errs, fmt.Errorf("ipv6_prefix %d is not 1 to 128", p.IPv6Prefix))
	}
	return errors.Join(errs...)
}

// Triplet is what greylisting remembers: the client's network, the
// normalised envelope sender and the recipient, and optionally a hash of
// the body (greylisting after DATA).
type Triplet struct {
	Network  netip.Prefix
	Sender   string // NormalizeSender's result; "" is the null sender
	Rcpt     string // lower-cased
	BodyHash string // "" unless greylisting after DATA
}

// MakeTriplet builds the triplet of one recipient: the client address
// (IPv4-mapped IPv6 taken as IPv4, any zone dropped) masked to the
// params' prefix, the normalised sender and the lower-cased recipient.
func MakeTriplet(client netip.Addr, sender, rcpt string, p Params) Triplet {
	return Triplet{
		Network: clientNetwork(client, p),
		Sender:  NormalizeSender(sender),
		Rcpt:    normalizeRcpt(rcpt),
	}
}

// clientNetwork masks the client address to the network greylisting
// groups it in; the zero Prefix for an invalid address.
func clientNetwork(client netip.Addr, p Params) netip.Prefix {
	a := client.Unmap().WithZone("")
	if !a.IsValid() {
		return netip.Prefix{}
	}
	bits := p.IPv4Prefix
	if bits <= 0 || bits > 32 {
		bits = 24
	}
	if a.Is6() {
		bits = p.IPv6Prefix
		if bits <= 0 || bits > 128 {
			bits = 64
		}
	}
	pfx, _ := a.Prefix(bits) // cannot fail: a is valid, bits in range
	return pfx
}

// Key is the store key of the triplet:
// "t|192.0.2.0/24|sender|rcpt", plus "|hash" with a body hash. A '|' or
// '%' inside the sender or recipient is written %7c or %25, so the key
// always splits back into its parts.
func (t Triplet) Key() string {
	var b strings.Builder
	b.Grow(8 + 43 + len(t.Sender) + len(t.Rcpt) + len(t.BodyHash))
	b.WriteString(prefixTriplet)
	b.WriteString(t.Network.String())
	b.WriteByte('|')
	writeKeyPart(&b, t.Sender)
	b.WriteByte('|')
	writeKeyPart(&b, t.Rcpt)
	if t.BodyHash != "" {
		b.WriteByte('|')
		writeKeyPart(&b, t.BodyHash)
	}
	return b.String()
}

// Key prefixes of the records in a Store.
const (
	prefixTriplet = "t|"
	prefixNetwork = "n|"
	keyAllows     = "a" // the one record listing every manual allow
)

func networkKey(n netip.Prefix) string { return prefixNetwork + n.String() }

func writeKeyPart(b *strings.Builder, s string) {
	if !strings.ContainsAny(s, "|%") {
		b.WriteString(s)
		return
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '|':
			b.WriteString("%7c")
		case '%':
			b.WriteString("%25")
		default:
			b.WriteByte(s[i])
		}
	}
}

func unescapeKeyPart(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	return strings.NewReplacer("%7c", "|", "%25", "%").Replace(s)
}

// parseTripletKey splits a key made by Triplet.Key.
func parseTripletKey(key string) (Triplet, bool) {
	rest, ok := strings.CutPrefix(key, prefixTriplet)
	if !ok {
		return Triplet{}, false
	}
	parts := strings.Split(rest, "|")
	if len(parts) != 3 && len(parts) != 4 {
		return Triplet{}, false
	}
	n, err := netip.ParsePrefix(parts[0])
	if err != nil {
		return Triplet{}, false
	}
	t := Triplet{Network: n, Sender: unescapeKeyPart(parts[1]), Rcpt: unescapeKeyPart(parts[2])}
	if len(parts) == 4 {
		t.BodyHash = unescapeKeyPart(parts[3])
	}
	return t, true
}

// trimAddr drops surrounding blanks and angle brackets and lower-cases.
func trimAddr(addr string) string {
	a := strings.TrimSpace(addr)
	for len(a) >= 2 && a[0] == '<' && a[len(a)-1] == '>' {
		a = strings.TrimSpace(a[1 : len(a)-1])
	}
	return strings.ToLower(a)
}

func normalizeRcpt(rcpt string) string { return trimAddr(rcpt) }

// NormalizeSender maps the envelope sender to the stable part that
// greylisting keys on, so that the next message of the same sender is the
// same triplet even though its bounce address changes per message. Only
// unambiguous patterns are rewritten; anything else stays as it is,
// lower-cased. The null sender stays "". In order:
//
//   - BATV: prvs=TAG=user@, prvs=user/TAG@ (early Exim), msprvs1=TAG=user@
//     (SparkPost), btv1==TAG==user@ (Barracuda) → user@;
//   - SRS: SRS0=HHH=TT=orig-domain=orig-local@forwarder →
//     orig-local@orig-domain; SRS1=HHH=first-forwarder==HHH=TT=orig-domain=
//     orig-local@forwarder → the same original, or the address unchanged
//     when it cannot be recovered (these may nest, with BATV outside);
//   - a local part made only of hex runs joined by '-' (an Amazon SES
//     message ID) → #;
//   - a "+tag" → cut (user+tag@, list-bounces+user=example.com@);
//   - VERP recipient encoding, a trailing "-user=example.com": cut, with
//     the message number before it (list-return-123-user=example.com →
//     list-return);
//   - bounce-…@ or bounces-…@ (also with '=', '.' or '_') when the rest
//     holds a digit → bounce@ / bounces@;
//   - a final '-' or '=' separated token of at least 6 letters and digits
//     that is hex with a digit, or at least half digits, cut repeatedly
//     (news-20240115@, user=8f3a9c21d4@).
//
// A quoted local part is only lower-cased.
func NormalizeSender(addr string) string {
	a := trimAddr(addr)
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return a
	}
	local, domain := a[:at], a[at+1:]
	if local == "" || local[0] == '"' {
		return a
	}
	for range 4 { // BATV around SRS, SRS1 around SRS0: a few layers at most
		l := stripBATV(local)
		d := domain
		if sl, sd, ok := parseSRS(l); ok {
			l, d = sl, sd
		}
		if l == local && d == domain || !isLocalPart(l) {
			break
		}
		local, domain = l, d
	}
	return stripVERP(local) + "@" + domain
}

// stripBATV removes a BATV signature from the local part.
func stripBATV(local string) string {
	if rest, ok := strings.CutPrefix(local, "prvs="); ok {
		if tag, user, ok := strings.Cut(rest, "="); ok && user != "" {
			if isBATVTag(tag) {
				return user
			}
			// prvs=user=TAG, seen from a few signers.
			if i := strings.LastIndexByte(rest, '='); i > 0 && isBATVTag(rest[i+1:]) {
				return rest[:i]
			}
			return local
		}
		// prvs=user/TAG, Exim before the draft settled on prvs=TAG=user.
		if i := strings.LastIndexByte(rest, '/'); i > 0 && isBATVTag(rest[i+1:]) {
			return rest[:i]
		}
		return local
	}
	if rest, ok := strings.CutPrefix(local, "msprvs1="); ok {
		if tag, user, ok := strings.Cut(rest, "="); ok && user != "" && isAlnum(tag) && tag != "" {
			return user
		}
		return local
	}
	if rest, ok := strings.CutPrefix(local, "btv1=="); ok {
		if tag, user, ok := strings.Cut(rest, "=="); ok && user != "" && isAlnum(tag) && tag != "" {
			return user
		}
	}
	return local
}

// isBATVTag: the draft's K DDD SSSSSS is ten characters; signers in the
// wild use 9 to 10 letters and digits, digits always among them.
func isBATVTag(s string) bool {
	return len(s) >= 6 && len(s) <= 32 && isAlnum(s) && countDigits(s) >= 3
}

// parseSRS recovers the original sender from an SRS0 or SRS1 local part.
func parseSRS(local string) (string, string, bool) {
	if len(local) < 6 || !strings.HasPrefix(local, "srs") || !isSRSSep(local[4]) {
		return "", "", false
	}
	body := local[5:]
	switch local[3] {
	case '0':
		return parseSRS0(body)
	case '1':
		// HHH=first-forwarder=<sep>HHH=TT=orig-domain=orig-local
		parts := strings.SplitN(body, "=", 3)
		if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" || !isSRSSep(parts[2][0]) {
			return "", "", false
		}
		return parseSRS0(parts[2][1:])
	}
	return "", "", false
}

// parseSRS0 parses HHH=TT=orig-domain=orig-local.
func parseSRS0(body string) (string, string, bool) {
	parts := strings.SplitN(body, "=", 4)
	if len(parts) != 4 || parts[0] == "" || len(parts[1]) != 2 || parts[3] == "" || !isHostname(parts[2]) {
		return "", "", false
	}
	return parts[3], parts[2], true
}

func isSRSSep(c byte) bool { return c == '=' || c == '+' || c == '-' }

// stripVERP removes per-message parts from a local part.
func stripVERP(local string) string {
	if isMessageID(local) {
		return "#"
	}
	if i := strings.IndexByte(local, '+'); i > 0 {
		local = local[:i]
	}
	if i := strings.LastIndexByte(local, '='); i > 0 && isDomain(local[i+1:]) {
		if prefix, ok := stripRecipient(local[:i]); ok {
			local = prefix
		}
	}
	for _, p := range [...]string{"bounces", "bounce"} {
		if rest, ok := strings.CutPrefix(local, p); ok && len(rest) > 1 &&
			strings.IndexByte("-=._", rest[0]) >= 0 && countDigits(rest) > 0 {
			return p
		}
	}
	for {
		i := strings.LastIndexAny(local, "-=")
		if i <= 0 || !isVariableToken(local[i+1:]) {
			return local
		}
		local = local[:i]
	}
}

// stripRecipient cuts the recipient's local part (what precedes '=' in
// "prefix-123-user=example.com") and a message number before it: at the
// first all-digit '-' token, else at the last '-'. Without a '-' there is
// no telling prefix from recipient, and nothing is cut.
func stripRecipient(s string) (string, bool) {
	tokens := strings.Split(s, "-")
	if len(tokens) < 2 || tokens[0] == "" {
		return s, false
	}
	for i := 1; i < len(tokens)-1; i++ {
		if tokens[i] != "" && countDigits(tokens[i]) == len(tokens[i]) {
			return strings.Join(tokens[:i], "-"), true
		}
	}
	return strings.Join(tokens[:len(tokens)-1], "-"), true
}

// isVariableToken: at least 6 letters and digits, hex with a digit or at
// least half digits: a counter, a date, a hash.
func isVariableToken(s string) bool {
	if len(s) < 6 || !isAlnum(s) {
		return false
	}
	d := countDigits(s)
	return d > 0 && (isHex(s) || 2*d >= len(s))
}

// isMessageID: three or more hex runs joined by '-', 20 hex digits or
// more, digits among them (Amazon SES: 0100018c…-…-…-000000).
func isMessageID(s string) bool {
	tokens := strings.Split(s, "-")
	if len(tokens) < 3 {
		return false
	}
	n := 0
	for _, t := range tokens {
		if t == "" || !isHex(t) {
			return false
		}
		n += len(t)
	}
	return n >= 20 && countDigits(s) > 0
}

// isDomain: a dotted name whose last label is letters, as in a VERP
// encoded recipient "user=example.com".
func isDomain(s string) bool {
	i := strings.LastIndexByte(s, '.')
	if i <= 0 || !isHostname(s) {
		return false
	}
	tld := s[i+1:]
	if len(tld) < 2 {
		return false
	}
	for j := 0; j < len(tld); j++ {
		if tld[j] < 'a' || tld[j] > 'z' {
			return false
		}
	}
	return true
}

func isHostname(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// isLocalPart: something a rewrite may leave as a local part (no blanks,
// brackets, quotes or '@', which would read differently the next time).
func isLocalPart(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == '<' || c == '>' || c == '@' || c == '"' || c == 0x7f {
			return false
		}
	}
	return true
}

func isAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'f' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func countDigits(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			n++
		}
	}
	return n
}
