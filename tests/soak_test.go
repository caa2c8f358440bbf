package tests

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Flags of the long runs: `go test ./tests -run 'Soak|Slow|Idle' -soak`
// (without -race for figures that mean something). Without -soak the same
// tests run a short version that fits the normal suite.
var (
	soak         = flag.Bool("soak", false, "run the long soak and load tests: thousands of messages across crashes, 10,000 connections")
	soakMessages = flag.Int("soak.messages", 3000, "messages the soak sends with -soak")
)

// soakPlan is the size of one soak run.
type soakPlan struct {
	messages int
	workers  int           // concurrent clients
	kills    int           // SIGKILLs of moat, each followed by a restart
	outages  int           // stops and restarts of the upstream sink
	deadline time.Duration // for every message to be accepted
}

func soakPlanFor(outages int) soakPlan {
	if *soak {
		faults := max(3, *soakMessages/600) // 5 of each for the default 3000
		return soakPlan{messages: *soakMessages, workers: 8, kills: faults, outages: outages * faults, deadline: 10 * time.Minute}
	}
	return soakPlan{messages: 200, workers: 8, kills: 1, outages: outages, deadline: 2 * time.Minute}
}

// soakTimeouts keep a stalled upstream short; the client side keeps the
// defaults.
var soakTimeouts = map[string]string{"upstream_connect": "2s", "upstream_command": "5s", "upstream_data": "10s"}

// noLimits turns the connection limits off, whatever moat's defaults: the
// load tests all come from 127.0.0.1.
var noLimits = map[string]any{"smtp": map[string]any{"limits": map[string]any{
	"connections": 0, "connections_per_ip": 0, "connection_rate_per_ip": "0",
}}}

// TestSoakNoLoss: clients send messages, each with a unique ID, through
// moat to a recording upstream while the upstream is stopped and restarted
// and moat is killed with SIGKILL and restarted on the same ports. Clients
// retry whatever did not get 250, as an MTA's queue does. Every message
// that got 250 must be at the upstream; duplicates are allowed (a crash
// between the upstream's 250 and moat's) and counted.
func TestSoakNoLoss(t *testing.T) {
	t.Parallel()
	plan := soakPlanFor(1)
	sink := startSoakSink(t)
	m := StartMoat(t, Config{Timeouts: soakTimeouts, Routes: map[string]Route{"example.com": {Upstream: sink.addr}}, Extra: noLimits})
	run := newSoakRun(t, m, plan, "soak@example.com")
	sink.expect = run.bodies
	run.outage = func() { sink.stop() }
	run.recover = func() { sink.start(t) }
	run.send()
	run.check("upstream "+sink.addr, sink.received())
}

// TestSoakNoLossLocal: the same with `upstream: local`: the built-in
// store's Maildir files are counted (new/ and cur/; tmp/ holds no
// delivered mail). Only moat is killed: there is no upstream to stop.
func TestSoakNoLossLocal(t *testing.T) {
	t.Parallel()
	plan := soakPlanFor(0)
	m := StartMoat(t, Config{Routes: map[string]Route{"local.test": {Upstream: "local"}}, Extra: noLimits})
	run := newSoakRun(t, m, plan, "soak@local.test")
	run.send()
	box := filepath.Join(m.DataDir, "mail", "local.test", "soak")
	rec := newSoakRecord(run.bodies)
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(box, sub))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(box, sub, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			rec.add(b)
		}
	}
	tmp, _ := os.ReadDir(filepath.Join(box, "tmp"))
	t.Logf("soak (local): %d files left in the Maildir's tmp/ by the kills", len(tmp))
	run.check("the built-in store", rec.snapshot())
}

// soakRun is one soak: the messages, the clients' counters and the
// faults to inject.
type soakRun struct {
	t      *testing.T
	m      *Moat
	plan   soakPlan
	rcpt   string
	ids    []string
	msgs   [][]byte          // by index, as sent
	bodies map[string][]byte // ID -> the body as it must arrive

	acked    []atomic.Bool // by index: the client heard 250
	accepted atomic.Int64  // 250s
	attempts atomic.Int64
	temp     atomic.Int64 // 4xx replies
	netErrs  atomic.Int64 // refused connections, resets, EOF
	perm     atomic.Int64 // 5xx: a sender would bounce; must not happen
	permMu   sync.Mutex
	permText []string

	outage, recover func() // stop and start the upstream; nil: no outages
	kills           int
	killDown        time.Duration // total time moat was down
	outages         int
}

