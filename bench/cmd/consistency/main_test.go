package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// fakeState is the greylist and rate state of fake gateways: shared by
// both (as through Redis) or one per gateway (the bug the tool must see).
type fakeState struct {
	mu        sync.Mutex
	delay     time.Duration
	firstSeen map[string]time.Time // triplet → first sight
	passed    map[string]bool
	tokens    int // what the sender may still send; < 0: no limit
}

func newFakeState(delay time.Duration, limit int) *fakeState {
	return &fakeState{delay: delay, firstSeen: map[string]time.Time{}, passed: map[string]bool{}, tokens: limit}
}

// verdict decides a triplet as moat's greylist does.
func (s *fakeState) verdict(key string, now time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	first, ok := s.firstSeen[key]
	switch {
	case s.passed[key]:
		return "passed"
	case !ok:
		s.firstSeen[key] = now
		return "new"
	case now.Before(first.Add(s.delay)):
		return "early"
	}
	s.passed[key] = true
	return "passed"
}

// take reserves one message of the sender limit.
func (s *fakeState) take() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tokens < 0 {
		return true
	}
	if s.tokens == 0 {
		return false
	}
	s.tokens--
	return true
}

// fakeGateway is an in-process SMTP server that greylists (when greylist
// is set) and limits messages per sender like moat, writing moat's
// smtp.transaction events (the fields the tool reads) to log.
type fakeGateway struct {
	state    *fakeState
	greylist bool
	mu       sync.Mutex
	log      io.Writer
}

func (g *fakeGateway) NewSession(*smtp.Conn) (smtp.Session, error) { return &fakeSession{g: g}, nil }

func (g *fakeGateway) event(key, result string) {
	b, _ := json.Marshal(map[string]any{
		"@timestamp":   time.Now().UTC().Format(time.RFC3339Nano),
		"event.action": "smtp.transaction",
		"moat.checks":  map[string]any{"greylist": map[string]any{"key": key, "result": result}},
	})
	g.mu.Lock()
	defer g.mu.Unlock()
	g.log.Write(append(b, '\n'))
}

type fakeSession struct {
	g    *fakeGateway
	from string
}

func (s *fakeSession) Mail(from string, _ *smtp.MailOptions) error {
	if !s.g.state.take() {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Too many messages from this sender, slow down"}
	}
	s.from = from
	return nil
}

func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !s.g.greylist {
		return nil
	}
	key := "t|127.0.0.0/24|" + s.from + "|" + strings.ToLower(to)
	v := s.g.state.verdict(key, time.Now())
	s.g.event(key, v)
	if v != "passed" {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Greylisted, try again later"}
	}
	return nil
}

func (s *fakeSession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

func (s *fakeSession) Reset()        {}
func (s *fakeSession) Logout() error { return nil }

// serve starts a fake gateway on 127.0.0.1:0 and returns its address.
func serve(t *testing.T, g *fakeGateway) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := smtp.NewServer(g)
	srv.Domain = "fake.test"
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func TestGreylist(t *testing.T) {
	const delay = 300 * time.Millisecond
	tests := []struct {
		name   string
		shared bool // one greylist state for both gateways
		wantOK bool
		want   string // in the output
	}{
		{"shared state", true, true, "new_once=12 early_once=12 passed_twice=12"},
		{"state per gateway", false, false, "new_once=0 early_once=0 passed_twice=12"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var addrs, logs [2]string
			shared := newFakeState(delay, -1)
			for g := range 2 {
				st := shared
				if !tt.shared {
					st = newFakeState(delay, -1)
				}
				logs[g] = filepath.Join(dir, fmt.Sprintf("events%d.log", g))
				f, err := os.Create(logs[g])
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				addrs[g] = serve(t, &fakeGateway{state: st, greylist: true, log: f})
			}
			c := greylistConfig{Addrs: addrs, N: 12, Sessions: 8, Delay: delay, From: "s@bench.example",
				RcptDomain: "Example.com", Run: "T1", Timeout: 5 * time.Second, Events: logs, EventWait: 2 * time.Second}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			start := time.Now()
			r, err := runGreylist(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			out := r.String()
			if r.OK() != tt.wantOK || !strings.Contains(out, tt.want) {
				t.Errorf("OK %v, want %v; output:\n%s", r.OK(), tt.wantOK, out)
			}
			if r.FirstGreylisted != 24 || r.RetryAccepted != 24 {
				t.Errorf("greylisted %d, accepted %d: want 24, 24\n%s", r.FirstGreylisted, r.RetryAccepted, out)
			}
			if el := time.Since(start); el < delay {
				t.Errorf("the run took %v, less than the delay", el)
			}
		})
	}
}

func TestRate(t *testing.T) {
	tests := []struct {
		name   string
		shared bool
		slack  int
		wantOK bool
		want   string
	}{
		{"shared bucket", true, 0, true, "accepted=30 refused=70 failed=0"},
		{"bucket per gateway", false, 0, false, "FAIL (accepted 60 > limit 30"},
		{"bucket per gateway, slack", false, 30, true, "accepted=60"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			shared := newFakeState(0, 30)
			addrs := make([]string, 2)
			for g := range addrs {
				st := shared
				if !tt.shared {
					st = newFakeState(0, 30)
				}
				addrs[g] = serve(t, &fakeGateway{state: st, log: io.Discard})
			}
			c := rateConfig{Addrs: addrs, N: 100, Sessions: 10, From: "s@bench.example", Rcpt: "r@example.com",
				Name: "messages_per_sender", Limit: 30, Per: time.Hour, Slack: tt.slack, Timeout: 5 * time.Second}
			r, err := runRate(t.Context(), c)
			if err != nil {
				t.Fatal(err)
			}
			if out := r.String(); r.OK() != tt.wantOK || !strings.Contains(out, tt.want) {
				t.Errorf("OK %v, want %v; output:\n%s", r.OK(), tt.wantOK, out)
			}
		})
	}
}

func TestRateUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: every message fails
	c := rateConfig{Addrs: []string{addr}, N: 3, Sessions: 2, From: "s@bench.example", Rcpt: "r@example.com",
		Name: "x", Limit: 1, Per: time.Hour, Timeout: 2 * time.Second}
	r, err := runRate(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	if out := r.String(); r.OK() || !strings.Contains(out, "FAIL (3 messages failed") {
		t.Errorf("want a FAIL for failed messages; output:\n%s", out)
	}
}

func TestJudge(t *testing.T) {
	c := greylistConfig{N: 1, Run: "r", RcptDomain: "example.com"}
	at := func(ms int) time.Time { return time.Date(2026, 1, 1, 0, 0, 0, ms*int(time.Millisecond), time.UTC) }
	ev := func(g, ms int, result string) event {
		e := event{Action: "smtp.transaction", Time: at(ms), gateway: g}
		e.Checks.Greylist = &struct {
			Result string `json:"result"`
			Key    string `json:"key"`
		}{result, "t|127.0.0.0/24|s@x|" + c.rcpt(0)}
		return e
	}
	tests := []struct {
		name   string
		events []event
		wantOK bool
	}{
		{"as it should", []event{ev(1, 0, "new"), ev(0, 1, "early"), ev(0, 2000, "passed"), ev(1, 2001, "passed")}, true},
		{"log order is not time order", []event{ev(0, 2000, "passed"), ev(1, 0, "early"), ev(0, 1, "new"), ev(1, 2001, "passed")}, true},
		{"new twice", []event{ev(0, 0, "new"), ev(1, 1, "new"), ev(0, 2000, "passed"), ev(1, 2001, "passed")}, false},
		{"greylisted after a pass", []event{ev(0, 0, "new"), ev(1, 1, "early"), ev(0, 2000, "passed"), ev(1, 2001, "early")}, false},
		{"an event missing", []event{ev(0, 0, "new"), ev(1, 1, "early"), ev(0, 2000, "passed")}, false},
		{"no events", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := judge(c, tt.events)
			if r.OK(1) != tt.wantOK {
				t.Errorf("OK %v, want %v: %+v", r.OK(1), tt.wantOK, r)
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in    string
		count int
		per   time.Duration
		err   bool
	}{
		{"200/1h", 200, time.Hour, false},
		{"5/2d", 5, 48 * time.Hour, false},
		{"10/90s", 10, 90 * time.Second, false},
		{"200", 0, 0, true},
		{"0/1h", 0, 0, true},
		{"x/1h", 0, 0, true},
		{"5/0s", 0, 0, true},
		{"5/zd", 0, 0, true},
	}
	for _, tt := range tests {
		count, per, err := parseRate(tt.in)
		if (err != nil) != tt.err || count != tt.count || per != tt.per {
			t.Errorf("parseRate(%q) = %d, %v, %v; want %d, %v, error %v", tt.in, count, per, err, tt.count, tt.per, tt.err)
		}
	}
}
