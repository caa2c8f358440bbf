// Package syncbuf is a bytes.Buffer safe for concurrent use: tests collect
// a child process's output with it while os/exec's goroutines write.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer is a mutex-guarded bytes.Buffer. The zero value is ready.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Len returns the number of bytes written so far.
func (l *Buffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Since returns what was written after the first n bytes.
func (l *Buffer) Since(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	if n > len(s) {
		return ""
	}
	return s[n:]
}
