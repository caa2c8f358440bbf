package content

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"

	"moat/filters"
)

// DefaultBlockExtensions is the extension list of an attachments check
// whose policy leaves block_extensions out: SPEC.md's example list and the
// other Windows script, installer, shortcut and disk-image types that
// malware campaigns send. Lower case, without the dot.
var DefaultBlockExtensions = []string{
	"exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "iso",
	"jse", "vbe", "wsf", "wsh", "wsc", "hta", "msi", "msp", "lnk", "ps1",
	"cpl", "scf", "reg", "img", "vhd", "vhdx",
}

// DefaultBlockMIMETypes is the media type list of an attachments check
// whose policy leaves block_mime_types out: the types senders give Windows
// executables and HTML applications.
var DefaultBlockMIMETypes = []string{
	"application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
	"application/x-ms-dos-executable", "application/hta", "application/x-ms-shortcut",
}

// DefaultMaxArchiveSize bounds the zip archive the check reads (into
// memory) to list its files.
const DefaultMaxArchiveSize = 10 << 20

// maxArchiveEntries bounds the files listed in one archive.
const maxArchiveEntries = 10000

// zipTypes are the media types senders give zip archives.
var zipTypes = map[string]bool{
	"application/zip": true, "application/x-zip-compressed": true,
	"application/x-zip": true, "application/zip-compressed": true,
}

// archiveExtensions are what a file inside an archive is flagged as a
// nested archive for (it is not opened).
var archiveExtensions = map[string]bool{
	"zip": true, "7z": true, "rar": true, "gz": true, "tgz": true, "tar": true,
	"bz2": true, "xz": true, "cab": true, "arj": true, "lzh": true, "ace": true,
}

// AttachmentOptions configures NewAttachments.
type AttachmentOptions struct {
	// BlockExtensions are the blocked file name extensions, without the
	// dot, in any case; nil means DefaultBlockExtensions, an empty list
	// none.
	BlockExtensions []string
	// BlockMIMETypes are the blocked media types ("application/x-msdownload",
	// or "application/*" for a whole type); nil means DefaultBlockMIMETypes,
	// an empty list none.
	BlockMIMETypes []string
	MaxParts       int   // MIME entities walked; 0 means DefaultMaxParts
	MaxDepth       int   // MIME nesting; 0 means DefaultMaxDepth
	MaxArchiveSize int64 // bytes of a zip read to list it; 0 means DefaultMaxArchiveSize
}

// Finding is one file the attachments check reports, in the result's
// "blocked" and "unscanned" fields.
type Finding struct {
	Name      string `json:"name"`       // as declared (decoded), or the path inside the archive
	Reason    string `json:"reason"`     // "double extension .pdf.exe; .exe is blocked"
	InArchive string `json:"in_archive"` // the archive that holds the file; "" for a MIME part
}

// attachments is the "attachments" check.
type attachments struct {
	exts       map[string]bool
	types      map[string]bool
	maxParts   int
	maxDepth   int
	maxArchive int64
}

// NewAttachments returns the "attachments" check. At StageData it walks
// the message's MIME tree as a stream (Txn.Message) and blocks a part
// when a file name it declares (Content-Disposition filename or
// Content-Type name) ends in a blocked extension, or when its media type
// is blocked. Names are compared as Windows reads them: the last path
// element, trailing dots and spaces removed, without regard to case. The
// files of a zip archive (by name or media type, up to MaxArchiveSize)
// are listed and their names checked too, one level deep: an archive
// inside it is reported, not opened.
//
// Results:
//   - fail when something is blocked, or when the message has more than
//     MaxParts MIME entities or nests them deeper than MaxDepth (it is
//     not scanned past that);
//   - permerror when the MIME structure cannot be followed and nothing
//     was blocked before that point;
//   - temperror when the message is not available or the context ends;
//   - pass otherwise.
//
// Fields: "parts" (MIME entities seen), "blocked" and "unscanned"
// ([]Finding, when not empty, the first 100: archives too big or
// unreadable, nested archives), "limit" ("parts" or "depth") when a bound was hit, "error"
// when the structure broke after something was blocked.
func NewAttachments(o AttachmentOptions) filters.Check {
	c := &attachments{exts: map[string]bool{}, types: map[string]bool{},
		maxParts: o.MaxParts, maxDepth: o.MaxDepth, maxArchive: o.MaxArchiveSize}
	exts, types := o.BlockExtensions, o.BlockMIMETypes
	if exts == nil {
		exts = DefaultBlockExtensions
	}
	if types == nil {
		types = DefaultBlockMIMETypes
	}
	for _, e := range exts {
		if e = strings.ToLower(strings.TrimPrefix(strings.TrimSpace(e), ".")); e != "" {
			c.exts[e] = true
		}
	}
	for _, t := range types {
		if t = strings.ToLower(strings.TrimSpace(t)); t != "" {
			c.types[t] = true
		}
	}
	if c.maxParts <= 0 {
		c.maxParts = DefaultMaxParts
	}
	if c.maxDepth <= 0 {
		c.maxDepth = DefaultMaxDepth
	}
	if c.maxArchive <= 0 {
		c.maxArchive = DefaultMaxArchiveSize
	}
	return c
}

