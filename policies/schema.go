package policies

import (
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"moat/internal/yamlx"
)

// This file is the policy file schema of SPEC.md ("Policy files"), decoded
// strictly by yamlx: an unknown key anywhere is an error at its position.
// Values that need parsing (actions, modes, scores, address patterns,
// regular expressions) have their own types so that their errors point at
// the value.

// Spec is one policy as written: one YAML document of a policy file.
//
// A Spec that extends another holds only what its own document says; the
// effective policy (after extends) is what Compile builds.
type Spec struct {
	Policy    string     `yaml:"policy"`     // the name; required
	AppliesTo *AppliesTo `yaml:"applies_to"` // nil: this is the default policy
	Extends   string     `yaml:"extends"`    // the name of the policy this one starts from
	Checks    Checks     `yaml:"checks"`
	Actions   Actions    `yaml:"actions"`
	Tag       TagSpec    `yaml:"tag"`
	Allow     Allow      `yaml:"allow"`
	Deny      Deny       `yaml:"deny"`
	Mode      Mode       `yaml:"mode"` // "" means enforce

	file string     // the file the document came from
	node *yaml.Node // the document's top mapping, for positions
	bad  bool       // the document had errors of its own
}

// File is the name of the file the policy was read from.
func (s *Spec) File() string { return s.file }

// AppliesTo selects the transactions a policy is for. Any one criterion
// that matches is enough.
type AppliesTo struct {
	Recipients       []AddrPattern  `yaml:"recipients"`
	RecipientDomains []Domain       `yaml:"recipient_domains"`
	Senders          []AddrPattern  `yaml:"senders"`
	Clients          []yamlx.Prefix `yaml:"clients"`
}

func (a *AppliesTo) empty() bool {
	return len(a.Recipients) == 0 && len(a.RecipientDomains) == 0 && len(a.Senders) == 0 && len(a.Clients) == 0
}

// Checks says which checks run and how their results count. A nil field
// (or an empty Headers) means the check does not run, but for GTUBE,
// which runs unless set to false.
type Checks struct {
	DNSBL       *DNSBLCheck       `yaml:"dnsbl"`
	SPF         *SPFCheck         `yaml:"spf"`
	DKIM        *DKIMCheck        `yaml:"dkim"`
	DMARC       *DMARCCheck       `yaml:"dmarc"`
	Greylist    *GreylistCheck    `yaml:"greylist"`
	Size        *SizeCheck        `yaml:"size"`
	Headers     []HeaderRule      `yaml:"headers"`
	Attachments *AttachmentsCheck `yaml:"attachments"`
	GTUBE       *bool             `yaml:"gtube"` // the GTUBE test string; nil: on
}

// DNSBLCheck looks the client up in DNS block and allow lists.
type DNSBLCheck struct {
	Zones  []DNSBLZone `yaml:"zones"`
	Action Action      `yaml:"action"` // what a listed client (result fail) does
	Mode   Mode        `yaml:"mode"`
}

// DNSBLZone is one list. A negative score makes it an allowlist.
type DNSBLZone struct {
	Zone   string    `yaml:"zone"`
	Score  float64   `yaml:"score"`
	Match  []IPRange `yaml:"match"`  // answers that count; empty: any 127.0.0.0/8 answer but 127.0.0.1 and 127.255.255.x
	Lookup string    `yaml:"lookup"` // what the zone is asked about: client (default), helo or sender (a domain list)
}

// SPFCheck maps SPF results (RFC 7208) to scores or actions.
type SPFCheck struct {
	Pass      *Outcome `yaml:"pass"`
	Fail      *Outcome `yaml:"fail"`
	SoftFail  *Outcome `yaml:"softfail"`
	Neutral   *Outcome `yaml:"neutral"`
	None      *Outcome `yaml:"none"`
	TempError *Outcome `yaml:"temperror"`
	PermError *Outcome `yaml:"permerror"`
	Action    Action   `yaml:"action"`
	Mode      Mode     `yaml:"mode"`
}

// DKIMCheck maps DKIM results (RFC 8601 section 2.7.1) to scores or actions.
type DKIMCheck struct {
	Pass      *Outcome `yaml:"pass"`
	Fail      *Outcome `yaml:"fail"`
	Policy    *Outcome `yaml:"policy"`
	Neutral   *Outcome `yaml:"neutral"`
	None      *Outcome `yaml:"none"`
	TempError *Outcome `yaml:"temperror"`
	PermError *Outcome `yaml:"permerror"`
	Action    Action   `yaml:"action"`
	Mode      Mode     `yaml:"mode"`
}