func newSoakRun(t *testing.T, m *Moat, plan soakPlan, rcpt string) *soakRun {
	r := &soakRun{t: t, m: m, plan: plan, rcpt: rcpt, bodies: map[string][]byte{}, acked: make([]atomic.Bool, plan.messages)}
	tag := randomHex(4)
	for i := range plan.messages {
		id := fmt.Sprintf("soak-%s-%05d", tag, i)
		msg, body := soakMessage(id, rcpt, i)
		r.ids = append(r.ids, id)
		r.msgs = append(r.msgs, msg)
		r.bodies[id] = body
	}
	return r
}

// soakMessage renders message i: the ID in a header and in the body, a
// body whose length varies with i and a line that needs dot-stuffing.
func soakMessage(id, rcpt string, i int) (msg, body []byte) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "soak-marker %s\r\n.a line that starts with a dot, %s\r\n", id, id)
	for k := range i % 7 {
		b.WriteString(strings.Repeat(string(rune('a'+(i+k)%26)), 70) + "\r\n")
	}
	body = b.Bytes()
	var m bytes.Buffer
	fmt.Fprintf(&m, "From: <%s>\r\nTo: <%s>\r\nSubject: soak %s\r\nMessage-ID: <%s@client.example.net>\r\n", sender, rcpt, id, id)
	fmt.Fprintf(&m, "Date: Thu, 26 Nov 2026 04:26:37 +0000\r\nX-Soak-ID: %s\r\n\r\n", id)
	m.Write(body)
	return m.Bytes(), body
}

// send runs the clients and the faults until every message got 250 or
// the plan's deadline passes.
func (r *soakRun) send() {
	t := r.t
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), r.plan.deadline)
	defer cancel()
	next := make(chan int, r.plan.messages)
	for i := range r.plan.messages {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for range r.plan.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.client(ctx, next)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	// Faults at even steps of progress (250s), alternating, so each hits
	// a stream of transactions in flight.
	var faults []string
	for k := range max(r.plan.kills, r.plan.outages) {
		if k < r.plan.outages && r.outage != nil {
			faults = append(faults, "outage")
		}
		if k < r.plan.kills {
			faults = append(faults, "kill")
		}
	}
	for k, f := range faults {
		at := int64(r.plan.messages * (k + 1) / (len(faults) + 1))
		if !pollUntil(ctx, func() bool { return r.accepted.Load() >= at }) {
			break
		}
		switch f {
		case "outage":
			r.upstreamOutage(ctx)
		case "kill":
			r.killAndRestart()
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		<-done // every send is bounded by ctx's deadline
	}
	t.Logf("soak: %d messages by %d clients in %v", r.plan.messages, r.plan.workers, time.Since(start).Round(time.Millisecond))
}

// client sends the messages it takes from next, each until it gets 250
// (with a growing pause after each failure) or ctx ends.
func (r *soakRun) client(ctx context.Context, next <-chan int) {
	for i := range next {
		pause := 10 * time.Millisecond
		for ctx.Err() == nil {
			r.attempts.Add(1)
			code, text, err := soakSend(ctx, r.m.Addr, r.rcpt, r.msgs[i])
			switch {
			case err == nil && code == 250:
				r.acked[i].Store(true)
				r.accepted.Add(1)
			case err != nil:
				r.netErrs.Add(1)
			case code >= 500:
				r.perm.Add(1)
				r.permMu.Lock()
				r.permText = append(r.permText, fmt.Sprintf("%s: %d %s", r.ids[i], code, text))
				r.permMu.Unlock()
			default:
				r.temp.Add(1)
			}
			if r.acked[i].Load() || code >= 500 {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(pause): // an MTA's retry interval, not a wait for an event
			}
			pause = min(2*pause, 500*time.Millisecond)
		}
	}
}

// soakSend runs one transaction and returns the first reply that was not
// positive (or the end-of-data reply), or a network error. Every step is
// bounded by ctx's deadline.
func soakSend(ctx context.Context, addr, rcpt string, msg []byte) (int, string, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	if err != nil {
		return 0, "", err
	}
	deadline := time.Now().Add(60 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	c := smtp.NewClient(conn)
	defer c.Close()
	replyOf := func(err error) (int, string, error) {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se.Code, se.Message, nil
		}
		return 0, "", err
	}
	if err := c.Hello("client.example.net"); err != nil {
		return replyOf(err)
	}
	if err := c.Mail(sender, nil); err != nil {
		return replyOf(err)
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return replyOf(err)
	}
	w, err := c.Data()
	if err != nil {
		return replyOf(err)
	}
	if _, err := w.Write(msg); err != nil {
		return replyOf(err)
	}
	if err := w.Close(); err != nil {
		return replyOf(err)
	}
	c.Quit()
	return 250, "", nil
}

// upstreamOutage stops the upstream until the clients have had a few
// deferrals (bounded), then starts it again on the same port.
func (r *soakRun) upstreamOutage(ctx context.Context) {
	before := r.temp.Load()
	r.outage()
	r.outages++
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pollUntil(wctx, func() bool { return r.temp.Load() >= before+int64(r.plan.workers) })
	r.recover()
}

// killAndRestart kills moat with SIGKILL, as a crash or a power cut
// would (no shutdown path runs), and starts it again with the same
// config file on the same ports.
func (r *soakRun) killAndRestart() {
	t, m := r.t, r.m
	t.Helper()
	start := time.Now()
	killMoat(t, m)
	restartMoat(t, m)
	r.kills++
	r.killDown += time.Since(start)
}

// killMoat sends SIGKILL to moat and waits for it to die.
func killMoat(t testing.TB, m *Moat) {
	t.Helper()
	p := m.proc
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !p.hasExited() {
		t.Fatalf("SIGKILL to moat (pid %d): %v", p.cmd.Process.Pid, err)
	}
	if !p.wait(stopTimeout) {
		t.Fatalf("moat (pid %d) still running %v after SIGKILL", p.cmd.Process.Pid, stopTimeout)
	}
	p.mu.Lock()
	p.reported = true // its exit status is SIGKILL's, not a failure
	p.mu.Unlock()
}

// restartMoat starts a new moat process with m's config file, on the
// same ports; the harness stops it at the end of the test. A port taken
// meanwhile by someone else's ephemeral connection is retried, bounded.
func restartMoat(t testing.TB, m *Moat) {
	t.Helper()
	bin := requireMoat(t)
	old := m.proc
	for attempt := 1; ; attempt++ {
		proc, err := startProcess(t, bin, []string{"serve", "--config", m.ConfigPath}, m.Dir, m.Addr)
		if err == nil {
			m.proc = proc
			if t.Failed() {
				t.Logf("moat before the restart, stdout (last 20 lines):\n%s", lastLines(old.stdout.Text(), 20))
			}
			return
		}
		if attempt == 5 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("restarting moat after SIGKILL: %v", err)
		}
		t.Logf("restart, attempt %d: %v", attempt, err)
	}
}

