package syslog

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// batch is what the goroutine writes at once: formatted messages, each
// octet-counted (TCP, TLS) or one datagram (UDP), optionally led by one
// syslog.dropped report. It is kept until written, and written again on
// the next connection when the write failed.
type batch struct {
	buf       []byte
	ends      []int  // where each message ends in buf
	events    int    // messages that are events (the report is not one)
	report    uint64 // the drops the leading report tells of; 0: no report
	reportLen int    // the report's length in buf
}

func (b *batch) empty() bool { return len(b.ends) == 0 }

func (b *batch) reset() {
	b.buf, b.ends = b.buf[:0], b.ends[:0]
	b.events, b.report, b.reportLen = 0, 0, 0
}

// trim forgets the first k messages (sent) and returns how many of them
// were events.
func (b *batch) trim(k int) int {
	if k == 0 {
		return 0
	}
	events := k
	if b.report > 0 {
		events--
	}
	if k >= len(b.ends) {
		b.reset()
		return events
	}
	cut := b.ends[k-1]
	b.report, b.reportLen = 0, 0
	b.events -= events
	n := copy(b.buf, b.buf[cut:])
	b.buf = b.buf[:n]
	n = copy(b.ends, b.ends[k:])
	b.ends = b.ends[:n]
	for i := range b.ends {
		b.ends[i] -= cut
	}
	return events
}

// conn is one connection to the collector.
type conn struct {
	net.Conn
	raw net.Conn // the TCP connection under Conn (Conn itself without TLS)
	// dead is closed when the collector closed the connection (a reader
	// goroutine saw EOF: collectors send nothing); nil for UDP.
	dead  chan struct{}
	unarm func() bool // stops the close on the shipper's cancellation
	since time.Time   // when it was made
}

// closed reports whether the collector has closed the connection. The
// reader goroutine tells when it has run; before a write the socket is
// also asked directly (peerClosed), because a write made after the
// collector's FIN arrived but before the reader noticed would succeed
// into the socket and be lost.
func (c *conn) closed() bool {
	if c.dead == nil {
		return false
	}
	select {
	case <-c.dead:
		return true
	default:
		return peerClosed(c.raw)
	}
}

func (c *conn) close() {
	c.unarm()
	c.Conn.Close()
	if c.dead != nil {
		<-c.dead
	}
}

// dial connects (and for TLS verifies the collector) within DialTimeout.
func (s *Shipper) dial() (*conn, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	defer cancel()
	network := s.cfg.Network
	if network == "tls" {
		network = "tcp"
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, s.cfg.Addr)
	if err != nil {
		return nil, err
	}
	nc := raw
	if s.cfg.Network == "tls" {
		tc := tls.Client(raw, s.cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", s.cfg.Addr, err)
		}
		nc = tc
	}
	// Cancellation (Close gave up) breaks a blocked write by closing the
	// socket itself (a tls.Conn would try to send close_notify first).
	c := &conn{Conn: nc, raw: raw, since: time.Now(), unarm: context.AfterFunc(s.ctx, func() { raw.Close() })}
	if network == "tcp" {
		c.dead = make(chan struct{})
		go func() {
			io.Copy(io.Discard, nc)
			close(c.dead)
		}()
	}
	return c, nil
}

// run is the shipper's goroutine: it owns the connection and the batch.
func (s *Shipper) run() {
	defer close(s.done)
	var (
		b          batch
		c          *conn
		failures   int // failed attempts since the last good write
		fresh      bool
		stopping   bool
		lastReport time.Time
		scratch    []byte
	)
	wake := time.NewTimer(time.Hour)
	wake.Stop()
	defer func() {
		wake.Stop()
		if c != nil {
			c.close()
		}
		s.connected.Store(false)
		// Close gave up: what is left is dropped.
		lost := uint64(b.events)
		for len(s.queue) > 0 {
			s.putBuf(<-s.queue) // only this goroutine receives
			lost++
		}
		s.inflight.Store(0)
		s.dropped.Add(lost)
		s.pending.Add(lost)
		if n := s.pending.Swap(0); n > 0 && s.cfg.OnDrop != nil {
			s.cfg.OnDrop(n)
		}
	}()

	for s.ctx.Err() == nil {
		// Tell of drops: at once after a reconnect or when closing,
		// else at most every reportEvery.
		if s.pending.Load() > 0 && (fresh || stopping || time.Since(lastReport) >= reportEvery) {
			n := s.pending.Swap(0)
			scratch = s.addReport(&b, n, scratch)
			lastReport = time.Now()
			if s.cfg.OnDrop != nil {
				s.cfg.OnDrop(n)
			}
		}
		fresh = false
		idle := b.empty() && len(s.queue) == 0

		if c != nil && c.closed() {
			s.drop(&c, &failures)
		}
		// Stay connected, idle or not, so that the next event goes out
		// at once; except when closing with nothing left to send.
		if c == nil && !(stopping && idle) {
			if failures > 0 {
				t := time.NewTimer(s.backoff(failures))
				select {
				case <-t.C:
				case <-s.ctx.Done():
					t.Stop()
					continue
				}
			}
			var err error
			if c, err = s.dial(); err != nil {
				failures++
				continue
			}
			s.connected.Store(true)
			fresh = true
			continue // to report drops ahead of the batch
		}

		if b.empty() {
			if stopping {
				select {
				case bp := <-s.queue:
					scratch = s.add(&b, bp, scratch, time.Now())
				default:
					return // drained
				}
			} else {
				var wakeC <-chan time.Time
				if s.pending.Load() > 0 {
					// Drops to report, nothing to send: report when due.
					wake.Reset(max(time.Until(lastReport.Add(reportEvery)), 0))
					wakeC = wake.C
				}
				var deadC <-chan struct{}
				if c != nil {
					deadC = c.dead
				}
				select {
				case bp := <-s.queue:
					scratch = s.add(&b, bp, scratch, time.Now())
				case <-s.stop:
					stopping = true
				case <-wakeC:
				case <-deadC: // reconnect now, not when the next event comes
				}
				wake.Stop()
				if b.empty() {
					continue
				}
			}
		}
		scratch = s.fill(&b, scratch)
		s.inflight.Store(int64(b.events))
		if c == nil || c.closed() {
			continue
		}

		if k, err := s.write(c, &b); err != nil {
			s.sent.Add(uint64(b.trim(k)))
			s.inflight.Store(int64(b.events))
			s.drop(&c, &failures)
			continue
		}
		s.sent.Add(uint64(b.events))
		b.reset()
		s.inflight.Store(0)
	}
}

