package content

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"mime"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
)

// The bounds of one MIME walk, unless the check is built with others.
const (
	DefaultMaxParts = 1000 // MIME entities, the message itself included
	DefaultMaxDepth = 20   // nesting of multiparts and attached messages
)

// maxBoundary bounds a multipart boundary: RFC 2046 allows 70
// characters; some senders write more.
const maxBoundary = 200

// limitError is a message over one of the walk's bounds.
type limitError struct {
	what string // "parts" or "depth"
	msg  string
}

func (e *limitError) Error() string { return e.msg }

// malformedError is a MIME structure the walk cannot follow.
type malformedError struct {
	err error
}

func (e *malformedError) Error() string { return "malformed MIME structure: " + clean(e.err.Error()) }

// clean makes an error text that may quote the message fit a reason: one
// line, at most 200 bytes.
func clean(s string) string {
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }), " ")
	if len(s) > 200 {
		s = strings.ToValidUTF8(s[:197], "") + "..."
	}
	return strings.TrimSpace(s)
}

func (e *malformedError) Unwrap() error { return e.err }

// part is one MIME entity the walk visits: the message itself, a
// multipart (whose parts follow it), a leaf, or an attached message
// (whose own entities follow it).
type part struct {
	Depth     int    // 0 for the message itself
	MediaType string // lower case; text/plain when there is no Content-Type
	Multipart bool   // a multipart/*: Body is nil, its parts come next
	// Names are the file names the entity declares: every Content-
	// Disposition filename, then every Content-Type name (RFC 2231
	// parameters and encoded words decoded), without duplicates.
	Names  []string
	Header message.Header
	// Body is the body, transfer encoding decoded (and charset, for
	// text/*). The walk drains what the visitor does not read.
	Body io.Reader
}

// walker walks one message's MIME tree, streaming.
type walker struct {
	ctx      context.Context
	maxParts int
	maxDepth int
	visit    func(*part) error
	parts    int
}

// walk reads the message from r and calls visit for every MIME entity in
// order, the message first. It reads r once, front to back, and keeps no
// body in memory: each part's body is a stream the visitor may read; the
// walk skips what it leaves.
//
// It returns the number of entities seen and, when it stopped early, why:
// a *limitError past maxParts entities or maxDepth levels of nesting, a
// *malformedError when the MIME structure cannot be followed (a part
// header that does not parse, a missing boundary, a truncated message),
// the context's error, an error reading r, or the visitor's own error.
func walk(ctx context.Context, r io.Reader, maxParts, maxDepth int, visit func(*part) error) (int, error) {
	w := &walker{ctx: ctx, maxParts: maxParts, maxDepth: maxDepth, visit: visit}
	br := bufio.NewReader(r)
	raw, err := readHeader(br)
	if err == errHeaderTooBig {
		return 0, &malformedError{err}
	} else if err != nil {
		return 0, err // the message could not be read
	}
	e, _ := message.New(headerOf(parseFields(raw)), br) // an unknown encoding or charset leaves the body as it is
	err = w.entity(e, 0)
	return w.parts, err
}

// headerOf builds a go-message header from parsed fields; Get returns the
// first field of a name, as mail readers use it.
func headerOf(fields []field) message.Header {
	var h textproto.Header
	for _, f := range slices.Backward(fields) {
		h.Add(f.name, f.value)
	}
	return message.Header{Header: h}
}

func (w *walker) entity(e *message.Entity, depth int) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if w.parts >= w.maxParts {
		return &limitError{what: "parts", msg: fmt.Sprintf("more than %d MIME parts", w.maxParts)}
	}
	if depth > w.maxDepth {
		return &limitError{what: "depth", msg: fmt.Sprintf("MIME parts nested more than %d deep", w.maxDepth)}
	}
	w.parts++
	mt, params := mediaType(e.Header.Values("Content-Type"))
	p := &part{Depth: depth, MediaType: mt, Names: fileNames(&e.Header), Header: e.Header}
	if strings.HasPrefix(mt, "multipart/") {
		p.Multipart = true
		if err := w.visit(p); err != nil {
			return err
		}
		boundary := params["boundary"]
		switch {
		case boundary == "":
			return &malformedError{fmt.Errorf("%s without a boundary", mt)}
		case len(boundary) > maxBoundary:
			return &malformedError{fmt.Errorf("%s boundary longer than %d characters", mt, maxBoundary)}
		}
		mr := textproto.NewMultipartReader(e.Body, boundary)
		for {
			tp, err := mr.NextPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return &malformedError{err}
			}
			sub, _ := message.New(message.Header{Header: tp.Header}, tp)
			if err := w.entity(sub, depth+1); err != nil {
				return err
			}
		}
	}
	p.Body = e.Body
	if err := w.visit(p); err != nil {
		return err
	}
	if mt == "message/rfc822" || mt == "message/global" {
		br := bufio.NewReader(e.Body)
		raw, err := readHeader(br)
		if err != nil {
			return &malformedError{fmt.Errorf("attached message: %w", err)}
		}
		sub, _ := message.New(headerOf(parseFields(raw)), br)
		return w.entity(sub, depth+1)
	}
	return nil
}

