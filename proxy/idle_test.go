package proxy

import (
	"context"
	"testing"
	"time"

	"moat/internal/smtptest"
)

// waitFreed polls until the server's idle sessions have given back n read
// buffers in all.
func waitFreed(t *testing.T, ts *testServer, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for ts.srv.idleFreed.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d read buffers given back, want %d", ts.srv.idleFreed.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestIdleSessionGivesBackReadBuffer: a session idle longer than
// idleRelease holds no read buffer, and the dialogue goes on as before
// when the client speaks again: a plain command, pipelined commands and
// a message, STARTTLS and commands over TLS, a command split over two
// writes.
func TestIdleSessionGivesBackReadBuffer(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), ""), "")
	ts.srv.idleRelease.Store(int64(5 * time.Millisecond))
	c := dial(t, ts.addr)
	waitFreed(t, ts, 1)
	c.cmd("EHLO client.example.net", "250")
	waitFreed(t, ts, 2)
	c.send("MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("354 ")
	c.send(stuffed + ".\r\n")
	c.expect("250 ")
	waitFreed(t, ts, 3)
	// The first byte wakes the session; the rest of the line comes later.
	c.send("NO")
	c.cmd("OP", "250 ")
	waitFreed(t, ts, 4)
	c.startTLS()
	waitFreed(t, ts, 5)
	c.cmd("EHLO client.example.net", "250")
	waitFreed(t, ts, 6)
	c.cmd("NOOP", "250 ")
	c.cmd("QUIT", "221 ")
	if n := len(sink.Accepted()); n != 1 {
		t.Errorf("%d messages delivered, want 1", n)
	}
}

// TestIdleReleasedSessionShutdown: a session waiting without its buffer
// is told 421 at shutdown at once, and one timing out gets its 421 at the
// command deadline.
func TestIdleReleasedSessionShutdown(t *testing.T) {
	ts := startServer(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  timeouts: { command: 300ms }\n", "")
	ts.srv.idleRelease.Store(int64(5 * time.Millisecond))
	slow := dial(t, ts.addr)
	start := time.Now()
	slow.expect("421 4.4.2 ")
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("timed out after %v, want the 300ms command timeout", d)
	}
	idle := dial(t, ts.addr)
	waitFreed(t, ts, 2)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ts.srv.Shutdown(ctx)
	}()
	idle.expect("421 4.3.2 ")
}
