package mailbox

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// Maildrop is a POP3 session's hold on a user's INBOX (RFC 1939): a
// snapshot of the messages taken at open, an exclusive lock (one POP3
// session per user, in this process and by flock on <root>/moat-pop3.lock
// for anything else), and the deletions applied at QUIT. IMAP sessions on
// the same INBOX go on working and see the deletions when they happen.
type Maildrop struct {
	s    *Store
	root string
	lock *os.File
	f    *Folder
	msgs []Message
	uids []string

	mu     sync.Mutex
	closed bool
}

// MaildropMessage is one message of a maildrop's snapshot.
type MaildropMessage struct {
	// UID is the POP3 unique-id: "<uidvalidity>.<uid>", printable ASCII
	// and stable across sessions while the folder's UID list lives.
	UID  string
	Size int64 // bytes as stored (SMTP-delivered mail has CRLF lines)
}

// OpenMaildrop locks the user's INBOX for a POP3 session and takes its
// snapshot; ErrInUse when another session holds it.
func (s *Store) OpenMaildrop(user string) (*Maildrop, error) {
	root, err := s.UserDir(user)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.maildrops[root] {
		s.mu.Unlock()
		return nil, ErrInUse
	}
	s.maildrops[root] = true
	s.mu.Unlock()
	release := func() {
		s.mu.Lock()
		delete(s.maildrops, root)
		s.mu.Unlock()
	}
	if err := makeMaildir(root); err != nil {
		release()
		return nil, err
	}
	lf, err := lockFile(filepath.Join(root, "moat-pop3.lock"))
	if err != nil {
		release()
		return nil, err
	}
	f, err := s.OpenFolder(user, Inbox)
	if err != nil {
		unlockFile(lf)
		release()
		return nil, err
	}
	md := &Maildrop{s: s, root: root, lock: lf, f: f}
	f.View(func(v View) {
		md.msgs = append([]Message(nil), v.Messages...)
		md.uids = make([]string, len(md.msgs))
		for i, m := range md.msgs {
			md.uids[i] = fmt.Sprintf("%d.%d", v.UIDValidity, m.UID)
		}
	})
	return md, nil
}

// Messages returns the snapshot taken at open, in UID order.
func (m *Maildrop) Messages() ([]MaildropMessage, error) {
	out := make([]MaildropMessage, len(m.msgs))
	for i, msg := range m.msgs {
		out[i] = MaildropMessage{UID: m.uids[i], Size: msg.Size}
	}
	return out, nil
}

// Open returns message i (0-based) of the snapshot as stored. A message
// an IMAP session expunged meanwhile is ErrNoMessage.
func (m *Maildrop) Open(i int) (io.ReadCloser, error) {
	if i < 0 || i >= len(m.msgs) {
		return nil, ErrNoMessage
	}
	f, err := m.f.Open(m.msgs[i].UID)
	if err != nil {
		return nil, err // not a typed nil *os.File in the interface
	}
	return f, nil
}

// Commit removes the messages at the given snapshot positions (the POP3
// UPDATE state). Messages already gone are skipped.
func (m *Maildrop) Commit(deleted []int) error {
	var uids []UID
	for _, i := range deleted {
		if i < 0 || i >= len(m.msgs) {
			return fmt.Errorf("mailbox: commit: no message %d", i)
		}
		uids = append(uids, m.msgs[i].UID)
	}
	if len(uids) == 0 {
		return nil
	}
	return m.f.Remove(uids)
}

// Close releases the maildrop; Commit is not implied.
func (m *Maildrop) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	m.f.Close()
	err := unlockFile(m.lock)
	m.s.mu.Lock()
	delete(m.s.maildrops, m.root)
	m.s.mu.Unlock()
	return err
}
