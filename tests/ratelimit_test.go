package tests

import (
	"fmt"
	"testing"

	"moat/internal/redistest"
	"moat/internal/smtptest"
)

// TestRateLimitSharedThroughRedis: two gateways on one Redis hold a
// network's message rate together: three messages split across them use
// it up, and the fourth, on either, gets 452 4.7.1.
func TestRateLimitSharedThroughRedis(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t)
	if rdb == "" {
		return
	}
	sink := smtptest.NewSink(t)
	cfg := Config{Routes: defaultRoutes(sink.Addr()), Extra: map[string]any{
		"redis": map[string]any{"addr": rdb},
		"smtp":  map[string]any{"limits": map[string]any{"messages_per_network": "3/1h"}},
	}}
	a, b := StartMoat(t, cfg), StartMoat(t, cfg)
	for i, m := range []*Moat{a, b, a} {
		MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: NewMessage(sender, rcptBob, fmt.Sprint(i)).Bytes()})
	}
	for _, m := range []*Moat{b, a} {
		r := Send(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: NewMessage(sender, rcptBob, "one too many").Bytes()})
		if r.Stage != "mail" || r.Err == nil || r.Err.Code != 452 || r.Err.EnhancedCode != [3]int{4, 7, 1} {
			t.Errorf("the fourth message from the network: %s, want 452 4.7.1 at MAIL", r)
		}
	}
	ev := b.WaitEvent("rate-limited transaction", func(e Event) bool {
		return e.Action() == "smtp.transaction" && e.Str("moat.reason") == "rate_limit: messages_per_network"
	})
	if ev.Outcome() != "failure" {
		t.Errorf("event %v", ev)
	}
}
