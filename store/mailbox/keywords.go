package mailbox

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// IMAP keywords ($Junk, $Forwarded, NonJunk, ...) are stored as Dovecot
// stores them in Maildir, so that a mailbox moved to or from Dovecot keeps
// them: the lower-case letters a-z in a message file's flags stand for
// keywords 0-25 of the folder, whose names are listed in the folder's
// dovecot-keywords file, one "<index> <name>" a line. A folder thus holds
// at most 26 distinct keywords; PERMANENTFLAGS stops offering \* when
// they are used up.
const keywordsName = "dovecot-keywords"

// MaxKeywords is how many keywords one folder can hold.
const MaxKeywords = 26

// parseKeywords reads a dovecot-keywords file: names by index. Lines that
// do not parse, indexes out of range and repeated names are skipped, as
// Dovecot does.
func parseKeywords(b []byte) []string {
	var out [MaxKeywords]string
	n := 0
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 1024), 64*1024)
	for sc.Scan() {
		idx, name, ok := strings.Cut(strings.TrimSuffix(sc.Text(), "\r"), " ")
		i, err := strconv.Atoi(idx)
		key := strings.ToLower(name)
		if !ok || err != nil || i < 0 || i >= MaxKeywords || !validKeyword(name) || seen[key] || out[i] != "" {
			continue
		}
		seen[key] = true
		out[i] = name
		n = max(n, i+1)
	}
	return out[:n]
}

// validKeyword reports whether name can be a keyword: an IMAP atom, not
// a system flag.
func validKeyword(name string) bool {
	if name == "" || strings.HasPrefix(name, `\`) || len(name) > 200 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`(){%*"\]`, c) >= 0 {
			return false
		}
	}
	return true
}

func formatKeywords(names []string) []byte {
	var b bytes.Buffer
	for i, n := range names {
		if n != "" {
			fmt.Fprintf(&b, "%d %s\n", i, n)
		}
	}
	return b.Bytes()
}

// readKeywords loads the folder's keyword names (none when the file is
// missing or unreadable: the letters then show as nothing).
func readKeywords(dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, keywordsName))
	if err != nil {
		return nil
	}
	return parseKeywords(b)
}

// ErrBadKeyword: a keyword name that is not an IMAP atom.
var ErrBadKeyword = errors.New("mailbox: invalid keyword")

// Keywords returns the names of the keywords defined in the folder.
func (f *Folder) Keywords() []string {
	kw := f.keywords.Load()
	if kw == nil {
		return nil
	}
	out := make([]string, 0, len(*kw))
	for _, n := range *kw {
		if n != "" {
			out = append(out, n)
		}
	}
	return out
}

// KeywordRoom reports whether new keywords can still be defined.
func (f *Folder) KeywordRoom() bool { return len(f.Keywords()) < MaxKeywords }

// KeywordNames returns the names of the keyword letters in flags, in
// letter order; letters without a name are left out. It takes no lock,
// so Observers may call it.
func (f *Folder) KeywordNames(flags Flags) []string {
	kw := f.keywords.Load()
	if kw == nil {
		return nil
	}
	var out []string
	for i := 0; i < len(flags); i++ {
		c := flags[i]
		if c >= 'a' && c <= 'z' && int(c-'a') < len(*kw) && (*kw)[c-'a'] != "" {
			out = append(out, (*kw)[c-'a'])
		}
	}
	return out
}

// KeywordFlags returns the letters of the keywords names (matched without
// regard to case, as IMAP wants). With create, names the folder does not
// know are defined while there is room (the rest are left out, and the
// names file is rewritten); without, they are left out.
func (f *Folder) KeywordFlags(names []string, create bool) (Flags, error) {
	if len(names) == 0 {
		return "", nil
	}
	for _, n := range names {
		if !validKeyword(n) {
			return "", fmt.Errorf("%w: %q", ErrBadKeyword, n)
		}
	}
	if !create {
		return lookupKeywords(f.keywords.Load(), names, nil), nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usable(); err != nil {
		return "", err
	}
	cur := f.keywords.Load()
	var kw []string
	if cur != nil {
		kw = append(kw, *cur...)
	}
	added := false
	letters := lookupKeywords(&kw, names, func(name string) (byte, bool) {
		for i := range MaxKeywords {
			if i == len(kw) {
				kw = append(kw, "")
			}
			if kw[i] == "" {
				kw[i], added = name, true
				return byte('a' + i), true
			}
		}
		return 0, false
	})
	if added {
		if err := writeFileAtomic(filepath.Join(f.dir, keywordsName), formatKeywords(kw)); err != nil {
			return "", err
		}
		f.keywords.Store(&kw)
	}
	return letters, nil
}

// lookupKeywords maps names to letters through kw, calling add (if not
// nil) for names kw lacks.
func lookupKeywords(kw *[]string, names []string, add func(name string) (byte, bool)) Flags {
	var b []byte
next:
	for _, n := range names {
		if kw != nil {
			for i, k := range *kw {
				if k != "" && strings.EqualFold(k, n) {
					b = append(b, byte('a'+i))
					continue next
				}
			}
		}
		if add != nil {
			if c, ok := add(n); ok {
				b = append(b, c)
			}
		}
	}
	return MakeFlags(string(b))
}
