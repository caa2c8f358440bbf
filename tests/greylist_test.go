package tests

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"moat/internal/redistest"
	"moat/internal/smtptest"
)

// greylistPolicy greylists every first-time triplet for one second.
const greylistPolicy = `policy: default
checks:
  greylist: { delay: 1s, retry_window: 1h, lifetime: 36d, auto_allow_after: 0 }
`

// sendUntilAccepted retries like an MTA's queue would, polling until the
// message is accepted or the deadline passes, and returns the replies.
func sendUntilAccepted(t *testing.T, addrs []string, env Envelope, deadline time.Duration) []SendResult {
	t.Helper()
	var all []SendResult
	end := time.Now().Add(deadline)
	for i := 0; time.Now().Before(end); i++ {
		r := Send(t, addrs[i%len(addrs)], env)
		all = append(all, r)
		if r.Stage == "" {
			return all
		}
		time.Sleep(100 * time.Millisecond) // an MTA's retry interval, scaled down
	}
	t.Fatalf("not accepted within %v: %v", deadline, all[len(all)-1])
	return nil
}

func greylisted(r SendResult) bool {
	se := r.RcptErrs[rcptBob]
	return se != nil && se.Code == 451 && se.EnhancedCode == [3]int{4, 7, 1} && se.Message == "Greylisted, try again later"
}

// TestGreylistSharedThroughRedis: two gateways share one Redis; a triplet
// greylisted by the first passes on the second after the delay.
func TestGreylistSharedThroughRedis(t *testing.T) {
	t.Parallel()
	redis := redistest.Start(t)
	sink := smtptest.NewSink(t)
	cfg := Config{Routes: defaultRoutes(sink.Addr()), Policy: greylistPolicy,
		Extra: map[string]any{"greylist": map[string]any{"store": "redis"}, "redis": map[string]any{"addr": redis}}}
	a := StartMoat(t, cfg)
	b := StartMoat(t, cfg)
	env := Envelope{From: "alice@sender.example", To: []string{rcptBob}, Data: NewMessage("alice@sender.example", rcptBob, "greylist").Bytes()}
	first := Send(t, a.Addr, env)
	if !greylisted(first) {
		t.Fatalf("first sight on gateway A: %s", first)
	}
	// Gateway B knows the triplet: too early now, passed after the delay.
	rs := sendUntilAccepted(t, []string{b.Addr}, env, 10*time.Second)
	for _, r := range rs[:len(rs)-1] {
		if !greylisted(r) {
			t.Errorf("retry before the delay: %s", r)
		}
	}
	ev := b.WaitEvent("greylist passed", func(e Event) bool {
		return e.Str("event.action") == "smtp.transaction" && e.Str("event.outcome") == "success"
	})
	if !strings.Contains(ev.String(), `"greylist":{`) || !strings.Contains(ev.String(), `"result":"passed"`) {
		t.Errorf("event %v", ev)
	}
	evA := a.WaitTransactionEvent(1)
	if !strings.Contains(evA.String(), `"result":"new"`) || !strings.Contains(evA.String(), `"key":"t|127.0.0.0/24|alice@sender.example|bob@example.com"`) {
		t.Errorf("first event %v", evA)
	}
}

// TestGreylistBoltSurvivesRestart: the default store keeps what it saw
// across a restart, and `moat greylist` works while moat serve runs.
func TestGreylistBoltSurvivesRestart(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	data := filepath.Join(t.TempDir(), "data")
	cfg := Config{Routes: defaultRoutes(sink.Addr()), Policy: greylistPolicy, Extra: map[string]any{"data_dir": data}}
	a := StartMoat(t, cfg)
	env := Envelope{From: "carol@sender.example", To: []string{rcptBob}, Data: NewMessage("carol@sender.example", rcptBob, "restart").Bytes()}
	if r := Send(t, a.Addr, env); !greylisted(r) {
		t.Fatalf("first sight: %s", r)
	}
	code, out, errOut := runMoat(t, a.Dir, "greylist", "list", "--config", a.ConfigPath)
	if code != 0 || !strings.Contains(out, "carol@sender.example") || !strings.Contains(out, "127.0.0.0/24") {
		t.Fatalf("moat greylist list while serving: exit %d\n%s%s", code, out, errOut)
	}
	a.Stop()
	b := StartMoat(t, cfg)
	rs := sendUntilAccepted(t, []string{b.Addr}, env, 10*time.Second)
	ev := b.WaitEvent("greylist passed", func(e Event) bool {
		return e.Str("event.action") == "smtp.transaction" && e.Str("event.outcome") == "success"
	})
	if !strings.Contains(ev.String(), `"result":"passed"`) {
		t.Errorf("after restart the triplet was not known (%d tries): %v", len(rs), ev)
	}
	// Instant release: an allowed network is not greylisted at all.
	code, out, errOut = runMoat(t, b.Dir, "greylist", "allow", "--config", b.ConfigPath, "--client", "127.0.0.0/24")
	if code != 0 {
		t.Fatalf("moat greylist allow: exit %d\n%s%s", code, out, errOut)
	}
	fresh := Envelope{From: "dave@new.example", To: []string{rcptBob}, Data: NewMessage("dave@new.example", rcptBob, "allowed").Bytes()}
	if r := Send(t, b.Addr, fresh); r.Stage != "" {
		t.Errorf("allowed network still greylisted: %s", r)
	}
	b.WaitEvent("admin event", func(e Event) bool { return e.Str("event.action") == "greylist.admin" })
}

// TestGreylistFailsOpen: with Redis gone, mail flows and the event says why.
func TestGreylistFailsOpen(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), Policy: greylistPolicy,
		Extra: map[string]any{"greylist": map[string]any{"store": "redis"}, "redis": map[string]any{"addr": srv}}})
	redistest.Stop(t, srv)
	env := Envelope{From: "erin@sender.example", To: []string{rcptBob}, Data: NewMessage("erin@sender.example", rcptBob, "open").Bytes()}
	if r := Send(t, m.Addr, env); r.Stage != "" {
		t.Fatalf("Redis down held mail back: %s", r)
	}
	ev := m.WaitTransactionEvent(1)
	if !strings.Contains(ev.String(), `"greylist":{`) || !strings.Contains(ev.String(), `"result":"temperror"`) || !strings.Contains(ev.String(), "failing open") {
		t.Errorf("event %v", ev)
	}
}
