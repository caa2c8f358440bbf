package mailbox

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// \Recent claims are handed out once and survive the index being dropped
// (every session closed) and reloaded.
func TestClaimRecent(t *testing.T) {
	s := Open(t.TempDir())
	deliver(t, s, 1)
	deliver(t, s, 2)
	f, err := s.OpenFolder(user, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	var first UID
	f.View(func(v View) { first = v.FirstRecent })
	if first != 1 {
		t.Errorf("FirstRecent of a new folder = %d, want 1", first)
	}
	if got, err := f.ClaimRecent(); err != nil || !slices.Equal(got, []UID{1, 2}) {
		t.Errorf("first claim = %v, %v", got, err)
	}
	if got, _ := f.ClaimRecent(); len(got) != 0 {
		t.Errorf("second claim = %v, want none", got)
	}
	f.Close()
	deliver(t, s, 3)
	f = openInbox(t, s)
	if got, _ := f.ClaimRecent(); !slices.Equal(got, []UID{3}) {
		t.Errorf("claim after reopening = %v, want [3]", got)
	}
}

// Keywords get Dovecot's letters, persist in dovecot-keywords, match
// without regard to case, stop at 26, and are renamed into the
// destination's letters by CopyTo.
func TestKeywords(t *testing.T) {
	s := Open(t.TempDir())
	deliver(t, s, 1)
	if err := s.CreateFolder(user, "Archive"); err != nil {
		t.Fatal(err)
	}
	f := openInbox(t, s)
	if _, err := f.KeywordFlags([]string{"bad word"}, true); err == nil {
		t.Error("a keyword with a space was accepted")
	}
	l, err := f.KeywordFlags([]string{"$Junk", "NonJunk", "$junk"}, true)
	if err != nil || l != "ab" {
		t.Fatalf("KeywordFlags = %q, %v; want ab", l, err)
	}
	if l, _ := f.KeywordFlags([]string{"$JUNK", "Unknown"}, false); l != "a" {
		t.Errorf("lookup = %q, want a", l)
	}
	if _, err := f.SetFlags([]UID{1}, Add, "Sb", nil); err != nil {
		t.Fatal(err)
	}
	if got := f.KeywordNames("Sab"); !slices.Equal(got, []string{"$Junk", "NonJunk"}) {
		t.Errorf("KeywordNames = %q", got)
	}

	// The destination defines its own letters.
	d, err := s.OpenFolder(user, "Archive")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.KeywordFlags([]string{"Other"}, true); err != nil {
		t.Fatal(err)
	}
	_, to, err := f.CopyTo(d, []UID{1})
	if err != nil || len(to) != 1 {
		t.Fatalf("CopyTo: %v %v", to, err)
	}
	if m := d.Messages()[0]; m.Flags != "Sb" || !slices.Equal(d.KeywordNames(m.Flags), []string{"NonJunk"}) {
		t.Errorf("copied flags %q = %q", m.Flags, d.KeywordNames(m.Flags))
	}
	f.Close()

	b, err := os.ReadFile(filepath.Join(mustPath(s, user, "INBOX"), keywordsName))
	if err != nil || string(b) != "0 $Junk\n1 NonJunk\n" {
		t.Errorf("dovecot-keywords = %q, %v", b, err)
	}
	f = openInbox(t, s)
	if !slices.Equal(f.Keywords(), []string{"$Junk", "NonJunk"}) || !f.KeywordRoom() {
		t.Errorf("after reopening: %q", f.Keywords())
	}
	var many []string
	for i := range 30 {
		many = append(many, "k"+strings.Repeat("x", i))
	}
	l, err = f.KeywordFlags(many, true)
	if err != nil || len(l) != MaxKeywords-2 || f.KeywordRoom() {
		t.Errorf("past the limit: %q (%d letters), %v, room %v", l, len(l), err, f.KeywordRoom())
	}
}

// FuzzKeywords checks that the dovecot-keywords parser never panics and
// that what it returns is valid and survives a write and a read.
func FuzzKeywords(f *testing.F) {
	f.Add([]byte("0 $Junk\n1 NonJunk\n"))
	f.Add([]byte("3 $Label1\n0 a\n0 b\n25 z\n26 over\n-1 neg\n"))
	f.Add([]byte("1 dup\n2 DUP\nx y\n5 \n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		kw := parseKeywords(b)
		if len(kw) > MaxKeywords {
			t.Fatalf("%d keywords", len(kw))
		}
		for _, k := range kw {
			if k != "" && !validKeyword(k) {
				t.Fatalf("accepted %q", k)
			}
		}
		if again := parseKeywords(formatKeywords(kw)); !slices.Equal(again, kw) {
			t.Fatalf("round trip: %q → %q", kw, again)
		}
	})
}
