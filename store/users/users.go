// Package users is the built-in store's user list: one file in data_dir,
// one "address:bcrypt-hash" line per mailbox, edited by `moat user` and
// re-read by the running gateway when it changes.
package users

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Cost is the bcrypt cost of new hashes: about a quarter of a second on a
// current core, which is what a login may cost and a guesser may not.
const Cost = 12

// DB is the user list of one file. It is safe for concurrent use.
type DB struct {
	path string
	// HashCost is the bcrypt cost of hashes this DB writes; 0 means Cost.
	HashCost int

	// dummy is compared against for unknown users, so that a login for a
	// name that does not exist takes as long; made at first use.
	dummyOnce sync.Once
	dummy     []byte

	mu      sync.Mutex
	users   map[string][]byte // address → bcrypt hash
	domains map[string]int    // domain → number of users
	mtime   time.Time
	size    int64
	err     error
}

// Open returns the list kept at path; a missing file is an empty list.
func Open(path string) *DB { return &DB{path: path} }

// Path is the file's path.
func (d *DB) Path() string { return d.path }

// Normalize lower-cases an address and checks it is user@domain.
func Normalize(addr string) (string, error) {
	a := strings.ToLower(strings.TrimSpace(addr))
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 || strings.ContainsAny(a, " \t:/\\\x00") || strings.Count(a, "@") != 1 {
		return "", fmt.Errorf("users: %q is not a user@domain address", addr)
	}
	return a, nil
}

// refresh re-reads the file when its size or time changed (one stat per
// lookup, so an edit counts from the next RCPT). Callers hold d.mu.
func (d *DB) refresh() error {
	st, err := os.Stat(d.path)
	if errors.Is(err, os.ErrNotExist) {
		d.users, d.domains, d.err = map[string][]byte{}, map[string]int{}, nil
		return nil
	}
	if err != nil {
		d.err = fmt.Errorf("users: %w", err)
		return d.err
	}
	if d.users != nil && st.ModTime().Equal(d.mtime) && st.Size() == d.size {
		return d.err
	}
	users, err := read(d.path)
	if err != nil {
		d.err = err // keep the last good list
		return err
	}
	d.users, d.domains, d.mtime, d.size, d.err = users, map[string]int{}, st.ModTime(), st.Size(), nil
	for a := range users {
		d.domains[a[strings.LastIndexByte(a, '@')+1:]]++
	}
	return nil
}

func read(path string) (map[string][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	users := map[string][]byte{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		addr, hash, ok := strings.Cut(line, ":")
		a, err := Normalize(addr)
		if !ok || err != nil || !strings.HasPrefix(hash, "$2") {
			return nil, fmt.Errorf("%s:%d:1: want user@domain:bcrypt-hash", path, n)
		}
		users[a] = []byte(hash)
	}
	return users, nil
}

// Lookup reports whether addr is a user, and whether its domain has any
// users at all (a domain with none takes mail for any name: the
// newcomer's catch-all).
func (d *DB) Lookup(addr string) (known, domainHasUsers bool, err error) {
	a, err := Normalize(addr)
	if err != nil {
		return false, false, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.refresh(); err != nil && d.users == nil {
		return false, false, err
	}
	_, known = d.users[a]
	return known, d.domains[a[strings.LastIndexByte(a, '@')+1:]] > 0, nil
}

// Verify checks a password; it takes as long for an unknown user as for a
// known one, so timing tells a guesser nothing.
func (d *DB) Verify(addr, password string) bool {
	a, _ := Normalize(addr)
	d.mu.Lock()
	d.refresh()
	hash, ok := d.users[a]
	d.mu.Unlock()
	if !ok {
		d.dummyOnce.Do(func() {
			d.dummy, _ = bcrypt.GenerateFromPassword([]byte("moat: no such user"), d.cost())
		})
		hash = d.dummy
	}
	return bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil && ok
}

func (d *DB) cost() int {
	if d.HashCost == 0 {
		return Cost
	}
	return d.HashCost
}

// List returns the users, sorted.
func (d *DB) List() ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.refresh(); err != nil {
		return nil, err
	}
	var out []string
	for a := range d.users {
		out = append(out, a)
	}
	slices.Sort(out)
	return out, nil
}

// ErrExists and ErrUnknown are the edits that do not apply.
var (
	ErrExists  = errors.New("users: the user exists already")
	ErrUnknown = errors.New("users: no such user")
)

// Add creates a user; Passwd changes one's password; Delete removes one.
func (d *DB) Add(addr, password string) error { return d.edit(addr, password, true, false) }

// Passwd sets a new password for an existing user.
func (d *DB) Passwd(addr, password string) error { return d.edit(addr, password, false, false) }

// Delete removes a user (the mailbox stays on disk).
func (d *DB) Delete(addr string) error { return d.edit(addr, "", false, true) }

func (d *DB) edit(addr, password string, create, del bool) error {
	a, err := Normalize(addr)
	if err != nil {
		return err
	}
	if !del && len(password) < 8 {
		return errors.New("users: a password needs 8 characters or more")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	users := map[string][]byte{}
	if _, err := os.Stat(d.path); err == nil {
		if users, err = read(d.path); err != nil {
			return err
		}
	}
	_, exists := users[a]
	switch {
	case create && exists:
		return ErrExists
	case !create && !exists:
		return ErrUnknown
	case del:
		delete(users, a)
	default:
		h, err := bcrypt.GenerateFromPassword([]byte(password), d.cost())
		if err != nil {
			return fmt.Errorf("users: %w", err)
		}
		users[a] = h
	}
	if err := write(d.path, users); err != nil {
		return err
	}
	d.users = nil
	return nil
}

// write replaces the file atomically (temporary file, fsync, rename).
func write(path string, users map[string][]byte) error {
	var b bytes.Buffer
	b.WriteString("# moat users: user@domain:bcrypt-hash; edit with `moat user`\n")
	keys := make([]string, 0, len(users))
	for a := range users {
		keys = append(keys, a)
	}
	slices.Sort(keys)
	for _, a := range keys {
		fmt.Fprintf(&b, "%s:%s\n", a, users[a])
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("users: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".users-*")
	if err != nil {
		return fmt.Errorf("users: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o600)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("users: write %s: %w", path, err)
	}
	return nil
}
