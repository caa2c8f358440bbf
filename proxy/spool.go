package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// spool holds one message while it is received and delivered: in memory
// up to a threshold, in an unlinked temporary file beyond it, so a large
// message never sits whole in memory and nothing is left on disk if moat
// dies.
type spool struct {
	dir   string
	limit int
	mem   *bytes.Buffer // nil once spilled or closed
	f     *os.File
	size  int64
}

func newSpool(dir string, memLimit int) *spool {
	return &spool{dir: dir, limit: memLimit, mem: getSpoolBuffer()}
}

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil && s.mem != nil && s.mem.Len()+len(p) > s.limit {
		if err := s.spill(); err != nil {
			return 0, err
		}
	}
	var n int
	var err error
	switch {
	case s.f != nil:
		n, err = s.f.Write(p)
	case s.mem != nil:
		n, err = s.mem.Write(p)
	default:
		return 0, errors.New("spool: write after close")
	}
	s.size += int64(n)
	return n, err
}

func (s *spool) spill() error {
	f, err := os.CreateTemp(s.dir, "spool-*")
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	// Unlinked at once: the open descriptor keeps the data until Close.
	os.Remove(f.Name())
	if _, err := f.Write(s.mem.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("spool: %w", err)
	}
	s.f = f
	putSpoolBuffer(s.mem)
	s.mem = nil
	return nil
}

// Size is the number of bytes spooled.
func (s *spool) Size() int64 { return s.size }

// OnDisk reports whether the message spilled to a file.
func (s *spool) OnDisk() bool { return s.f != nil }

// Reader returns a new reader over the whole message from offset off.
func (s *spool) Reader(off int64) io.Reader {
	if s.f != nil {
		return io.NewSectionReader(s.f, off, s.size-off)
	}
	if s.mem == nil {
		return bytes.NewReader(nil)
	}
	return bytes.NewReader(s.mem.Bytes()[off:])
}

// Close releases the file or the memory; it may be called more than once.
func (s *spool) Close() error {
	if s.mem != nil {
		putSpoolBuffer(s.mem)
		s.mem = nil
	}
	if s.f != nil {
		err := s.f.Close()
		s.f = nil
		return err
	}
	return nil
}