// stableAfter is how long a connection must have lasted for its loss to
// be retried at once; one lost sooner (a collector that accepts and
// closes) counts as a failed attempt, so that the backoff grows.
const stableAfter = time.Second

// drop closes a connection that failed.
func (s *Shipper) drop(c **conn, failures *int) {
	if time.Since((*c).since) >= stableAfter {
		*failures = 0
	} else {
		*failures++
	}
	(*c).close()
	*c = nil
	s.connected.Store(false)
}

// write sends the batch. On TCP and TLS it is one write, sent again
// whole after a failure (some of it may have arrived: at least once). On
// UDP each message is a datagram; it returns how many went out before an
// error.
func (s *Shipper) write(c *conn, b *batch) (int, error) {
	if s.cfg.Network != "udp" {
		c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		_, err := c.Write(b.buf)
		return 0, err
	}
	start := 0
	for i, end := range b.ends {
		c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if _, err := c.Write(b.buf[start:end]); err != nil {
			return i, err
		}
		start = end
	}
	return len(b.ends), nil
}

// fill moves queued events into the batch, without waiting, up to
// batchBytes.
func (s *Shipper) fill(b *batch, scratch []byte) []byte {
	now := time.Now()
	for len(b.buf) < batchBytes {
		select {
		case bp := <-s.queue:
			scratch = s.add(b, bp, scratch, now)
		default:
			return scratch
		}
	}
	return scratch
}

// add formats one event line into the batch and recycles its buffer.
func (s *Shipper) add(b *batch, bp *[]byte, scratch []byte, now time.Time) []byte {
	scratch = s.appendOne(b, *bp, scratch, now)
	b.events++
	s.putBuf(bp)
	return scratch
}

// appendOne appends line to b.buf as one message for the network.
func (s *Shipper) appendOne(b *batch, line, scratch []byte, now time.Time) []byte {
	if s.cfg.Network == "udp" {
		start := len(b.buf)
		b.buf = s.hdr.appendMessage(b.buf, line, now)
		if len(b.buf)-start > maxDatagram {
			b.buf = b.buf[:start+len(truncateUTF8(b.buf[start:], maxDatagram))]
			s.truncated.Add(1)
		}
	} else {
		b.buf, scratch = s.hdr.appendFrame(b.buf, scratch, line, now)
	}
	b.ends = append(b.ends, len(b.buf))
	return scratch
}

// addReport puts a syslog.dropped event for n more drops at the head of
// the batch, merged with an unsent earlier one so that a long outage
// leaves one report, not one per interval.
func (s *Shipper) addReport(b *batch, n uint64, scratch []byte) []byte {
	n += b.report
	now := time.Now()
	line := droppedEvent(n, now)
	var r batch
	scratch = s.appendOne(&r, line, scratch, now)
	old := b.reportLen
	delta := len(r.buf) - old
	b.buf = append(r.buf, b.buf[old:]...)
	if old == 0 {
		b.ends = append(b.ends, 0)
		copy(b.ends[1:], b.ends)
		b.ends[0] = 0
	}
	b.ends[0] = len(r.buf)
	for i := 1; i < len(b.ends); i++ {
		b.ends[i] += delta
	}
	b.report, b.reportLen = n, len(r.buf)
	return scratch
}

// droppedEvent is the JSON line of a syslog.dropped event, in the fields
// audit events use.
func droppedEvent(n uint64, now time.Time) []byte {
	b := []byte(`{"@timestamp":"`)
	b = now.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","log.level":"warn","event.action":"syslog.dropped","moat.dropped":`...)
	b = strconv.AppendUint(b, n, 10)
	b = append(b, `,"message":"`...)
	b = strconv.AppendUint(b, n, 10)
	b = append(b, ` events were not shipped to syslog: the queue was full (collector slow or unreachable) or closing"}`...)
	return b
}
