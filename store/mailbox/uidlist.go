package mailbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The UID list of a folder, <folder>/moat-uidlist, keeps IMAP UIDs stable
// across restarts. It is text:
//
//	moat-uidlist 1 <uidvalidity> <uidnext> [<first recent uid>]
//	<uid> <key>
//	...
//
// one line per message in UID order, where key is the message file's name
// up to the ":" (it survives moves from new/ to cur/ and flag changes).
// It is rewritten whole, atomically, whenever UIDs are assigned,
// messages go away or a session claims the \Recent ones. The messages
// from the first recent UID on have not been seen by any read-write IMAP
// session yet (\Recent); a list without it (written before moat kept
// \Recent) has none.
const uidListName = "moat-uidlist"

const uidListMagic = "moat-uidlist 1"

type uidList struct {
	validity uint32
	next     UID
	recent   UID // the first UID not yet claimed as \Recent
	uids     []UID
	keys     []string
}

var errCorrupt = errors.New("mailbox: uid list corrupt")

// readUIDList reads the list in dir. A missing list is (nil, nil); one
// that cannot be trusted is errCorrupt, with the validity it had if its
// header could be read.
func readUIDList(dir string) (*uidList, error) {
	f, err := os.Open(filepath.Join(dir, uidListName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	defer f.Close()
	return parseUIDList(bufio.NewScanner(f))
}

func parseUIDList(sc *bufio.Scanner) (*uidList, error) {
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	if !sc.Scan() {
		return nil, errCorrupt
	}
	head := sc.Text()
	fields := strings.Fields(strings.TrimPrefix(head, uidListMagic))
	if !strings.HasPrefix(head, uidListMagic+" ") || len(fields) < 2 || len(fields) > 3 {
		return nil, errCorrupt
	}
	validity, err1 := strconv.ParseUint(fields[0], 10, 32)
	next, err2 := strconv.ParseUint(fields[1], 10, 32)
	recent, err3 := next, error(nil)
	if len(fields) == 3 {
		recent, err3 = strconv.ParseUint(fields[2], 10, 32)
	}
	if err1 != nil || err2 != nil || err3 != nil || validity == 0 || next == 0 {
		return nil, errCorrupt
	}
	l := &uidList{validity: uint32(validity), next: UID(next), recent: UID(min(max(recent, 1), next))}
	bad := func() (*uidList, error) { return &uidList{validity: l.validity}, errCorrupt }
	seen := map[string]bool{}
	for sc.Scan() {
		n, key, ok := strings.Cut(sc.Text(), " ")
		uid, err := strconv.ParseUint(n, 10, 32)
		if !ok || err != nil || uid == 0 || UID(uid) >= l.next || key == "" || seen[key] ||
			(len(l.uids) > 0 && UID(uid) <= l.uids[len(l.uids)-1]) {
			return bad()
		}
		seen[key] = true
		l.uids = append(l.uids, UID(uid))
		l.keys = append(l.keys, key)
	}
	if sc.Err() != nil {
		return bad()
	}
	return l, nil
}

// writeUIDList replaces the list in dir crash-safely: a new file is
// written and fsynced, renamed over the old one, and the directory is
// fsynced, so the list on disk is always one whole version.
func writeUIDList(dir string, validity uint32, next, recent UID, msgs []Message) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d %d %d\n", uidListMagic, validity, next, recent)
	for _, m := range msgs {
		fmt.Fprintf(&b, "%d %s\n", m.UID, m.Key)
	}
	return writeFileAtomic(filepath.Join(dir, uidListName), []byte(b.String()))
}

// writeFileAtomic writes path through a temporary file: fsync, rename,
// fsync of the directory.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("mailbox: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mailbox: write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("mailbox: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("mailbox: sync %s: %w", dir, err)
	}
	return nil
}
