package accept

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errClosed = errors.New("test: server closed")

// sess reads until its connection is closed; busy sessions are marked
// through IfOpen, as the servers do.
type sess struct {
	ss      *Sessions[*sess]
	started chan<- *sess
	c       net.Conn
	busy    bool
	aborted chan struct{}
}

func (s *sess) Serve() {
	defer s.ss.Done(s)
	s.started <- s // registered by now: Serve runs only for tracked sessions
	var b [1]byte
	s.c.Read(b[:]) // until Abort or the client closes
	s.c.Close()
}
func (s *sess) Abort()     { close(s.aborted); s.c.Close() }
func (s *sess) Busy() bool { return s.busy }

type fixture struct {
	ss      Sessions[*sess]
	ln      net.Listener
	started chan *sess
	served  chan error
}

func start(t *testing.T) *fixture {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ln: ln, started: make(chan *sess, 10), served: make(chan error, 1)}
	go func() {
		f.served <- f.ss.Serve(ln, "test", errClosed, func(c net.Conn) *sess {
			return &sess{ss: &f.ss, started: f.started, c: c, aborted: make(chan struct{})}
		}, func(err error) { t.Errorf("accept error: %v", err) })
	}()
	return f
}

func (f *fixture) dial(t *testing.T) (net.Conn, *sess) {
	c, err := net.Dial("tcp", f.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	select {
	case s := <-f.started:
		return c, s
	case <-time.After(5 * time.Second):
		t.Fatal("no session started")
	}
	return nil, nil
}

// TestShutdown: idle sessions are cut at once, busy ones may finish; a
// session can no longer become busy; Serve returns the closed error.
func TestShutdown(t *testing.T) {
	f := start(t)
	_, idle := f.dial(t)
	busyConn, busy := f.dial(t)
	if !f.ss.IfOpen(func() { busy.busy = true }) {
		t.Fatal("IfOpen before Shutdown did not run")
	}
	done := make(chan error, 1)
	go func() { done <- f.ss.Shutdown(context.Background()) }()
	select {
	case <-idle.aborted:
	case <-time.After(5 * time.Second):
		t.Fatal("the idle session was not aborted")
	}
	if err := <-f.served; !errors.Is(err, errClosed) {
		t.Errorf("Serve returned %v, want the closed error", err)
	}
	if f.ss.IfOpen(func() { t.Error("IfOpen ran during Shutdown") }) || !f.ss.Closing() {
		t.Error("IfOpen or Closing: not shutting down")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v while a busy session runs", err)
	case <-time.After(50 * time.Millisecond): // it must still be waiting
	}
	busyConn.Close() // the busy session ends by itself
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case <-busy.aborted:
		t.Error("the busy session was aborted")
	default:
	}
	if err := f.ss.Serve(f.ln, "again", errClosed, nil, nil); !errors.Is(err, errClosed) {
		t.Errorf("Serve after Shutdown: %v", err)
	}
}

// TestShutdownDeadline: a busy session still running when ctx ends is
// aborted, and Shutdown returns ctx's error once it has returned.
func TestShutdownDeadline(t *testing.T) {
	f := start(t)
	_, busy := f.dial(t)
	f.ss.IfOpen(func() { busy.busy = true })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := f.ss.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want the deadline", err)
	}
	select {
	case <-busy.aborted:
	default:
		t.Error("the busy session was not aborted at the deadline")
	}
	<-f.served
}
