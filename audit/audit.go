// Package audit writes moat's events: one JSON object per line with
// Elastic Common Schema field names, never sampled, for the admins' SIEM.
// The event's kind is in "event.action" ("smtp.transaction",
// "config.reload", …).
package audit

import (
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"moat/config"
)

// Logger writes events. The zero value is not usable; use New or Discard.
type Logger struct {
	z      *zap.Logger
	close  func() error
	reopen func() error
}

func encodeTime(t time.Time, enc zapcore.PrimitiveArrayEncoder) {
	enc.AppendString(t.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
}

// New builds the logger that log configures: JSON (ECS names) or text,
// on stdout, stderr or a file (appended to).
func New(log config.Log) (*Logger, error) {
	ec := zapcore.EncoderConfig{
		TimeKey:        "@timestamp",
		LevelKey:       "log.level",
		MessageKey:     "event.action",
		EncodeTime:     encodeTime,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeDuration: zapcore.NanosDurationEncoder,
		LineEnding:     "\n",
	}
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
	core := zapcore.NewCore(enc, ws, level)
	return &Logger{z: zap.New(core), close: closeFn, reopen: reopen}, nil
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
