package mailproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// lingerTimeout bounds the silence of the direction still open after the
// other one ended cleanly (a half-closed connection).
const lingerTimeout = time.Minute

// activity is the shared idle clock of a splice: a direction that has been
// quiet for the idle timeout goes on while the other one carries traffic.
type activity struct {
	last  atomic.Int64 // unix nanoseconds of the last bytes read, either way
	limit atomic.Int64 // the idle timeout in nanoseconds
}

func (a *activity) touch(now time.Time) { a.last.Store(now.UnixNano()) }

func (a *activity) idle() time.Duration { return time.Duration(a.limit.Load()) }

// quiet reports whether neither direction carried traffic for the idle
// timeout.
func (a *activity) quiet(now time.Time) bool {
	return now.UnixNano()-a.last.Load() >= a.limit.Load()
}

// splice copies client to upstream and back until either ends, then writes
// the session's event. Bytes already read into the buffers (commands the
// client pipelined after its login, anything the upstream sent after its
// OK) go first.
func (c *session) splice() {
	start := time.Now()
	up := c.up
	defer up.conn.Close()
	defer c.conn.Close()
	toUp, _ := c.br.Peek(c.br.Buffered())
	toClient, _ := up.br.Peek(up.br.Buffered())

	act := &activity{}
	act.limit.Store(int64(c.srv.o.IdleTimeout))
	act.touch(start)
	type result struct {
		n   int64
		err error
		up  bool // the client-to-upstream direction
	}
	done := make(chan result, 2)
	go func() {
		n, err := pump(up.conn, c.conn, toUp, act)
		done <- result{n, err, true}
	}()
	go func() {
		n, err := pump(c.conn, up.conn, toClient, act)
		done <- result{n, err, false}
	}()

	var sent, received int64
	for i := range 2 {
		r := <-done
		if r.up {
			sent = r.n
		} else {
			received = r.n
		}
		if i == 1 {
			break
		}
		if r.err == nil {
			// A clean end of one direction: pass the half-close on and
			// let the other direction finish what it was sending.
			if r.up {
				closeWrite(up.conn)
			} else {
				closeWrite(c.conn)
			}
			act.limit.Store(int64(min(c.srv.o.IdleTimeout, lingerTimeout)))
			wake := time.Now().Add(act.idle())
			c.conn.SetReadDeadline(wake)
			up.conn.SetReadDeadline(wake)
			continue
		}
		c.conn.Close()
		up.conn.Close()
	}
	c.srv.o.Log.Event(c.srv.o.Protocol+".proxy_session",
		zap.String("source.ip", c.remote.Addr().String()),
		zap.Uint16("source.port", c.remote.Port()),
		zap.String("user.name", c.user),
		zap.String("moat.listener", c.listener.Name),
		zap.String("moat.upstream", up.addr),
		zap.Bool("tls.established", c.tls),
		zap.Int64("source.bytes", sent),
		zap.Int64("destination.bytes", received),
		zap.Duration("event.duration", time.Since(start)))
}

// pump copies src to dst, pre first, until src ends (nil error) or either
// fails or the splice has been quiet for the idle timeout.
func pump(dst, src net.Conn, pre []byte, act *activity) (int64, error) {
	var n int64
	if len(pre) > 0 {
		dst.SetWriteDeadline(time.Now().Add(act.idle()))
		w, err := dst.Write(pre)
		n += int64(w)
		if err != nil {
			return n, err
		}
	}
	buf := make([]byte, 32<<10)
	var armed time.Time // when the read deadline was last pushed back
	for {
		// Deadlines are pushed back at most once a second: setting them
		// costs more than a read on a fast connection.
		if now := time.Now(); now.Sub(armed) > time.Second {
			src.SetReadDeadline(now.Add(act.idle()))
			dst.SetWriteDeadline(now.Add(act.idle()))
			armed = now
		}
		r, err := src.Read(buf)
		if r > 0 {
			act.touch(time.Now())
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return n, nil
		case errors.Is(err, os.ErrDeadlineExceeded) && !act.quiet(time.Now()):
			// The other direction is busy (a long download while the
			// client says nothing): wait on.
			armed = time.Time{}
		default:
			return n, err
		}
	}
}

// closeWrite half-closes c: TLS sends close_notify, TCP a FIN.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
