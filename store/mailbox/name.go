package mailbox

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Inbox is the name of every user's main folder, the Maildir++ root.
const Inbox = "INBOX"

// Delim separates hierarchy levels in folder names ("Work/2026").
const Delim = '/'

// ErrBadFolderName is returned for a folder name that cannot be stored.
var ErrBadFolderName = errors.New("mailbox: folder name not allowed")

// maxDirName is the longest directory name most file systems accept.
const maxDirName = 255

// Folder names on disk. An IMAP name is levels joined by "/"; its
// Maildir++ directory is "." followed by the same levels joined by ".",
// in the user's root: "Sent" is ".Sent", "Work/2026" is ".Work.2026".
// Inside a level a few bytes cannot stand for themselves, so they are
// written as "%" and two upper-case hex digits:
//
//	"%" (the escape itself), "." (the Maildir++ separator), "/" and "\"
//	(path separators), and control characters (0x00-0x1F, 0x7F).
//
// Every other byte, UTF-8 included, is kept, so directories stay readable.
// A level cannot start with a plain "." because "." is always escaped,
// and a directory name never is "." or "..". Empty levels ("a//b") are
// refused, and so are names longer than one directory name may be.
// "INBOX" in any case is the root; as the first level of a longer name it
// is written "INBOX". The mapping is one to one: a directory that does
// not decode, or decodes to a name that encodes differently (say "%41"
// for "A"), is not a folder.

// canonical returns name with a leading INBOX level upper-cased.
func canonical(name string) string {
	if len(name) >= len(Inbox) && strings.EqualFold(name[:len(Inbox)], Inbox) &&
		(len(name) == len(Inbox) || name[len(Inbox)] == Delim) {
		return Inbox + name[len(Inbox):]
	}
	return name
}

// folderDir returns the directory of folder name inside the user's root:
// "" for INBOX, ".Work.2026" for "Work/2026".
func folderDir(name string) (string, error) {
	name = canonical(name)
	if name == Inbox {
		return "", nil
	}
	if name == "" || !utf8.ValidString(name) {
		return "", ErrBadFolderName
	}
	var b strings.Builder
	for _, level := range strings.Split(name, string(Delim)) {
		if level == "" {
			return "", ErrBadFolderName
		}
		b.WriteByte('.')
		for i := 0; i < len(level); i++ {
			c := level[i]
			if c == '%' || c == '.' || c == '/' || c == '\\' || c < 0x20 || c == 0x7f {
				const hex = "0123456789ABCDEF"
				b.WriteByte('%')
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&0xf])
				continue
			}
			b.WriteByte(c)
		}
	}
	if b.Len() > maxDirName {
		return "", ErrBadFolderName
	}
	return b.String(), nil
}

// folderName is the inverse of folderDir for a subfolder's directory; ok
// is false when dir is not one.
func folderName(dir string) (name string, ok bool) {
	if len(dir) < 2 || dir[0] != '.' {
		return "", false
	}
	var b strings.Builder
	for i := 1; i < len(dir); i++ {
		switch c := dir[i]; c {
		case '.':
			b.WriteByte(Delim)
		case '%':
			if i+2 >= len(dir) {
				return "", false
			}
			hi, ok1 := unhex(dir[i+1])
			lo, ok2 := unhex(dir[i+2])
			if !ok1 || !ok2 {
				return "", false
			}
			b.WriteByte(hi<<4 | lo)
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	name = b.String()
	if back, err := folderDir(name); err != nil || back != dir {
		return "", false
	}
	return name, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// parentNames returns the names above name: "a/b/c" → "a", "a/b".
func parentNames(name string) []string {
	var out []string
	for i := 0; i < len(name); i++ {
		if name[i] == Delim {
			out = append(out, name[:i])
		}
	}
	return out
}
