// Package quarantine keeps the messages a policy held back (action
// quarantine) until an admin releases or deletes them, or they expire.
//
// # Layout
//
// Every entry lives in one directory (data_dir/quarantine) as two files
// named by its id:
//
//	ID.eml        the message, exactly as it would have gone out
//	ID.json       the metadata (envelope, verdict, times): the entry is quarantined
//	ID.releasing  the same metadata, renamed while a release delivers it
//	tmp/          files being written
//
// # Crash safety
//
// Put writes the message under tmp/, fsyncs it, renames it into place and
// fsyncs the directory; then it does the same with the metadata. The
// metadata file is what makes an entry exist: a message file without one
// is an interrupted Put, invisible to List and Get, and removed by Expire
// (and at Open) once it is older than an hour.
//
// # Releasing exactly once
//
// Release first claims the entry by renaming ID.json to ID.releasing (an
// atomic step: of two concurrent releases only one finds ID.json) and
// fsyncs the directory, then delivers, then removes the entry. When the
// delivery fails the claim is undone and the entry is quarantined again.
//
// If moat stops between the claim and the removal, the entry stays in the
// releasing state: it is listed as "releasing" and never released again
// by itself, because the message may or may not have reached the next
// hop. An admin checks whether the recipients got it, then deletes the
// entry (they did) or releases it with ForceRelease (`moat quarantine
// release --force ID`; they did not). Expire removes such an entry once it
// is past its expiry, like any other.
package quarantine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// States of an entry, as List and Get report them.
const (
	StateQuarantined = "quarantined" // waiting for an admin or its expiry
	StateReleasing   = "releasing"   // claimed by a release in progress, or by one a crash interrupted
	StateDamaged     = "damaged"     // its metadata cannot be read; only Delete and Expire handle it
)

// File name extensions of an entry's files.
const (
	extMessage   = ".eml"
	extMeta      = ".json"
	extReleasing = ".releasing"
)

// orphanAge is how old a file of an interrupted Put (a message without
// metadata, a file in tmp/) must be before it is removed, so that a Put
// in progress is never mistaken for one.
const orphanAge = time.Hour

// Errors the store returns, wrapped with the entry's id (test with
// errors.Is).
var (
	ErrNotFound = errors.New("no such quarantine entry")
	ErrBadID    = errors.New("not a quarantine id")
	// ErrReleasing: a release of the entry is in progress in this process.
	ErrReleasing = errors.New("already being released")
	// ErrInterrupted: the entry is in the releasing state, but no release
	// runs: one was interrupted by a stop or crash (see the package doc).
	ErrInterrupted = errors.New("left in the releasing state by an interrupted release; check whether the recipients got it, then delete it or force the release")
	// ErrNotReleasing: ForceRelease of an entry that is not in the
	// releasing state.
	ErrNotReleasing = errors.New("not in the releasing state (release it normally)")
	// ErrCleanup: the message was delivered but the entry could not be
	// removed; it stays in the releasing state.
	ErrCleanup = errors.New("delivered, but the entry could not be removed")
)

// Meta is what the store knows about an entry besides the message.
type Meta struct {
	ID        string    `json:"id"`
	State     string    `json:"state,omitempty"` // not stored: read from the file name
	Envelope  Envelope  `json:"envelope"`
	Verdict   Verdict   `json:"verdict"`
	MessageID string    `json:"message_id,omitempty"` // the Message-Id header
	Received  time.Time `json:"received"`
	Size      int64     `json:"size"`    // of the message file, in bytes
	Expires   time.Time `json:"expires"` // Expire removes the entry from then on
}

// Envelope is the SMTP transaction the message came in.
type Envelope struct {
	From        string   `json:"from"` // "" for the null sender
	Rcpts       []string `json:"rcpts"`
	ClientIP    string   `json:"client_ip"`
	Helo        string   `json:"helo"`
	SessionID   string   `json:"session_id"`
	Transaction string   `json:"transaction"` // the transaction id, as in the Received header
}

