package proxy

import (
	"bufio"
	"io"
)

// The reader's size bounds how much of a DATA line is looked at at once,
// not the line length; the writer holds the replies to pipelined commands.
func newReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 16*1024) }
func newWriter(w io.Writer) *bufio.Writer { return bufio.NewWriterSize(w, 4*1024) }
