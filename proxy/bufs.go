package proxy

import (
	"bufio"
	"bytes"
	"io"
	"sync"
)

// Buffers are pooled: every connection needs a reader and a writer and
// every message a spool buffer, and allocating them anew was a third of
// moat's allocation volume under load.

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16*1024) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4*1024) }}
	spoolPool  = sync.Pool{New: func() any { return new(bytes.Buffer) }}
	copyPool   = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}
)

// The reader's size bounds how much of a DATA line is looked at at once,
// not the line length; the writer holds the replies to pipelined commands.
func newReader(r io.Reader) *bufio.Reader {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func newWriter(w io.Writer) *bufio.Writer {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readerPool.Put(br)
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writerPool.Put(bw)
}

// maxPooledSpool keeps unusually large buffers out of the pool.
const maxPooledSpool = 4 << 20

func getSpoolBuffer() *bytes.Buffer { return spoolPool.Get().(*bytes.Buffer) }

func putSpoolBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledSpool {
		return
	}
	b.Reset()
	spoolPool.Put(b)
}

// parts reads several readers one after the other, like io.MultiReader,
// but its WriteTo lends each part's own WriteTo the destination (a
// bytes.Reader writes in one call) and copies the others through a pooled
// buffer, where io.MultiReader allocates 32 KiB per message.
type parts []io.Reader

func (p *parts) Read(b []byte) (int, error) {
	for len(*p) > 0 {
		n, err := (*p)[0].Read(b)
		if err == io.EOF {
			*p = (*p)[1:]
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
	return 0, io.EOF
}

func (p *parts) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for _, r := range *p {
		var n int64
		var err error
		if wt, ok := r.(io.WriterTo); ok {
			n, err = wt.WriteTo(w)
		} else {
			buf := copyPool.Get().(*[]byte)
			n, err = io.CopyBuffer(struct{ io.Writer }{w}, r, *buf)
			copyPool.Put(buf)
		}
		total += n
		if err != nil {
			return total, err
		}
	}
	*p = nil
	return total, nil
}
