package redistest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStartStopRestart(t *testing.T) {
	s := StartServer(t)
	addr := s.Addr()
	if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
		t.Fatalf("Addr() = %q, want 127.0.0.1:port", addr)
	}
	if err := ping(addr, time.Second); err != nil {
		t.Fatalf("PING after StartServer: %v", err)
	}
	pid := s.PID()
	if pid == 0 {
		t.Fatal("PID() = 0 while running")
	}

	s.Stop()
	if s.PID() != 0 {
		t.Errorf("PID() = %d after Stop, want 0", s.PID())
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Stop", addr)
	}
	s.Stop() // stopping twice is harmless

	s.Restart()
	if s.Addr() != addr {
		t.Errorf("Addr() = %q after Restart, want %q", s.Addr(), addr)
	}
	if err := ping(addr, time.Second); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if s.PID() == pid || s.PID() == 0 {
		t.Errorf("PID() = %d after Restart, was %d: want a new process", s.PID(), pid)
	}
	s.Restart() // restarting a running server replaces it
	if err := ping(addr, time.Second); err != nil {
		t.Fatalf("PING after second Restart: %v", err)
	}
}

func TestPauseResume(t *testing.T) {
	s := StartServer(t)
	s.Pause()
	err := ping(s.Addr(), 200*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("PING to a paused server: %v, want a timeout", err)
	}
	s.Resume()
	if err := ping(s.Addr(), time.Second); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
	s.Pause() // the cleanup must stop a paused server too
}

func TestNoPersistence(t *testing.T) {
	s := StartServer(t)
	s.Restart()
	s.Stop()
	// No dump.rdb, no appendonly files: --save '' --appendonly no.
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("redis-server left %s in its directory", filepath.Join(s.dir, e.Name()))
	}
}

func TestStartTwo(t *testing.T) {
	a, b := Start(t), Start(t)
	if a == b {
		t.Fatalf("two servers on one address %s", a)
	}
	for _, addr := range []string{a, b} {
		if err := ping(addr, time.Second); err != nil {
			t.Errorf("PING %s: %v", addr, err)
		}
	}
}

func TestStopRestartByAddr(t *testing.T) {
	addr := Start(t)
	Stop(t, addr)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Stop", addr)
	}
	Restart(t, addr)
	if err := ping(addr, time.Second); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
}

func TestUnknownAddr(t *testing.T) {
	ft := &fatalRecorder{TB: t}
	func() {
		defer func() { recover() }() // fatalRecorder panics to stop like FailNow
		Stop(ft, "127.0.0.1:1")
	}()
	if !strings.Contains(ft.msg, "no server") {
		t.Errorf("Stop of an unknown address: %q, want a fatal error", ft.msg)
	}
}

type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(f)
}
