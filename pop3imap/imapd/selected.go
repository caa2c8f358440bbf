package imapd

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"moat/store/mailbox"
)

// selected is a session's selected folder. Sessions on the same folder
// share one *mailbox.Folder and one imapserver.MailboxTracker, fed by the
// folder's changes, so each session hears the others' (and POP3's and
// SMTP's) changes as EXISTS, EXPUNGE and FETCH FLAGS at its own pace, and
// its sequence numbers are translated between its view and the folder's.
type selected struct {
	f        *mailbox.Folder
	tracker  *imapserver.SessionTracker
	readOnly bool // EXAMINE: no flag changes, no expunge, no \Seen

	// recent are the messages \Recent in this session: claimed from the
	// folder (SELECT), or not yet claimed by anyone (EXAMINE). They come
	// in increasing runs of UIDs, so the set stays small.
	recent imap.UIDSet
	// lastUID is the highest UID the client knew of after the last
	// poll: when it grows, EXISTS went out and RECENT follows.
	lastUID mailbox.UID
	// keywords is how many keywords the last FLAGS listed.
	keywords int
}

// trackers hands out one MailboxTracker per open folder.
type trackers struct {
	mu sync.Mutex
	m  map[*mailbox.Folder]*sharedTracker
}

type sharedTracker struct {
	mt   *imapserver.MailboxTracker
	refs int
	stop func()
}

func (t *trackers) acquire(f *mailbox.Folder) *imapserver.MailboxTracker {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.m[f]
	if st == nil {
		st = &sharedTracker{}
		st.stop = f.Observe(func(n int) mailbox.Observer {
			st.mt = imapserver.NewMailboxTracker(uint32(n))
			return observer{st.mt, f}
		})
		t.m[f] = st
	}
	st.refs++
	return st.mt
}

func (t *trackers) release(f *mailbox.Folder) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.m[f]
	if st == nil {
		return
	}
	if st.refs--; st.refs == 0 {
		st.stop()
		delete(t.m, f)
	}
}

// observer queues a folder's changes on its tracker, in order. The store
// calls it with the folder locked, and adds messages one at a time, which
// the tracker's sequence-number mapping needs. The FLAGS it queues go to
// every session alike, so they lack \Recent, which is per session.
type observer struct {
	mt *imapserver.MailboxTracker
	f  *mailbox.Folder
}

func (o observer) Appended(n int)   { o.mt.QueueNumMessages(uint32(n)) }
func (o observer) Expunged(seq int) { o.mt.QueueExpunge(uint32(seq)) }
func (o observer) FlagsChanged(seq int, m mailbox.Message, origin any) {
	src, _ := origin.(*imapserver.SessionTracker) // a session does not hear its own STORE
	o.mt.QueueMessageFlags(uint32(seq), imap.UID(m.UID), imapFlags(o.f, m.Flags), src)
}

// Select opens a folder read-write (SELECT) or read-only (EXAMINE).
func (s *session) Select(name string, o *imap.SelectOptions) (*imap.SelectData, error) {
	f, err := s.store().OpenFolder(s.user, name)
	if err != nil {
		return nil, storeError(err)
	}
	mt := s.srv.trackers.acquire(f)
	sel := &selected{f: f, readOnly: o.ReadOnly, keywords: len(f.Keywords())}
	data := &imap.SelectData{Flags: mailboxFlags(f), PermanentFlags: []imap.Flag{}}
	if !o.ReadOnly {
		data.PermanentFlags = permanentFlags(f)
	}
	var viewNext mailbox.UID
	f.View(func(v mailbox.View) {
		// Under the folder's lock: the session's view starts exactly
		// at this state.
		sel.tracker = mt.NewSession()
		data.NumMessages = uint32(len(v.Messages))
		data.UIDNext, data.UIDValidity = imap.UID(v.UIDNext), v.UIDValidity
		viewNext = v.UIDNext
		for i, m := range v.Messages {
			if data.FirstUnseenSeqNum == 0 && !m.Flags.Has(mailbox.Seen) {
				data.FirstUnseenSeqNum = uint32(i + 1)
			}
			if o.ReadOnly && m.UID >= v.FirstRecent {
				// EXAMINE shows the \Recent messages without claiming
				// them, so that a later SELECT still sees them.
				sel.recent.AddNum(imap.UID(m.UID))
				data.NumRecent++
			}
		}
	})
	sel.lastUID = viewNext - 1
	if !o.ReadOnly {
		claimed, err := f.ClaimRecent()
		if err != nil {
			sel.tracker.Close()
			s.srv.trackers.release(f)
			f.Close()
			return nil, storeError(err)
		}
		for _, u := range claimed {
			sel.recent.AddNum(imap.UID(u))
			if u < viewNext { // later ones are announced by Poll
				data.NumRecent++
			}
		}
	}
	s.sel = sel
	return data, nil
}

