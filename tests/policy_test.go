package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"moat/internal/dnstest"
	"moat/internal/smtptest"
)

const policyV1 = `policy: default
checks:
  dnsbl:
    zones:
      - { zone: bl.test, score: 6 }
actions: { reject: 10 }
---
policy: local
applies_to: { recipient_domains: [local.test] }
extends: default
actions: { reject: 5 }
---
policy: watch
applies_to: { recipients: ["watch@example.com"] }
extends: default
actions: { reject: 5 }
mode: observe
`

// writeLikeAnEditor replaces a file the way editors do: a new file
// renamed over the old one.
func writeLikeAnEditor(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".swp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestPoliciesPerDomainObserveAndLiveEdits: the policy of the recipient's
// domain decides; observe mode delivers and logs the would-be action;
// editing the policy file changes the next verdict without a restart,
// and a broken edit changes nothing but is reported with its position.
func TestPoliciesPerDomainObserveAndLiveEdits(t *testing.T) {
	t.Parallel()
	zone := dnstest.New(t, "2.0.0.127.bl.test. 300 IN A 127.0.0.2")
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), DNS: zone, Policy: policyV1})
	send := func(rcpt string) SendResult {
		return Send(t, m.Addr, Envelope{Source: "127.0.0.2", From: "a@sender.example", To: []string{rcpt},
			Data: NewMessage("a@sender.example", rcpt, "policy").Bytes()})
	}
	refused := func(r SendResult, rcpt string) bool {
		se := r.RcptErrs[rcpt]
		return se != nil && se.Code == 550 && se.EnhancedCode == [3]int{5, 7, 1}
	}

	// Score 6: under the default's 10, over local.test's 5.
	if r := send(rcptBob); r.Stage != "" {
		t.Fatalf("default policy: %s", r)
	}
	if r := send("someone@local.test"); !refused(r, "someone@local.test") {
		t.Fatalf("local.test policy: %s", r)
	}
	if r := send("watch@example.com"); r.Stage != "" {
		t.Fatalf("observe mode refused: %s", r)
	}
	ev := m.WaitEvent("observe event", func(e Event) bool {
		return e.Str("event.action") == "smtp.transaction" && slicesContains(e.Strings("email.to.address"), "watch@example.com")
	})
	if ev.Str("moat.action") != "accept" || ev.Str("moat.would_action") != "reject" || ev.Str("moat.policy") != "watch" {
		t.Errorf("observe event: %v", ev)
	}

	// Edit: the default now rejects at 5.
	path := filepath.Join(m.Dir, "policy.yaml")
	writeLikeAnEditor(t, path, strings.Replace(policyV1, "actions: { reject: 10 }", "actions: { reject: 5 }", 1))
	m.WaitEvent("reload after the edit", func(e Event) bool {
		return e.Str("event.action") == "config.reload" && e.Str("event.outcome") == "success" && e.Str("event.reason") == "file change"
	})
	if r := send(rcptBob); !refused(r, rcptBob) {
		t.Fatalf("after the edit: %s", r)
	}

	// A broken edit is reported with its position and changes nothing.
	writeLikeAnEditor(t, path, strings.Replace(policyV1, "score: 6", "score: six", 1))
	bad := m.WaitEvent("failed reload", func(e Event) bool {
		return e.Str("event.action") == "config.reload" && e.Str("event.outcome") == "failure"
	})
	if !strings.Contains(bad.String(), path+":5:") {
		t.Errorf("failure event lacks FILE:LINE:COL of the bad value: %v", bad)
	}
	if r := send(rcptBob); !refused(r, rcptBob) {
		t.Fatalf("a broken edit changed the running policy: %s", r)
	}
}

func slicesContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
