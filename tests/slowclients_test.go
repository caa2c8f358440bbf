//go:build linux

package tests

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"moat/internal/smtptest"
)

// Stage timeouts of the slow-client test: every idle or slow connection
// must be cut off by one of them. The command timeout must outlast the
// opening of all the idle connections, so that the legitimate client is
// measured while they are all open.
func slowTimeouts() (command, data time.Duration) {
	if *soak {
		return 15 * time.Second, 20 * time.Second
	}
	return 5 * time.Second, 7 * time.Second
}

// TestSlowClients: N idle connections (1,000; 10,000 with -soak) and a few
// clients that send one byte per second, in commands and in DATA. A
// legitimate client's whole transaction still completes at once; every
// idle or slow connection is cut off by its stage timeout with 421 4.4.2;
// moat's descriptors come back to where they were and it keeps serving.
func TestSlowClients(t *testing.T) {
	n := 1000
	if *soak {
		n = 10000
	} else {
		t.Parallel() // with -soak, alone: the idle tests' sockets would add up
	}
	raiseFDLimit(t)
	cmdTimeout, dataTimeout := slowTimeouts()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{
		Timeouts: map[string]string{"command": cmdTimeout.String(), "data": dataTimeout.String()},
		Routes:   defaultRoutes(sink.Addr()),
		Extra:    noLimits,
	})
	pid := moatPID(m)
	t.Logf("moat (pid %d): %s", pid, procLimit(t, pid, "Max open files"))
	legit := func(subject string) time.Duration {
		t.Helper()
		r := MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: NewMessage(sender, rcptBob, subject).Bytes()})
		return r.Elapsed
	}
	idleLatency := legit("before the load")
	fdsBefore := procFDs(t, pid)

	start := time.Now()
	conns := openIdle(t, m.Addr, n, cmdTimeout)
	slow := []*watchedConn{}
	for range 3 {
		slow = append(slow,
			openWatched(t, m.Addr, "idle after EHLO", cmdTimeout),
			openWatched(t, m.Addr, "idle in DATA", cmdTimeout), // each read of a body within the command timeout
			openWatched(t, m.Addr, "one byte/s command", cmdTimeout),
			openWatched(t, m.Addr, "one byte/s DATA", dataTimeout), // the whole body within the data timeout
		)
	}
	opened := time.Since(start)
	fdsLoaded := procFDs(t, pid)

	// The legitimate client, while every idle connection is open.
	var lat []time.Duration
	for i := range 5 {
		lat = append(lat, legit(fmt.Sprintf("under load %d", i)))
	}
	stillOpen := 0
	for _, c := range conns {
		if !c.isClosed() {
			stillOpen++
		}
	}
	slices.Sort(lat)
	t.Logf("%d idle connections opened in %v; moat's descriptors %d before, %d with them open", n, opened.Round(time.Millisecond), fdsBefore, fdsLoaded)
	t.Logf("legitimate transaction: %v with no load; with %d idle and %d slow connections open: median %v, max %v (%d of the idle still open after)",
		idleLatency.Round(time.Microsecond), n, len(slow), lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond), stillOpen)
	if bound := 5 * time.Second; lat[len(lat)-1] > bound {
		t.Errorf("a legitimate transaction took %v with %d idle connections open, want under %v", lat[len(lat)-1], n, bound)
	}
	if fdsLoaded < fdsBefore+n {
		t.Errorf("moat holds %d descriptors with %d connections open (%d before): not all of them reached it", fdsLoaded, n, fdsBefore)
	}
	if stillOpen < n {
		t.Errorf("%d idle connections were closed before the legitimate client finished: opening them took %v, the command timeout is %v", n-stillOpen, opened, cmdTimeout)
	}

	// Every idle and slow connection is cut off by its stage timeout.
	all := append(conns, slow...)
	waitClosed(t, all, dataTimeout+time.Minute)
	checkCutOff(t, all)

	// The descriptors come back and moat keeps serving.
	var fdsAfter int
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	pollUntil(ctx, func() bool { fdsAfter = procFDs(t, pid); return fdsAfter <= fdsBefore+2 })
	t.Logf("moat's descriptors %d after the cut-offs (%d before)", fdsAfter, fdsBefore)
	if fdsAfter > fdsBefore+2 {
		t.Errorf("moat holds %d descriptors after every idle connection was cut off, %d before", fdsAfter, fdsBefore)
	}
	after := legit("after the load")
	t.Logf("legitimate transaction after the cut-offs: %v", after.Round(time.Microsecond))
	checkNoAcceptErrors(t, m)
}

