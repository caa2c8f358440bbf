// Package dkim verifies the DKIM signatures of a message (RFC 6376, with
// ed25519-sha256 from RFC 8463 and the RFC 8301 ban on rsa-sha1 and short
// RSA keys) and reports one result per signature, in the RFC 8601
// vocabulary. The cryptography and the key-record parsing are
// github.com/emersion/go-msgauth's; this package feeds it the transaction's
// resolver and context, names the selector and algorithm of each signature
// (go-msgauth does not report them) and turns its errors into results.
package dkim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"moat/filters"
)

// MaxSignatures is how many signatures of one message are verified. The
// ones after it are reported as neutral, not verified, so that a message
// stuffed with signatures costs at most this many key lookups and hashes.
const MaxSignatures = 10

// Verify verifies every DKIM-Signature of msg, reading it once, and returns
// one result per signature in header order (top first). Keys are looked up
// through r, under ctx: a lookup that fails because ctx ended is a
// temperror, as is any temporary DNS error (SERVFAIL, timeout); a name that
// does not exist is a permerror. A message without signatures gives no
// results and no error. The error is only for trouble reading msg. A nil
// r means net.DefaultResolver.
//
// A message that ends inside its header section (no empty line, no body) is
// verified as if the empty line were there: its body is empty.
func Verify(ctx context.Context, r filters.Resolver, msg io.Reader) ([]filters.DKIMResult, error) {
	if r == nil {
		r = net.DefaultResolver
	}
	sr := &scanReader{r: msg}
	verifs, err := dkim.VerifyWithOptions(sr, &dkim.VerifyOptions{
		LookupTXT:        lookupTXT(ctx, r),
		MaxVerifications: MaxSignatures,
	})
	if sr.err != nil {
		return nil, fmt.Errorf("dkim: reading the message: %w", sr.err)
	}
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		// go-msgauth passes on errors of the reader, of the header
		// parser (which scanReader's ending rules out) and of the hashes
		// (which cannot fail): any of them means the message could not
		// be read.
		return nil, fmt.Errorf("dkim: reading the message: %w", err)
	}

	// go-msgauth verifies the DKIM-Signature fields in header order and
	// returns its verifications in that order (VerifyWithOptions scans the
	// header top down; parallelVerify keeps the index), so sigs[i] is the
	// signature verifs[i] is about. The extra ones past MaxSignatures were
	// not verified.
	n := max(len(sr.sigs), len(verifs))
	results := make([]filters.DKIMResult, n)
	for i := range results {
		var sig sigTags
		if i < len(sr.sigs) {
			sig = sr.sigs[i]
		}
		res := filters.DKIMResult{
			Domain:     sig.d,
			Selector:   sig.s,
			Identifier: sig.i,
			Algorithm:  sig.a,
			HeaderB:    sig.b,
		}
		if i >= len(verifs) {
			res.Result = filters.Neutral
			res.Reason = fmt.Sprintf("%s: not verified: only the first %d signatures are", sig.name(), MaxSignatures)
			results[i] = res
			continue
		}
		v := verifs[i]
		if res.Domain == "" {
			res.Domain = v.Domain
		}
		if res.Identifier == "" {
			res.Identifier = v.Identifier
		}
		res.Result = classify(v.Err)
		if v.Err == nil {
			res.Reason = sig.name() + ": verified"
		} else {
			// go-msgauth puts "dkim: " before its errors, sometimes twice.
			res.Reason = sig.name() + ": " + strings.ReplaceAll(v.Err.Error(), "dkim: ", "")
		}
		results[i] = res
	}
	return results, nil
}

// classify maps a go-msgauth verification error to an RFC 8601 result:
// IsTempFail (a temporary DNS error) is temperror; IsPermFail (a
// signature or key record that cannot be used: bad or missing tags, From
// not signed, rsa-sha1, an RSA key under 1024 bits, expired, revoked, no
// key, several key records) is permerror; anything else (body hash or
// signature mismatch, an l= tag) is fail.
func classify(err error) string {
	switch {
	case err == nil:
		return filters.Pass
	case dkim.IsTempFail(err):
		return filters.TempError
	case dkim.IsPermFail(err):
		return filters.PermError
	default:
		return filters.Fail
	}
}

// lookupTXT binds r and ctx into the lookup go-msgauth calls. go-msgauth
// takes a temporary failure only from a net.Error whose Temporary() is
// true, and anything else for a missing key (permerror); so an error
// because ctx ended becomes a temporary *net.DNSError, and a wrapped
// *net.DNSError is unwrapped.
func lookupTXT(ctx context.Context, r filters.Resolver) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		txts, err := r.LookupTXT(ctx, name)
		if err == nil {
			return txts, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return nil, &net.DNSError{Err: cerr.Error(), Name: name, IsTimeout: errors.Is(cerr, context.DeadlineExceeded), IsTemporary: true}
		}
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) {
			return nil, dnsErr
		}
		return nil, err
	}
}