func (c *attachments) Name() string { return "attachments" }

func (c *attachments) Stages() []filters.Stage { return []filters.Stage{filters.StageData} }

// Run implements filters.Check.
func (c *attachments) Run(ctx context.Context, stage filters.Stage, t *filters.Txn) (filters.Result, bool) {
	if stage != filters.StageData {
		return filters.Result{}, false
	}
	if t.Message == nil {
		return filters.Result{Check: c.Name(), Value: filters.TempError, Reason: "the message is not available"}, true
	}
	return c.scan(ctx, t.Message()), true
}

// maxFindings bounds the blocked and the unscanned files a result lists;
// the reason counts them all.
const maxFindings = 100

// findings is a list of at most maxFindings, and how many there were.
type findings struct {
	list []Finding
	n    int
}

func (f *findings) add(fs ...Finding) {
	for _, x := range fs {
		if f.n++; len(f.list) < maxFindings {
			f.list = append(f.list, x)
		}
	}
}

// scan walks one message and makes the check's result.
func (c *attachments) scan(ctx context.Context, r io.Reader) filters.Result {
	var blocked, unscanned findings
	n, err := walk(ctx, r, c.maxParts, c.maxDepth, func(p *part) error {
		found := false
		for _, name := range p.Names {
			if why, ok := c.blockedName(name); ok {
				blocked.add(Finding{Name: name, Reason: why})
				found = true
			}
		}
		if p.Multipart {
			return nil
		}
		if !found && c.blockedType(p.MediaType) {
			name := ""
			if len(p.Names) > 0 {
				name = p.Names[0]
			}
			blocked.add(Finding{Name: name, Reason: fmt.Sprintf("type %s is blocked", p.MediaType)})
			found = true
		}
		if archive, ok := c.zipName(p); ok && !found {
			b, u := c.listZip(p.Body, archive)
			blocked.add(b...)
			unscanned.add(u...)
		}
		return nil
	})

	res := filters.Result{Check: c.Name(), Value: filters.Pass, Fields: map[string]any{"parts": n}}
	if blocked.n > 0 {
		res.Fields["blocked"] = blocked.list
	}
	if unscanned.n > 0 {
		res.Fields["unscanned"] = unscanned.list
	}
	var le *limitError
	var me *malformedError
	switch {
	case errors.As(err, &le):
		res.Value, res.Reason = filters.Fail, le.msg+"; not scanned past that"
		if blocked.n > 0 {
			res.Reason = describe(blocked) + "; " + res.Reason
		}
		res.Fields["limit"] = le.what
	case blocked.n > 0:
		res.Value, res.Reason = filters.Fail, describe(blocked)
		if err != nil {
			res.Fields["error"] = err.Error()
		}
	case errors.As(err, &me):
		res.Value, res.Reason = filters.PermError, me.Error()
	case err != nil:
		res.Value, res.Reason = filters.TempError, err.Error()
	}
	return res
}

// describe is the reason of a fail: the first blocked file and how many
// more there are.
func describe(blocked findings) string {
	f := blocked.list[0]
	var s string
	switch {
	case f.InArchive != "":
		s = fmt.Sprintf("attachment %q in archive %q: %s", f.Name, f.InArchive, f.Reason)
	case f.Name != "":
		s = fmt.Sprintf("attachment %q: %s", f.Name, f.Reason)
	default:
		s = "attachment: " + f.Reason
	}
	if blocked.n > 1 {
		s += fmt.Sprintf(" (and %d more)", blocked.n-1)
	}
	return s
}

