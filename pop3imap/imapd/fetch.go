package imapd

import (
	"bufio"
	"errors"
	"io"
	"math"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"moat/store/mailbox"
)

// Fetch writes the asked-for items of each message. A body section
// fetched without .PEEK sets \Seen, except in a read-only folder, and the
// response then carries the new FLAGS.
func (s *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, o *imap.FetchOptions) error {
	items := s.sel.resolve(numSet)
	seen := map[mailbox.UID]bool{}
	if !s.sel.readOnly && marksSeen(o) {
		var unseen []mailbox.UID
		for _, it := range items {
			if !it.m.Flags.Has(mailbox.Seen) {
				unseen = append(unseen, it.m.UID)
			}
		}
		if len(unseen) > 0 {
			updated, err := s.sel.f.SetFlags(unseen, mailbox.Add, mailbox.MakeFlags("S"), s.sel.tracker)
			if err != nil {
				return storeError(err)
			}
			for _, m := range updated {
				seen[m.UID] = true
			}
			for i := range items {
				if seen[items[i].m.UID] {
					items[i].m.Flags = items[i].m.Flags.With("S")
				}
			}
		}
	}
	for _, it := range items {
		if err := s.fetchOne(w, it, o, seen[it.m.UID]); err != nil {
			return err
		}
	}
	return nil
}

func marksSeen(o *imap.FetchOptions) bool {
	for _, bs := range o.BodySection {
		if !bs.Peek {
			return true
		}
	}
	for _, bs := range o.BinarySection {
		if !bs.Peek {
			return true
		}
	}
	return false
}

func needsContent(o *imap.FetchOptions) bool {
	return o.Envelope || o.BodyStructure != nil || len(o.BodySection) > 0 ||
		len(o.BinarySection) > 0 || len(o.BinarySectionSize) > 0
}

func (s *session) fetchOne(w *imapserver.FetchWriter, it item, o *imap.FetchOptions, flagsChanged bool) error {
	var content *io.SectionReader
	if needsContent(o) {
		f, err := s.sel.f.Open(it.m.UID)
		if errors.Is(err, mailbox.ErrNoMessage) {
			return nil // expunged by another session since: left out
		}
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		content = io.NewSectionReader(f, 0, st.Size())
	}
	rw := w.CreateMessage(it.seq)
	rw.WriteUID(imap.UID(it.m.UID))
	if o.Flags || flagsChanged {
		rw.WriteFlags(s.sel.flags(it.m))
	}
	if o.InternalDate {
		rw.WriteInternalDate(it.m.Date)
	}
	if o.RFC822Size {
		rw.WriteRFC822Size(it.m.Size)
	}
	if o.Envelope {
		rw.WriteEnvelope(imapserver.ExtractEnvelope(readHeader(content)))
	}
	if o.BodyStructure != nil {
		rw.WriteBodyStructure(bodyStructure(content))
	}
	for _, bs := range o.BodySection {
		if err := writeBodySection(rw, bs, content); err != nil {
			return err
		}
	}
	for _, bs := range o.BinarySection {
		var b []byte
		if len(bs.Part) <= maxDepth {
			b = imapserver.ExtractBinarySection(fresh(content), bs)
		}
		if err := writeLiteral(rw.WriteBinarySection(bs, int64(len(b))), b); err != nil {
			return err
		}
	}
	for _, bss := range o.BinarySectionSize {
		var n uint32
		if len(bss.Part) <= maxDepth {
			n = imapserver.ExtractBinarySectionSize(fresh(content), bss)
		}
		rw.WriteBinarySectionSize(bss, n)
	}
	return rw.Close()
}

