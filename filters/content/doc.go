// Package content holds the checks that read the message itself at the
// end of DATA:
//
//   - "headers" matches the policy's regular expressions against decoded
//     header fields (NewHeaders);
//   - "attachments" walks the MIME tree as a stream and blocks file names
//     and media types, looking one level into zip archives
//     (NewAttachments);
//   - "gtube" catches the GTUBE test string (NewGTUBE).
//
// The checks only detect; package policies decides. MIME parsing is
// github.com/emersion/go-message (importing its charset package, which
// sets message.CharsetReader for the whole program), with bounds on the
// number of parts, their nesting and the archives read into memory, and
// lenient reading of the headers that name files, as mail readers are
// lenient. See README.md in this folder.
package content
