package tests

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"moat/internal/dnstest"
	"moat/internal/redistest"
	"moat/internal/smtptest"
)

// The fault tests prove that moat survives its dependencies failing:
// upstreams, the DNS server, Redis and the disk under data_dir. Each
// fault ends in a 4xx for the client (or the documented fallback), keeps
// nothing it should not, and leaves moat serving: a normal message goes
// through after it, and SIGTERM still ends moat with 0 (the harness's
// cleanup checks that). tests/upstream_faults_test.go has the per-stage
// upstream table; these add what it does not show.

// faultSeq makes every recipient of these tests unique, so that each
// transaction event can be found by its recipient.
var faultSeq atomic.Int64

func faultRcpt(domain string) string {
	return fmt.Sprintf("user%d@%s", faultSeq.Add(1), domain)
}

// faultMessage is a message of about 2 KiB to rcpt (more than the bytes
// after which a sink drops the connection mid-DATA).
func faultMessage(rcpt, subject string) []byte {
	msg := NewMessage(sender, rcpt, subject)
	for len(msg.BodyLines) < 30 {
		msg.BodyLines = append(msg.BodyLines, strings.Repeat("b", 60))
	}
	return msg.Bytes()
}

// faultTxnEvent waits for the transaction event of the one transaction to
// rcpt, accepted (email.to.address) or refused at RCPT
// (moat.refused_recipients).
func faultTxnEvent(m *Moat, rcpt string) Event {
	m.t.Helper()
	return m.WaitEvent("transaction to "+rcpt, func(e Event) bool {
		if e.Action() != "smtp.transaction" {
			return false
		}
		if slices.Contains(e.Strings("email.to.address"), rcpt) {
			return true
		}
		refused, _ := e["moat.refused_recipients"].([]any)
		for _, r := range refused {
			if r, ok := r.(map[string]any); ok && r["address"] == rcpt {
				return true
			}
		}
		return false
	})
}

// stillServes sends a normal message to the healthy route and fails the
// test unless the healthy sink gets it: moat did not crash and the fault
// did not wedge it.
func stillServes(t *testing.T, m *Moat, healthy *smtptest.Sink, domain string) {
	t.Helper()
	if m.Exited() {
		t.Fatalf("moat exited: %s", m.Stderr())
	}
	before := len(healthy.Accepted())
	rcpt := faultRcpt(domain)
	MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcpt}, Data: faultMessage(rcpt, "normal mail")})
	// Await, not WaitTransactions: the sink may belong to a parent test.
	if !healthy.Await(waitTimeout, func(s *smtptest.Sink) bool { return len(s.Accepted()) > before }) {
		t.Fatalf("the healthy upstream did not get the normal message within %v", waitTimeout)
	}
}

