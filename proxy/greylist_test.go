package proxy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"moat/greylist"
	"moat/internal/smtptest"
)

// brokenStore fails every call, like a Redis that went away.
type brokenStore struct{}

func (brokenStore) Update(context.Context, string, greylist.UpdateFunc) error {
	return errors.New("connection refused")
}
func (brokenStore) Get(context.Context, string) ([]byte, error) {
	return nil, errors.New("connection refused")
}
func (brokenStore) Delete(context.Context, string) error { return nil }
func (brokenStore) Scan(context.Context, string, func(string, []byte) bool) error {
	return nil
}
func (brokenStore) Close() error { return nil }

func withGreylist(ts *testServer, s greylist.Store) {
	rt := *ts.srv.Runtime()
	rt.Greylist = s
	ts.srv.Reload(&rt)
}

func sendTo(t *testing.T, ts *testServer, from, rcpt, want string) *client {
	t.Helper()
	c := dial(t, ts.addr)
	c.cmd("EHLO client.example.net", "250")
	c.cmd("MAIL FROM:<"+from+">", "250")
	c.cmd("RCPT TO:<"+rcpt+">", want)
	return c
}

func TestGreylistAtRcpt(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), `policy: default
checks:
  greylist: { delay: 1h }
---
policy: picky
applies_to: { recipients: ["picky@example.com"] }
checks:
  greylist: { delay: 1h, min_score: 3 }
---
policy: watch
applies_to: { recipients: ["watch@example.com"] }
checks:
  greylist: { delay: 1h, mode: observe }
`)
	store := greylist.NewMemory(1000)
	withGreylist(ts, store)
	logs := withObserver(ts)

	sendTo(t, ts, "a@example.net", "b@example.com", "451 4.7.1 Greylisted, try again later").cmd("QUIT", "221")
	// Early retry: still greylisted, with the exact text.
	c := sendTo(t, ts, "a@example.net", "b@example.com", "451 4.7.1 Greylisted, try again later")
	c.cmd("QUIT", "221")
	// A clean sender under min_score 3 is not delayed.
	sendTo(t, ts, "a@example.net", "picky@example.com", "250").cmd("QUIT", "221")
	// Observe mode logs and lets through.
	sendTo(t, ts, "a@example.net", "watch@example.com", "250").cmd("QUIT", "221")
	evs := waitEvents(t, logs, 4)
	gl := func(i int) map[string]any {
		return checkEntry(evs[i], "greylist")
	}
	if g := gl(0); g["result"] != "new" || !strings.HasPrefix(g["key"].(string), "t|127.0.0.0/24|a@example.net|b@example.com") {
		t.Errorf("first sight: %v", evs[0])
	}
	if g := gl(1); g["result"] != "early" {
		t.Errorf("early retry: %v", g)
	}
	if g := gl(2); g["result"] != "skipped" || g["reason"] != "score below min_score" {
		t.Errorf("min_score: %v", g)
	}
	if g := gl(3); g["result"] != "new" || g["mode"] != "observe" {
		t.Errorf("observe: %v", g)
	}
}

func TestGreylistFailsOpenOnStoreError(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), "policy: default\nchecks:\n  greylist: { delay: 1h }\n")
	withGreylist(ts, brokenStore{})
	logs := withObserver(ts)
	c := sendTo(t, ts, "a@example.net", "b@example.com", "250")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("250 ")
	ev := waitEvents(t, logs, 1)[0]
	g := checkEntry(ev, "greylist")
	if g["result"] != "temperror" || !strings.Contains(g["reason"].(string), "failing open") {
		t.Errorf("event %v", ev)
	}
}

func TestGreylistAfterData(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), "policy: default\nchecks:\n  greylist: { delay: 1h, at: data }\n")
	withGreylist(ts, greylist.NewMemory(1000))
	logs := withObserver(ts)
	c := sendTo(t, ts, "a@example.net", "b@example.com", "250")
	c.cmd("DATA", "354")
	c.send(stuffed + ".\r\n")
	c.expect("451 4.7.1 Greylisted, try again later")
	ev := waitEvents(t, logs, 1)[0]
	g := checkEntry(ev, "greylist")
	if g["result"] != "new" || strings.Count(g["key"].(string), "|") != 4 {
		t.Errorf("greylist entry %v: want a key with the body hash", g)
	}
	if len(sink.Transactions()) != 0 {
		t.Error("a greylisted message went upstream")
	}
}

// checkEntry is one check's entry of an observed event's moat.checks.
func checkEntry(ev map[string]any, check string) map[string]any {
	checks, _ := ev["moat.checks"].(map[string]any)
	entry, _ := checks[check].(map[string]any)
	return entry
}