// writeBodySection sends BODY[] (and its partial form) straight from the
// file, byte for byte as stored; other sections go through imapserver's
// MIME parser.
func writeBodySection(rw *imapserver.FetchResponseWriter, bs *imap.FetchItemBodySection, content *io.SectionReader) error {
	if len(bs.Part) == 0 && bs.Specifier == imap.PartSpecifierNone {
		off, n := int64(0), content.Size()
		if p := bs.Partial; p != nil {
			off = min(p.Offset, n)
			n = min(p.Size, n-off)
		}
		wc := rw.WriteBodySection(bs, n)
		_, err := io.Copy(wc, io.NewSectionReader(content, off, n))
		if cerr := wc.Close(); err == nil {
			err = cerr
		}
		return err
	}
	var b []byte
	if len(bs.Part) <= maxDepth { // deeper paths cannot exist (see bodyStructure)
		b = imapserver.ExtractBodySection(fresh(content), bs)
	}
	return writeLiteral(rw.WriteBodySection(bs, int64(len(b))), b)
}

// bodyStructure is imapserver.ExtractBodyStructure made safe for any
// message a stranger can send. That function copies each nested
// message/rfc822 part whole, so a few megabytes of nested parts take
// memory quadratic in their depth (a 3 MB message exhausted a test
// machine); and imapserver panics writing a multipart without parts.
// Messages nested deeper than maxDepth are described as one opaque part.
func bodyStructure(content *io.SectionReader) imap.BodyStructure {
	if !nestingWithin(fresh(content), maxDepth) {
		return &imap.BodyStructureSinglePart{
			Type: "application", Subtype: "octet-stream", Size: uint32(min(content.Size(), math.MaxUint32)),
			Extended: &imap.BodyStructureSinglePartExt{},
		}
	}
	return writable(imapserver.ExtractBodyStructure(fresh(content)))
}

// nestingWithin reports whether the MIME tree of a message is at most
// limit levels deep, reading it once without copying; it follows the
// same parts ExtractBodyStructure descends into.
func nestingWithin(r io.Reader, limit int) bool {
	br := bufio.NewReader(r)
	h, _ := textproto.ReadHeader(br)
	return partWithin(h, br, limit)
}

func partWithin(h textproto.Header, body io.Reader, limit int) bool {
	if limit < 0 {
		return false
	}
	mh := gomessage.Header{Header: h}
	t, params, _ := mh.ContentType()
	switch {
	case strings.HasPrefix(t, "multipart/"):
		mr := textproto.NewMultipartReader(body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				return true
			}
			if !partWithin(p.Header, p, limit-1) {
				return false
			}
		}
	case t == "message/rfc822" || t == "message/global":
		br := bufio.NewReader(body)
		inner, _ := textproto.ReadHeader(br)
		return partWithin(inner, br, limit-1)
	}
	return true
}

// writable fills in what imapserver needs to write a structure: at least
// one child per multipart, and the extension data BODYSTRUCTURE sends.
func writable(bs imap.BodyStructure) imap.BodyStructure {
	switch b := bs.(type) {
	case *imap.BodyStructureMultiPart:
		for i, c := range b.Children {
			b.Children[i] = writable(c)
		}
		if len(b.Children) == 0 {
			b.Children = []imap.BodyStructure{emptyText()}
		}
		if b.Extended == nil {
			b.Extended = &imap.BodyStructureMultiPartExt{}
		}
	case *imap.BodyStructureSinglePart:
		if m := b.MessageRFC822; m != nil {
			m.BodyStructure = writable(m.BodyStructure)
		}
		if b.Extended == nil {
			b.Extended = &imap.BodyStructureSinglePartExt{}
		}
	default:
		return emptyText()
	}
	return bs
}

func emptyText() *imap.BodyStructureSinglePart {
	return &imap.BodyStructureSinglePart{Type: "text", Subtype: "plain", Text: &imap.BodyStructureText{},
		Extended: &imap.BodyStructureSinglePartExt{}}
}

func writeLiteral(wc io.WriteCloser, b []byte) error {
	_, err := wc.Write(b)
	if cerr := wc.Close(); err == nil {
		err = cerr
	}
	return err
}

// fresh returns a reader from the start of the message.
func fresh(r *io.SectionReader) io.Reader { return io.NewSectionReader(r, 0, r.Size()) }

// readHeader parses the message header: as much of it as parses.
func readHeader(r *io.SectionReader) textproto.Header {
	h, _ := textproto.ReadHeader(bufio.NewReader(fresh(r)))
	return h
}
