package filters

import (
	"context"
	"fmt"
)

// sizeReply is what a message over the limit hears (RFC 3463 5.3.4).
var sizeReply = Reply{Code: 552, Enhanced: "5.3.4", Text: "Message size exceeds fixed limit"}

// size fails a transaction whose message is larger than max bytes.
type size struct {
	max int64
}

// NewSize returns the "size" check. At StageRcpt it fails when the client
// declared (MAIL FROM SIZE=) more than max bytes and says nothing otherwise;
// at StageData it fails when the message is larger than max bytes and passes
// otherwise. A fail asks for 552 5.3.4. A max of 0 or less means no limit:
// the check then never fails.
func NewSize(max int64) Check {
	return &size{max: max}
}

func (s *size) Name() string { return "size" }

func (s *size) Stages() []Stage { return []Stage{StageRcpt, StageData} }

// Run implements Check.
func (s *size) Run(_ context.Context, stage Stage, t *Txn) (Result, bool) {
	switch stage {
	case StageRcpt:
		if s.max > 0 && t.DeclaredSize > s.max {
			return s.fail(fmt.Sprintf("declared size %d bytes exceeds limit %d", t.DeclaredSize, s.max),
				"declared_size", t.DeclaredSize), true
		}
		return Result{}, false
	case StageData:
		if s.max > 0 && t.Size > s.max {
			return s.fail(fmt.Sprintf("message is %d bytes, limit %d", t.Size, s.max), "size", t.Size), true
		}
		return Result{Check: s.Name(), Value: Pass}, true
	}
	return Result{}, false
}

func (s *size) fail(reason, field string, n int64) Result {
	r := sizeReply
	return Result{
		Check:  s.Name(),
		Value:  Fail,
		Reason: reason,
		Fields: map[string]any{field: n, "limit": s.max},
		Reply:  &r,
	}
}

var _ Check = (*size)(nil)