// Unselect leaves the selected folder (CLOSE has expunged already).
func (s *session) Unselect() error {
	sel := s.sel
	s.sel = nil
	sel.tracker.Close()
	s.srv.trackers.release(sel.f)
	return sel.f.Close()
}

// Poll runs after every command: it rescans the folder if it changed on
// disk and writes the updates this session has not heard yet.
func (s *session) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if s.sel == nil {
		return nil
	}
	sel := s.sel
	if err := sel.f.Sync(); err != nil && !errors.Is(err, mailbox.ErrNoFolder) {
		return err
	}
	if !sel.readOnly {
		// New messages are \Recent in the first session to hear of them.
		claimed, err := sel.f.ClaimRecent()
		if err != nil && !errors.Is(err, mailbox.ErrNoFolder) {
			return err
		}
		for _, u := range claimed {
			sel.recent.AddNum(imap.UID(u))
		}
	}
	if err := sel.tracker.Poll(w, allowExpunge); err != nil {
		return err
	}
	if n := len(sel.f.Keywords()); n != sel.keywords {
		sel.keywords = n
		if err := w.WriteMailboxFlags(mailboxFlags(sel.f)); err != nil {
			return err
		}
	}
	last, recent := sel.counts()
	grew := last > sel.lastUID
	sel.lastUID = max(sel.lastUID, last)
	if grew {
		return w.WriteNumRecent(recent)
	}
	return nil
}

// counts returns the highest UID the client knows of, and how many of
// the messages it knows of are \Recent in this session.
func (sel *selected) counts() (last mailbox.UID, recent uint32) {
	sel.f.View(func(v mailbox.View) {
		for i, m := range v.Messages {
			if sel.tracker.EncodeSeqNum(uint32(i+1)) == 0 {
				continue
			}
			last = m.UID
			if sel.recent.Contains(imap.UID(m.UID)) {
				recent++
			}
		}
	})
	return last, recent
}

// Idle waits for changes to the selected folder (new mail from SMTP,
// other sessions' expunges and flags, POP3 deletions) and writes them as
// they come, until the client says DONE.
func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	if s.sel == nil {
		<-stop
		return nil
	}
	changed, cancel := s.store().Watch(s.user, s.sel.f.Name())
	defer cancel()
	// Mail written by something that does not signal (a quarantine
	// release straight into new/, another program) is caught by a rescan
	// now and then; it costs two stats when nothing changed.
	tick := time.NewTicker(idleRescan)
	defer tick.Stop()
	// Watching first, then catching up, so nothing falls in between.
	if err := s.Poll(w, true); err != nil {
		return err
	}
	for {
		select {
		case <-stop:
			return nil
		case <-changed:
		case <-tick.C:
		}
		if err := s.Poll(w, true); err != nil {
			return err
		}
	}
}

// idleRescan is how often an idling session looks at the disk unasked.
const idleRescan = 30 * time.Second

// item is a message as the session sees it: its sequence number in the
// client's view and its state in the folder.
type item struct {
	seq uint32
	m   mailbox.Message
}

// snapshot lists the messages the client knows of (a message the client
// has not heard of yet has no sequence number for it and is left out),
// with the highest sequence number and UID, which "*" stands for.
func (sel *selected) snapshot() (items []item, maxSeq uint32, maxUID imap.UID) {
	sel.f.View(func(v mailbox.View) {
		items = make([]item, 0, len(v.Messages))
		for i, m := range v.Messages {
			seq := sel.tracker.EncodeSeqNum(uint32(i + 1))
			if seq == 0 {
				continue
			}
			items = append(items, item{seq, m})
			maxSeq = max(maxSeq, seq)
			maxUID = max(maxUID, imap.UID(m.UID))
		}
	})
	return items, maxSeq, maxUID
}

// resolve returns the messages of a sequence or UID set.
func (sel *selected) resolve(numSet imap.NumSet) []item {
	items, maxSeq, maxUID := sel.snapshot()
	match := setMatcher(numSet, maxSeq, maxUID)
	out := items[:0]
	for _, it := range items {
		if match(it) {
			out = append(out, it)
		}
	}
	return out
}

