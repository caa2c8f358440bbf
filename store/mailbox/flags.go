package mailbox

import (
	"sort"
	"strings"
)

// Flags are a message's Maildir flags: the letters after ":2," in its file
// name, sorted, each once. The lower-case letters are keywords (see
// keywords.go); upper-case letters other than the five below are kept as
// they are.
type Flags string

// The Maildir flag letters and the IMAP system flags they stand for.
const (
	Draft    = 'D' // \Draft
	Flagged  = 'F' // \Flagged
	Answered = 'R' // \Answered
	Seen     = 'S' // \Seen
	Deleted  = 'T' // \Deleted ("trashed")
)

// systemFlags are the letters IMAP's system flags map to.
const systemFlags Flags = "DFRST"

// keywordLetters are the letters that stand for keywords.
const keywordLetters Flags = "abcdefghijklmnopqrstuvwxyz"

// MakeFlags returns the flags named by the ASCII letters in s, sorted.
func MakeFlags(s string) Flags {
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z') && strings.IndexByte(string(b), c) < 0 {
			b = append(b, c)
		}
	}
	sort.Slice(b, func(i, j int) bool { return b[i] < b[j] })
	return Flags(b)
}

// Has reports whether letter c is set.
func (f Flags) Has(c byte) bool { return strings.IndexByte(string(f), c) >= 0 }

// With returns f plus the letters of add.
func (f Flags) With(add Flags) Flags { return MakeFlags(string(f) + string(add)) }

// Without returns f minus the letters of del.
func (f Flags) Without(del Flags) Flags {
	var b []byte
	for i := 0; i < len(f); i++ {
		if !del.Has(f[i]) {
			b = append(b, f[i])
		}
	}
	return Flags(b)
}

// FlagOp says how SetFlags combines the given flags with a message's own.
type FlagOp int

const (
	// Replace sets the system flags and keywords to exactly the given
	// ones; other letters stay.
	Replace FlagOp = iota
	// Add sets the given flags.
	Add
	// Remove clears the given flags.
	Remove
)

func (op FlagOp) apply(cur, f Flags) Flags {
	switch op {
	case Add:
		return cur.With(f)
	case Remove:
		return cur.Without(f)
	default:
		return cur.Without(systemFlags + keywordLetters).With(f)
	}
}

// splitFileName splits a Maildir file name into its unique key (the part
// before ":") and its flags (after ":2,"; none for other info).
func splitFileName(name string) (key string, flags Flags) {
	key, info, ok := strings.Cut(name, ":")
	if ok && strings.HasPrefix(info, "2,") {
		flags = MakeFlags(info[2:])
	}
	return key, flags
}

// curName is the file name in cur/ for key with flags.
func curName(key string, flags Flags) string { return key + ":2," + string(flags) }