// Verdict is why the message was held.
type Verdict struct {
	Policy string                    `json:"policy"`
	Action string                    `json:"action"`
	Score  float64                   `json:"score"`
	Reason string                    `json:"reason,omitempty"`
	Checks map[string]map[string]any `json:"checks,omitempty"` // as moat.checks in the transaction event
}

// Filter selects entries for List; the zero Filter selects all.
type Filter struct {
	Rcpt   string    // a substring of one recipient, ignoring case
	Sender string    // a substring of the envelope sender, ignoring case
	Since  time.Time // received at or after
}

func (f Filter) match(m Meta) bool {
	if !f.Since.IsZero() && m.Received.Before(f.Since) {
		return false
	}
	if f.Sender != "" && !containsFold(m.Envelope.From, f.Sender) {
		return false
	}
	if f.Rcpt != "" && !slices.ContainsFunc(m.Envelope.Rcpts, func(r string) bool { return containsFold(r, f.Rcpt) }) {
		return false
	}
	return true
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// Store is one quarantine directory. Its methods are safe for concurrent
// use. Two processes may share the directory for reading and deleting;
// only one should release (moat serve).
type Store struct {
	dir, tmp string
	now      func() time.Time
	lifetime atomic.Int64

	mu   sync.Mutex
	busy map[string]bool // ids claimed by a release in this process

	sweepEvery  time.Duration
	sweepReport func(expired int, err error)
	stop        chan struct{}
	done        chan struct{}
	closeOnce   sync.Once
}

// Option configures Open.
type Option func(*Store)

// WithClock makes the store read the time from now (tests); the default is
// time.Now.
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithSweeper runs Expire at Open and then every interval until Close, and
// calls report (when not nil) after each run that removed something or
// failed.
func WithSweeper(every time.Duration, report func(expired int, err error)) Option {
	return func(s *Store) { s.sweepEvery, s.sweepReport = every, report }
}

// Open makes the directory when missing and returns the store; entries
// expire lifetime after they were received. Leftovers of interrupted Puts
// older than an hour are removed.
func Open(dir string, lifetime time.Duration, opts ...Option) (*Store, error) {
	if lifetime <= 0 {
		return nil, fmt.Errorf("quarantine: lifetime must be more than 0, got %v", lifetime)
	}
	s := &Store{dir: dir, tmp: filepath.Join(dir, "tmp"), now: time.Now, busy: map[string]bool{}}
	s.lifetime.Store(int64(lifetime))
	for _, o := range opts {
		o(s)
	}
	if err := os.MkdirAll(s.tmp, 0o700); err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	if err := s.cleanOrphans(s.now()); err != nil {
		return nil, err
	}
	if s.sweepEvery > 0 {
		s.stop, s.done = make(chan struct{}), make(chan struct{})
		go s.sweep()
	}
	return s, nil
}

// Close stops the sweeper. The store must not be used afterwards.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.stop != nil {
			close(s.stop)
			<-s.done
		}
	})
	return nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// SetLifetime changes the lifetime of entries put from now on (a config
// reload); entries already kept keep their expiry.
func (s *Store) SetLifetime(d time.Duration) {
	if d > 0 {
		s.lifetime.Store(int64(d))
	}
}