// TestFaultUpstreamBoundedAndIsolated: an upstream that is slow past
// upstream_data, drops the connection mid-DATA or right after its 354,
// refuses the connection or never greets costs the client a 451 4.4.1
// within the configured timeout (not the client's own, far longer one),
// the transaction event says so, the upstream keeps nothing; while one
// upstream hangs, mail to the other routes flows; and after each fault a
// normal message still goes through.
func TestFaultUpstreamBoundedAndIsolated(t *testing.T) {
	t.Parallel()
	const slack = 10 * time.Second // -race, a loaded CI machine
	timeouts := map[string]string{"upstream_connect": "2s", "upstream_command": "2s", "upstream_data": "3s"}
	cases := []struct {
		name   string
		opts   []smtptest.Option // nil: no sink, a closed port
		domain string
		bound  time.Duration // the timeout that must end the wait
		size   int           // the message's size; 0: about 2 KiB
	}{
		{"slow past upstream_data", []smtptest.Option{smtptest.WithStall(smtptest.StageEndOfData)}, "slow.test", 3 * time.Second, 0},
		{"drops mid-DATA", []smtptest.Option{smtptest.WithDropInData(500)}, "drop.test", 0, 0},
		{"drops right after 354", []smtptest.Option{smtptest.WithDropInData(0)}, "drop354.test", 0, 0},
		// Larger than the socket buffers: moat's write fails, not only
		// the read of the reply (and the message is spooled to disk).
		{"drops mid-DATA of a 3 MiB message", []smtptest.Option{smtptest.WithDropInData(64 << 10)}, "dropbig.test", 0, 3 << 20},
		{"refuses the connection", nil, "refused.test", 0, 0},
		{"never greets", []smtptest.Option{smtptest.WithStall(smtptest.StageGreeting)}, "silent.test", 2 * time.Second, 0},
	}
	healthy := smtptest.NewSink(t)
	routes := map[string]Route{"example.com": {Upstream: healthy.Addr()}}
	sinks := make([]*smtptest.Sink, len(cases))
	for i, tc := range cases {
		addr := closedAddr(t)
		if tc.opts != nil {
			sinks[i] = smtptest.NewSink(t, tc.opts...)
			addr = sinks[i].Addr()
		}
		routes[tc.domain] = Route{Upstream: addr}
	}
	m := StartMoat(t, Config{Timeouts: timeouts, Routes: routes})

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rcpt := faultRcpt(tc.domain)
			data := faultMessage(rcpt, tc.name)
			if tc.size > 0 {
				msg := NewMessage(sender, rcpt, tc.name)
				line := strings.Repeat("z", 998)
				for n := len(data); n < tc.size; n += len(line) + 2 {
					msg.BodyLines = append(msg.BodyLines, line)
				}
				data = msg.Bytes()
			}
			done := make(chan SendResult, 1)
			go func() { done <- Send(t, m.Addr, Envelope{From: sender, To: []string{rcpt}, Data: data}) }()
			if sink := sinks[i]; sink != nil && tc.bound > 0 {
				// While this upstream hangs, another route delivers.
				if !sink.Await(waitTimeout, func(s *smtptest.Sink) bool { return s.Connections() > 0 }) {
					t.Fatalf("moat did not connect to the hanging upstream within %v", waitTimeout)
				}
				stillServes(t, m, healthy, "example.com")
				select {
				case r := <-done:
					t.Fatalf("the hanging transaction ended before the other route delivered: %v", r)
				default:
				}
			}
			var r SendResult
			select {
			case r = <-done:
			case <-time.After(tc.bound + slack + waitTimeout):
				t.Fatalf("no reply within %v", tc.bound+slack+waitTimeout)
			}
			r.ExpectRefused(t, StageEOD, "451 4.4.1")
			if r.Elapsed > tc.bound+slack {
				t.Errorf("the client waited %v; the upstream timeout is %v", r.Elapsed, tc.bound)
			}
			if sink := sinks[i]; sink != nil {
				if acc := sink.Accepted(); len(acc) != 0 {
					t.Errorf("the upstream accepted %v", acc)
				}
			}
			ev := faultTxnEvent(m, rcpt)
			if ev.Outcome() != "failure" || !strings.HasPrefix(ev.Str("moat.reply"), "451 4.4.1") {
				t.Errorf("event %v", ev)
			}
			stillServes(t, m, healthy, "example.com")
		})
	}
	t.Cleanup(func() { assertNothingStored(t, m) })
}

// blackholeDNS is a UDP socket that reads every query and answers none: a
// DNS server that is dead but whose port is open (no ICMP refusal to end
// the wait early).
func blackholeDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String()
}

// deadDNSPolicy: SPF's temperror tempfails by default; mail to
// tolerant.test accepts it (the policy decides, not the outage).
const deadDNSPolicy = `policy: default
checks:
  dnsbl:
    zones:
      - { zone: bl.test, score: 10 }
  spf: { fail: reject, temperror: tempfail }
  dmarc: { honor_policy: true }
actions: { tag: 5, quarantine: 8, reject: 10 }
---
policy: tolerant
applies_to: { recipient_domains: [tolerant.test] }
extends: default
checks:
  spf: { fail: reject, temperror: 0 }
  dmarc: { honor_policy: true, temperror: 0 }
`