// blockedName reports whether a file name ends in a blocked extension,
// and says why.
func (c *attachments) blockedName(name string) (string, bool) {
	n := normalizeName(name)
	dot := strings.LastIndexByte(n, '.')
	if dot < 0 {
		return "", false
	}
	ext := n[dot+1:]
	if !c.exts[ext] {
		return "", false
	}
	stem := strings.TrimRightFunc(n[:dot], trailingJunk)
	if d := strings.LastIndexByte(stem, '.'); d >= 0 && looksLikeExtension(stem[d+1:]) {
		return fmt.Sprintf("double extension .%s.%s; .%s is blocked", stem[d+1:], ext, ext), true
	}
	return fmt.Sprintf("extension .%s is blocked", ext), true
}

// blockedType reports whether a media type is blocked, exactly or by its
// "type/*".
func (c *attachments) blockedType(mt string) bool {
	if c.types[mt] {
		return true
	}
	typ, _, _ := strings.Cut(mt, "/")
	return c.types[typ+"/*"]
}

// zipName reports whether a part is a zip archive (by a name ending in
// .zip or by its media type) and returns the name to report it by.
func (c *attachments) zipName(p *part) (string, bool) {
	for _, n := range p.Names {
		if extension(normalizeName(n)) == "zip" {
			return n, true
		}
	}
	if zipTypes[p.MediaType] {
		if len(p.Names) > 0 {
			return p.Names[0], true
		}
		return "(unnamed archive)", true
	}
	return "", false
}

// listZip reads a zip archive (up to maxArchive bytes, in memory) and
// checks the names of the files in it, one level deep.
func (c *attachments) listZip(body io.Reader, archive string) (blocked, unscanned []Finding) {
	skip := func(why string) []Finding { return []Finding{{Name: archive, Reason: why}} }
	data, err := io.ReadAll(io.LimitReader(body, c.maxArchive+1))
	if err != nil {
		return nil, skip("archive not opened: " + err.Error())
	}
	if int64(len(data)) > c.maxArchive {
		return nil, skip(fmt.Sprintf("archive larger than %d bytes, not opened", c.maxArchive))
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) { // names with "../" are listed all the same
		return nil, skip("archive not opened: " + err.Error())
	}
	for i, f := range zr.File {
		if i == maxArchiveEntries {
			unscanned = append(unscanned, Finding{Name: archive, Reason: fmt.Sprintf("more than %d files in the archive, the rest not listed", maxArchiveEntries)})
			break
		}
		if strings.HasSuffix(f.Name, "/") {
			continue // a folder
		}
		if why, ok := c.blockedName(f.Name); ok {
			blocked = append(blocked, Finding{Name: f.Name, Reason: why, InArchive: archive})
		} else if archiveExtensions[extension(normalizeName(f.Name))] {
			unscanned = append(unscanned, Finding{Name: f.Name, Reason: "nested archive, not opened", InArchive: archive})
		}
	}
	return blocked, unscanned
}

// normalizeName is a file name as Windows reads it: the last element of a
// path, without the dots and spaces (and, to be safe, other white space
// and control characters) it ignores at the end, in lower case.
func normalizeName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	return strings.ToLower(strings.TrimRightFunc(name, trailingJunk))
}

func trailingJunk(r rune) bool { return r == '.' || unicode.IsSpace(r) || unicode.IsControl(r) }

// extension is what follows the last dot of a normalized name ("" for
// none).
func extension(n string) string {
	if dot := strings.LastIndexByte(n, '.'); dot >= 0 {
		return n[dot+1:]
	}
	return ""
}

// looksLikeExtension: two to four ASCII letters and digits, a letter
// among them (pdf, docx, jpg, mp3), as a disguise in "invoice.pdf.exe".
func looksLikeExtension(s string) bool {
	if len(s) < 2 || len(s) > 4 {
		return false
	}
	letter := false
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z':
			letter = true
		case r >= '0' && r <= '9':
		default:
			return false
		}
	}
	return letter
}

var _ filters.Check = (*attachments)(nil)
