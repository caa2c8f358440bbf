package mailproxy

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Shutdown ends pre-auth sessions at once and cuts spliced ones when its
// context ends.
func TestShutdown(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "imap", upstream: Upstream{Addr: up.imap}, clearOK: true})
	pre := dialLine(t, p.plain, nil)
	pre.expect("* OK")
	in := dialLine(t, p.plain, nil)
	in.expect("* OK")
	in.send("a LOGIN " + alice + " " + password + "\r\n")
	in.expect("a OK")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.srv.Shutdown(ctx) }()
	pre.closed()
	// The spliced session still works.
	in.send("b NOOP\r\n")
	in.until("b OK")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a session open", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown = %v", err)
	}
	in.closed()
	ev := p.waitEvents(t, "imap.proxy_session", 1)
	if ev[0]["source.bytes"].(int64) != int64(len("b NOOP\r\n")) {
		t.Errorf("event %v", ev[0])
	}
}

// A spliced session quiet both ways for the idle timeout is ended; one
// direction busy keeps it alive.
func TestSpliceIdle(t *testing.T) {
	up := startUpstreams(t, testMessages)
	p := startProxy(t, proxyOptions{protocol: "pop3", upstream: Upstream{Addr: up.pop3}, clearOK: true,
		o: Options{IdleTimeout: 300 * time.Millisecond}})
	c := dialLine(t, p.plain, nil)
	c.expect("+OK")
	c.send("USER " + alice + "\r\nPASS " + password + "\r\n")
	c.expect("+OK send PASS")
	c.expect("+OK Logged in")
	start := time.Now()
	c.closed()
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("closed after %v", d)
	}
	ev := p.waitEvents(t, "pop3.proxy_session", 1)
	if !strings.HasPrefix(ev[0]["moat.upstream"].(string), "127.0.0.1:") {
		t.Errorf("event %v", ev[0])
	}
}
