package imaptest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Target is the server a script runs against.
type Target struct {
	Addr     string      // host:port
	User     string      // LOGIN user for every connection
	Password string      // LOGIN password
	TLS      *tls.Config // implicit TLS when set; nil is cleartext
	// Mailbox is the test mailbox ($mailbox). The runner deletes every
	// mailbox whose name starts with it, so use a fresh name per run that
	// is not a prefix of another run's name (e.g. "imaptest-7x").
	Mailbox  string
	Messages [][]byte      // messages for APPEND, in order (see LoadMbox)
	Timeout  time.Duration // wait for each response; 0 means 30s
}

// Status is the outcome of a script.
type Status int

const (
	Pass Status = iota
	Fail
	Skip
)

func (s Status) String() string {
	switch s {
	case Pass:
		return "pass"
	case Fail:
		return "fail"
	case Skip:
		return "skip"
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// Result is the outcome of one run. For Fail it describes the first
// mismatch: the script line, the command sent, what was expected and what
// the server sent.
type Result struct {
	Script     string
	Status     Status
	Reason     string // Skip: the missing capability; Fail: what went wrong
	Line       int
	Command    string
	Expected   string
	Got        string
	Output     []string // "!output" lines
	Transcript []string // last lines on the wire (Fail only)
}

func (r *Result) String() string {
	s := r.brief()
	if r.Status != Fail || len(r.Transcript) == 0 {
		return s
	}
	return s + "\n  transcript (last lines):\n    " + strings.Join(r.Transcript, "\n    ")
}

// brief is String without the transcript.
func (r *Result) brief() string {
	switch r.Status {
	case Pass:
		return r.Script + ": pass"
	case Skip:
		return r.Script + ": skip: " + r.Reason
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s:%d: fail: %s", r.Script, r.Line, r.Reason)
	if r.Command != "" {
		fmt.Fprintf(&sb, "\n  command:  %s", r.Command)
	}
	if r.Expected != "" {
		fmt.Fprintf(&sb, "\n  expected: %s", r.Expected)
	}
	if r.Got != "" {
		fmt.Fprintf(&sb, "\n  got:      %s", r.Got)
	}
	return sb.String()
}

// failure is a mismatch; Run turns it into a Fail result.
type failure struct {
	reason, command, expected, got string
	line                           int
}

func (f *failure) Error() string { return f.reason }

// skipped is a missing requirement; Run turns it into a Skip result.
type skipped struct{ reason string }

func (s *skipped) Error() string { return s.reason }

type runner struct {
	ctx    context.Context
	s      *Script
	t      Target
	m      *matcher
	tr     *transcript
	conns  []*conn
	mu     sync.Mutex // guards conns against the cancel callback
	msgIdx int        // next message of t.Messages to APPEND
	output []string
}

// Run runs a script against a server: it opens the script's connections,
// sets up the start-up state (LOGIN, delete $mailbox*, CREATE, APPEND,
// SELECT), then sends each command group and compares the tagged and
// untagged responses. The error is for problems that say nothing about
// the server (dial, context, runner configuration); server misbehaviour is
// a Fail result.
func Run(ctx context.Context, s *Script, t Target) (*Result, error) {
	res := &Result{Script: s.Name}
	if len(s.Users) > 0 {
		res.Status, res.Reason = Skip, "script needs per-connection users (user N: header)"
		return res, nil
	}
	if t.Mailbox == "" {
		return nil, errors.New("imaptest: Target.Mailbox is empty")
	}
	if t.Timeout <= 0 {
		t.Timeout = 30 * time.Second
	}
	r := &runner{ctx: ctx, s: s, t: t, m: newMatcher(), tr: &transcript{}}
	stop := context.AfterFunc(ctx, r.abort)
	defer stop()
	defer r.closeAll()

	r.initVars()
	err := r.dial()
	if err == nil {
		err = r.setup()
	}
	if err == nil {
		err = r.runGroups()
	}
	res.Output = r.output
	if ctx.Err() != nil {
		return nil, fmt.Errorf("imaptest %s: %w", s.Name, ctx.Err())
	}
	var f *failure
	var sk *skipped
	switch {
	case err == nil:
		res.Status = Pass
	case errors.As(err, &sk):
		res.Status, res.Reason = Skip, sk.reason
		r.logoutAll()
	case errors.As(err, &f):
		res.Status, res.Reason, res.Line = Fail, f.reason, f.line
		res.Command, res.Expected, res.Got = f.command, f.expected, f.got
		res.Transcript = append([]string(nil), r.tr.lines...)
	default:
		return nil, fmt.Errorf("imaptest %s: %w", s.Name, err)
	}
	return res, nil
}
