// Package accept is the accept loop and session bookkeeping that moat's
// POP3 server and its POP3/IMAP proxy share: listeners served until
// Shutdown, one goroutine per session, a two-step shutdown (sessions that
// are not busy end at once; busy ones may finish until the context ends).
// net/http's Server does the same for HTTP; nothing comparable exists for
// a line protocol, hence this small piece.
package accept

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Session is one connection's session.
type Session interface {
	comparable
	// Serve runs the session; Sessions.Done must be called when it ends.
	Serve()
	// Abort cuts the session off. It is called with the Sessions' lock
	// held, and so is Busy.
	Abort()
	// Busy reports a session that Shutdown lets finish (logged in);
	// others are aborted at once.
	Busy() bool
}

// Sessions serves listeners and tracks the sessions they start. The zero
// value is ready to use; it must not be copied.
type Sessions[S Session] struct {
	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	sessions  map[S]struct{}
	wg        sync.WaitGroup
}

// Serve accepts connections on ln until Shutdown (then it returns
// closed) or until ln fails for good, and runs newSession's session for
// each in a goroutine. It closes ln. Accept errors that pass (EMFILE)
// are reported to logErr and retried with a backoff of up to a second;
// name names the listener in errors.
func (s *Sessions[S]) Serve(ln net.Listener, name string, closed error, newSession func(net.Conn) S, logErr func(error)) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return closed
	}
	if s.listeners == nil {
		s.listeners, s.sessions = map[net.Listener]struct{}{}, map[S]struct{}{}
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var delay time.Duration // backoff after accept errors such as EMFILE
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.Closing() {
				return closed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on %s: %w", name, err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			logErr(err)
			time.Sleep(delay)
			continue
		}
		delay = 0
		sess := newSession(c)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return closed
		}
		s.sessions[sess] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go sess.Serve()
	}
}

// Done forgets a session that has ended.
func (s *Sessions[S]) Done(sess S) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
	s.wg.Done()
}

// Closing reports whether Shutdown was called.
func (s *Sessions[S]) Closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// IfOpen runs f with the lock held (f may change what Busy reads) unless
// Shutdown was called, and reports whether it ran.
func (s *Sessions[S]) IfOpen(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	f()
	return true
}

// Shutdown closes the listeners, aborts the sessions that are not busy,
// and waits for the others to end; when ctx ends first it aborts them too,
// waits for them to return and returns ctx's error.
func (s *Sessions[S]) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	for sess := range s.sessions {
		if !sess.Busy() {
			sess.Abort()
		}
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for sess := range s.sessions {
		sess.Abort()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}
