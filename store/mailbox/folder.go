package mailbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"moat/store/maildir"
)

// Message is one message of a folder's index.
type Message struct {
	UID   UID
	Key   string    // the file name up to ":": stable across flag changes
	Size  int64     // bytes on disk, which are the bytes as received
	Flags Flags     // Maildir letters
	Date  time.Time // the internal date: the file's mtime (arrival, or APPEND's date)

	file  string // the current file name
	inNew bool   // whether the file is in new/ (else cur/)
}

// View is a folder's state as Folder.View shows it.
type View struct {
	UIDValidity uint32
	UIDNext     UID
	// FirstRecent is the first UID no read-write IMAP session has seen
	// yet: the messages from it on are \Recent (see ClaimRecent).
	FirstRecent UID
	Messages    []Message // in UID order; position+1 is the sequence number
}

// An Observer hears of a folder's changes in the order they happen. Its
// methods run while the folder is locked: they must not block or call
// the folder. Sequence numbers are the folder's at the moment of the
// change, so a sequence of calls replays the folder's history.
type Observer interface {
	// Appended: one message was added at the end; count is the new total.
	Appended(count int)
	// Expunged: the message at position seq (1-based) went away.
	Expunged(seq int)
	// FlagsChanged: the message at seq has new flags; origin is what the
	// caller of SetFlags passed (nil for changes found on disk).
	FlagsChanged(seq int, m Message, origin any)
}

// Folder is the shared, in-memory index of one open folder. Every session
// that opens the same folder gets the same *Folder; each must Close it.
type Folder struct {
	s    *Store
	name string
	dir  string // the Maildir
	refs int    // guarded by s.mu

	// dirty asks the next Sync to rescan: set by Deliver and Remove.
	dirty atomic.Bool

	mu        sync.Mutex
	closed    bool // the last reference was closed
	gone      bool // deleted or renamed away
	loaded    bool
	validity  uint32
	next      UID
	recent    UID // the first UID not yet claimed as \Recent
	msgs      []Message
	newMtime  time.Time
	curMtime  time.Time
	observers map[*Observer]struct{}
	// keywords are the folder's keyword names by letter (see
	// keywords.go); replaced whole, so that Observers can read it
	// without the lock.
	keywords atomic.Pointer[[]string]
}

// OpenFolder opens the user's folder name, scanning it if no session has
// it open. INBOX is created when missing (a user who never got mail);
// other folders must exist.
func (s *Store) OpenFolder(user, name string) (*Folder, error) {
	dir, err := s.folderPath(user, name)
	if err != nil {
		return nil, err
	}
	name = canonical(name)
	s.mu.Lock()
	f := s.folders[dir]
	if f == nil {
		if name == Inbox {
			err = makeMaildir(dir)
		} else if st, serr := os.Stat(filepath.Join(dir, "cur")); serr != nil || !st.IsDir() {
			err = ErrNoFolder
		}
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
		f = &Folder{s: s, name: name, dir: dir, observers: map[*Observer]struct{}{}}
		s.folders[dir] = f
	}
	f.refs++
	s.mu.Unlock()
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Close releases the folder; the index goes when the last user closes it.
func (f *Folder) Close() error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if f.refs == 0 {
		return errors.New("mailbox: folder closed more often than opened")
	}
	f.refs--
	if f.refs > 0 {
		return nil
	}
	if f.s.folders[f.dir] == f {
		delete(f.s.folders, f.dir)
	}
	f.mu.Lock()
	f.closed = true
	f.observers = nil
	f.mu.Unlock()
	return nil
}

// Name returns the folder's IMAP name.
func (f *Folder) Name() string { return f.name }

// Observe registers the observer newObserver returns. newObserver runs
// while the folder is locked, with the current number of messages, so
// the observer starts in step with the folder. stop unregisters it.
func (f *Folder) Observe(newObserver func(count int) Observer) (stop func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := newObserver(len(f.msgs))
	if f.observers == nil {
		return func() {}
	}
	f.observers[&o] = struct{}{}
	return func() {
		f.mu.Lock()
		delete(f.observers, &o)
		f.mu.Unlock()
	}
}

