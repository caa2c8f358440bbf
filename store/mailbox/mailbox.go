// Package mailbox is moat's built-in mail store: one Maildir++ per user,
// with IMAP UIDs, flags, folders and subscriptions, shared by the SMTP
// side (Deliver), the IMAP server and the POP3 server of one process.
//
// A user "local@domain" lives in data_dir/mail/<domain>/<local> (both
// lower-cased). INBOX is that directory's tmp/, new/ and cur/; other
// folders are Maildir++ subfolders (see folderDir for the names). Message
// files hold the bytes as received; in cur/ they are named
// "<unique>,S=<size>:2,<flags>" with the Maildir flag letters. Each
// folder's UIDs live in its moat-uidlist file (see uidlist.go).
//
// One moat process owns data_dir: the store keeps one in-memory index per
// open folder, shared by every session, and rescans a folder when this
// process changed it (Deliver) or its directories' mtimes moved (a
// best-effort guard against outside changes).
package mailbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/idna"

	"moat/store/maildir"
)

// Errors the store returns; protocol servers map them to replies.
var (
	ErrNoFolder     = errors.New("mailbox: no such folder")
	ErrFolderExists = errors.New("mailbox: folder already exists")
	ErrHasChildren  = errors.New("mailbox: folder has subfolders")
	ErrInbox        = errors.New("mailbox: INBOX cannot be deleted or renamed")
	ErrNoMessage    = errors.New("mailbox: no such message")
	// ErrInUse: another POP3 session holds the user's maildrop.
	ErrInUse = errors.New("mailbox: maildrop in use by another session")
)

// UID is a message's IMAP unique identifier within its folder.
type UID uint32

// Store is the built-in store under one data_dir. Its methods are safe
// for concurrent use.
type Store struct {
	dataDir string

	mu        sync.Mutex
	folders   map[string]*Folder                    // open folders by Maildir path
	watchers  map[string]map[chan struct{}]struct{} // by Maildir path
	maildrops map[string]bool                       // user roots held by POP3

	// lastValidity is the highest UIDVALIDITY handed out, so that a
	// folder recreated in the same second still gets a greater one.
	lastValidity atomic.Uint32
}

// Open returns the store under dataDir; nothing is read until used.
func Open(dataDir string) *Store {
	return &Store{
		dataDir:   dataDir,
		folders:   map[string]*Folder{},
		watchers:  map[string]map[chan struct{}]struct{}{},
		maildrops: map[string]bool{},
	}
}

// UserDir returns the Maildir++ root of user ("local@domain", unquoted,
// any case) under dataDir, or maildir.ErrBadName when either part cannot
// name a folder. An internationalized domain is stored under its ASCII
// form, so SMTP (which has it in either form) and logins agree. It reads
// nothing: SMTP uses it to refuse such recipients at RCPT.
func UserDir(dataDir, user string) (string, error) {
	i := strings.LastIndexByte(user, '@')
	if i < 0 {
		return "", maildir.ErrBadName
	}
	l, err := maildir.SafeName(user[:i])
	if err != nil {
		return "", err
	}
	domain := strings.TrimSuffix(user[i+1:], ".")
	if ascii, err := idna.Lookup.ToASCII(domain); err == nil && !strings.HasPrefix(domain, "[") {
		domain = ascii
	}
	d, err := maildir.SafeName(domain)
	if err != nil {
		return "", err
	}
	return filepath.Join(dataDir, "mail", d, l), nil
}

// UserDir is the package function for this store's data_dir.
func (s *Store) UserDir(user string) (string, error) { return UserDir(s.dataDir, user) }

// Deliver writes a message for user into INBOX's new/ crash-safely (tmp/,
// fsync, rename, fsync of new/) and returns its path once it is on disk;
// sessions watching the user's INBOX are told. On failure nothing is left.
func (s *Store) Deliver(user string, r io.Reader) (string, error) {
	root, err := s.UserDir(user)
	if err != nil {
		return "", err
	}
	path, err := maildir.Dir(root).Deliver(r)
	if err != nil {
		return "", err
	}
	s.changed(root)
	return path, nil
}

// Remove takes back a message Deliver wrote (the SMTP side delivers to
// all recipients or none). A session may have moved the file to cur/
// meanwhile; it is found there by its key.
func (s *Store) Remove(path string) error {
	mailDir := filepath.Join(s.dataDir, "mail") + string(filepath.Separator)
	if !strings.HasPrefix(filepath.Clean(path), mailDir) {
		return fmt.Errorf("mailbox: %s is not in the store", path)
	}
	folder := filepath.Dir(filepath.Dir(path))
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		key, _ := splitFileName(filepath.Base(path))
		var names []string
		names, err = readNames(filepath.Join(folder, "cur"))
		if err == nil {
			err = os.ErrNotExist
			for _, n := range names {
				if k, _ := splitFileName(n); k == key {
					err = os.Remove(filepath.Join(folder, "cur", n))
					break
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("mailbox: remove %s: %w", path, err)
	}
	s.changed(folder)
	return nil
}

// Watch returns a channel that receives a value after the user's folder
// changes (mail delivered, messages added, removed or flagged), and a
// function that stops watching. Signals coalesce: the channel holds at
// most one, and the store never waits for a watcher. For a name that
// cannot be a folder the channel never fires.
func (s *Store) Watch(user, folder string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	dir, err := s.folderPath(user, folder)
	if err != nil {
		return ch, func() {}
	}
	s.mu.Lock()
	if s.watchers[dir] == nil {
		s.watchers[dir] = map[chan struct{}]struct{}{}
	}
	s.watchers[dir][ch] = struct{}{}
	s.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.watchers[dir], ch)
			if len(s.watchers[dir]) == 0 {
				delete(s.watchers, dir)
			}
			s.mu.Unlock()
		})
	}
}

// changed marks the folder in dir for a rescan and tells its watchers.
func (s *Store) changed(dir string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.folders[dir]; f != nil {
		f.dirty.Store(true)
	}
	s.signalLocked(dir)
}

// notify tells dir's watchers without marking the folder for a rescan
// (the change went through the folder's index).
func (s *Store) notify(dir string) {
	s.mu.Lock()
	s.signalLocked(dir)
	s.mu.Unlock()
}

func (s *Store) signalLocked(dir string) {
	for ch := range s.watchers[dir] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// folderPath returns the Maildir of the user's folder name.
func (s *Store) folderPath(user, name string) (string, error) {
	root, err := s.UserDir(user)
	if err != nil {
		return "", err
	}
	sub, err := folderDir(name)
	if err != nil {
		return "", err
	}
	return filepath.Join(root, sub), nil
}

// newValidity returns a UIDVALIDITY for a folder whose UID list is new or
// lost: the time in seconds, or one more than the last handed out by
// this process if that is not less. RFC 3501 wants it greater than any
// the folder had; across a restart that holds unless the list is lost
// twice within one second.
func (s *Store) newValidity(atLeast uint32) uint32 {
	for {
		last := s.lastValidity.Load()
		v := uint32(time.Now().Unix())
		if v <= last {
			v = last + 1
		}
		if v <= atLeast {
			v = atLeast + 1
		}
		if s.lastValidity.CompareAndSwap(last, v) {
			return v
		}
	}
}

// readNames lists the file names in dir, without dot files.
func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	out := names[:0]
	for _, n := range names {
		if !strings.HasPrefix(n, ".") {
			out = append(out, n)
		}
	}
	return out, err
}

// makeMaildir creates dir's tmp/, new/ and cur/ when missing.
func makeMaildir(dir string) error {
	return maildir.Dir(dir).Create()
}