// TestFaultDNSDeadOrSlow: with the only DNS server dead (a socket that
// never answers) or slower than dns.timeout, every check answers
// temperror within its bounded time and the policy decides: the default
// policy tempfails at RCPT (451 4.7.1), the tolerant one accepts and the
// message is delivered. moat keeps serving.
func TestFaultDNSDeadOrSlow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		dns  func(t *testing.T) string // the address of the only DNS server
	}{
		{"dead", blackholeDNS},
		{"slow", func(t *testing.T) string {
			s := dnstest.New(t)
			s.SetDelay(2 * time.Second) // beyond dns.timeout below
			return s.Addr
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := smtptest.NewSink(t)
			m := StartMoat(t, Config{Policy: deadDNSPolicy,
				Routes: map[string]Route{"example.com": {Upstream: sink.Addr()}, "tolerant.test": {Upstream: sink.Addr()}},
				Extra:  map[string]any{"dns": map[string]any{"servers": []string{tc.dns(t)}, "timeout": "300ms"}}})
			// Two attempts of 300 ms per lookup, lookups partly in
			// parallel: seconds at most, far under a check's 20 s cap.
			const bound = 8 * time.Second

			rcpt := faultRcpt("example.com")
			r := Send(t, m.Addr, Envelope{From: "a@dead.test", To: []string{rcpt}, Data: faultMessage(rcpt, "dns "+tc.name)})
			if se := r.RcptErrs[rcpt]; se == nil || se.Code != 451 || se.EnhancedCode != [3]int{4, 7, 1} {
				t.Errorf("default policy: want 451 4.7.1 at RCPT: %s", r)
			}
			if r.Elapsed > bound {
				t.Errorf("default policy: the session waited %v", r.Elapsed)
			}
			ev := faultTxnEvent(m, rcpt)
			if s := ev.String(); !strings.Contains(s, `"spf":{`) || !strings.Contains(s, `"result":"temperror"`) || ev.Str("moat.action") != "tempfail" {
				t.Errorf("default policy: event %v", ev)
			}

			rcpt = faultRcpt("tolerant.test")
			r = Send(t, m.Addr, Envelope{From: "a@dead.test", To: []string{rcpt}, Data: faultMessage(rcpt, "dns tolerated "+tc.name)})
			if r.Stage != "" {
				t.Errorf("tolerant policy: %s", r)
			}
			if r.Elapsed > 2*bound { // RCPT's checks, then DATA's (DMARC)
				t.Errorf("tolerant policy: the session waited %v", r.Elapsed)
			}
			ev = faultTxnEvent(m, rcpt)
			if s := ev.String(); ev.Outcome() != "success" || !strings.Contains(s, `"result":"temperror"`) {
				t.Errorf("tolerant policy: event %v", ev)
			}
			if n := len(sink.WaitTransactions(1, waitTimeout)); n != 1 {
				t.Errorf("the upstream got %d transactions, want 1", n)
			}
		})
	}
}

// TestFaultRedisHungGreylist: a Redis that accepts connections but never
// answers (SIGSTOP) costs the greylist check its 500 ms timeout, then the
// check fails open: the message is accepted and the event says temperror.
// (TestGreylistFailsOpen covers a Redis that is gone.)
func TestFaultRedisHungGreylist(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	if srv == nil {
		return
	}
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), Policy: greylistPolicy,
		Extra: map[string]any{"greylist": map[string]any{"store": "redis"}, "redis": map[string]any{"addr": srv.Addr()}}})
	srv.Pause()
	t.Cleanup(srv.Resume) // before the server's own cleanup stops it
	rcpt := faultRcpt("example.com")
	r := Send(t, m.Addr, Envelope{From: "hung@sender.example", To: []string{rcpt}, Data: faultMessage(rcpt, "hung redis")})
	if r.Stage != "" {
		t.Fatalf("a hung Redis held mail back: %s", r)
	}
	if r.Elapsed > 10*time.Second {
		t.Errorf("the session waited %v for a hung Redis", r.Elapsed)
	}
	ev := faultTxnEvent(m, rcpt)
	if s := ev.String(); !strings.Contains(s, `"greylist":{`) || !strings.Contains(s, `"result":"temperror"`) {
		t.Errorf("event %v", ev)
	}
	stillServes(t, m, sink, "example.com")
}

