package mailbox

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"moat/store/maildir"
)

const user = "Alice@Example.Test"

func msg(n int) string {
	return fmt.Sprintf("From: a@example.net\r\nSubject: m%d\r\n\r\nbody %d\r\n", n, n)
}

func deliver(t *testing.T, s *Store, n int) string {
	t.Helper()
	p, err := s.Deliver(user, strings.NewReader(msg(n)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func openInbox(t *testing.T, s *Store) *Folder {
	t.Helper()
	f, err := s.OpenFolder(user, "inbox")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readAll(t *testing.T, f *Folder, uid UID) string {
	t.Helper()
	r, err := f.Open(uid)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestUserDir(t *testing.T) {
	for _, tc := range []struct {
		user, want string
		ok         bool
	}{
		{"Alice@Example.Test", "mail/example.test/alice", true},
		{`a@b@example.test`, "mail/example.test/a@b", true},
		{"Jörg@Bücher.Test.", "mail/xn--bcher-kva.test/jörg", true},
		{"x@[192.0.2.1]", "mail/[192.0.2.1]/x", true},
		{"nodomain", "", false},
		{"@example.test", "", false},
		{"a@", "", false},
		{"../x@example.test", "", false},
		{".hidden@example.test", "", false},
		{"a@..", "", false},
	} {
		got, err := UserDir("/d", tc.user)
		if (err == nil) != tc.ok {
			t.Errorf("UserDir(%q) error %v, want ok=%v", tc.user, err, tc.ok)
			continue
		}
		if tc.ok && got != filepath.Join("/d", tc.want) {
			t.Errorf("UserDir(%q) = %q, want %q", tc.user, got, tc.want)
		}
	}
}

func TestFolderDir(t *testing.T) {
	for _, tc := range []struct {
		name, dir string
		ok        bool
	}{
		{"INBOX", "", true},
		{"inbox", "", true},
		{"Sent", ".Sent", true},
		{"Work/2026", ".Work.2026", true},
		{"inbox/sub", ".INBOX.sub", true},
		{"a.b", ".a%2Eb", true},
		{".hidden", ".%2Ehidden", true},
		{"..", ".%2E%2E", true},
		{"100%", ".100%25", true},
		{`back\slash`, ".back%5Cslash", true},
		{"tab\there", ".tab%09here", true},
		{"Entwürfe", ".Entwürfe", true},
		{"", "", false},
		{"a//b", "", false},
		{"/a", "", false},
		{"a/", "", false},
		{"bad\xffutf8", "", false},
		{strings.Repeat("x", 255), "", false},
	} {
		dir, err := folderDir(tc.name)
		if (err == nil) != tc.ok || dir != tc.dir {
			t.Errorf("folderDir(%q) = %q, %v; want %q ok=%v", tc.name, dir, err, tc.dir, tc.ok)
			continue
		}
		if tc.ok && dir != "" {
			back, ok := folderName(dir)
			if !ok || back != canonical(tc.name) {
				t.Errorf("folderName(%q) = %q, %v; want %q", dir, back, ok, tc.name)
			}
		}
	}
	for _, dir := range []string{".", "..", "..x", ".a..b", ".INBOX", ".inbox.x", ".%41", ".%2e", ".%", ".%2", "tmp", ".a."} {
		if n, ok := folderName(dir); ok {
			t.Errorf("folderName(%q) = %q, want not a folder", dir, n)
		}
	}
}

// FuzzFolderName checks that folder names and directory names map one to
// one: whatever encodes decodes back, and whatever decodes encodes back
// to the same directory.
func FuzzFolderName(f *testing.F) {
	for _, s := range []string{"INBOX", "Sent", "Work/2026", "a.b", "%2E", ".x", "inbox/y", "Entwürfe", ".a.b", "..moat-deleted.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if dir, err := folderDir(s); err == nil && dir != "" {
			if strings.ContainsAny(dir, "/\x00") || dir == "." || dir == ".." || len(dir) > maxDirName {
				t.Fatalf("folderDir(%q) = %q: not one safe directory name", s, dir)
			}
			back, ok := folderName(dir)
			if !ok || back != canonical(s) {
				t.Fatalf("folderName(folderDir(%q)=%q) = %q, %v", s, dir, back, ok)
			}
		}
		if name, ok := folderName(s); ok {
			dir, err := folderDir(name)
			if err != nil || dir != s {
				t.Fatalf("folderDir(folderName(%q)=%q) = %q, %v", s, name, dir, err)
			}
		}
	})
}

// FuzzUIDList checks that the UID list parser never panics and that what
// it accepts is well-formed and survives a write and a read.
func FuzzUIDList(f *testing.F) {
	f.Add("moat-uidlist 1 1700000000 4\n1 a,S=1\n3 b,S=2\n")
	f.Add("moat-uidlist 1 5 1\n")
	f.Add("moat-uidlist 1 5 3\n2 x\n1 y\n")
	f.Add("moat-uidlist 1 1700000000 4 2\n1 a,S=1\n3 b,S=2\n")
	f.Fuzz(func(t *testing.T, s string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, uidListName), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := readUIDList(dir)
		if err != nil {
			return
		}
		var msgs []Message
		for i, u := range l.uids {
			if u == 0 || u >= l.next || (i > 0 && u <= l.uids[i-1]) || strings.ContainsAny(l.keys[i], "\n") {
				t.Fatalf("accepted a bad list: %q", s)
			}
			msgs = append(msgs, Message{UID: u, Key: l.keys[i]})
		}
		if l.recent == 0 || l.recent > l.next {
			t.Fatalf("accepted first recent UID %d with next %d: %q", l.recent, l.next, s)
		}
		if err := writeUIDList(dir, l.validity, l.next, l.recent, msgs); err != nil {
			t.Fatal(err)
		}
		l2, err := readUIDList(dir)
		if err != nil || l2.validity != l.validity || l2.next != l.next || l2.recent != l.recent || len(l2.uids) != len(l.uids) {
			t.Fatalf("round trip of %q: %+v, %v", s, l2, err)
		}
	})
}

func TestDeliverScanAndRead(t *testing.T) {
	s := Open(t.TempDir())
	var paths []string
	for i := 1; i <= 3; i++ {
		paths = append(paths, deliver(t, s, i))
	}
	root, _ := s.UserDir(user)
	for _, p := range paths {
		if filepath.Dir(p) != filepath.Join(root, "new") {
			t.Fatalf("delivered to %s, want INBOX new/", p)
		}
	}
	f := openInbox(t, s)
	msgs := f.Messages()
	if len(msgs) != 3 {
		t.Fatalf("%d messages, want 3", len(msgs))
	}
	for i, m := range msgs {
		if m.UID != UID(i+1) {
			t.Errorf("message %d has UID %d", i, m.UID)
		}
		if got := readAll(t, f, m.UID); got != msg(i+1) {
			t.Errorf("message %d reads %q", i, got)
		}
		if m.Size != int64(len(msg(i+1))) || m.Flags != "" {
			t.Errorf("message %d: size %d flags %q", i, m.Size, m.Flags)
		}
	}
	if n, _ := readNames(filepath.Join(root, "new")); len(n) != 0 {
		t.Errorf("new/ still holds %v after a session opened INBOX", n)
	}
	cur, _ := readNames(filepath.Join(root, "cur"))
	for _, n := range cur {
		if !strings.HasSuffix(n, ":2,") {
			t.Errorf("cur/ name %q lacks the info part", n)
		}
	}
}

type failReader struct{ after int }

func (r *failReader) Read(p []byte) (int, error) {
	if r.after > 0 {
		n := min(r.after, len(p))
		for i := range p[:n] {
			p[i] = 'x'
		}
		r.after -= n
		return n, nil
	}
	return 0, errors.New("connection lost")
}

// No half-written message is ever visible: a failed write leaves nothing
// in tmp/, new/ or cur/, and the index does not change.
func TestCrashSafety(t *testing.T) {
	s := Open(t.TempDir())
	deliver(t, s, 1)
	f, err := s.OpenFolder(user, Inbox)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deliver(user, &failReader{after: 100}); err == nil {
		t.Fatal("Deliver of a failing reader succeeded")
	}
	if _, err := f.Append(&failReader{after: 100}, "", time.Time{}); err == nil {
		t.Fatal("Append of a failing reader succeeded")
	}
	root, _ := s.UserDir(user)
	for _, sub := range []string{"tmp", "new"} {
		if n, _ := readNames(filepath.Join(root, sub)); len(n) != 0 {
			t.Errorf("%s/ holds %v", sub, n)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := len(f.Messages()); n != 1 {
		t.Errorf("%d messages after failed writes, want 1", n)
	}

	// What a crash leaves in tmp/ is never a message, and goes once old.
	old, young := filepath.Join(root, "tmp", "old"), filepath.Join(root, "tmp", "young")
	os.WriteFile(old, []byte("partial"), 0o600)
	os.WriteFile(young, []byte("partial"), 0o600)
	long := time.Now().Add(-40 * time.Hour)
	os.Chtimes(old, long, long)
	f.Close()
	g := openInbox(t, s)
	if n := len(g.Messages()); n != 1 {
		t.Errorf("%d messages with files in tmp/, want 1", n)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old tmp file: %v", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("young tmp file: %v", err)
	}
}

func TestUIDsStableAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := Open(dir)
	for i := 1; i <= 4; i++ {
		deliver(t, s, i)
	}
	f, err := s.OpenFolder(user, Inbox)
	if err != nil {
		t.Fatal(err)
	}
	var v1 View
	f.View(func(v View) {
		v1 = View{UIDValidity: v.UIDValidity, UIDNext: v.UIDNext, Messages: append([]Message(nil), v.Messages...)}
	})
	if err := f.Remove([]UID{2}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	deliver(t, s, 5)

	s2 := Open(dir) // as after a restart
	f2 := openInbox(t, s2)
	var v2 View
	f2.View(func(v View) {
		v2 = View{UIDValidity: v.UIDValidity, UIDNext: v.UIDNext, Messages: append([]Message(nil), v.Messages...)}
	})
	if v2.UIDValidity != v1.UIDValidity {
		t.Fatalf("UIDVALIDITY %d after reopen, was %d", v2.UIDValidity, v1.UIDValidity)
	}
	want := map[UID]string{1: msg(1), 3: msg(3), 4: msg(4), 5: msg(5)}
	if len(v2.Messages) != len(want) {
		t.Fatalf("%d messages, want %d", len(v2.Messages), len(want))
	}
	for _, m := range v2.Messages {
		if got := readAll(t, f2, m.UID); got != want[m.UID] {
			t.Errorf("UID %d reads %q, want %q", m.UID, got, want[m.UID])
		}
	}
	if v2.UIDNext != 6 {
		t.Errorf("UIDNEXT %d, want 6 (UID 2 is never reused)", v2.UIDNext)
	}
}

func TestUIDValidityChangesWhenListLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		harm func(path string) error
	}{
		{"deleted", os.Remove},
		{"corrupt", func(p string) error {
			b, _ := os.ReadFile(p)
			return os.WriteFile(p, append(b, "garbage\n"...), 0o600)
		}},
		{"truncated", func(p string) error { return os.WriteFile(p, nil, 0o600) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Open(t.TempDir())
			deliver(t, s, 1)
			deliver(t, s, 2)
			f, _ := s.OpenFolder(user, Inbox)
			var v1 uint32
			f.View(func(v View) { v1 = v.UIDValidity })
			f.Close()
			root, _ := s.UserDir(user)
			if err := tc.harm(filepath.Join(root, uidListName)); err != nil {
				t.Fatal(err)
			}
			f = openInbox(t, s)
			var v2 uint32
			var n int
			f.View(func(v View) { v2, n = v.UIDValidity, len(v.Messages) })
			if v2 <= v1 {
				t.Errorf("UIDVALIDITY %d after the list was %s, was %d: want greater", v2, tc.name, v1)
			}
			if n != 2 {
				t.Errorf("%d messages, want 2", n)
			}
		})
	}
}

func TestFlagsInFileNames(t *testing.T) {
	dir := t.TempDir()
	s := Open(dir)
	deliver(t, s, 1)
	deliver(t, s, 2)
	f := openInbox(t, s)
	for _, tc := range []struct {
		op    FlagOp
		flags Flags
		want  Flags
	}{
		{Add, "S", "S"},
		{Add, "FT", "FST"},
		{Remove, "T", "FS"},
		{Replace, "DR", "DR"},
		{Replace, "", ""},
		{Add, MakeFlags("TSRFD"), "DFRST"},
	} {
		out, err := f.SetFlags([]UID{1, 99}, tc.op, tc.flags, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || out[0].Flags != tc.want {
			t.Fatalf("SetFlags(%v %q) = %+v, want flags %q", tc.op, tc.flags, out, tc.want)
		}
		root, _ := s.UserDir(user)
		names, _ := readNames(filepath.Join(root, "cur"))
		found := false
		for _, n := range names {
			if k, fl := splitFileName(n); k == out[0].Key {
				found = true
				if !strings.HasSuffix(n, ":2,"+string(tc.want)) || fl != tc.want {
					t.Errorf("file %q, want flags %q in its name", n, tc.want)
				}
			}
		}
		if !found {
			t.Errorf("no file for key %s", out[0].Key)
		}
	}
	f.SetFlags([]UID{2}, Add, "FS", nil)
	s2 := Open(dir)
	f2 := openInbox(t, s2)
	got := f2.Messages()
	if got[0].Flags != "DFRST" || got[1].Flags != "FS" {
		t.Errorf("flags after reopen: %q %q", got[0].Flags, got[1].Flags)
	}
}

type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(s string)     { r.mu.Lock(); r.events = append(r.events, s); r.mu.Unlock() }
func (r *recorder) Appended(n int)   { r.add(fmt.Sprintf("exists %d", n)) }
func (r *recorder) Expunged(seq int) { r.add(fmt.Sprintf("expunge %d", seq)) }
func (r *recorder) FlagsChanged(seq int, m Message, origin any) {
	r.add(fmt.Sprintf("flags %d uid %d %s %v", seq, m.UID, m.Flags, origin))
}
func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func TestObserverSeesHistory(t *testing.T) {
	s := Open(t.TempDir())
	deliver(t, s, 1)
	deliver(t, s, 2)
	deliver(t, s, 3)
	f := openInbox(t, s)
	rec := &recorder{}
	var start int
	stop := f.Observe(func(n int) Observer { start = n; return rec })
	if start != 3 {
		t.Fatalf("observer starts at %d, want 3", start)
	}
	f.SetFlags([]UID{2, 3}, Add, "T", "me")
	if _, err := f.Expunge(func(u UID) bool { return u == 2 }); err != nil {
		t.Fatal(err)
	}
	deliver(t, s, 4)
	f.Sync()
	if _, err := f.Append(strings.NewReader(msg(5)), "S", time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	uids, err := f.Expunge(nil)
	if err != nil || len(uids) != 1 || uids[0] != 3 {
		t.Fatalf("Expunge = %v, %v; want [3]", uids, err)
	}
	stop()
	f.SetFlags([]UID{1}, Add, "S", nil)
	want := []string{
		"flags 2 uid 2 T me", "flags 3 uid 3 T me",
		"expunge 2",
		"exists 3",
		"exists 4",
		"expunge 2",
	}
	if got := rec.get(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("events\n%q\nwant\n%q", got, want)
	}
	ms := f.Messages()
	if len(ms) != 3 || ms[2].UID != 5 || !ms[2].Date.Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) || ms[2].Flags != "S" {
		t.Errorf("after append: %+v", ms)
	}
}

// Mail written into new/ by something other than this store (quarantine
// release, another process) is found at the next Sync, even within the
// same tick of the directory's mtime.
func TestOutsideDelivery(t *testing.T) {
	s := Open(t.TempDir())
	f := openInbox(t, s)
	root, _ := s.UserDir(user)
	for i := 1; i <= 3; i++ {
		if _, err := maildir.Dir(root).Deliver(strings.NewReader(msg(i))); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if n := len(f.Messages()); n != i {
			t.Fatalf("%d messages after %d outside deliveries", n, i)
		}
	}
}

func TestRemoveAfterMoveToCur(t *testing.T) {
	s := Open(t.TempDir())
	p1 := deliver(t, s, 1)
	p2 := deliver(t, s, 2)
	f := openInbox(t, s) // moves both to cur/
	if err := s.Remove(p1); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(p2); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(p2); err == nil {
		t.Error("second Remove of the same message succeeded")
	}
	if err := s.Remove("/etc/passwd"); err == nil {
		t.Error("Remove outside the store succeeded")
	}
	f.Sync()
	if n := len(f.Messages()); n != 0 {
		t.Errorf("%d messages after Remove, want 0", n)
	}
}

func TestFolders(t *testing.T) {
	s := Open(t.TempDir())
	steps := []struct {
		op   string
		args []string
		err  error
	}{
		{"create", []string{"Sent"}, nil},
		{"create", []string{"Sent"}, ErrFolderExists},
		{"create", []string{"inbox"}, ErrFolderExists},
		{"create", []string{"Work/2026"}, nil},
		{"create", []string{"a//b"}, ErrBadFolderName},
		{"delete", []string{"Work"}, ErrHasChildren},
		{"delete", []string{"INBOX"}, ErrInbox},
		{"delete", []string{"Nope"}, ErrNoFolder},
		{"rename", []string{"Work", "Job"}, nil},
		{"rename", []string{"Job", "Sent"}, ErrFolderExists},
		{"rename", []string{"Job", "Job/sub"}, ErrFolderExists},
		{"rename", []string{"INBOX", "Old"}, ErrInbox},
		{"rename", []string{"Nope", "X"}, ErrNoFolder},
		{"rename", []string{"Sent", "Archive/Sent.2025"}, nil},
		{"delete", []string{"Job/2026"}, nil},
	}
	for _, st := range steps {
		var err error
		switch st.op {
		case "create":
			err = s.CreateFolder(user, st.args[0])
		case "delete":
			err = s.DeleteFolder(user, st.args[0])
		case "rename":
			err = s.RenameFolder(user, st.args[0], st.args[1])
		}
		if !errors.Is(err, st.err) {
			t.Fatalf("%s %v: %v, want %v", st.op, st.args, err, st.err)
		}
	}
	got, err := s.Folders(user)
	if err != nil {
		t.Fatal(err)
	}
	want := "INBOX,Archive,Archive/Sent.2025,Job"
	if strings.Join(got, ",") != want {
		t.Errorf("folders %q, want %s", got, want)
	}
	root, _ := s.UserDir(user)
	if _, err := os.Stat(filepath.Join(root, ".Archive.Sent%2E2025", "maildirfolder")); err != nil {
		t.Errorf("renamed folder's directory: %v", err)
	}

	for _, n := range []string{"Job", "inbox", "Gone"} {
		if err := s.Subscribe(user, n, true); err != nil {
			t.Fatal(err)
		}
	}
	s.Subscribe(user, "Gone", false)
	subs, _ := s.Subscriptions(user)
	if strings.Join(subs, ",") != "INBOX,Job" {
		t.Errorf("subscriptions %q", subs)
	}
	b, _ := os.ReadFile(filepath.Join(root, "subscriptions"))
	if string(b) != "INBOX\nJob\n" {
		t.Errorf("subscriptions file %q", b)
	}
}

func TestDeletedFolderIsGoneForItsSessions(t *testing.T) {
	s := Open(t.TempDir())
	if err := s.CreateFolder(user, "Tmp"); err != nil {
		t.Fatal(err)
	}
	f, err := s.OpenFolder(user, "Tmp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Append(strings.NewReader(msg(1)), "", time.Time{}); err != nil {
		t.Fatal(err)
	}
	var v1 uint32
	f.View(func(v View) { v1 = v.UIDValidity })
	rec := &recorder{}
	f.Observe(func(int) Observer { return rec })
	if err := s.DeleteFolder(user, "Tmp"); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); !errors.Is(err, ErrNoFolder) {
		t.Errorf("Sync of a deleted folder: %v", err)
	}
	if got := rec.get(); len(got) != 1 || got[0] != "expunge 1" {
		t.Errorf("events %q", got)
	}
	if _, err := f.Append(strings.NewReader(msg(2)), "", time.Time{}); !errors.Is(err, ErrNoFolder) {
		t.Errorf("Append to a deleted folder: %v", err)
	}
	s.CreateFolder(user, "Tmp")
	g, err := s.OpenFolder(user, "Tmp")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var v2 uint32
	var n int
	g.View(func(v View) { v2, n = v.UIDValidity, len(v.Messages) })
	if g == f || v2 <= v1 || n != 0 {
		t.Errorf("recreated folder: same index %v, UIDVALIDITY %d (was %d), %d messages", g == f, v2, v1, n)
	}
}

func TestCopyKeepsFlagsAndDate(t *testing.T) {
	s := Open(t.TempDir())
	deliver(t, s, 1)
	deliver(t, s, 2)
	s.CreateFolder(user, "Archive")
	src := openInbox(t, s)
	dst, err := s.OpenFolder(user, "Archive")
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	src.SetFlags([]UID{2}, Add, "FS", nil)
	from, to, err := src.CopyTo(dst, []UID{2, 1, 42})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(from, to) != "[2 1] [1 2]" {
		t.Errorf("copied %v → %v", from, to)
	}
	sm, dm := src.Messages(), dst.Messages()
	if dm[0].Flags != "FS" || !dm[0].Date.Equal(sm[1].Date) || readAll(t, dst, 1) != msg(2) {
		t.Errorf("copy of UID 2: %+v", dm[0])
	}
	// A copy into the same folder is a new message.
	if _, to, err := src.CopyTo(src, []UID{1}); err != nil || len(to) != 1 || to[0] != 3 {
		t.Errorf("copy into the same folder: %v %v", to, err)
	}
}

func TestConcurrentDeliveryAndScan(t *testing.T) {
	s := Open(t.TempDir())
	f := openInbox(t, s)
	const writers, each = 4, 25
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := s.Deliver(user, strings.NewReader(msg(w*100+i))); err != nil {
					t.Error(err)
				}
			}
		}(w)
	}
	done := make(chan struct{})
	var scans sync.WaitGroup
	for r := 0; r < 2; r++ {
		scans.Add(1)
		go func() {
			defer scans.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if err := f.Sync(); err != nil {
					t.Error(err)
					return
				}
				f.View(func(v View) {
					for i := 1; i < len(v.Messages); i++ {
						if v.Messages[i].UID <= v.Messages[i-1].UID {
							t.Errorf("UIDs out of order: %d after %d", v.Messages[i].UID, v.Messages[i-1].UID)
						}
					}
				})
			}
		}()
	}
	wg.Wait()
	close(done)
	scans.Wait()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	ms := f.Messages()
	if len(ms) != writers*each {
		t.Fatalf("%d messages, want %d", len(ms), writers*each)
	}
	if ms[len(ms)-1].UID != UID(writers*each) {
		t.Errorf("last UID %d, want %d (one UID per message)", ms[len(ms)-1].UID, writers*each)
	}
}