// mediaType is the lower-case media type and the parameters of the first
// Content-Type field, read as leniently as mail readers read it; text/plain
// when there is none (RFC 2045 section 5.2).
func mediaType(values []string) (string, map[string]string) {
	if len(values) == 0 || strings.TrimSpace(values[0]) == "" {
		return "text/plain", nil
	}
	mt, params, err := mime.ParseMediaType(values[0])
	if err == nil {
		return mt, params
	}
	mt, ps := lenientParams(values[0])
	params = map[string]string{}
	for _, kv := range ps {
		if _, ok := params[kv[0]]; !ok {
			params[kv[0]] = kv[1] // the first of a name wins
		}
	}
	return mt, params
}

// maxNames bounds the file names taken from one part (a header may
// repeat a parameter many times).
const maxNames = 256

// fileNames lists the file names a part declares, decoded: the filename
// parameters of every Content-Disposition, then the name parameters of
// every Content-Type. Each header is read both strictly and leniently
// (a duplicate parameter, an unquoted space, an RFC 2231 value in a
// legacy charset), and every value of the parameter counts, since mail
// readers differ in which one they show.
func fileNames(h *message.Header) []string {
	var names []string
	seen := map[string]bool{}
	add := func(n string) {
		if len(names) == maxNames {
			return
		}
		n = strings.TrimSpace(decodeWords(n))
		if n != "" && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	for _, f := range []struct{ field, param string }{{"Content-Disposition", "filename"}, {"Content-Type", "name"}} {
		for _, v := range h.Values(f.field) {
			// mime.ParseMediaType first; but it drops an RFC 2231 value
			// in a charset other than UTF-8 and refuses some headers
			// mail readers take, so the lenient reading counts too.
			if _, params, err := mime.ParseMediaType(v); err == nil {
				add(params[f.param])
			}
			_, ps := lenientParams(v)
			for _, kv := range ps {
				if kv[0] == f.param {
					add(kv[1])
				}
			}
		}
	}
	return names
}

// lenientParams splits "type/subtype; a=1; b="x y"" into the lower-case
// media type and its parameters in order, duplicates kept. It accepts what
// mime.ParseMediaType refuses and decodes RFC 2231 extended values
// (name*=charset'lang'%xx) and continuations (name*0=, name*1*=), which it
// joins in the order of their numbers.
func lenientParams(v string) (string, [][2]string) {
	items := splitParams(v)
	mt := strings.ToLower(strings.TrimSpace(items[0]))
	type piece struct {
		n   int
		val string
	}
	var out [][2]string
	cont := map[string][]piece{}
	var contOrder []string
	for _, it := range items[1:] {
		k, val, ok := strings.Cut(it, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		val = unquote(strings.TrimSpace(val))
		ext := strings.HasSuffix(k, "*")
		k = strings.TrimSuffix(k, "*")
		base, num, isCont := strings.Cut(k, "*")
		if isCont {
			n, err := strconv.Atoi(num)
			if err != nil || n < 0 || n > 1000 {
				continue
			}
			if ext {
				val = pctDecode(val, n == 0)
			}
			if _, seen := cont[base]; !seen {
				contOrder = append(contOrder, base)
			}
			cont[base] = append(cont[base], piece{n, val})
			continue
		}
		if ext {
			val = pctDecode(val, true)
		}
		out = append(out, [2]string{k, val})
	}
	for _, base := range contOrder {
		ps := cont[base]
		slices.SortStableFunc(ps, func(a, b piece) int { return a.n - b.n })
		var sb strings.Builder
		for _, p := range ps {
			sb.WriteString(p.val)
		}
		out = append(out, [2]string{base, sb.String()})
	}
	return mt, out
}

// splitParams splits at the semicolons outside quoted strings.
func splitParams(v string) []string {
	var items []string
	quoted, esc, start := false, false, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case esc:
			esc = false
		case c == '\\' && quoted:
			esc = true
		case c == '"':
			quoted = !quoted
		case c == ';' && !quoted:
			items = append(items, v[start:i])
			start = i + 1
		}
	}
	return append(items, v[start:])
}

// unquote removes the quotes around a quoted string and its backslash
// escapes; an unterminated quote is dropped.
func unquote(s string) string {
	if !strings.HasPrefix(s, `"`) {
		return s
	}
	s = strings.TrimSuffix(s[1:], `"`)
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// pctDecode decodes an RFC 2231 extended value: charset'language'%xx
// (the first or only piece) or %xx (a later piece). The charset is
// converted when go-message knows it; a value that does not decode is
// returned as it is.
func pctDecode(v string, first bool) string {
	cs := ""
	if first {
		c, rest, ok := strings.Cut(v, "'")
		if !ok {
			return v
		}
		_, rest, ok = strings.Cut(rest, "'")
		if !ok {
			return v
		}
		cs, v = c, rest
	}
	d, err := url.PathUnescape(v)
	if err != nil {
		return v
	}
	if cs == "" || strings.EqualFold(cs, "utf-8") || strings.EqualFold(cs, "us-ascii") || strings.ContainsAny(cs, "?= \t") {
		return d
	}
	if s, err := wordDecoder.DecodeHeader("=?" + cs + "?Q?" + qEncode(d) + "?="); err == nil {
		return s
	}
	return d
}

// qEncode writes every byte of s as =XX, for decodeWords to convert it.
func qEncode(s string) string {
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, 3*len(s))
	for i := 0; i < len(s); i++ {
		b = append(b, '=', hex[s[i]>>4], hex[s[i]&15])
	}
	return string(b)
}
