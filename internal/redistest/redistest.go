// Package redistest runs throwaway redis-server processes for tests: each on
// a free 127.0.0.1 port, without persistence, in the test's own temporary
// directory, and stopped by PID when the test ends. The machine's Redis
// service, if any, is never used.
//
// A missing redis-server skips the test on a developer machine and fails it
// under CI=true (see smtptest.RequireTool): scripts/test installs it.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"moat/internal/syncbuf"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"moat/internal/smtptest"
)

const (
	// startTimeout bounds how long a redis-server may take to answer PING.
	startTimeout = 10 * time.Second
	// stopTimeout is how long a redis-server gets after SIGTERM before
	// SIGKILL.
	stopTimeout = 5 * time.Second
)

// Start starts a redis-server for t and returns its "127.0.0.1:port". It
// answers PING when Start returns and is stopped at t's cleanup.
func Start(t testing.TB) string {
	t.Helper()
	s := StartServer(t)
	if s == nil {
		return ""
	}
	return s.Addr()
}

// Stop stops the server that Start returned addr for (see Server.Stop);
// Restart brings it back on the same address.
func Stop(t testing.TB, addr string) {
	t.Helper()
	if s := lookup(t, addr); s != nil {
		s.Stop()
	}
}

// Restart restarts the server that Start returned addr for (see
// Server.Restart).
func Restart(t testing.TB, addr string) {
	t.Helper()
	if s := lookup(t, addr); s != nil {
		s.restart(t)
	}
}

// running holds the servers started and not yet cleaned up, by address,
// for Stop and Restart.
var running sync.Map // string → *Server

func lookup(t testing.TB, addr string) *Server {
	t.Helper()
	s, ok := running.Load(addr)
	if !ok {
		t.Fatalf("redistest: no server of this package runs on %q", addr)
		return nil
	}
	return s.(*Server)
}

// Server is one redis-server started by StartServer. Its methods call
// t.Fatalf on failure, so call them from the test's goroutine.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	addr string
	out  syncbuf.Buffer // every run's output, logged when the test fails

	mu   sync.Mutex
	proc *process // nil while stopped
}

// process is one run of redis-server.
type process struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed once Wait returned
	waitErr error         // read after exited is closed
}

// StartServer is Start for tests that also stop, restart or pause the
// server. It returns nil only when t's Skipf/Fatalf return, which the real
// testing.T never does.
func StartServer(t testing.TB) *Server {
	t.Helper()
	bin := smtptest.RequireTool(t, "redis-server")
	if bin == "" {
		return nil
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	const attempts = 3
	for i := 1; ; i++ {
		port, err := smtptest.FreePort()
		if err != nil {
			t.Fatalf("redistest: free port: %v", err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p, err := s.spawn(addr)
		if err == nil {
			s.addr, s.proc = addr, p
			break
		}
		if i == attempts || !errors.Is(err, errPortTaken) {
			t.Fatalf("redistest: %v", err)
		}
	}
	running.Store(s.addr, s)
	t.Cleanup(func() {
		running.Delete(s.addr)
		s.mu.Lock()
		p := s.proc
		s.proc = nil
		s.mu.Unlock()
		if p != nil {
			p.stop()
		}
		if t.Failed() {
			t.Logf("redis-server %s output:\n%s", s.addr, s.out.String())
		}
	})
	return s
}

// Addr returns the server's "127.0.0.1:port"; it stays the same across
// Stop and Restart.
func (s *Server) Addr() string { return s.addr }

// PID returns the process ID of the running redis-server, or 0 when it is
// stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Stop stops the server by PID (SIGTERM, SIGKILL after 5s) and waits until
// it has exited: its port then refuses connections. Its data is lost (no
// persistence). Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.t.Helper()
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

// Restart stops the server if it runs, then starts a new, empty one on the
// same address and waits until it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	s.restart(s.t)
}

func (s *Server) restart(t testing.TB) {
	t.Helper()
	s.Stop()
	// Redis listens with SO_REUSEADDR, so the old server's connections in
	// TIME_WAIT do not hold the port; only another program taking the port
	// in between does, and then the port is gone for good.
	p, err := s.spawn(s.addr)
	if err != nil {
		t.Fatalf("redistest: restart: %v", err)
		return
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
}

// Pause stops the server with SIGSTOP: the kernel still accepts
// connections on its port, but nothing answers, as with a hung Redis.
// Resume (or Stop, or the test's cleanup) lets it run again.
func (s *Server) Pause() { s.signal("pause", syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() { s.signal("resume", syscall.SIGCONT) }

func (s *Server) signal(what string, sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		s.t.Fatalf("redistest: %s %s: the server is stopped", what, s.addr)
		return
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("redistest: %s %s (pid %d): %v", what, s.addr, p.cmd.Process.Pid, err)
	}
}

var errPortTaken = errors.New("port taken")

// spawn starts redis-server on addr and waits until it answers PING.
func (s *Server) spawn(addr string) (*process, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	args := []string{
		"--port", port,
		"--bind", host,
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--logfile", "",
		"--loglevel", "warning",
	}
	mark := s.out.Len()
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = &s.out, &s.out
	cmd.SysProcAttr = childAttr()
	cmd.WaitDelay = stopTimeout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()

	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		lastErr := ping(addr, time.Second)
		if lastErr == nil {
			return p, nil
		}
		select {
		case <-p.exited:
			msg := s.out.Since(mark)
			if strings.Contains(msg, "in use") {
				return nil, fmt.Errorf("%w: redis-server on %s: %s", errPortTaken, addr, msg)
			}
			return nil, fmt.Errorf("redis-server %s exited early (%v): %s", strings.Join(args, " "), p.waitErr, msg)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("redis-server on %s did not answer PING within %v (last: %v): %s", addr, startTimeout, lastErr, s.out.Since(mark))
		}
	}
}

// stop ends the process by PID and waits for it.
func (p *process) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Process.Signal(syscall.SIGCONT) // a paused server must run to exit
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// ping sends one inline PING and wants +PONG back.
func ping(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}
