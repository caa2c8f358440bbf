// Package syslog ships moat's audit events to a SIEM's syslog collector:
// one RFC 5424 message per JSON event line, over UDP (RFC 5426), TCP
// (RFC 6587 octet counting) or TLS (RFC 5425).
//
// A Shipper is a zapcore.WriteSyncer: audit.New tees its JSON core into
// one. Write never blocks: it copies the lines into a bounded queue and one
// goroutine writes them to the collector, reconnecting with backoff. When
// the queue is full the newest events are dropped and counted, and a
// "syslog.dropped" event tells the collector how many once it can.
//
// Delivery is at least once for what fit in the queue: the messages of a
// write that failed are sent again on the next connection, so a collector
// may see some twice around a reconnect. A collector that dies after taking
// bytes into its socket buffer loses them (plain syslog has no
// acknowledgements); the shipper notices a closed connection before the
// next write, which keeps that window small.
//
// The message: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG,
// where PRI comes from the facility and the event's log.level, TIMESTAMP is
// the event's @timestamp, MSGID its event.action (sanitized to at most 32
// printable ASCII bytes), no structured data, and MSG the JSON line as is,
// without a BOM: rsyslog keeps a BOM in %msg%, where it breaks JSON parsing.
package syslog

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Config says where and how to ship events.
type Config struct {
	Network string // "udp", "tcp" or "tls"
	Addr    string // host:port
	// TLS configures "tls": RootCAs verify the collector (nil: the
	// system's roots), Certificates an optional client certificate.
	// ServerName defaults to Addr's host.
	TLS *tls.Config
	// Facility is the syslog facility, 1..23; 0 means 16 (local0), since
	// 0 (kern) is the kernel's. The severity comes from each event's
	// log.level: debug 7, info 6, warn 4, error 3, dpanic/panic/fatal 2.
	Facility int
	AppName  string // default "moat"
	Hostname string // default os.Hostname()
	// QueueSize is how many events wait while the collector is slow or
	// down; default 10000.
	QueueSize    int
	DialTimeout  time.Duration // default 5s, TLS handshake included
	WriteTimeout time.Duration // default 10s
	// OnDrop, when set, is told from the shipper's goroutine how many
	// events were dropped since its last call (at most every 10 s while
	// drops go on, at once after a reconnect, and at Close), to report
	// them locally.
	OnDrop func(n uint64)
}

// Stats are a Shipper's counters.
type Stats struct {
	Queued    uint64 // events waiting (queued, or written but not yet known sent)
	Sent      uint64 // events written to a collector (syslog.dropped reports not counted)
	Dropped   uint64 // events dropped: queue full, or still queued when Close gave up
	Truncated uint64 // UDP messages cut to fit a datagram
	Connected bool   // a connection is up
}

// ErrClosed is what Write returns after Close.
var ErrClosed = errors.New("syslog: shipper closed")

const (
	defaultFacility = 16
	defaultQueue    = 10000
	minBackoff      = 100 * time.Millisecond
	maxBackoff      = 30 * time.Second
	reportEvery     = 10 * time.Second
	// batchBytes is how much the goroutine gathers into one write.
	batchBytes = 64 << 10
	// maxPooled keeps huge lines' buffers out of the pool.
	maxPooled = 64 << 10
)

// Shipper sends events to one collector. Its methods are safe for
// concurrent use.
type Shipper struct {
	cfg     Config
	hdr     header
	queue   chan *[]byte
	pool    sync.Pool // *[]byte
	closed  atomic.Bool
	stop    chan struct{} // closed by Close: drain, then exit
	ctx     context.Context
	cancel  context.CancelFunc // Close gave up: stop writing
	done    chan struct{}      // closed when the goroutine has exited
	once    sync.Once
	backoff func(failures int) time.Duration

	sent, dropped, truncated atomic.Uint64
	pending                  atomic.Uint64 // drops not yet told to OnDrop
	inflight                 atomic.Int64  // events in the goroutine's batch
	connected                atomic.Bool
}

