// Package audit writes moat's events: one JSON object per line with
// Elastic Common Schema field names, never sampled, for the admins' SIEM.
// The event's kind is in "event.action" ("smtp.transaction",
// "config.reload", …).
package audit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"moat/audit/syslog"
	"moat/config"
)

// Logger writes events. The zero value is not usable; use New or Discard.
type Logger struct {
	z       *zap.Logger
	close   func() error
	reopen  func() error
	shipper *syslog.Shipper // nil without log.syslog
}

func encodeTime(t time.Time, enc zapcore.PrimitiveArrayEncoder) {
	enc.AppendString(t.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
}

// jsonConfig is the encoding of events: ECS names, one object per line.
func jsonConfig() zapcore.EncoderConfig {
	return zapcore.EncoderConfig{
		TimeKey:        "@timestamp",
		LevelKey:       "log.level",
		MessageKey:     "event.action",
		EncodeTime:     encodeTime,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeDuration: zapcore.NanosDurationEncoder,
		LineEnding:     "\n",
	}
}

// shipperFlush bounds how long Close waits for the syslog collector to
// take what is still queued.
const shipperFlush = 5 * time.Second

// newShipper starts shipping to log.syslog.
func newShipper(c *config.Syslog, onDrop func(uint64)) (*syslog.Shipper, error) {
	sc := syslog.Config{Network: c.Network, Addr: c.Addr, Facility: config.Facilities[c.Facility],
		AppName: c.AppName, Hostname: c.Hostname, QueueSize: c.QueueSize, OnDrop: onDrop}
	if c.TLS {
		sc.Network = "tls"
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("log.syslog.ca_file: %w", err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("log.syslog.ca_file: %s holds no PEM certificate", c.CAFile)
			}
		}
		sc.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if c.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("log.syslog.cert_file: %w", err)
			}
			sc.TLS.Certificates = []tls.Certificate{cert}
		}
	}
	sh, err := syslog.New(sc)
	if err != nil {
		return nil, fmt.Errorf("log.syslog: %w", err)
	}
	return sh, nil
}

// SyslogStats reports the shipper's counters; false when log.syslog is
// not set.
func (l *Logger) SyslogStats() (syslog.Stats, bool) {
	if l.shipper == nil {
		return syslog.Stats{}, false
	}
	return l.shipper.Stats(), true
}

// New builds the logger that log configures: JSON (ECS names) or text,
// on stdout, stderr or a file (appended to).
func New(log config.Log) (*Logger, error) {
	ec := jsonConfig()
	var enc zapcore.Encoder
	switch log.Format {
	case "", "json":
		enc = zapcore.NewJSONEncoder(ec)
	case "text":
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("log: unknown format %q", log.Format)
	}
	var out io.Writer
	closeFile := func() error { return nil }
	reopen := func() error { return nil }
	switch log.Output {
	case "", "stdout":
		out = os.Stdout
	case "stderr":
		out = os.Stderr
	default:
		f, err := openLogFile(log.Output)
		if err != nil {
			return nil, err
		}
		out, closeFile, reopen = f, f.Close, f.Reopen
	}
	bw := newBatchWriter(out)
	ws := zapcore.AddSync(bw)
	closeFn := func() error {
		err := bw.Close()
		if cerr := closeFile(); err == nil {
			err = cerr
		}
		return err
	}
	level := zapcore.InfoLevel
	if log.Level == "debug" {
		level = zapcore.DebugLevel
	}
	// No sampler: every event reaches the SIEM.
	local := zapcore.NewCore(enc, ws, level)
	l := &Logger{z: zap.New(local), close: closeFn, reopen: reopen}
	if log.Syslog == nil {
		return l, nil
	}
	// The SIEM gets the same events, always as JSON, through a shipper
	// that never blocks: a second core over it (zapcore.NewTee).
	localOnly := l.z
	sh, err := newShipper(log.Syslog, func(n uint64) {
		localOnly.Warn("syslog.dropped", zap.Uint64("moat.dropped", n),
			zap.String("message", "the syslog collector was slow or away: events dropped from its queue (they are in the local log)"))
	})
	if err != nil {
		closeFn()
		return nil, err
	}
	if log.Format == "text" {
		// Text for the terminal, JSON for the SIEM: two encodings.
		remote := zapcore.NewCore(zapcore.NewJSONEncoder(jsonConfig()), sh, level)
		l.z = zap.New(zapcore.NewTee(local, remote))
	} else {
		// JSON both ways: encode once, hand the same line to both (the
		// shipper copies what it keeps).
		l.z = zap.New(zapcore.NewCore(enc, zapcore.NewMultiWriteSyncer(ws, sh), level))
	}
	l.shipper = sh
	l.close = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), shipperFlush)
		defer cancel()
		serr := sh.Close(ctx)
		if err := closeFn(); err != nil {
			return err
		}
		return serr
	}
	return l, nil
}

// NewZap wraps an existing zap logger (tests use an observer).
func NewZap(z *zap.Logger) *Logger {
	nop := func() error { return nil }
	return &Logger{z: z, close: nop, reopen: nop}
}

// Reopen opens log.output again when it is a file (logrotate moved the
// old one away); events written meanwhile go to the old file. A no-op
// for stdout and stderr.
func (l *Logger) Reopen() error {
	l.z.Sync()
	return l.reopen()
}

// Discard returns a logger that writes nothing.
func Discard() *Logger { return NewZap(zap.NewNop()) }

// Event writes one info-level event of the given kind.
func (l *Logger) Event(action string, fields ...zap.Field) { l.z.Info(action, fields...) }

// Warn writes one warning-level event.
func (l *Logger) Warn(action string, fields ...zap.Field) { l.z.Warn(action, fields...) }

// Error writes one error-level event.
func (l *Logger) Error(action string, fields ...zap.Field) { l.z.Error(action, fields...) }

// Debug writes debug chatter; it is off unless log.level is debug, and
// never carries passwords or message bodies.
func (l *Logger) Debug(action string, fields ...zap.Field) { l.z.Debug(action, fields...) }

// Close flushes and closes the output.
func (l *Logger) Close() error {
	l.z.Sync()
	return l.close()
}
