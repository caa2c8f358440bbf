package imapd

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	gomessage "github.com/emersion/go-message"
)

// checkWritable fails when imapserver would panic writing bs.
func checkWritable(t *testing.T, bs imap.BodyStructure, depth int) {
	t.Helper()
	if depth > 2*maxDepth+2 {
		t.Fatal("structure deeper than the limit")
	}
	switch b := bs.(type) {
	case *imap.BodyStructureMultiPart:
		if len(b.Children) == 0 || b.Extended == nil {
			t.Fatalf("multipart not writable: %#v", b)
		}
		for _, c := range b.Children {
			checkWritable(t, c, depth+1)
		}
	case *imap.BodyStructureSinglePart:
		if b.Extended == nil {
			t.Fatalf("part without extension data: %#v", b)
		}
		if m := b.MessageRFC822; m != nil {
			checkWritable(t, m.BodyStructure, depth+1)
		}
	default:
		t.Fatalf("structure %T", bs)
	}
}

// FuzzMessage runs what FETCH and SEARCH do with a stored message (any
// bytes a stranger can mail) through the MIME parsers: envelope, body
// structure, sections and text search must neither panic nor produce a
// structure imapserver cannot write.
func FuzzMessage(f *testing.F) {
	for _, s := range []string{
		message(1, "hello"),
		"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--\r\n",
		"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody\r\n--x--\r\n",
		strings.Repeat("Content-Type: message/rfc822\r\n\r\n", 30) + "Subject: deep\r\n\r\nx\r\n",
		"Subject: =?utf-8?b?w6k=?=\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n",
		"no header at all",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		content := io.NewSectionReader(bytes.NewReader(raw), 0, int64(len(raw)))
		imapserver.ExtractEnvelope(readHeader(content))
		checkWritable(t, bodyStructure(content), 0)
		for _, bs := range []*imap.FetchItemBodySection{
			{Specifier: imap.PartSpecifierText},
			{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Subject"}},
			{Part: []int{1}},
			{Part: []int{1, 2}, Specifier: imap.PartSpecifierMIME},
		} {
			imapserver.ExtractBodySection(fresh(content), bs)
		}
		if e, _ := gomessage.Read(bufio.NewReader(fresh(content))); e != nil {
			entityContains(e, []byte("needle"), true, 0)
		}
	})
}

// A message nested far too deep is served as one opaque part, quickly,
// and a multipart without parts is written with an empty one.
func TestHostileStructures(t *testing.T) {
	h := newHarness(t)
	deep := strings.Repeat("Content-Type: message/rfc822\r\n\r\n", 50000) + "Subject: deep\r\n\r\nx\r\n"
	h.deliver(alice, deep)
	h.deliver(alice, "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--\r\n")
	c := h.login(alice, nil)
	c.Select("INBOX", nil).Wait()
	msgs := fetchAll(t, c, imap.SeqSetNum(1, 2), &imap.FetchOptions{BodyStructure: &imap.FetchItemBodyStructure{Extended: true},
		BodySection: []*imap.FetchItemBodySection{{Peek: true, Part: make([]int, 100)}}})
	if len(msgs) != 2 {
		t.Fatalf("%d messages", len(msgs))
	}
	if bs, ok := msgs[0].BodyStructure.(*imap.BodyStructureSinglePart); !ok || bs.Type != "application" || bs.Size != uint32(len(deep)) {
		t.Errorf("deep message: %#v", msgs[0].BodyStructure)
	}
	if bs, ok := msgs[1].BodyStructure.(*imap.BodyStructureMultiPart); !ok || len(bs.Children) != 1 {
		t.Errorf("empty multipart: %#v", msgs[1].BodyStructure)
	}
}