// View runs fn with the folder's current state while the folder is
// locked; fn must not keep the slice, block, or call the folder.
func (f *Folder) View(fn func(v View)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(View{UIDValidity: f.validity, UIDNext: f.next, FirstRecent: f.recent, Messages: f.msgs})
}

// ClaimRecent hands the caller (a read-write IMAP session) the messages
// no session has claimed yet, and records that they are claimed: RFC 3501
// has a message \Recent in the one session that sees it first. It
// returns their UIDs in order.
func (f *Folder) ClaimRecent() ([]UID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usable(); err != nil || f.recent == f.next {
		return nil, err
	}
	i, _ := f.find(f.recent)
	var out []UID
	for _, m := range f.msgs[i:] {
		out = append(out, m.UID)
	}
	f.recent = f.next
	return out, writeUIDList(f.dir, f.validity, f.next, f.recent, f.msgs)
}

// Messages returns a copy of the folder's messages in UID order.
func (f *Folder) Messages() []Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Message(nil), f.msgs...)
}

// Open opens the message with uid for reading.
func (f *Folder) Open(uid UID) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.find(uid)
	if !ok {
		return nil, ErrNoMessage
	}
	file, err := os.Open(f.path(&f.msgs[i]))
	if err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	return file, nil
}

func (f *Folder) find(uid UID) (int, bool) {
	i := sort.Search(len(f.msgs), func(i int) bool { return f.msgs[i].UID >= uid })
	return i, i < len(f.msgs) && f.msgs[i].UID == uid
}

func (f *Folder) path(m *Message) string {
	sub := "cur"
	if m.inNew {
		sub = "new"
	}
	return filepath.Join(f.dir, sub, m.file)
}

func (f *Folder) each(fn func(o Observer)) {
	for o := range f.observers {
		fn(*o)
	}
}

// usable reports why the folder cannot be changed, if it cannot.
func (f *Folder) usable() error {
	if f.closed {
		return errors.New("mailbox: folder closed")
	}
	if f.gone {
		return ErrNoFolder
	}
	return nil
}

// Sync brings the index up to date with the disk: files that vanished are
// expunged, new ones get UIDs in arrival order, flags renamed from
// outside are read, and new mail moves from new/ to cur/. It rescans only
// when this process changed the folder behind the index or the
// directories' mtimes moved.
func (f *Folder) Sync() error {
	f.mu.Lock()
	err := f.syncLocked()
	f.mu.Unlock()
	return err
}

func (f *Folder) syncLocked() error {
	if f.closed {
		return nil
	}
	if f.gone {
		f.removeLocked(func(*Message) bool { return true })
		return ErrNoFolder
	}
	dirty := f.dirty.Swap(false)
	if f.loaded && !dirty {
		nm, cm := f.mtimes()
		// A directory's mtime has the granularity of the kernel's clock
		// tick: a file added just after a scan may leave it unchanged,
		// so new/ is trusted only once its mtime is a while old.
		if nm.Equal(f.newMtime) && cm.Equal(f.curMtime) && time.Since(nm) > mtimeSettle {
			return nil
		}
	}
	return f.scanLocked()
}

// mtimeSettle is how old new/'s mtime must be before an unchanged one
// is believed (see syncLocked).
const mtimeSettle = 2 * time.Second

func (f *Folder) mtimes() (newM, curM time.Time) {
	if st, err := os.Stat(filepath.Join(f.dir, "new")); err == nil {
		newM = st.ModTime()
	}
	if st, err := os.Stat(filepath.Join(f.dir, "cur")); err == nil {
		curM = st.ModTime()
	}
	return newM, curM
}

type diskFile struct {
	name  string
	inNew bool
	flags Flags
}

