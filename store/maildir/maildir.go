// Package maildir delivers messages into Maildir folders crash-safely:
// each message is written under tmp/, fsynced, and renamed into new/, and
// the directory is fsynced, so a message is either whole in new/ or absent.
package maildir

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Dir is one Maildir (a folder holding tmp/, new/ and cur/).
type Dir string

// Create makes the Maildir's folders when they are missing.
func (d Dir) Create() error {
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(string(d), sub), 0o700); err != nil {
			return fmt.Errorf("maildir: %w", err)
		}
	}
	return nil
}

var counter atomic.Uint64

// uniqueName builds a Maildir file name: time, pid, counter and randomness
// keep it unique across processes and hosts (the Maildir conventions).
func uniqueName() string {
	var rnd [6]byte
	rand.Read(rnd[:])
	host, _ := os.Hostname()
	host = strings.NewReplacer("/", "\\057", ":", "\\072").Replace(host)
	now := time.Now()
	return fmt.Sprintf("%d.M%dP%dQ%dR%s.%s", now.Unix(), now.Nanosecond()/1000, os.Getpid(),
		counter.Add(1), hex.EncodeToString(rnd[:]), host)
}

// UniqueName returns a new base name for a message file, unique across
// processes and hosts; the built-in mailbox store names appended and
// copied messages with it.
func UniqueName() string { return uniqueName() }

// Deliver writes the message read from r into d's new/ folder and returns
// the file's path once the message is on disk. On any failure nothing is
// left behind.
func (d Dir) Deliver(r io.Reader) (string, error) {
	if err := d.Create(); err != nil {
		return "", err
	}
	name := uniqueName()
	tmp := filepath.Join(string(d), "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("maildir: %w", err)
	}
	n, err := io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("maildir: write %s: %w", tmp, err)
	}
	final := filepath.Join(string(d), "new", name+",S="+strconv.FormatInt(n, 10))
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("maildir: %w", err)
	}
	if err := syncDir(filepath.Join(string(d), "new")); err != nil {
		os.Remove(final)
		return "", err
	}
	return final, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("maildir: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("maildir: sync %s: %w", dir, err)
	}
	return nil
}

// ErrBadName is returned for an address part that cannot name a folder.
var ErrBadName = errors.New("maildir: name cannot be used as a folder")

// SafeName lower-cases s and checks that it can name one folder: no path
// separators, no NUL, not "." or "..", no leading dot (Maildir++ folders
// start with one).
func SafeName(s string) (string, error) {
	s = strings.ToLower(s)
	if s == "" || s == "." || s == ".." || strings.HasPrefix(s, ".") || strings.ContainsAny(s, "/\\\x00") || len(s) > 255 {
		return "", ErrBadName
	}
	return s, nil
}