func TestWatch(t *testing.T) {
	s := Open(t.TempDir())
	ch, stop := s.Watch(user, "INBOX")
	deliver(t, s, 1)
	deliver(t, s, 2) // coalesces with the first
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no signal after Deliver")
	}
	select {
	case <-ch:
		t.Fatal("two signals for coalesced deliveries")
	default:
	}
	other, stopOther := s.Watch(user, "Sent")
	defer stopOther()
	stop()
	stop() // twice is fine
	deliver(t, s, 3)
	select {
	case <-ch:
		t.Error("signal after stop")
	case <-other:
		t.Error("a delivery to INBOX signalled Sent")
	default:
	}
	bad, stopBad := s.Watch(user, "a//b")
	defer stopBad()
	if bad == nil {
		t.Error("nil channel for a bad name")
	}
}

func TestMaildrop(t *testing.T) {
	s := Open(t.TempDir())
	for i := 1; i <= 3; i++ {
		deliver(t, s, i)
	}
	md, err := s.OpenMaildrop(user)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenMaildrop(strings.ToLower(user)); !errors.Is(err, ErrInUse) {
		t.Fatalf("second maildrop: %v, want ErrInUse", err)
	}
	// An IMAP session on the same INBOX sees what POP3 deletes.
	imapView := openInbox(t, s)
	rec := &recorder{}
	imapView.Observe(func(int) Observer { return rec })
	deliver(t, s, 4) // not in the snapshot

	msgs, _ := md.Messages()
	if len(msgs) != 3 {
		t.Fatalf("%d messages in the snapshot, want 3", len(msgs))
	}
	seen := map[string]bool{}
	for i, m := range msgs {
		if m.Size != int64(len(msg(i+1))) || seen[m.UID] || len(m.UID) > 70 || strings.ContainsAny(m.UID, " \r\n") {
			t.Errorf("message %d: %+v", i, m)
		}
		seen[m.UID] = true
		r, err := md.Open(i)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r)
		r.Close()
		if string(b) != msg(i+1) {
			t.Errorf("message %d reads %q", i, b)
		}
	}
	if _, err := md.Open(3); err == nil {
		t.Error("Open past the snapshot succeeded")
	}
	if err := md.Commit([]int{0, 2}); err != nil {
		t.Fatal(err)
	}
	if err := md.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rec.get(); strings.Join(got, ",") != "expunge 3,expunge 1" {
		t.Errorf("IMAP view heard %q", got)
	}

	md2, err := s.OpenMaildrop(user)
	if err != nil {
		t.Fatal(err)
	}
	defer md2.Close()
	msgs2, _ := md2.Messages()
	if len(msgs2) != 2 || msgs2[0].UID != msgs[1].UID {
		t.Errorf("after commit: %+v (UID of message 2 was %s)", msgs2, msgs[1].UID)
	}
}