func (f *Folder) scanLocked() error {
	found := map[string]diskFile{}
	for _, sub := range []string{"new", "cur"} {
		names, err := readNames(filepath.Join(f.dir, sub))
		if errors.Is(err, os.ErrNotExist) && sub == "cur" && !f.exists() {
			f.gone = true
			f.removeLocked(func(*Message) bool { return true })
			return ErrNoFolder
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("mailbox: scan %s: %w", f.dir, err)
		}
		for _, n := range names {
			if strings.ContainsAny(n, "\n\r") {
				continue // cannot be listed in the UID list
			}
			key, flags := splitFileName(n)
			found[key] = diskFile{name: n, inNew: sub == "new", flags: flags} // cur/ wins
		}
	}

	changed := false
	if !f.loaded {
		f.cleanTmp()
		changed = f.loadLocked(found)
	} else {
		// Files gone from disk: expunge, from the end so that sequence
		// numbers stay right.
		n := len(f.msgs)
		f.removeLocked(func(m *Message) bool { _, ok := found[m.Key]; return !ok })
		changed = len(f.msgs) != n
		for i := range f.msgs {
			m := &f.msgs[i]
			d := found[m.Key]
			m.file, m.inNew = d.name, d.inNew
			if d.flags != m.Flags {
				m.Flags = d.flags
				f.each(func(o Observer) { o.FlagsChanged(i+1, *m, nil) })
			}
			delete(found, m.Key)
		}
	}
	f.loaded = true
	if len(found) > 0 {
		// found now holds only files without a UID.
		f.assignLocked(found)
		changed = true
	}

	// New mail moves to cur/, as Maildir readers do.
	for i := range f.msgs {
		m := &f.msgs[i]
		if !m.inNew {
			continue
		}
		to := curName(m.Key, m.Flags)
		if os.Rename(filepath.Join(f.dir, "new", m.file), filepath.Join(f.dir, "cur", to)) == nil {
			m.file, m.inNew = to, false
		}
	}
	f.newMtime, f.curMtime = f.mtimes()
	if changed {
		return writeUIDList(f.dir, f.validity, f.next, f.recent, f.msgs)
	}
	return nil
}

// cleanTmp removes what a crash left in tmp/: files older than 36 hours,
// as the Maildir conventions have it (younger ones may be in writing).
func (f *Folder) cleanTmp() {
	tmp := filepath.Join(f.dir, "tmp")
	names, _ := readNames(tmp)
	for _, n := range names {
		p := filepath.Join(tmp, n)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && time.Since(st.ModTime()) > 36*time.Hour {
			os.Remove(p)
		}
	}
}

func (f *Folder) exists() bool {
	_, err := os.Stat(f.dir)
	return err == nil
}

// loadLocked builds the index from the UID list and found, removing from
// found the files it placed. It reports whether the list must be written.
func (f *Folder) loadLocked(found map[string]diskFile) bool {
	l, err := readUIDList(f.dir)
	changed := false
	if l == nil || err != nil {
		// New folder, or the list was lost: a new UIDVALIDITY, so that
		// no client trusts UIDs it saw before.
		old := uint32(0)
		if l != nil {
			old = l.validity
		}
		l = &uidList{validity: f.s.newValidity(old), next: 1, recent: 1}
		changed = true
	}
	f.validity, f.next, f.recent = l.validity, l.next, l.recent
	kw := readKeywords(f.dir)
	f.keywords.Store(&kw)
	for i, key := range l.keys {
		d, ok := found[key]
		if !ok {
			changed = true // gone while nobody had the folder open
			continue
		}
		m := Message{UID: l.uids[i], Key: key, Flags: d.flags, file: d.name, inNew: d.inNew}
		if f.stat(&m) {
			f.msgs = append(f.msgs, m)
		}
		delete(found, key)
	}
	return changed
}

// assignLocked gives the files in found UIDs in arrival order (mtime,
// then name, which starts with the delivery time) and appends them.
func (f *Folder) assignLocked(found map[string]diskFile) {
	var add []Message
	for key, d := range found {
		m := Message{Key: key, Flags: d.flags, file: d.name, inNew: d.inNew}
		if f.stat(&m) {
			add = append(add, m)
		}
	}
	sort.Slice(add, func(i, j int) bool {
		if !add[i].Date.Equal(add[j].Date) {
			return add[i].Date.Before(add[j].Date)
		}
		return add[i].Key < add[j].Key
	})
	for _, m := range add {
		f.appendLocked(m)
	}
}

