package audit

import (
	"io"
	"sync"
)

// batchWriter hands event lines to a goroutine that writes whatever has
// gathered in one system call. An idle gateway writes each event at once;
// a busy one writes many per call instead of one call per transaction.
// Nothing is dropped: a writer that falls more than maxPending behind makes
// the callers wait.
type batchWriter struct {
	w       io.Writer
	mu      sync.Mutex
	cond    *sync.Cond // signals the flusher (work or close) and waiting callers (room, flushed)
	pending []byte
	spare   []byte
	writing bool
	closed  bool
	err     error
	done    chan struct{}
}

const maxPending = 1 << 20

func newBatchWriter(w io.Writer) *batchWriter {
	b := &batchWriter{w: w, done: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.run()
	return b
}

func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.pending) > maxPending && !b.closed {
		b.cond.Wait()
	}
	if b.closed {
		return 0, io.ErrClosedPipe
	}
	b.pending = append(b.pending, p...)
	b.cond.Broadcast()
	return len(p), nil
}

func (b *batchWriter) run() {
	defer close(b.done)
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		for len(b.pending) == 0 && !b.closed {
			b.cond.Wait()
		}
		if len(b.pending) == 0 && b.closed {
			return
		}
		batch := b.pending
		b.pending = b.spare[:0]
		b.writing = true
		b.mu.Unlock()
		_, err := b.w.Write(batch)
		b.mu.Lock()
		b.writing = false
		if err != nil && b.err == nil {
			b.err = err
		}
		b.spare = batch
		b.cond.Broadcast()
	}
}

// Sync waits until everything written so far is handed to the output.
func (b *batchWriter) Sync() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for (len(b.pending) > 0 || b.writing) && !b.closed {
		b.cond.Wait()
	}
	return b.err
}

// Close writes what is pending and stops the goroutine.
func (b *batchWriter) Close() error {
	b.mu.Lock()
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()
	<-b.done
	return b.err
}