func (s *Store) sweep() {
	defer close(s.done)
	t := time.NewTicker(s.sweepEvery)
	defer t.Stop()
	for {
		n, err := s.Expire(s.now())
		if s.sweepReport != nil && (n > 0 || err != nil) {
			s.sweepReport(n, err)
		}
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// idEncoding is Crockford's base32 alphabet: no I, L, O or U, nothing a
// file system or a shell treats specially.
var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// idLen is the length of an id: 128 random bits in base32.
const idLen = 26

// newID makes an unguessable id from 128 bits of crypto/rand.
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

// CheckID returns id in its canonical form (upper case), or ErrBadID when
// it is not one the store makes: anything with a path separator, a dot or
// another character outside the alphabet is refused, so an id never
// names a file outside the directory.
func CheckID(id string) (string, error) {
	up := strings.ToUpper(id)
	if len(up) != idLen {
		return "", fmt.Errorf("quarantine: %q: %w", id, ErrBadID)
	}
	for i := 0; i < len(up); i++ {
		c := up[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') || c == 'I' || c == 'L' || c == 'O' || c == 'U' {
			return "", fmt.Errorf("quarantine: %q: %w", id, ErrBadID)
		}
	}
	return up, nil
}

func (s *Store) path(id, ext string) string { return filepath.Join(s.dir, id+ext) }

// Put keeps the message read from msg with its metadata and returns the new
// entry's id once both are on disk. meta's ID, State, Size and Expires are
// set by the store, and Received when zero. On failure nothing is left
// behind (or, after a crash, only what Expire cleans up).
func (s *Store) Put(meta Meta, msg io.Reader) (id string, err error) {
	id = newID()
	final := s.path(id, extMessage)
	n, err := s.writeFile(id+extMessage, final, func(w io.Writer) (int64, error) { return io.Copy(w, msg) })
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			os.Remove(final)
		}
	}()
	// The message must be in place before the metadata that makes the
	// entry exist.
	if err := syncDir(s.dir); err != nil {
		return "", err
	}
	meta.ID, meta.State, meta.Size = id, "", n
	if meta.Received.IsZero() {
		meta.Received = s.now()
	}
	meta.Expires = meta.Received.Add(time.Duration(s.lifetime.Load()))
	data, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return "", fmt.Errorf("quarantine: %w", err)
	}
	if _, err := s.writeFile(id+extMeta, s.path(id, extMeta), func(w io.Writer) (int64, error) {
		n, err := w.Write(append(data, '\n'))
		return int64(n), err
	}); err != nil {
		return "", err
	}
	if err := syncDir(s.dir); err != nil {
		os.Remove(s.path(id, extMeta))
		return "", err
	}
	return id, nil
}

// writeFile writes a file under tmp/, fsyncs it and renames it to final.
func (s *Store) writeFile(name, final string, write func(io.Writer) (int64, error)) (int64, error) {
	tmp := filepath.Join(s.tmp, name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, fmt.Errorf("quarantine: %w", err)
	}
	n, err := write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("quarantine: write %s: %w", name, err)
	}
	return n, nil
}