func (f *Folder) appendLocked(m Message) UID {
	m.UID = f.next
	f.next++
	f.msgs = append(f.msgs, m)
	n := len(f.msgs)
	f.each(func(o Observer) { o.Appended(n) })
	return m.UID
}

// stat fills m's size and date from its file; false if it is gone.
func (f *Folder) stat(m *Message) bool {
	st, err := os.Stat(f.path(m))
	if err != nil || !st.Mode().IsRegular() {
		return false
	}
	m.Size, m.Date = st.Size(), st.ModTime()
	return true
}

// removeLocked drops the messages match selects from the index (not from
// disk), highest first, telling observers; it returns their UIDs.
func (f *Folder) removeLocked(match func(m *Message) bool) []UID {
	var uids []UID
	for i := len(f.msgs) - 1; i >= 0; i-- {
		if !match(&f.msgs[i]) {
			continue
		}
		uids = append(uids, f.msgs[i].UID)
		f.msgs = append(f.msgs[:i], f.msgs[i+1:]...)
		f.each(func(o Observer) { o.Expunged(i + 1) })
	}
	return uids
}

// Append stores a message read from r with flags and date (the zero time
// is now) and returns its UID. The file is written under tmp/ and
// fsynced, then renamed into cur/ and indexed in one step.
func (f *Folder) Append(r io.Reader, flags Flags, date time.Time) (UID, error) {
	tmp, key, err := f.writeTmp(r, date)
	if err != nil {
		return 0, err
	}
	uids, err := f.adopt([]pending{{tmp: tmp, key: key, flags: flags}})
	if err != nil {
		return 0, err
	}
	return uids[0], nil
}

// writeTmp writes r to a new file under tmp/ and returns its path and key.
func (f *Folder) writeTmp(r io.Reader, date time.Time) (path, key string, err error) {
	if err := makeMaildir(f.dir); err != nil {
		return "", "", err
	}
	u := maildir.UniqueName()
	path = filepath.Join(f.dir, "tmp", u)
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", "", fmt.Errorf("mailbox: %w", err)
	}
	n, err := io.Copy(file, r)
	if err == nil {
		err = file.Sync()
	}
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err == nil && !date.IsZero() {
		err = os.Chtimes(path, date, date)
	}
	if err != nil {
		os.Remove(path)
		return "", "", fmt.Errorf("mailbox: write %s: %w", path, err)
	}
	return path, u + ",S=" + strconv.FormatInt(n, 10), nil
}

// pending is a message file written under tmp/, waiting to be adopted.
type pending struct {
	tmp   string
	key   string
	flags Flags
}

// adopt renames files from tmp/ into cur/ and gives them UIDs, with the
// folder locked so that no scan sees them first. On error the files not
// yet adopted are removed.
func (f *Folder) adopt(files []pending) ([]UID, error) {
	f.mu.Lock()
	uids, err := f.adoptLocked(files)
	f.mu.Unlock()
	f.s.notify(f.dir)
	return uids, err
}

func (f *Folder) adoptLocked(files []pending) (uids []UID, err error) {
	defer func() {
		for _, p := range files[len(uids):] {
			os.Remove(p.tmp)
		}
	}()
	if err := f.usable(); err != nil {
		return nil, err
	}
	if err := f.syncLocked(); err != nil {
		return nil, err
	}
	var failed error
	for _, p := range files {
		m := Message{Key: p.key, Flags: p.flags, file: curName(p.key, p.flags)}
		if err := os.Rename(p.tmp, f.path(&m)); err != nil {
			failed = fmt.Errorf("mailbox: store in %s: %w", f.dir, err)
			break
		}
		if !f.stat(&m) {
			failed = fmt.Errorf("mailbox: store in %s: file vanished", f.dir)
			break
		}
		uids = append(uids, f.appendLocked(m))
	}
	if len(uids) == 0 {
		return nil, failed
	}
	if err := syncDir(filepath.Join(f.dir, "cur")); err != nil {
		return uids, err
	}
	f.newMtime, f.curMtime = f.mtimes()
	if err := writeUIDList(f.dir, f.validity, f.next, f.recent, f.msgs); err != nil {
		return uids, err
	}
	return uids, failed
}