// TestFaultRedisDownLogins: with redis.addr set and Redis stopped or hung,
// logins fall back to this process's own counters (README: "while Redis
// is unreachable each counts on its own"): the right password still logs
// in, wrong ones still lock the client out, and auth.redis_error says
// why.
func TestFaultRedisDownLogins(t *testing.T) {
	t.Parallel()
	for _, hung := range []bool{false, true} {
		name := map[bool]string{false: "stopped", true: "hung"}[hung]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.StartServer(t)
			if srv == nil {
				return
			}
			m := StartMoat(t, Config{Mailboxes: true, Routes: map[string]Route{"local.test": {Upstream: "local"}},
				Extra: map[string]any{
					"redis": map[string]any{"addr": srv.Addr()},
					"auth":  map[string]any{"failure_delays": []string{"10ms"}, "max_failures_per_ip": 3, "lockout": "1h"},
				}})
			m.ForbidInLog(mailboxPassword)
			const user = "dora@local.test"
			addUser(t, m, user, mailboxPassword)
			MustSend(t, m.Addr, Envelope{From: sender, To: []string{user}, Data: NewMessage(sender, user, "redis down").Bytes()})
			if hung {
				srv.Pause()
				t.Cleanup(srv.Resume)
			} else {
				srv.Stop()
			}
			url := "imaps://" + m.IMAPSAddr + "/INBOX;UID=1"
			start := time.Now()
			if r := curl(t, user, mailboxPassword, url); r.code != 0 {
				t.Fatalf("the right password with Redis %s: %s", name, r)
			}
			d := time.Since(start)
			if d > 15*time.Second {
				t.Errorf("a login with Redis %s took %v", name, d)
			}
			t.Logf("a login with Redis %s took %v (bcrypt and curl included)", name, d)
			for i := 0; i < 3; i++ {
				if r := curl(t, user, "wrong password", url); r.code == 0 {
					t.Fatalf("a wrong password was accepted: %s", r)
				}
			}
			if r := curl(t, user, mailboxPassword, url); r.code == 0 {
				t.Errorf("locked out in memory, yet the right password was accepted: %s", r)
			}
			m.WaitEvent("auth.redis_error", func(e Event) bool { return e.Action() == "auth.redis_error" })
			m.WaitEvent("imap.login locked", func(e Event) bool {
				return e.Action() == "imap.login" && e.Outcome() == "failure" && e.Str("moat.reason") == "locked_ip"
			})
		})
	}
}

// diskPolicy quarantines every message to hold.test; other mail passes.
const diskPolicy = `policy: default
checks: {}
---
policy: hold
applies_to: { recipient_domains: [hold.test] }
checks:
  size: { max: 10, action: quarantine }
`

// mountTmpfs mounts a tmpfs of size bytes on a new directory and unmounts
// it when the test ends. Mounting needs root (CI runs as root): elsewhere
// the test is skipped, under CI=true it fails.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("cannot mount a tmpfs for data_dir (needs root): %v %s", err, out)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// Registered after t.TempDir: runs before its removal, and after
	// moat (started later) has been stopped.
	t.Cleanup(func() { unmount(t, dir) })
	return dir
}

// unmount detaches the mount on dir (lazily: an open descriptor does not
// keep it).
func unmount(t testing.TB, dir string) {
	t.Helper()
	if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
		t.Errorf("umount %s: %v %s", dir, err, out)
	}
}

// readOnly makes dir read-only by a read-only bind mount over it, undone
// by the returned function. The filesystem itself is not remounted: moat
// holds greylist.db open for writing there, and the kernel refuses to
// make such a filesystem read-only (EBUSY); every file opened or created
// after this gets EROFS, as on a disk the kernel remounted read-only.
func readOnly(t *testing.T, dir string) (undo func()) {
	t.Helper()
	for _, args := range [][]string{{"--bind", dir, dir}, {"-o", "remount,bind,ro", dir}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v: %v %s", args, err, out)
		}
	}
	var done bool
	undo = func() {
		if !done {
			done = true
			unmount(t, dir)
		}
	}
	t.Cleanup(undo)
	return undo
}

// fillDisk writes a file in dir until the filesystem is full and returns
// its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for i := 0; ; i++ {
		if i > 1<<16 {
			t.Fatalf("%s never filled up", dir)
		}
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			return path
		}
	}
}

// mailFiles lists the messages under data_dir/mail, tmp/ included (not
// the moat-uidlist files): a failed delivery must add none.
func mailFiles(dataDir string) []string {
	return slices.DeleteFunc(regularFiles(filepath.Join(dataDir, "mail")), func(p string) bool {
		return strings.HasPrefix(filepath.Base(p), "moat-")
	})
}

// regularFiles lists the regular files under dir.
func regularFiles(dir string) []string {
	var files []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	return files
}