// sigTags are the tags of one DKIM-Signature that go-msgauth does not
// report, read leniently: a tag that is missing or malformed is "" (the
// verification says what is wrong with it).
type sigTags struct {
	d, s, i, a string
	b          string // the first 8 characters of b=
}

// name names the signature in reasons: "d=example.com s=sel".
func (t sigTags) name() string {
	return "d=" + t.d + " s=" + t.s
}

// parseSig reads the tags of a DKIM-Signature field value (tag=value
// pairs separated by ';', RFC 6376 3.2). Whitespace inside values is
// folding and is removed; the first of repeated tags counts.
func parseSig(value string) sigTags {
	var t sigTags
	seen := map[string]bool{}
	for _, pair := range strings.Split(value, ";") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if seen[k] {
			continue
		}
		seen[k] = true
		v = stripSpace(v)
		switch k {
		case "d":
			t.d = v
		case "s":
			t.s = v
		case "i":
			t.i = v
		case "a":
			t.a = v
		case "b":
			if len(v) > 8 {
				v = v[:8]
			}
			t.b = v
		}
	}
	if t.i == "" && t.d != "" {
		t.i = "@" + t.d // RFC 6376 3.5: the default i= is @d
	}
	return t
}

func stripSpace(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, s)
}

// scanReader passes the message through to go-msgauth and, on the way,
// collects the DKIM-Signature fields of the header section, split into
// fields exactly as go-msgauth's readHeader does (lines end at LF with an
// optional CR before it; a line starting with space or tab continues the
// field before it; the first empty line ends the header). It keeps only
// the signature fields and the current line, never the message.
//
// It also ends the message for go-msgauth where that helps:
//   - at the end of the header when there is no signature, so that the
//     body, which nobody needs, is not read;
//   - with an empty line when the message ends inside its header, which
//     go-msgauth would otherwise refuse to read at all.
//
// err keeps the first error of the underlying reader other than io.EOF.
type scanReader struct {
	r   io.Reader
	err error

	headerDone bool
	line       []byte // the current line, without its LF
	fields     int    // header fields seen so far
	inSig      bool   // the field being read is a DKIM-Signature
	sigField   []byte // that field's value so far
	sigs       []sigTags
	tail       []byte // what is left to hand out after the message ended
	eof        bool
}

func (s *scanReader) Read(p []byte) (int, error) {
	if s.eof {
		if len(s.tail) > 0 {
			n := copy(p, s.tail)
			s.tail = s.tail[n:]
			return n, nil
		}
		return 0, io.EOF
	}
	if s.headerDone {
		return s.read(p)
	}
	n, err := s.read(p)
	for i := 0; i < n && !s.headerDone; i++ {
		if p[i] != '\n' {
			s.line = append(s.line, p[i])
			continue
		}
		s.endLine()
		if s.headerDone && len(s.sigs) == 0 {
			// Nothing to verify: the body is not needed.
			s.eof = true
			return i + 1, nil
		}
	}
	if err == io.EOF && !s.headerDone {
		// The message ends inside its header: end the last line and
		// the header so that go-msgauth verifies an empty body.
		s.eof = true
		if len(s.line) > 0 {
			s.tail = append(s.tail, "\r\n"...)
			s.endLine()
		}
		s.tail = append(s.tail, "\r\n"...)
		s.endLine()
		if n > 0 {
			return n, nil
		}
		return s.Read(p)
	}
	return n, err
}

// read reads from the message, keeping its first real error.
func (s *scanReader) read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// endLine takes one complete header line.
func (s *scanReader) endLine() {
	line := s.line
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	switch {
	case len(line) == 0:
		s.endField()
		s.headerDone = true
	case s.fields > 0 && (line[0] == ' ' || line[0] == '\t'):
		if s.inSig {
			s.sigField = append(s.sigField, "\r\n"...)
			s.sigField = append(s.sigField, line...)
		}
	default:
		s.endField()
		s.fields++
		// Bytes, not a string per header line: only signatures are kept.
		key, value, _ := bytes.Cut(line, []byte(":"))
		if bytes.EqualFold(bytes.TrimSpace(key), []byte("DKIM-Signature")) {
			s.inSig = true
			s.sigField = append(s.sigField[:0], value...)
		}
	}
	s.line = s.line[:0]
}

// endField finishes the field being read.
func (s *scanReader) endField() {
	if s.inSig {
		s.sigs = append(s.sigs, parseSig(string(s.sigField)))
		s.inSig = false
	}
}