// The maildrop lock is also a file lock, for anything outside this process.
func TestMaildropFileLock(t *testing.T) {
	s := Open(t.TempDir())
	md, err := s.OpenMaildrop(user)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := s.UserDir(user)
	if _, err := lockFile(filepath.Join(root, "moat-pop3.lock")); !errors.Is(err, ErrInUse) {
		t.Errorf("flock while the maildrop is open: %v", err)
	}
	md.Close()
	lf, err := lockFile(filepath.Join(root, "moat-pop3.lock"))
	if err != nil {
		t.Fatalf("flock after close: %v", err)
	}
	unlockFile(lf)
}

// Foreign files in cur/ keep their keyword letters and get UIDs.
func TestForeignFiles(t *testing.T) {
	s := Open(t.TempDir())
	root, _ := s.UserDir(user)
	if err := maildir.Dir(root).Create(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "cur", "123.foreign:2,Sab"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(root, "cur", ".hidden"), []byte("x"), 0o600)
	f := openInbox(t, s)
	ms := f.Messages()
	if len(ms) != 1 || ms[0].Flags != "Sab" || ms[0].Size != 1 {
		t.Fatalf("messages %+v", ms)
	}
	out, _ := f.SetFlags([]UID{ms[0].UID}, Add, "F", nil)
	if out[0].Flags != "FSab" {
		t.Errorf("Add dropped keyword letters: %q", out[0].Flags)
	}
	// Keyword letters are keywords: Replace replaces them too.
	out, _ = f.SetFlags([]UID{ms[0].UID}, Replace, "F", nil)
	if out[0].Flags != "F" {
		t.Errorf("Replace kept keyword letters: %q", out[0].Flags)
	}
	if !bytes.Equal([]byte(readAll(t, f, ms[0].UID)), []byte("x")) {
		t.Error("content changed")
	}
}