// SetFlags changes the flags of the messages with uids (those that exist)
// by renaming their files, tells observers (passing origin along), and
// returns those messages as they now are.
func (f *Folder) SetFlags(uids []UID, op FlagOp, flags Flags, origin any) ([]Message, error) {
	f.mu.Lock()
	out, err := f.setFlagsLocked(uids, op, flags, origin)
	f.mu.Unlock()
	if len(out) > 0 {
		f.s.notify(f.dir)
	}
	return out, err
}

func (f *Folder) setFlagsLocked(uids []UID, op FlagOp, flags Flags, origin any) ([]Message, error) {
	if err := f.usable(); err != nil {
		return nil, err
	}
	var out []Message
	renamed := false
	for _, uid := range uids {
		i, ok := f.find(uid)
		if !ok {
			continue
		}
		m := &f.msgs[i]
		nf := op.apply(m.Flags, flags)
		if nf != m.Flags || m.inNew {
			to := curName(m.Key, nf)
			if err := os.Rename(f.path(m), filepath.Join(f.dir, "cur", to)); err != nil {
				return out, fmt.Errorf("mailbox: set flags: %w", err)
			}
			renamed = true
			m.file, m.inNew = to, false
			if nf != m.Flags {
				m.Flags = nf
				f.each(func(o Observer) { o.FlagsChanged(i+1, *m, origin) })
			}
		}
		out = append(out, *m)
	}
	if renamed {
		f.newMtime, f.curMtime = f.mtimes()
	}
	return out, nil
}

// Expunge removes the messages flagged \Deleted that match selects (nil:
// all of them) and returns their UIDs.
func (f *Folder) Expunge(match func(uid UID) bool) ([]UID, error) {
	return f.remove(func(m *Message) bool {
		return m.Flags.Has(Deleted) && (match == nil || match(m.UID))
	})
}

// Remove removes the messages with uids whatever their flags (MOVE, POP3
// DELE); UIDs not in the folder are ignored.
func (f *Folder) Remove(uids []UID) error {
	set := make(map[UID]bool, len(uids))
	for _, u := range uids {
		set[u] = true
	}
	_, err := f.remove(func(m *Message) bool { return set[m.UID] })
	return err
}

func (f *Folder) remove(match func(m *Message) bool) ([]UID, error) {
	f.mu.Lock()
	uids, err := f.removeFilesLocked(match)
	f.mu.Unlock()
	if len(uids) > 0 {
		f.s.notify(f.dir)
	}
	return uids, err
}

func (f *Folder) removeFilesLocked(match func(m *Message) bool) ([]UID, error) {
	if err := f.usable(); err != nil {
		return nil, err
	}
	var firstErr error
	uids := f.removeLocked(func(m *Message) bool {
		if !match(m) {
			return false
		}
		if err := os.Remove(f.path(m)); err != nil && !errors.Is(err, os.ErrNotExist) {
			if firstErr == nil {
				firstErr = fmt.Errorf("mailbox: expunge: %w", err)
			}
			return false
		}
		return true
	})
	if len(uids) == 0 {
		return nil, firstErr
	}
	sort.Slice(uids, func(i, j int) bool { return uids[i] < uids[j] })
	f.newMtime, f.curMtime = f.mtimes()
	if err := writeUIDList(f.dir, f.validity, f.next, f.recent, f.msgs); err != nil && firstErr == nil {
		firstErr = err
	}
	return uids, firstErr
}

// CopyTo copies the messages with uids (those that exist) into dst, with
// their flags and dates, and returns the source UIDs copied and the new
// UIDs in dst, pairwise. Files are hard-linked when the file system
// allows (message files never change), else copied.
func (f *Folder) CopyTo(dst *Folder, uids []UID) (from, to []UID, err error) {
	var files []pending
	f.mu.Lock()
	if err := f.usable(); err != nil {
		f.mu.Unlock()
		return nil, nil, err
	}
	for _, uid := range uids {
		i, ok := f.find(uid)
		if !ok {
			continue
		}
		m := f.msgs[i]
		p, err := dst.linkTmp(f.path(&m), m)
		if err != nil {
			for _, q := range files {
				os.Remove(q.tmp)
			}
			f.mu.Unlock()
			return nil, nil, err
		}
		files = append(files, p)
		from = append(from, uid)
	}
	f.mu.Unlock()
	if len(files) == 0 {
		return nil, nil, nil
	}
	if dst != f {
		if err := f.translateKeywords(dst, files); err != nil {
			for _, q := range files {
				os.Remove(q.tmp)
			}
			return nil, nil, err
		}
	}
	to, err = dst.adopt(files)
	return from[:len(to)], to, err
}

