package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"sync"
	"time"
)

// openIdle opens n connections to addr, par at a time, and reads each
// greeting; with ehlo it also sends EHLO helo and reads the reply. The
// connections are then left idle. It returns those that got there and the
// errors of the others.
func openIdle(ctx context.Context, addr string, n, par int, ehlo bool, helo string, timeout time.Duration) ([]net.Conn, []error) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		errs  []error
		wg    sync.WaitGroup
	)
	next := make(chan struct{})
	for range min(par, n) {
		wg.Go(func() {
			for range next {
				c, err := dialIdle(ctx, addr, ehlo, helo, timeout)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		})
	}
	for range n {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	return conns, errs
}

// dialIdle opens one connection and takes it to the idle state: after the
// greeting, or after EHLO. textproto rather than go-smtp's client, which
// has no way to read the greeting alone.
func dialIdle(ctx context.Context, addr string, ehlo bool, helo string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	conn.SetDeadline(time.Now().Add(timeout))
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if ehlo {
		if err := tp.PrintfLine("EHLO %s", helo); err != nil {
			conn.Close()
			return nil, fmt.Errorf("EHLO: %w", err)
		}
		if _, _, err := tp.ReadResponse(250); err != nil {
			conn.Close()
			return nil, fmt.Errorf("EHLO: %w", err)
		}
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// stillOpen counts the connections the server has not closed: a read
// that times out at once found nothing, neither data nor end of file.
func stillOpen(conns []net.Conn) int {
	k := 0
	var one [1]byte
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		_, err := c.Read(one[:])
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			k++
		}
	}
	return k
}

// runIdle is -idle: open the connections, print one line when they are
// (the script measures the server then), hold them until stdin ends, a
// signal comes or hold passes, then print how many the server kept open
// and close them all.
func runIdle(ctx context.Context, addr string, n, par int, ehlo bool, helo string, timeout, hold time.Duration) error {
	t0 := time.Now()
	conns, errs := openIdle(ctx, addr, n, par, ehlo, helo, timeout)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	seen := map[string]int{}
	for _, e := range errs {
		seen[e.Error()]++
	}
	for e, k := range seen {
		fmt.Fprintf(os.Stderr, "loadgen: %d× %s\n", k, e)
	}
	fmt.Printf("idle open=%d failed=%d ehlo=%t secs=%.3f\n", len(conns), len(errs), ehlo, time.Since(t0).Seconds())

	released := make(chan struct{})
	go func() {
		// The script closes our stdin to release the connections.
		var b [512]byte
		for {
			if _, err := os.Stdin.Read(b[:]); err != nil {
				close(released)
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, hold)
	defer cancel()
	select {
	case <-released:
	case <-ctx.Done():
	}
	fmt.Printf("idle held=%.3f still_open=%d\n", time.Since(t0).Seconds(), stillOpen(conns))
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d connections failed", len(errs), n)
	}
	return nil
}