// pollUntil re-checks cond every 10ms until it holds (true) or ctx ends
// (false).
func pollUntil(ctx context.Context, cond func() bool) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// check compares what the clients heard with what arrived and reports
// the figures: no message that got 250 may be missing.
func (r *soakRun) check(where string, got soakSnapshot) {
	t := r.t
	t.Helper()
	var lost, neverAccepted []string
	for i, id := range r.ids {
		switch {
		case !r.acked[i].Load():
			neverAccepted = append(neverAccepted, id)
		case got.copies[id] == 0:
			lost = append(lost, id)
		}
	}
	dups := 0
	for _, n := range got.copies {
		dups += n - 1
	}
	t.Logf("soak to %s: sent %d, attempts %d, 250s %d, deferred %d (4xx %d, connection errors %d), 5xx %d, "+
		"delivered %d distinct (%d copies), duplicates %d, lost %d, never accepted %d; moat killed %d times (down %v in all), upstream stopped %d times",
		where, len(r.ids), r.attempts.Load(), r.accepted.Load(), r.temp.Load()+r.netErrs.Load(), r.temp.Load(), r.netErrs.Load(), r.perm.Load(),
		len(got.copies), got.total, dups, len(lost), len(neverAccepted), r.kills, r.killDown.Round(time.Millisecond), r.outages)
	if len(lost) > 0 {
		t.Errorf("LOST: %d messages got 250 but never arrived at %s: %v", len(lost), where, first(lost, 20))
	}
	if len(neverAccepted) > 0 {
		t.Errorf("%d messages got no 250 within %v: %v", len(neverAccepted), r.plan.deadline, first(neverAccepted, 20))
	}
	if r.perm.Load() > 0 {
		t.Errorf("%d permanent refusals (a sender would bounce): %v", r.perm.Load(), first(r.permText, 20))
	}
	if len(got.problems) > 0 {
		t.Errorf("%d messages arrived damaged: %v", len(got.problems), first(got.problems, 20))
	}
	if r.kills != r.plan.kills || (r.outage != nil && r.outages != r.plan.outages) {
		t.Errorf("faults injected: %d kills, %d outages; planned %d and %d", r.kills, r.outages, r.plan.kills, r.plan.outages)
	}
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

// soakRecord counts the copies of each soak message that arrived and
// checks that each arrived whole.
type soakRecord struct {
	expect   map[string][]byte // ID -> body; read-only
	mu       sync.Mutex
	copies   map[string]int
	total    int
	problems []string
}

// soakSnapshot is a copy of a soakRecord's findings.
type soakSnapshot struct {
	copies   map[string]int
	total    int
	problems []string
}

func newSoakRecord(expect map[string][]byte) *soakRecord {
	return &soakRecord{expect: expect, copies: map[string]int{}}
}

// add records one message as it arrived: headers (moat's added ones
// first), a blank line, the body. Line ends are compared as LF, since a
// Maildir may store either.
func (s *soakRecord) add(msg []byte) {
	msg = bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	head, body, _ := bytes.Cut(msg, []byte("\n\n"))
	id := ""
	for _, l := range strings.Split(string(head), "\n") {
		if v, ok := strings.CutPrefix(l, "X-Soak-ID: "); ok {
			id = strings.TrimSpace(v)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total++
	want, ok := s.expect[id]
	switch {
	case !ok:
		s.problems = append(s.problems, fmt.Sprintf("a message without a known X-Soak-ID (%q): %q", id, abbrev(string(msg))))
	case !bytes.Equal(body, bytes.ReplaceAll(want, []byte("\r\n"), []byte("\n"))):
		s.problems = append(s.problems, fmt.Sprintf("%s: body %q, want %q", id, abbrev(string(body)), abbrev(string(want))))
	default:
		s.copies[id]++
	}
}

func (s *soakRecord) snapshot() soakSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := soakSnapshot{copies: map[string]int{}, total: s.total, problems: append([]string(nil), s.problems...)}
	for id, n := range s.copies {
		out.copies[id] = n
	}
	return out
}

// soakSink is a recording upstream that can be stopped and started again
// on the same port (smtptest.Sink cannot). It is go-smtp's server: the
// soak needs what arrived, not the exact bytes on the wire.
type soakSink struct {
	addr   string
	expect map[string][]byte // set before the first message; read-only

	mu  sync.Mutex
	srv *smtp.Server
	rec *soakRecord
}

func startSoakSink(t *testing.T) *soakSink {
	t.Helper()
	s := &soakSink{addr: "127.0.0.1:0"}
	s.start(t)
	t.Cleanup(s.stop)
	return s
}

// start listens on s.addr (the same port after the first start), retrying
// a port that an ephemeral connection holds for a moment, bounded.
func (s *soakSink) start(t testing.TB) {
	t.Helper()
	var ln net.Listener
	err := errors.New("not tried")
	for attempt := 0; attempt < 100 && err != nil; attempt++ {
		if attempt > 0 {
			time.Sleep(20 * time.Millisecond) // the port's holder leaves no event to wait on
		}
		ln, err = net.Listen("tcp", s.addr)
	}
	if err != nil {
		t.Fatalf("soak sink: listen on %s again: %v", s.addr, err)
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &soakSession{s: s}, nil }))
	srv.Domain = "sink.test"
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	srv.ErrorLog = discardLogger{}
	s.mu.Lock()
	s.addr = ln.Addr().String()
	s.srv = srv
	s.mu.Unlock()
	go srv.Serve(ln)
}

// stop closes the listener and every connection.
func (s *soakSink) stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (s *soakSink) record(msg []byte) {
	s.mu.Lock()
	if s.rec == nil {
		s.rec = newSoakRecord(s.expect)
	}
	rec := s.rec
	s.mu.Unlock()
	rec.add(msg)
}

func (s *soakSink) received() soakSnapshot {
	s.mu.Lock()
	rec := s.rec
	s.mu.Unlock()
	if rec == nil {
		return soakSnapshot{copies: map[string]int{}}
	}
	return rec.snapshot()
}

type soakSession struct{ s *soakSink }

func (*soakSession) Reset()                                    {}
func (*soakSession) Logout() error                             { return nil }
func (*soakSession) Mail(string, *smtp.MailOptions) error      { return nil }
func (*soakSession) Rcpt(to string, _ *smtp.RcptOptions) error { return nil }

// Data records the message before the 250 goes out: a message counts as
// delivered once the upstream said so.
func (ss *soakSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.s.record(b)
	return nil
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}