// TestFaultDataDirFullOrReadOnly: with data_dir on a full or read-only
// filesystem, local delivery and the quarantine answer 452 4.3.1 (the
// client retries; nothing half-written is kept), a message too large for
// the in-memory spool gets a 4xx, while routes to an upstream with
// messages under smtp.spool_memory never touch the disk and keep
// delivering. Once the disk has room again, local delivery works; and
// moat stops cleanly (exit 0) on a full, read-only data_dir.
func TestFaultDataDirFullOrReadOnly(t *testing.T) {
	t.Parallel()
	data := mountTmpfs(t, 512<<10)
	sink := smtptest.NewSink(t)
	holdSink := smtptest.NewSink(t) // hold.test is quarantined: never used
	m := StartMoat(t, Config{Policy: diskPolicy,
		Routes: map[string]Route{"example.com": {Upstream: sink.Addr()}, "local.test": {Upstream: "local"}, "hold.test": {Upstream: holdSink.Addr()}},
		Extra:  map[string]any{"data_dir": data, "smtp": map[string]any{"spool_memory": "64KiB"}}})

	send := func(domain string, size int) (string, SendResult) {
		rcpt := faultRcpt(domain)
		msg := NewMessage(sender, rcpt, "disk fault")
		line := strings.Repeat("x", 76)
		for n := len(msg.Bytes()); n < size; n += len(line) + 2 {
			msg.BodyLines = append(msg.BodyLines, line)
		}
		return rcpt, Send(t, m.Addr, Envelope{From: sender, To: []string{rcpt}, Data: msg.Bytes()})
	}
	// Local delivery works before the fault (and creates mail/).
	if _, r := send("local.test", 1000); r.Stage != "" {
		t.Fatalf("local delivery on a healthy disk: %s", r)
	}
	healthyFiles := mailFiles(data)

	// waitNewEvent waits until there is one more event of that action than
	// before.
	waitNewEvent := func(t *testing.T, action string, before int) {
		t.Helper()
		m.WaitEvent(fmt.Sprintf("event %s number %d", action, before+1), func(e Event) bool {
			return e.Action() == action && len(filterEvents(m.Events(), func(e Event) bool { return e.Action() == action })) > before
		})
	}
	countEvents := func(action string) int {
		return len(filterEvents(m.Events(), func(e Event) bool { return e.Action() == action }))
	}

	check := func(t *testing.T) {
		for _, c := range []struct{ what, domain, event string }{
			{"local delivery", "local.test", "smtp.local_delivery_error"},
			{"quarantine", "hold.test", "smtp.quarantine_error"},
		} {
			errorsBefore := countEvents(c.event)
			rcpt, r := send(c.domain, 1000)
			if r.Stage != StageEOD || r.Err == nil || r.Err.Code != 452 || r.Err.EnhancedCode != [3]int{4, 3, 1} {
				t.Errorf("%s: want 452 4.3.1 at the end of data, got %s", c.what, r)
			}
			if r.Err == nil || r.Err.Code/100 != 4 {
				t.Errorf("%s: the client must hear a 4xx (and retry): %s", c.what, r)
			}
			if ev := faultTxnEvent(m, rcpt); ev.Outcome() != "failure" {
				t.Errorf("%s: event %v", c.what, ev)
			}
			waitNewEvent(t, c.event, errorsBefore)
		}
		if got := mailFiles(data); !slices.Equal(got, healthyFiles) {
			t.Errorf("the store holds %v, want only %v", got, healthyFiles)
		}
		if got := regularFiles(filepath.Join(data, "quarantine")); len(got) != 0 {
			t.Errorf("the quarantine holds %v", got)
		}
		if n := len(holdSink.Transactions()); n != 0 {
			t.Errorf("a quarantined message went to its route's upstream (%d transactions)", n)
		}
		// Routes that do not need the disk keep delivering.
		before := len(sink.Accepted())
		if _, r := send("example.com", 1000); r.Stage != "" {
			t.Errorf("upstream route, message in memory: %s", r)
		}
		// A message over spool_memory needs the disk: a 4xx, not a crash.
		spoolBefore := countEvents("smtp.spool_error")
		if _, r := send("example.com", 100<<10); r.Err == nil || r.Err.Code/100 != 4 {
			t.Errorf("upstream route, message over spool_memory: want a 4xx, got %s", r)
		}
		waitNewEvent(t, "smtp.spool_error", spoolBefore)
		if n := len(sink.Accepted()) - before; n != 1 {
			t.Errorf("the upstream accepted %d messages, want 1", n)
		}
		stillServes(t, m, sink, "example.com")
	}

	t.Run("full", func(t *testing.T) {
		filler := fillDisk(t, data)
		check(t)
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("read-only", func(t *testing.T) {
		undo := readOnly(t, data)
		check(t)
		undo()
	})
	// With room again, the disk is used again.
	if _, r := send("local.test", 1000); r.Stage != "" {
		t.Errorf("local delivery after the disk recovered: %s", r)
	}
	// SIGTERM on a full, read-only data_dir still ends moat with 0.
	fillDisk(t, data)
	readOnly(t, data)
	m.Stop()
}