// TestIdleMemory: moat's resident memory per idle SMTP connection (2,000
// connections; 10,000 with -soak), from /proc/PID/status before and with
// them open. Target: 40 KiB or less, checked without -race only (the race
// detector inflates memory several times; measure with
// `go test ./tests -run TestIdleMemory -soak`).
func TestIdleMemory(t *testing.T) {
	n := 2000
	if *soak {
		n = 10000
	} else {
		t.Parallel()
	}
	raiseFDLimit(t)
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), Extra: noLimits})
	pid := moatPID(m)
	// Warm up: a transaction and a few connections, so that pools and
	// lazily built state are in the baseline.
	MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: NewMessage(sender, rcptBob, "warm-up").Bytes()})
	for _, c := range openIdle(t, m.Addr, 20, time.Minute) {
		c.conn.Close()
	}
	metricNames := []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes"}
	rssBefore := procStatusKiB(t, pid, "VmRSS")
	metricsBefore := metricValues(t, m.AdminAddr, metricNames...)

	conns := openIdle(t, m.Addr, n, time.Minute)
	rssAfter := procStatusKiB(t, pid, "VmRSS")
	metricsAfter := metricValues(t, m.AdminAddr, metricNames...)
	hwm := procStatusKiB(t, pid, "VmHWM")
	for _, c := range conns {
		c.conn.Close()
	}

	perConn := float64(rssAfter-rssBefore) / float64(n)
	per := func(name string) float64 { return (metricsAfter[name] - metricsBefore[name]) / float64(n) }
	build := "moat built without -race"
	if raceEnabled {
		build = "moat built WITH -race: inflated, not the figure to quote"
	}
	t.Logf("%d idle connections: VmRSS %d KiB before, %d KiB with them open (VmHWM %d KiB): %.1f KiB per connection (%s)",
		n, rssBefore, rssAfter, hwm, perConn, build)
	t.Logf("per connection: %.2f goroutines, heap in use %.1f KiB, stacks %.1f KiB",
		per("go_goroutines"), per("go_memstats_heap_inuse_bytes")/1024, per("go_memstats_stack_inuse_bytes")/1024)
	if !raceEnabled && perConn > 40 {
		t.Errorf("%.1f KiB of resident memory per idle connection, want 40 KiB or less", perConn)
	}
}

// watchedConn is one client connection that does nothing useful; a
// goroutine reads it until the server closes it.
type watchedConn struct {
	kind  string
	conn  net.Conn
	mark  time.Time     // when the stage whose timeout must cut it off began, as the client saw it
	limit time.Duration // that timeout

	done     chan struct{}
	closed   atomic.Bool
	closedAt time.Time // set before done is closed
	got      []byte    // everything read after mark
	err      error     // the error that ended the reads
}

func (c *watchedConn) isClosed() bool { return c.closed.Load() }

