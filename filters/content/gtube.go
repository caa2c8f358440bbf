package content

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"

	"moat/filters"
)

// GTUBE is the Generic Test for Unsolicited Bulk Email
// (https://spamassassin.apache.org/gtube/), the spam counterpart of the
// EICAR test file: a message whose body holds it is spam to every filter.
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// GTUBEScore is the score of a message holding GTUBE, as SpamAssassin
// gives it: far over any reject threshold.
const GTUBEScore = 1000

// gtube is the "gtube" check.
type gtube struct {
	maxParts, maxDepth int
}

// NewGTUBE returns the "gtube" check. At StageData it looks for GTUBE in
// the message body, as a stream (never whole in memory): in a MIME message
// (multipart, an attached message, or a base64 or quoted-printable body)
// in every text/* part, decoded; in any other message, or one whose MIME
// structure breaks before the string is found, in the body as received.
// When found, the result is fail with Score GTUBEScore; otherwise the
// check says nothing (no result), so ordinary mail's events do not change.
func NewGTUBE() filters.Check { return &gtube{maxParts: DefaultMaxParts, maxDepth: DefaultMaxDepth} }

func (g *gtube) Name() string { return "gtube" }

func (g *gtube) Stages() []filters.Stage { return []filters.Stage{filters.StageData} }

// Run implements filters.Check.
func (g *gtube) Run(ctx context.Context, stage filters.Stage, t *filters.Txn) (filters.Result, bool) {
	if stage != filters.StageData || t.Message == nil {
		return filters.Result{}, false
	}
	if g.found(ctx, t) {
		return filters.Result{Check: g.Name(), Value: filters.Fail, Score: GTUBEScore, Reason: "GTUBE test string found"}, true
	}
	return filters.Result{}, false
}

func (g *gtube) found(ctx context.Context, t *filters.Txn) bool {
	if isMIME(t.Header) {
		hit := false
		_, err := walk(ctx, t.Message(), g.maxParts, g.maxDepth, func(p *part) error {
			if p.Multipart || !strings.HasPrefix(p.MediaType, "text/") {
				return nil
			}
			if ok, _ := streamContains(p.Body, gtubeBytes); ok {
				hit = true
				return errStop
			}
			return nil
		})
		if hit || err == nil {
			return hit
		}
	}
	r := t.Message()
	// The body starts after the header section (Txn.Header).
	if _, err := io.CopyN(io.Discard, r, int64(len(t.Header))); err != nil {
		return false
	}
	ok, _ := streamContains(r, gtubeBytes)
	return ok
}

var gtubeBytes = []byte(GTUBE)

// errStop ends a walk early.
var errStop = errors.New("stop")

// isMIME reports whether a body may hold text that is only visible
// decoded: a multipart or attached message, or an encoded body.
func isMIME(header []byte) bool {
	for _, f := range parseFields(header) {
		switch {
		case strings.EqualFold(f.name, "Content-Type"):
			v := strings.ToLower(f.value)
			if strings.HasPrefix(v, "multipart/") || strings.HasPrefix(v, "message/") {
				return true
			}
		case strings.EqualFold(f.name, "Content-Transfer-Encoding"):
			v := strings.ToLower(f.value)
			if strings.Contains(v, "base64") || strings.Contains(v, "quoted-printable") {
				return true
			}
		}
	}
	return false
}

// scanBuffers are the buffers of streamContains.
var scanBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// streamContains reports whether r holds needle, reading it in 32 KiB
// pieces that overlap by len(needle)-1 bytes.
func streamContains(r io.Reader, needle []byte) (bool, error) {
	bp := scanBuffers.Get().(*[]byte)
	defer scanBuffers.Put(bp)
	buf := *bp
	keep := 0
	for {
		n, err := io.ReadFull(r, buf[keep:])
		n += keep
		if bytes.Contains(buf[:n], needle) {
			return true, nil
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		keep = min(len(needle)-1, n)
		copy(buf, buf[n-keep:n])
	}
}

var _ filters.Check = (*gtube)(nil)