// New checks c, fills in its defaults and starts the shipper's goroutine.
// It does not connect: the goroutine does, and keeps trying.
func New(c Config) (*Shipper, error) {
	switch c.Network {
	case "udp", "tcp", "tls":
	default:
		return nil, fmt.Errorf("syslog: network %q: want udp, tcp or tls", c.Network)
	}
	host, _, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return nil, fmt.Errorf("syslog: address %q: %w", c.Addr, err)
	}
	if c.Facility == 0 {
		c.Facility = defaultFacility
	}
	if c.Facility < 1 || c.Facility > 23 {
		return nil, fmt.Errorf("syslog: facility %d: want 1..23", c.Facility)
	}
	if c.AppName == "" {
		c.AppName = "moat"
	}
	if c.Hostname == "" {
		if c.Hostname, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("syslog: hostname: %w", err)
		}
	}
	if c.QueueSize <= 0 {
		c.QueueSize = defaultQueue
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.Network == "tls" {
		if c.TLS == nil {
			c.TLS = &tls.Config{}
		} else {
			c.TLS = c.TLS.Clone()
		}
		if c.TLS.ServerName == "" {
			c.TLS.ServerName = host
		}
		if c.TLS.MinVersion == 0 {
			c.TLS.MinVersion = tls.VersionTLS12
		}
	}
	s := &Shipper{
		cfg: c,
		hdr: header{
			facility: c.Facility,
			hostname: sanitize(c.Hostname, maxHostname),
			appName:  sanitize(c.AppName, maxAppName),
			procID:   sanitize(strconv.Itoa(os.Getpid()), maxProcID),
		},
		queue:   make(chan *[]byte, c.QueueSize),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		backoff: jittered,
	}
	s.pool.New = func() any {
		b := make([]byte, 0, 512)
		return &b
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.run()
	return s, nil
}

// Write queues each line of p (one or more JSON events, each ended by
// '\n'; a last line without one counts too) as one message. It never
// blocks: when the queue is full the line is dropped and counted. It
// returns len(p), or ErrClosed after Close.
func (s *Shipper) Write(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	rest := p
	for len(rest) > 0 {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		if len(line) == 0 {
			continue
		}
		bp := s.pool.Get().(*[]byte)
		*bp = append((*bp)[:0], line...)
		select {
		case s.queue <- bp:
		default:
			s.putBuf(bp)
			s.dropped.Add(1)
			s.pending.Add(1)
		}
	}
	return len(p), nil
}

func (s *Shipper) putBuf(bp *[]byte) {
	if cap(*bp) <= maxPooled {
		s.pool.Put(bp)
	}
}

// Sync returns at once: delivery is asynchronous, and an SMTP session must
// not wait for the collector. Close flushes.
func (s *Shipper) Sync() error { return nil }

// Close stops taking events, sends what is queued until ctx ends, then
// drops (and counts) the rest and closes the connection. It returns
// ctx's error when it gave up with events unsent. Writes that race with
// Close may be lost without being counted.
func (s *Shipper) Close(ctx context.Context) error {
	s.once.Do(func() {
		s.closed.Store(true)
		close(s.stop)
	})
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		s.cancel()
		<-s.done
		return fmt.Errorf("syslog: close: %w", ctx.Err())
	}
}

// Stats returns the counters.
func (s *Shipper) Stats() Stats {
	return Stats{
		Queued:    uint64(len(s.queue)) + uint64(max(s.inflight.Load(), 0)),
		Sent:      s.sent.Load(),
		Dropped:   s.dropped.Load(),
		Truncated: s.truncated.Load(),
		Connected: s.connected.Load(),
	}
}

// jittered is the wait before the n-th reconnection attempt after a
// failure: 100 ms doubling to 30 s, a random point in [d/2, d).
func jittered(n int) time.Duration {
	d := maxBackoff
	if n <= 20 {
		d = min(minBackoff<<(n-1), maxBackoff)
	}
	return d/2 + rand.N(d/2)
}