// List returns the entries the filter selects, newest first. Entries
// whose metadata cannot be read are listed in StateDamaged, with the time
// of their file as Received.
func (s *Store) List(f Filter) ([]Meta, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	var out []Meta
	for _, e := range ents {
		id, state, ok := metaFile(e.Name())
		if !ok {
			continue
		}
		m, err := s.readMeta(id, state)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released or deleted meanwhile
		}
		if err != nil {
			m = Meta{ID: id, State: StateDamaged}
			if fi, err := e.Info(); err == nil {
				m.Received = fi.ModTime()
				m.Expires = m.Received.Add(time.Duration(s.lifetime.Load()))
			}
		}
		if f.match(m) {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Meta) int {
		if c := b.Received.Compare(a.Received); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Count returns the number of entries, in any state, from the names in
// the directory alone (no metadata is read): cheap enough for every
// metrics scrape.
func (s *Store) Count() (int, error) {
	d, err := os.Open(s.dir)
	if err != nil {
		return 0, fmt.Errorf("quarantine: %w", err)
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(1024)
		for _, name := range names {
			if _, _, ok := metaFile(name); ok {
				n++
			}
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("quarantine: %w", err)
		}
	}
}

// metaFile reports whether name is the metadata file of an entry, and
// which state its name says.
func metaFile(name string) (id, state string, ok bool) {
	var ext string
	switch {
	case strings.HasSuffix(name, extMeta):
		ext, state = extMeta, StateQuarantined
	case strings.HasSuffix(name, extReleasing):
		ext, state = extReleasing, StateReleasing
	default:
		return "", "", false
	}
	id = strings.TrimSuffix(name, ext)
	if c, err := CheckID(id); err != nil || c != id {
		return "", "", false
	}
	return id, state, true
}

// readMeta reads the metadata file of id in state.
func (s *Store) readMeta(id, state string) (Meta, error) {
	ext := extMeta
	if state == StateReleasing {
		ext = extReleasing
	}
	data, err := os.ReadFile(s.path(id, ext))
	if err != nil {
		return Meta{}, err
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return Meta{}, fmt.Errorf("quarantine %s: damaged metadata: %w", id, err)
	}
	if m.ID != id {
		return Meta{}, fmt.Errorf("quarantine %s: damaged metadata: it names %q", id, m.ID)
	}
	m.State = state
	return m, nil
}

// Get returns the metadata of one entry.
func (s *Store) Get(id string) (Meta, error) {
	id, err := CheckID(id)
	if err != nil {
		return Meta{}, err
	}
	for _, state := range []string{StateQuarantined, StateReleasing} {
		m, err := s.readMeta(id, state)
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return Meta{}, err
		}
	}
	return Meta{}, fmt.Errorf("quarantine %s: %w", id, ErrNotFound)
}

// OpenMessage opens the message of an entry and returns its size.
func (s *Store) OpenMessage(id string) (io.ReadCloser, int64, error) {
	m, err := s.Get(id)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(s.path(m.ID, extMessage))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("quarantine %s: %w", m.ID, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("quarantine: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("quarantine: %w", err)
	}
	return f, fi.Size(), nil
}

// Delete removes an entry in any state, except one this process is
// releasing right now.
func (s *Store) Delete(id string) error {
	id, err := CheckID(id)
	if err != nil {
		return err
	}
	if err := s.remove(id); err != nil {
		return err
	}
	return syncDir(s.dir)
}

// remove deletes the files of id, metadata first, so that a crash halfway
// leaves an orphan message that Expire cleans, never metadata without a
// message.
func (s *Store) remove(id string) error {
	s.mu.Lock()
	if s.busy[id] {
		s.mu.Unlock()
		return fmt.Errorf("quarantine %s: %w", id, ErrReleasing)
	}
	found := false
	for _, ext := range []string{extMeta, extReleasing} {
		err := os.Remove(s.path(id, ext))
		if err == nil {
			found = true
		} else if !errors.Is(err, fs.ErrNotExist) {
			s.mu.Unlock()
			return fmt.Errorf("quarantine: %w", err)
		}
	}
	s.mu.Unlock()
	if !found {
		return fmt.Errorf("quarantine %s: %w", id, ErrNotFound)
	}
	if err := os.Remove(s.path(id, extMessage)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("quarantine: %w", err)
	}
	return nil
}

// DeliverFunc delivers a message being released. open returns a fresh
// reader of the whole message each time it is called; size is its
// length. A nil error means the next hop has taken the message.
type DeliverFunc func(meta Meta, open func() (io.ReadCloser, error), size int64) error

// Release delivers an entry with deliver and removes it, exactly once: the
// entry is claimed first (see the package doc), so a concurrent Release of
// the same id fails with ErrReleasing and one interrupted by a crash with
// ErrInterrupted. When deliver fails the entry is quarantined again and
// its error returned.
func (s *Store) Release(ctx context.Context, id string, deliver DeliverFunc) error {
	return s.release(ctx, id, deliver, false)
}

// ForceRelease releases an entry left in the releasing state by an
// interrupted release, once an admin has checked that its recipients did
// not get it. It fails with ErrNotReleasing for an entry in another state
// and with ErrReleasing while a release of it runs in this process.
func (s *Store) ForceRelease(ctx context.Context, id string, deliver DeliverFunc) error {
	return s.release(ctx, id, deliver, true)
}

func (s *Store) release(ctx context.Context, id string, deliver DeliverFunc, force bool) error {
	id, err := CheckID(id)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.claim(id, force); err != nil {
		return err
	}
	defer func() {
		s.mu.Lock()
		delete(s.busy, id)
		s.mu.Unlock()
	}()
	// The claim must be on disk before anything is sent: a crash after the
	// delivery must not leave a quarantined entry that would go out twice.
	if err := syncDir(s.dir); err != nil {
		return errors.Join(err, s.unclaim(id))
	}
	meta, err := s.readMeta(id, StateReleasing)
	if err != nil {
		return errors.Join(err, s.unclaim(id))
	}
	msg := s.path(id, extMessage)
	fi, err := os.Stat(msg)
	if err != nil {
		return errors.Join(fmt.Errorf("quarantine %s: message file: %w", id, err), s.unclaim(id))
	}
	open := func() (io.ReadCloser, error) { return os.Open(msg) }
	if err := deliver(meta, open, fi.Size()); err != nil {
		return errors.Join(err, s.unclaim(id))
	}
	err = os.Remove(s.path(id, extReleasing))
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		return fmt.Errorf("quarantine %s: %w: %v", id, ErrCleanup, err)
	}
	os.Remove(msg) // an orphan now; Expire would remove it too
	return nil
}

// claim moves id into the releasing state and marks it busy.
func (s *Store) claim(id string, force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy[id] {
		return fmt.Errorf("quarantine %s: %w", id, ErrReleasing)
	}
	if force {
		if _, err := os.Stat(s.path(id, extReleasing)); err != nil {
			if _, err := os.Stat(s.path(id, extMeta)); err == nil {
				return fmt.Errorf("quarantine %s: %w", id, ErrNotReleasing)
			}
			return fmt.Errorf("quarantine %s: %w", id, ErrNotFound)
		}
	} else if err := os.Rename(s.path(id, extMeta), s.path(id, extReleasing)); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("quarantine: %w", err)
		}
		if _, err := os.Stat(s.path(id, extReleasing)); err == nil {
			return fmt.Errorf("quarantine %s: %w", id, ErrInterrupted)
		}
		return fmt.Errorf("quarantine %s: %w", id, ErrNotFound)
	}
	s.busy[id] = true
	return nil
}