// translateKeywords turns the keyword letters of files, which are f's,
// into dst's, defining the keywords in dst as needed (and while there
// is room).
func (f *Folder) translateKeywords(dst *Folder, files []pending) error {
	for i := range files {
		fl := files[i].flags
		kw := fl.Without(fl.Without(keywordLetters)) // the keyword letters alone
		if kw == "" {
			continue
		}
		letters, err := dst.KeywordFlags(f.KeywordNames(kw), true)
		if err != nil {
			return err
		}
		files[i].flags = fl.Without(keywordLetters).With(letters)
	}
	return nil
}

// MoveWithin moves the messages with uids (those that exist) to the end
// of their own folder under new UIDs (IMAP MOVE into the selected
// folder). Each file is first linked under a new name, so a crash leaves
// a duplicate, never a loss; then the originals are removed and the
// copies added, in that order, which is the order observers hear them
// in. It returns the old and new UIDs pairwise.
func (f *Folder) MoveWithin(uids []UID) (from, to []UID, err error) {
	f.mu.Lock()
	from, to, err = f.moveWithinLocked(uids)
	f.mu.Unlock()
	if len(to) > 0 {
		f.s.notify(f.dir)
	}
	return from, to, err
}

func (f *Folder) moveWithinLocked(uids []UID) (from, to []UID, err error) {
	if err := f.usable(); err != nil {
		return nil, nil, err
	}
	var moved []Message
	for _, uid := range uids {
		i, ok := f.find(uid)
		if !ok {
			continue
		}
		m := f.msgs[i]
		key := maildir.UniqueName() + ",S=" + strconv.FormatInt(m.Size, 10)
		nm := Message{Key: key, Size: m.Size, Flags: m.Flags, Date: m.Date, file: curName(key, m.Flags)}
		if err := os.Link(f.path(&m), f.path(&nm)); err != nil {
			for _, n := range moved {
				os.Remove(f.path(&n))
			}
			return nil, nil, fmt.Errorf("mailbox: move: %w", err)
		}
		moved = append(moved, nm)
		from = append(from, uid)
	}
	if len(moved) == 0 {
		return nil, nil, nil
	}
	if err := syncDir(filepath.Join(f.dir, "cur")); err != nil {
		return nil, nil, err
	}
	set := make(map[UID]bool, len(from))
	for _, u := range from {
		set[u] = true
	}
	if _, err := f.removeFilesLocked(func(m *Message) bool { return set[m.UID] }); err != nil {
		// The copies are on disk: the next scan gives them UIDs.
		f.dirty.Store(true)
		return nil, nil, err
	}
	for _, nm := range moved {
		to = append(to, f.appendLocked(nm))
	}
	f.newMtime, f.curMtime = f.mtimes()
	return from, to, writeUIDList(f.dir, f.validity, f.next, f.recent, f.msgs)
}

// linkTmp puts a copy of the message file src into f's tmp/.
func (f *Folder) linkTmp(src string, m Message) (pending, error) {
	if err := makeMaildir(f.dir); err != nil {
		return pending{}, err
	}
	u := maildir.UniqueName()
	tmp := filepath.Join(f.dir, "tmp", u)
	if err := os.Link(src, tmp); err != nil {
		in, err := os.Open(src)
		if err != nil {
			return pending{}, fmt.Errorf("mailbox: copy: %w", err)
		}
		defer in.Close()
		path, key, err := f.writeTmp(in, m.Date)
		return pending{tmp: path, key: key, flags: m.Flags}, err
	}
	return pending{tmp: tmp, key: u + ",S=" + strconv.FormatInt(m.Size, 10), flags: m.Flags}, nil
}