// DMARCCheck maps DMARC results (RFC 7489) to scores or actions. With
// HonorPolicy, the sender domain's own p=reject or p=quarantine decides.
type DMARCCheck struct {
	HonorPolicy bool     `yaml:"honor_policy"`
	Pass        *Outcome `yaml:"pass"`
	Fail        *Outcome `yaml:"fail"`
	None        *Outcome `yaml:"none"`
	TempError   *Outcome `yaml:"temperror"`
	PermError   *Outcome `yaml:"permerror"`
	Action      Action   `yaml:"action"`
	Mode        Mode     `yaml:"mode"`
}

// GreylistCheck delays first-time (client, sender, recipient) triplets.
type GreylistCheck struct {
	Enabled        *bool          `yaml:"enabled"` // nil: on, since the block is there
	Delay          yamlx.Duration `yaml:"delay"`
	RetryWindow    yamlx.Duration `yaml:"retry_window"`
	Lifetime       yamlx.Duration `yaml:"lifetime"`
	AutoAllowAfter *int           `yaml:"auto_allow_after"`
	MinScore       *float64       `yaml:"min_score"`
	IPv4Prefix     int            `yaml:"ipv4_prefix"` // client network size; default 24
	IPv6Prefix     int            `yaml:"ipv6_prefix"` // default 64
	At             string         `yaml:"at"`          // rcpt (default) or data: greylist after DATA, the body hash in the key
	Action         Action         `yaml:"action"`
	Mode           Mode           `yaml:"mode"`
}

// SizeCheck caps the message size (checks.size.max).
type SizeCheck struct {
	Max    *yamlx.Size `yaml:"max"`
	Action Action      `yaml:"action"` // what a too-big message does; default reject
	Mode   Mode        `yaml:"mode"`
}

// HeaderRule scores or acts on a header field whose value matches a
// regular expression (Go RE2 syntax).
type HeaderRule struct {
	Header string   `yaml:"header"`
	Match  *Regexp  `yaml:"match"`
	Score  *float64 `yaml:"score"`
	Action Action   `yaml:"action"`
	Mode   Mode     `yaml:"mode"`
}

// AttachmentsCheck blocks attachments by file name extension or media
// type. A nil list means the built-in default list, an empty one none.
type AttachmentsCheck struct {
	BlockExtensions []string `yaml:"block_extensions"`
	BlockMIMETypes  []string `yaml:"block_mime_types"`
	Score           *float64 `yaml:"score"`  // what a fail scores; set alone, no default reject
	Action          Action   `yaml:"action"` // what a fail does; default reject unless score is set
	Mode            Mode     `yaml:"mode"`
}

// Actions are the total-score thresholds. A nil threshold is not used.
type Actions struct {
	Tag        *float64 `yaml:"tag"`
	Quarantine *float64 `yaml:"quarantine"`
	Reject     *float64 `yaml:"reject"`
}

// TagSpec says how a tagged message is marked.
type TagSpec struct {
	SubjectPrefix *string `yaml:"subject_prefix"` // nil: no prefix
	Header        *bool   `yaml:"header"`         // nil: true
}

// Allow lists what skips scoring (still logged).
type Allow struct {
	Clients    []yamlx.Prefix `yaml:"clients"`
	Senders    []AddrPattern  `yaml:"senders"`
	Recipients []AddrPattern  `yaml:"recipients"`
}

// Deny lists what is rejected with 554 5.7.1.
type Deny struct {
	Clients []yamlx.Prefix `yaml:"clients"`
	Senders []AddrPattern  `yaml:"senders"`
}

// Action is what the policy does with a transaction, from the mildest to
// the most severe: accept, tag, quarantine, tempfail, reject.
type Action string

// The actions (SPEC.md "Actions and replies").
const (
	Accept     Action = "accept"
	Tag        Action = "tag"
	Quarantine Action = "quarantine"
	Tempfail   Action = "tempfail"
	Reject     Action = "reject"
)

var actionWords = []Action{Accept, Tag, Quarantine, Tempfail, Reject}

// severity orders actions: the most severe one wins.
func (a Action) severity() int {
	switch a {
	case Tag:
		return 1
	case Quarantine:
		return 2
	case Tempfail:
		return 3
	case Reject:
		return 4
	}
	return 0
}

// ParseAction parses an action word.
func ParseAction(s string) (Action, error) {
	for _, a := range actionWords {
		if s == string(a) {
			return a, nil
		}
	}
	return "", fmt.Errorf("want one of accept, tag, quarantine, tempfail, reject, got %q", s)
}