// unclaim puts a claimed entry back in the quarantined state.
func (s *Store) unclaim(id string) error {
	if err := os.Rename(s.path(id, extReleasing), s.path(id, extMeta)); err != nil {
		return fmt.Errorf("quarantine %s: could not put the entry back (it stays in the releasing state): %w", id, err)
	}
	return syncDir(s.dir)
}

// Expire removes the entries whose expiry is not after now, in any state
// but one being released by this process, and the leftovers of
// interrupted Puts older than an hour. It returns how many entries it
// removed.
func (s *Store) Expire(now time.Time) (int, error) {
	ms, err := s.List(Filter{})
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, m := range ms {
		if m.Expires.After(now) {
			continue
		}
		if err := s.remove(m.ID); err != nil {
			if !errors.Is(err, ErrReleasing) && !errors.Is(err, ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		n++
	}
	if n > 0 {
		if err := syncDir(s.dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.cleanOrphans(now); err != nil {
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}

// cleanOrphans removes message files without metadata and files in tmp/,
// once they are older than orphanAge.
func (s *Store) cleanOrphans(now time.Time) error {
	old := func(e fs.DirEntry) bool {
		fi, err := e.Info()
		return err == nil && fi.Mode().IsRegular() && fi.ModTime().Before(now.Add(-orphanAge))
	}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("quarantine: %w", err)
	}
	var errs []error
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), extMessage)
		if !ok || !old(e) {
			continue
		}
		if _, err := os.Lstat(s.path(id, extMeta)); err == nil {
			continue
		}
		if _, err := os.Lstat(s.path(id, extReleasing)); err == nil {
			continue
		}
		s.mu.Lock()
		busy := s.busy[id]
		s.mu.Unlock()
		if busy {
			continue
		}
		if err := os.Remove(filepath.Join(s.dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	tmps, err := os.ReadDir(s.tmp)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range tmps {
		if old(e) {
			if err := os.Remove(filepath.Join(s.tmp, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("quarantine: cleaning up: %w", errors.Join(errs...))
	}
	return nil
}

// Header returns the header section of an entry's message (up to and
// including the empty line), reading at most limit bytes.
func (s *Store) Header(id string, limit int64) ([]byte, error) {
	r, _, err := s.OpenMessage(id)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, limit))
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	if i := bytes.Index(data, []byte("\r\n\r\n")); i >= 0 {
		return data[:i+4], nil
	}
	if i := bytes.Index(data, []byte("\n\n")); i >= 0 {
		return data[:i+2], nil
	}
	return data, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("quarantine: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("quarantine: sync %s: %w", dir, err)
	}
	return nil
}