// setMatcher reports whether an item is in numSet, where "*" is the
// highest sequence number or UID; "n:*" past the end still holds the
// last message (RFC 3501 6.4.8). SEARCHRES's "$" is not offered: it
// matches nothing.
func setMatcher(numSet imap.NumSet, maxSeq uint32, maxUID imap.UID) func(item) bool {
	if imap.IsSearchRes(numSet) {
		return func(item) bool { return false }
	}
	switch set := numSet.(type) {
	case imap.SeqSet:
		set = staticSeqSet(set, maxSeq)
		return func(it item) bool { return set.Contains(it.seq) }
	case imap.UIDSet:
		set = staticUIDSet(set, maxUID)
		return func(it item) bool { return set.Contains(imap.UID(it.m.UID)) }
	}
	return func(item) bool { return false }
}

func staticSeqSet(set imap.SeqSet, max uint32) imap.SeqSet {
	out := make(imap.SeqSet, len(set))
	for i, r := range set {
		out[i] = imap.SeqRange{Start: r.Start, Stop: r.Stop}
		staticRange(&out[i].Start, &out[i].Stop, max)
	}
	return out
}

func staticUIDSet(set imap.UIDSet, max imap.UID) imap.UIDSet {
	out := make(imap.UIDSet, len(set))
	for i, r := range set {
		start, stop := uint32(r.Start), uint32(r.Stop)
		staticRange(&start, &stop, uint32(max))
		out[i] = imap.UIDRange{Start: imap.UID(start), Stop: imap.UID(stop)}
	}
	return out
}

// staticRange replaces "*" (0) with max, and orders the ends.
func staticRange(start, stop *uint32, max uint32) {
	if *start == 0 {
		*start = max
	}
	if *stop == 0 {
		*stop = max
	}
	if *start > *stop {
		*start, *stop = *stop, *start
	}
}

func uids(items []item) []mailbox.UID {
	out := make([]mailbox.UID, len(items))
	for i, it := range items {
		out[i] = it.m.UID
	}
	return out
}

// Store changes flags. Keywords are defined in the folder as they are
// first stored (while there is room); \Recent cannot be stored.
func (s *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, sf *imap.StoreFlags, _ *imap.StoreOptions) error {
	if s.sel.readOnly {
		return errReadOnly
	}
	items := s.sel.resolve(numSet)
	op := mailbox.Replace
	switch sf.Op {
	case imap.StoreFlagsAdd:
		op = mailbox.Add
	case imap.StoreFlagsDel:
		op = mailbox.Remove
	}
	letters, err := storeFlags(s.sel.f, sf.Flags, op != mailbox.Remove)
	if err != nil {
		return storeError(err)
	}
	updated, err := s.sel.f.SetFlags(uids(items), op, letters, s.sel.tracker)
	if err != nil {
		return storeError(err)
	}
	if sf.Silent {
		return nil
	}
	now := map[mailbox.UID]mailbox.Message{}
	for _, m := range updated {
		now[m.UID] = m
	}
	for _, it := range items {
		m, ok := now[it.m.UID]
		if !ok {
			continue // expunged meanwhile
		}
		rw := w.CreateMessage(it.seq)
		rw.WriteUID(imap.UID(it.m.UID))
		rw.WriteFlags(s.sel.flags(m))
		if err := rw.Close(); err != nil {
			return err
		}
	}
	return nil
}

// Expunge removes the messages flagged \Deleted (those in uids for UID
// EXPUNGE). The EXPUNGE responses reach this session, like every other
// on the folder, through the tracker when the command polls.
func (s *session) Expunge(w *imapserver.ExpungeWriter, uidSet *imap.UIDSet) error {
	if s.sel.readOnly {
		// imapserver calls Expunge with a zero writer for CLOSE, which
		// on a read-only folder must quietly remove nothing (RFC 3501
		// 6.4.2); an explicit EXPUNGE is refused.
		if *w == (imapserver.ExpungeWriter{}) {
			return nil
		}
		return errReadOnly
	}
	var match func(mailbox.UID) bool
	if uidSet != nil {
		_, _, maxUID := s.sel.snapshot()
		set := staticUIDSet(*uidSet, maxUID)
		match = func(u mailbox.UID) bool { return set.Contains(imap.UID(u)) }
	}
	_, err := s.sel.f.Expunge(match)
	return storeError(err)
}

// Copy copies messages to another folder (or the same one), with their
// flags and dates, and reports COPYUID (UIDPLUS).
func (s *session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	data, _, err := s.copy(numSet, dest, false)
	return data, err
}

