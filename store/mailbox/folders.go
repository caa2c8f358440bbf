package mailbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"moat/store/maildir"
)

// Folder management. These calls are rare, so they hold the store's lock
// throughout: no folder opens half-created, and an open index of a folder
// that is deleted or renamed away is marked gone at once (its sessions
// see its messages expunged).

// Folders returns the names of the user's folders: INBOX first, then the
// others sorted.
func (s *Store) Folders(user string) ([]string, error) {
	root, err := s.UserDir(user)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	var names []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if name, ok := folderName(e.Name()); ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return append([]string{Inbox}, names...), nil
}

// CreateFolder creates the user's folder name and any missing folders
// above it (RFC 3501 says a server SHOULD).
func (s *Store) CreateFolder(user, name string) error {
	name = canonical(name)
	if name == Inbox {
		return ErrFolderExists
	}
	dir, err := s.folderPath(user, name)
	if err != nil {
		return err
	}
	root := filepath.Dir(dir)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := makeMaildir(root); err != nil {
		return err
	}
	for _, p := range parentNames(name) {
		if p == Inbox {
			continue
		}
		pd, err := s.folderPath(user, p)
		if err != nil {
			return err
		}
		if err := createMaildirFolder(pd); err != nil && !errors.Is(err, ErrFolderExists) {
			return err
		}
	}
	return createMaildirFolder(dir)
}

// createMaildirFolder makes a Maildir++ subfolder: the directory (which
// must not exist), tmp/, new/, cur/ and the maildirfolder marker file.
func createMaildirFolder(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return ErrFolderExists
		}
		return fmt.Errorf("mailbox: %w", err)
	}
	if err := maildir.Dir(dir).Create(); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "maildirfolder"), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("mailbox: %w", err)
	}
	f.Close()
	return syncDir(filepath.Dir(dir))
}

// DeleteFolder deletes the user's folder and its messages. INBOX cannot
// be deleted, nor a folder with subfolders (delete those first).
func (s *Store) DeleteFolder(user, name string) error {
	name = canonical(name)
	if name == Inbox {
		return ErrInbox
	}
	dir, err := s.folderPath(user, name)
	if err != nil {
		return err
	}
	names, err := s.Folders(user)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !isFolder(dir) {
		return ErrNoFolder
	}
	for _, n := range names {
		if strings.HasPrefix(n, name+string(Delim)) {
			return ErrHasChildren
		}
	}
	// Renamed away first, so that the folder disappears in one step;
	// the ".." prefix never decodes as a folder name.
	trash := filepath.Join(filepath.Dir(dir), "..moat-deleted."+maildir.UniqueName())
	if err := os.Rename(dir, trash); err != nil {
		return fmt.Errorf("mailbox: delete %s: %w", name, err)
	}
	s.goneLocked(dir)
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("mailbox: delete %s: %w", name, err)
	}
	return syncDir(filepath.Dir(dir))
}

// RenameFolder renames the user's folder and its subfolders; the UIDs and
// UIDVALIDITY go with the messages. Renaming INBOX (which RFC 3501 defines
// as moving its messages) is not supported.
func (s *Store) RenameFolder(user, oldName, newName string) error {
	oldName, newName = canonical(oldName), canonical(newName)
	if oldName == Inbox || newName == Inbox {
		return ErrInbox
	}
	if newName == oldName || strings.HasPrefix(newName, oldName+string(Delim)) {
		return ErrFolderExists
	}
	names, err := s.Folders(user)
	if err != nil {
		return err
	}
	type move struct{ from, to string }
	var moves []move
	for _, n := range names {
		if n != oldName && !strings.HasPrefix(n, oldName+string(Delim)) {
			continue
		}
		from, err := s.folderPath(user, n)
		if err != nil {
			return err
		}
		to, err := s.folderPath(user, newName+n[len(oldName):])
		if err != nil {
			return err
		}
		moves = append(moves, move{from, to})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(moves) == 0 || moves[0].from != mustPath(s, user, oldName) || !isFolder(moves[0].from) {
		return ErrNoFolder
	}
	for _, m := range moves {
		if _, err := os.Lstat(m.to); err == nil {
			return ErrFolderExists
		}
	}
	for _, p := range parentNames(newName) {
		if pd, err := s.folderPath(user, p); err == nil && p != Inbox {
			if err := createMaildirFolder(pd); err != nil && !errors.Is(err, ErrFolderExists) {
				return err
			}
		}
	}
	for _, m := range moves {
		if err := os.Rename(m.from, m.to); err != nil {
			return fmt.Errorf("mailbox: rename %s: %w", oldName, err)
		}
		s.goneLocked(m.from)
	}
	return syncDir(filepath.Dir(moves[0].from))
}

func mustPath(s *Store, user, name string) string {
	p, _ := s.folderPath(user, name)
	return p
}

func isFolder(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, "cur"))
	return err == nil && st.IsDir()
}

// goneLocked detaches the open index of dir, if any: its sessions keep a
// folder that reports its messages expunged, and the next open of the
// name starts afresh.
func (s *Store) goneLocked(dir string) {
	f := s.folders[dir]
	if f == nil {
		return
	}
	delete(s.folders, dir)
	f.mu.Lock()
	f.gone = true
	f.mu.Unlock()
	s.signalLocked(dir)
}

// Subscriptions returns the user's subscribed folder names, sorted. They
// need not exist (RFC 3501 keeps subscriptions apart from folders).
func (s *Store) Subscriptions(user string) ([]string, error) {
	root, err := s.UserDir(user)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return readSubscriptions(root)
}

func readSubscriptions(root string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(root, "subscriptions"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	var out []string
	seen := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		l = canonical(strings.TrimSuffix(l, "\r"))
		if _, err := folderDir(l); err == nil && !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Subscribe adds name to the user's subscriptions (on) or removes it.
// The file <root>/subscriptions is rewritten atomically.
func (s *Store) Subscribe(user, name string, on bool) error {
	root, err := s.UserDir(user)
	if err != nil {
		return err
	}
	name = canonical(name)
	if _, err := folderDir(name); err != nil || strings.ContainsAny(name, "\r\n") {
		return ErrBadFolderName
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	subs, err := readSubscriptions(root)
	if err != nil {
		return err
	}
	var out []string
	for _, n := range subs {
		if n != name {
			out = append(out, n)
		}
	}
	if on {
		out = append(out, name)
		sort.Strings(out)
	}
	if err := makeMaildir(root); err != nil {
		return err
	}
	var b strings.Builder
	for _, n := range out {
		b.WriteString(n + "\n")
	}
	return writeFileAtomic(filepath.Join(root, "subscriptions"), []byte(b.String()))
}