// openIdle opens n connections that read the greeting and then say
// nothing, 64 at a time; limit is the timeout expected to cut them off.
func openIdle(t *testing.T, addr string, n int, limit time.Duration) []*watchedConn {
	t.Helper()
	conns := make([]*watchedConn, n)
	errs := make(chan error, n)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for range min(64, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := dialWatched(addr, "idle", limit)
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	close(errs)
	for _, c := range conns {
		if c != nil {
			t.Cleanup(func() { c.conn.Close() })
		}
	}
	if err := <-errs; err != nil {
		t.Fatalf("opening %d idle connections: %v", n, err)
	}
	return conns
}

// openWatched opens one connection of the given kind (see dialWatched).
func openWatched(t *testing.T, addr, kind string, limit time.Duration) *watchedConn {
	t.Helper()
	c, err := dialWatched(addr, kind, limit)
	if err != nil {
		t.Fatalf("opening a %q connection: %v", kind, err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

// dialWatched connects, brings the session to the stage of kind and
// starts reading in the background:
//
//	idle                after the greeting, nothing
//	idle after EHLO     after the EHLO reply, nothing
//	idle in DATA        after 354, nothing
//	one byte/s command  after the greeting, an EHLO line one byte a second
//	one byte/s DATA     after 354, a message one byte a second
func dialWatched(addr, kind string, limit time.Duration) (*watchedConn, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c := &watchedConn{kind: kind, conn: conn, limit: limit, done: make(chan struct{})}
	br := bufio.NewReaderSize(conn, 512)
	conn.SetDeadline(time.Now().Add(waitTimeout))
	step := func(cmd, want string) error {
		if cmd != "" {
			if _, err := io.WriteString(conn, cmd+"\r\n"); err != nil {
				return err
			}
		}
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return fmt.Errorf("%s: %w", cmd, err)
			}
			if !strings.HasPrefix(l, want) {
				return fmt.Errorf("%s: reply %q, want %s", cmd, l, want)
			}
			if len(l) < 4 || l[3] != '-' {
				return nil
			}
		}
	}
	var script [][2]string
	switch kind {
	case "idle", "one byte/s command":
		script = [][2]string{{"", "220"}}
	case "idle after EHLO":
		script = [][2]string{{"", "220"}, {"EHLO idle.example.net", "250"}}
	case "idle in DATA", "one byte/s DATA":
		script = [][2]string{{"", "220"}, {"EHLO idle.example.net", "250"}, {"MAIL FROM:<" + sender + ">", "250"},
			{"RCPT TO:<" + rcptBob + ">", "250"}, {"DATA", "354"}}
	default:
		conn.Close()
		return nil, fmt.Errorf("unknown kind %q", kind)
	}
	for _, s := range script {
		if err := step(s[0], s[1]); err != nil {
			conn.Close()
			return nil, fmt.Errorf("%s connection: %w", kind, err)
		}
	}
	c.mark = time.Now()
	conn.SetDeadline(time.Time{})
	// Bounded: a server that never cuts it off fails the test, not hangs it.
	conn.SetReadDeadline(c.mark.Add(limit + time.Minute))
	go c.read(br)
	switch kind {
	case "one byte/s command":
		go c.dribble("EHLO " + strings.Repeat("s", 4*int(limit.Seconds())) + ".example.net\r\n")
	case "one byte/s DATA":
		go c.dribble("Subject: slow\r\n\r\n" + strings.Repeat("d", 4*int(limit.Seconds())) + "\r\n.\r\n")
	}
	return c, nil
}

func (c *watchedConn) read(br *bufio.Reader) {
	buf := make([]byte, 256)
	for {
		n, err := br.Read(buf)
		c.got = append(c.got, buf[:n]...)
		if err != nil {
			c.err = err
			c.closedAt = time.Now()
			c.closed.Store(true)
			close(c.done)
			return
		}
	}
}

// dribble writes s one byte a second until it is written, the server
// closes the connection or a write fails.
func (c *watchedConn) dribble(s string) {
	tick := time.NewTicker(time.Second) // the pace of a slow client
	defer tick.Stop()
	for i := range len(s) {
		select {
		case <-c.done:
			return
		case <-tick.C:
		}
		c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.conn.Write([]byte{s[i]}); err != nil {
			return
		}
	}
}

// waitClosed waits until the server has closed every connection, or
// fails the test after timeout.
func waitClosed(t *testing.T, conns []*watchedConn, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i, c := range conns {
		select {
		case <-c.done:
		case <-deadline.C:
			t.Fatalf("connection %d (%s) and maybe others still open %v after the timeouts", i, c.kind, timeout)
		}
	}
}

// checkCutOff checks that each connection was closed by the server with
// 421 4.4.2 about its stage timeout after it began, and reports the
// spread per kind.
func checkCutOff(t *testing.T, conns []*watchedConn) {
	t.Helper()
	type spread struct {
		n        int
		min, max time.Duration
		limit    time.Duration
	}
	kinds := map[string]*spread{}
	var order []string
	bad := 0
	for _, c := range conns {
		took := c.closedAt.Sub(c.mark)
		s := kinds[c.kind]
		if s == nil {
			s = &spread{min: took, max: took, limit: c.limit}
			kinds[c.kind] = s
			order = append(order, c.kind)
		}
		s.n++
		s.min, s.max = min(s.min, took), max(s.max, took)
		var problem string
		var ne net.Error
		switch {
		case errors.As(c.err, &ne) && ne.Timeout():
			problem = "the server never closed it"
		case !strings.Contains(string(c.got), "421 4.4.2"):
			problem = fmt.Sprintf("closed without 421 4.4.2 (got %q, %v)", c.got, c.err)
		case took < c.limit*3/4: // the client may see the greeting late under load, never 1/4 of the timeout late
			problem = fmt.Sprintf("cut off after %v, before its timeout of %v", took, c.limit)
		case took > c.limit+10*time.Second:
			problem = fmt.Sprintf("cut off only after %v, its timeout is %v", took, c.limit)
		}
		if problem != "" {
			if bad < 10 {
				t.Errorf("%s connection: %s", c.kind, problem)
			}
			bad++
		}
	}
	if bad > 10 {
		t.Errorf("... %d connections in all were not cut off as they should be", bad)
	}
	for _, k := range order {
		s := kinds[k]
		t.Logf("%5d %-18s cut off after %v..%v (timeout %v)", s.n, k, s.min.Round(time.Millisecond), s.max.Round(time.Millisecond), s.limit)
	}
}

// checkNoAcceptErrors fails if moat logged a failed accept (out of
// descriptors, most likely).
func checkNoAcceptErrors(t *testing.T, m *Moat) {
	t.Helper()
	for _, e := range m.Events() {
		if e.Action() == "smtp.accept_error" {
			t.Errorf("moat could not accept: %v", e)
		}
	}
}

// raiseFDLimit lifts this process's soft RLIMIT_NOFILE to its hard limit;
// moat, started afterwards, inherits it. It logs what it could do.
func raiseFDLimit(t *testing.T) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Logf("getrlimit: %v", err)
		return
	}
	was := lim.Cur
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Logf("RLIMIT_NOFILE stays %d (hard %d): %v", was, lim.Max, err)
		return
	}
	t.Logf("RLIMIT_NOFILE of the test process: %d (was %d, hard %d)", lim.Cur, was, lim.Max)
}

func moatPID(m *Moat) int { return m.proc.cmd.Process.Pid }

// procFDs counts the open descriptors of process pid.
func procFDs(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("moat's descriptors: %v", err)
	}
	return len(entries)
}

// procStatusKiB reads a "kB" line of /proc/PID/status, like VmRSS.
func procStatusKiB(t *testing.T, pid int, key string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/status: %q: %v", pid, l, err)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, key)
	return 0
}

// procLimit returns the line of /proc/PID/limits that starts with name.
func procLimit(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name) {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return name + ": not in /proc/PID/limits"
}

// metricValues scrapes moat's /metrics for unlabelled values by name.
func metricValues(t *testing.T, adminAddr string, names ...string) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+adminAddr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scraping /metrics: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if ok && slices.Contains(names, name) {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				out[name] = f
			}
		}
	}
	return out
}
