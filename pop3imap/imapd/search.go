package imapd

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"moat/store/mailbox"
)

// Search returns the messages matching the criteria. Text matching is
// case-insensitive substring matching on decoded header fields and on
// text/* and message/* parts after their transfer encoding is undone
// (charsets are not converted: UTF-8 and ASCII searches work on such
// mail).
func (s *session) Search(kind imapserver.NumKind, c *imap.SearchCriteria, _ *imap.SearchOptions) (*imap.SearchData, error) {
	items, maxSeq, maxUID := s.sel.snapshot()
	data := &imap.SearchData{}
	var seqs imap.SeqSet
	var uidSet imap.UIDSet
	for _, it := range items {
		m := &candidate{it: it, f: s.sel.f, sel: s.sel}
		ok := m.matches(c, maxSeq, maxUID)
		m.close()
		if !ok {
			continue
		}
		num := it.seq
		if kind == imapserver.NumKindUID {
			num = uint32(it.m.UID)
			uidSet.AddNum(imap.UID(it.m.UID))
		} else {
			seqs.AddNum(it.seq)
		}
		if data.Min == 0 || num < data.Min {
			data.Min = num
		}
		data.Max = max(data.Max, num)
		data.Count++
	}
	if kind == imapserver.NumKindUID {
		data.All = uidSet
	} else {
		data.All = seqs
	}
	return data, nil
}

// candidate is one message under test; its file is opened only when a
// criterion needs the content.
type candidate struct {
	it      item
	f       *mailbox.Folder
	sel     *selected
	content *io.SectionReader
	closer  io.Closer
	header  *textproto.Header
	failed  bool
}

func (m *candidate) open() *io.SectionReader {
	if m.content == nil && !m.failed {
		f, err := m.f.Open(m.it.m.UID)
		if err != nil {
			m.failed = true
			return nil
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			m.failed = true
			return nil
		}
		m.content, m.closer = io.NewSectionReader(f, 0, st.Size()), f
	}
	return m.content
}

func (m *candidate) close() {
	if m.closer != nil {
		m.closer.Close()
	}
}

func (m *candidate) hdr() *mail.Header {
	if m.header == nil {
		h := textproto.Header{}
		if r := m.open(); r != nil {
			h = readHeader(r)
		}
		m.header = &h
	}
	return &mail.Header{Header: gomessage.Header{Header: *m.header}}
}

func (m *candidate) matches(c *imap.SearchCriteria, maxSeq uint32, maxUID imap.UID) bool {
	for _, set := range c.SeqNum {
		if !setMatcher(set, maxSeq, maxUID)(m.it) {
			return false
		}
	}
	for _, set := range c.UID {
		if !setMatcher(set, maxSeq, maxUID)(m.it) {
			return false
		}
	}
	if !inDates(m.it.m.Date, c.Since, c.Before) {
		return false
	}
	for _, f := range c.Flag {
		if !m.hasFlag(f) {
			return false
		}
	}
	for _, f := range c.NotFlag {
		if m.hasFlag(f) {
			return false
		}
	}
	if c.Larger > 0 && m.it.m.Size <= c.Larger {
		return false
	}
	if c.Smaller > 0 && m.it.m.Size >= c.Smaller {
		return false
	}
	for _, hc := range c.Header {
		if !matchFields(m.hdr().FieldsByKey(hc.Key), hc.Value) {
			return false
		}
	}
	if !c.SentSince.IsZero() || !c.SentBefore.IsZero() {
		t, err := m.hdr().Date()
		if err != nil || !inDates(t, c.SentSince, c.SentBefore) {
			return false
		}
	}
	for _, s := range c.Body {
		if !m.contains(s, false) {
			return false
		}
	}
	for _, s := range c.Text {
		if !m.contains(s, true) {
			return false
		}
	}
	for i := range c.Not {
		if m.matches(&c.Not[i], maxSeq, maxUID) {
			return false
		}
	}
	for i := range c.Or {
		if !m.matches(&c.Or[i][0], maxSeq, maxUID) && !m.matches(&c.Or[i][1], maxSeq, maxUID) {
			return false
		}
	}
	return true
}

// inDates compares the day of t (in its own zone; RFC 3501 ignores time
// and zone) with SINCE (inclusive) and BEFORE (exclusive).
func inDates(t, since, before time.Time) bool {
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	if !since.IsZero() && day.Before(since) {
		return false
	}
	return before.IsZero() || day.Before(before)
}

// hasFlag reports whether the message has a system flag, \Recent (in
// this session) or a keyword (case-insensitively, as IMAP wants).
func (m *candidate) hasFlag(flag imap.Flag) bool {
	if strings.EqualFold(string(flag), string(flagRecent)) {
		return m.sel.recent.Contains(imap.UID(m.it.m.UID))
	}
	if c, ok := flagLetters[strings.ToLower(string(flag))]; ok {
		return m.it.m.Flags.Has(c)
	}
	kw, err := m.f.KeywordFlags([]string{string(flag)}, false)
	return err == nil && kw != "" && m.it.m.Flags.Has(kw[0])
}

func matchFields(fields gomessage.HeaderFields, value string) bool {
	if value == "" {
		return fields.Len() > 0
	}
	value = strings.ToLower(value)
	for fields.Next() {
		v, err := fields.Text()
		if err != nil {
			v = fields.Value()
		}
		if strings.Contains(strings.ToLower(v), value) {
			return true
		}
	}
	return false
}

// contains looks for s in the message's text parts (and header fields
// when withHeader: the TEXT criterion).
func (m *candidate) contains(s string, withHeader bool) bool {
	r := m.open()
	if r == nil {
		return false
	}
	if s == "" {
		return true
	}
	e, _ := gomessage.Read(bufio.NewReader(fresh(r))) // an unknown charset still gives the entity
	if e == nil {
		return false
	}
	return entityContains(e, []byte(strings.ToLower(s)), withHeader, 0)
}

// maxDepth bounds MIME nesting, against messages built to exhaust the
// stack.
const maxDepth = 20

func entityContains(e *gomessage.Entity, s []byte, withHeader bool, depth int) bool {
	if withHeader && matchFields(e.Header.Fields(), string(s)) {
		return true
	}
	if mr := e.MultipartReader(); mr != nil {
		if depth >= maxDepth {
			return false
		}
		for range 1000 {
			p, err := mr.NextPart()
			if err != nil {
				return false
			}
			if entityContains(p, s, withHeader, depth+1) {
				return true
			}
		}
		return false
	}
	t, _, _ := e.Header.ContentType()
	if t != "" && !strings.HasPrefix(t, "text/") && !strings.HasPrefix(t, "message/") {
		return false
	}
	b, _ := io.ReadAll(io.LimitReader(e.Body, 64<<20))
	return bytes.Contains(bytes.ToLower(b), s)
}
