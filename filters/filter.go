// Package filters defines what a check is and holds the checks too small
// for a folder of their own. A check looks at one transaction and says what
// it found (a Result); it never chooses the SMTP reply. The policy engine
// (package policies) turns results into one action.
package filters

import (
	"context"
	"io"
	"net/netip"
)

// Stage is the point of the SMTP dialogue at which a check runs.
type Stage int

const (
	StageConnect Stage = iota // client connected (client IP known)
	StageHelo                 // HELO/EHLO seen
	StageMail                 // MAIL FROM accepted
	StageRcpt                 // one RCPT TO: Txn.Rcpt's last entry is the new recipient
	StageData                 // the whole message has arrived
)

var stageNames = [...]string{"connect", "helo", "mail", "rcpt", "data"}

func (s Stage) String() string {
	if int(s) < len(stageNames) {
		return stageNames[s]
	}
	return "unknown"
}

// Result values a check reports (RFC 8601 vocabulary where one exists).
const (
	Pass      = "pass"
	Fail      = "fail"
	SoftFail  = "softfail"
	Neutral   = "neutral"
	None      = "none"
	TempError = "temperror"
	PermError = "permerror"
)

// Result is what one check found.
type Result struct {
	Check  string         // the check's name: "size", "spf", "dnsbl", …
	Value  string         // pass, fail, none, … (constants above)
	Reason string         // short, human: "message is 30000000 bytes, limit 26214400"
	Fields map[string]any // extra facts for the event: {"domain": "example.net"}
	// Reply, when set, is the reply this result calls for if the policy
	// turns it into a reject or tempfail (the size check asks for 552 5.3.4).
	Reply *Reply
	// Score is a score the check worked out itself from its own settings
	// (a DNSBL zone's score, a header rule's score). The policy engine adds
	// the score its result mapping gives (spf: { fail: 5 }) on top. Most
	// checks leave it 0.
	Score float64
	// Action, when set, is an action the check's own settings call for
	// (a header rule's `action:`): accept, tag, quarantine, tempfail or
	// reject. The policy engine applies it as it applies a check's
	// `action:` (the more severe of the two wins; observe mode and the
	// RCPT-stage limits hold). Most checks leave it empty.
	Action string
}

// Reply is an SMTP reply: a code, an enhanced status code and text.
type Reply struct {
	Code     int    // 550
	Enhanced string // "5.7.1"; empty for none
	Text     string // may hold '\n' for a multi-line reply
}

// Txn is what checks may look at. The session fills it as the dialogue
// goes on; a check must treat it as read-only.
type Txn struct {
	ClientIP      netip.Addr
	ClientPort    int
	Helo          string
	TLS           bool
	Authenticated bool
	User          string

	From         string   // envelope sender; "" for the null sender <>
	DeclaredSize int64    // MAIL FROM SIZE=, 0 when absent
	Rcpt         []string // accepted recipients so far (at StageRcpt, the last is the one being checked)

	Size int64 // message size in bytes, known at StageData
	// Message opens the message as received (headers and body, CRLF line
	// ends, no dot-stuffing), at StageData only.
	Message func() io.Reader
	// Header is the message's header section as received, up to and
	// including the empty line, at StageData only.
	Header []byte

	// DNS is the resolver checks must use.
	DNS Resolver
	// Auth collects SPF, DKIM and DMARC results as they are computed.
	// Checks may fill it (that is how DMARC reuses SPF and DKIM); it
	// belongs to the transaction, and checks run one at a time.
	Auth *Auth
}

// Check is one filter. Run is called once for every stage the check takes
// part in (Stages); it returns the result and true when it has a result at
// that stage, or false when it has nothing to say yet.
type Check interface {
	Name() string
	Stages() []Stage
	Run(ctx context.Context, stage Stage, t *Txn) (Result, bool)
}

// Prefetcher is a check that can start its lookups when the client
// connects, before the policy (chosen per recipient) asks for its result;
// the shared resolver's cache and query coalescing hand the answers to Run.
// Prefetch must not block.
type Prefetcher interface {
	Prefetch(ctx context.Context, t *Txn)
}