// UnmarshalYAML implements yamlx.Unmarshaler.
func (a *Action) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want one of accept, tag, quarantine, tempfail, reject, got %s", kindName(n))
	}
	v, err := ParseAction(n.Value)
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// Mode says whether a policy or a check acts (enforce) or only records
// what it would have done (observe).
type Mode string

// The modes.
const (
	Enforce Mode = "enforce"
	Observe Mode = "observe"
)

// UnmarshalYAML implements yamlx.Unmarshaler.
func (m *Mode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		switch Mode(n.Value) {
		case Enforce, Observe:
			*m = Mode(n.Value)
			return nil
		}
	}
	return fmt.Errorf("want enforce or observe, got %s", kindName(n))
}

// Outcome is what one check result counts for: a score (a number) or an
// action word, written `fail: 5` or `temperror: tempfail`.
type Outcome struct {
	Score  float64
	Action Action // "" when the outcome is a score
}

// String returns the outcome as written: "5" or "tempfail".
func (o Outcome) String() string {
	if o.Action != "" {
		return string(o.Action)
	}
	return formatScore(o.Score)
}

// UnmarshalYAML implements yamlx.Unmarshaler.
func (o *Outcome) UnmarshalYAML(n *yaml.Node) error {
	const want = "want a score (a number) or an action (accept, tag, quarantine, tempfail, reject)"
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("%s, got %s", want, kindName(n))
	}
	if a, err := ParseAction(n.Value); err == nil {
		*o = Outcome{Action: a}
		return nil
	}
	f, err := strconv.ParseFloat(n.Value, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("%s, got %q", want, n.Value)
	}
	*o = Outcome{Score: f}
	return nil
}

// Regexp is a compiled Go (RE2) regular expression.
type Regexp struct {
	re *regexp.Regexp
}

// Re returns the compiled expression (nil for a nil Regexp).
func (r *Regexp) Re() *regexp.Regexp {
	if r == nil {
		return nil
	}
	return r.re
}

// String returns the expression as written.
func (r *Regexp) String() string {
	if r == nil || r.re == nil {
		return ""
	}
	return r.re.String()
}

// UnmarshalYAML implements yamlx.Unmarshaler.
func (r *Regexp) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a regular expression, got %s", kindName(n))
	}
	re, err := regexp.Compile(n.Value)
	if err != nil {
		return err
	}
	r.re = re
	return nil
}

// IPRange is an inclusive range of addresses: "127.0.0.2-127.0.0.11", a
// single address, or a CIDR network.
type IPRange struct {
	From, To netip.Addr
}

// String returns "A-B", or "A" for a single address.
func (r IPRange) String() string {
	if r.From == r.To {
		return r.From.String()
	}
	return r.From.String() + "-" + r.To.String()
}

// Contains reports whether a is in r.
func (r IPRange) Contains(a netip.Addr) bool {
	a = a.Unmap()
	return r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0
}

// UnmarshalYAML implements yamlx.Unmarshaler.
func (r *IPRange) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want an address, a range such as 127.0.0.2-127.0.0.11 or a network, got %s", kindName(n))
	}
	v, err := ParseIPRange(n.Value)
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// ParseIPRange parses "A-B", "A" or "A/bits".
func ParseIPRange(s string) (IPRange, error) {
	s = strings.TrimSpace(s)
	bad := fmt.Errorf("want an address, a range such as 127.0.0.2-127.0.0.11 or a network, got %q", s)
	if a, b, ok := strings.Cut(s, "-"); ok {
		from, err1 := netip.ParseAddr(strings.TrimSpace(a))
		to, err2 := netip.ParseAddr(strings.TrimSpace(b))
		if err1 != nil || err2 != nil {
			return IPRange{}, bad
		}
		from, to = from.Unmap(), to.Unmap()
		if from.Is4() != to.Is4() || to.Less(from) {
			return IPRange{}, bad
		}
		return IPRange{From: from, To: to}, nil
	}
	if strings.Contains(s, "/") {
		p, err := yamlx.ParsePrefix(s)
		if err != nil {
			return IPRange{}, bad
		}
		return IPRange{From: p.Addr(), To: lastAddr(p)}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return IPRange{}, bad
	}
	a = a.Unmap()
	return IPRange{From: a, To: a}, nil
}

// lastAddr returns the highest address of a masked prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	return fmt.Sprintf("%q", n.Value)
}

// formatScore writes a score the way an admin wrote it: 5, 2.5, -4.
func formatScore(f float64) string {
	return strconv.FormatFloat(f, 'f', -1, 64)
}