// Move is COPY and expunging the originals (RFC 6851); the EXPUNGE
// responses follow COPYUID when the command polls.
func (s *session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	if s.sel.readOnly {
		return errReadOnly
	}
	data, from, err := s.copy(numSet, dest, true)
	if err != nil {
		return err
	}
	if err := storeError(s.sel.f.Remove(from)); err != nil {
		return err
	}
	if data == nil {
		return nil
	}
	return w.WriteCopyData(data)
}

// copy copies the messages of numSet to dest. For a MOVE into the
// selected folder itself (move), the folder moves them in one step, so
// that the originals' EXPUNGE comes before the copies' EXISTS, as
// clients expect; from is then empty (nothing is left to remove).
func (s *session) copy(numSet imap.NumSet, dest string, move bool) (*imap.CopyData, []mailbox.UID, error) {
	items := s.sel.resolve(numSet)
	d, err := s.store().OpenFolder(s.user, dest)
	if errors.Is(err, mailbox.ErrNoFolder) {
		return nil, nil, errTryCreate
	}
	if err != nil {
		return nil, nil, storeError(err)
	}
	defer d.Close()
	var from, to []mailbox.UID
	if move && d == s.sel.f { // the store shares one *Folder per folder
		from, to, err = d.MoveWithin(uids(items))
	} else {
		from, to, err = s.sel.f.CopyTo(d, uids(items))
	}
	if err != nil {
		return nil, nil, storeError(err)
	}
	if len(to) == 0 {
		return nil, nil, nil // nothing matched: no COPYUID to report
	}
	data := &imap.CopyData{}
	for i := range to {
		data.SourceUIDs.AddNum(imap.UID(from[i]))
		data.DestUIDs.AddNum(imap.UID(to[i]))
	}
	d.View(func(v mailbox.View) { data.UIDValidity = v.UIDValidity })
	if move && d == s.sel.f {
		from = nil
	}
	return data, from, nil
}

// flagRecent is IMAP4rev1's \Recent (go-imap keeps its constant
// internal: IMAP4rev2 dropped the flag).
const flagRecent imap.Flag = `\Recent`

// systemFlags are the system flags this store keeps.
var systemFlags = []imap.Flag{imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagSeen, imap.FlagDraft}

// mailboxFlags are the folder's FLAGS: the system flags and its keywords.
func mailboxFlags(f *mailbox.Folder) []imap.Flag {
	out := append([]imap.Flag(nil), systemFlags...)
	for _, k := range f.Keywords() {
		out = append(out, imap.Flag(k))
	}
	return out
}

// permanentFlags are the folder's PERMANENTFLAGS: FLAGS, and \* while
// new keywords fit.
func permanentFlags(f *mailbox.Folder) []imap.Flag {
	out := mailboxFlags(f)
	if f.KeywordRoom() {
		out = append(out, imap.FlagWildcard)
	}
	return out
}

var flagLetters = map[string]byte{
	`\answered`: mailbox.Answered,
	`\flagged`:  mailbox.Flagged,
	`\deleted`:  mailbox.Deleted,
	`\seen`:     mailbox.Seen,
	`\draft`:    mailbox.Draft,
}

// storeFlags maps IMAP flags to the folder's Maildir letters: system
// flags to theirs, keywords to the folder's (defining them if create);
// \Recent and unknown system flags drop out.
func storeFlags(f *mailbox.Folder, flags []imap.Flag, create bool) (mailbox.Flags, error) {
	var b []byte
	var keywords []string
	for _, fl := range flags {
		if c, ok := flagLetters[strings.ToLower(string(fl))]; ok {
			b = append(b, c)
		} else if !strings.HasPrefix(string(fl), `\`) {
			keywords = append(keywords, string(fl))
		}
	}
	kw, err := f.KeywordFlags(keywords, create)
	if err != nil {
		return "", err
	}
	return mailbox.MakeFlags(string(b)).With(kw), nil
}

// imapFlags maps Maildir letters to IMAP flags, keywords by the folder's
// names (never nil: FLAGS () is still FLAGS).
func imapFlags(f *mailbox.Folder, fl mailbox.Flags) []imap.Flag {
	out := []imap.Flag{}
	for _, sf := range systemFlags {
		if fl.Has(flagLetters[strings.ToLower(string(sf))]) {
			out = append(out, sf)
		}
	}
	for _, k := range f.KeywordNames(fl) {
		out = append(out, imap.Flag(k))
	}
	return out
}

// flags are a message's flags as this session shows them: with \Recent.
func (sel *selected) flags(m mailbox.Message) []imap.Flag {
	out := imapFlags(sel.f, m.Flags)
	if sel.recent.Contains(imap.UID(m.UID)) {
		out = append(out, flagRecent)
	}
	return out
}
