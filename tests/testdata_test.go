package tests

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// testdataPath finds a third-party test file: the shared collection next to
// the checkout (../shared/testdata from the repository root) when present,
// else the copy in tests/testdata.
func testdataPath(t testing.TB, rel string) string {
	t.Helper()
	for _, p := range []string{
		filepath.Join(repoRoot, "..", "shared", "testdata", rel),
		filepath.Join("testdata", rel),
	} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("test data %s: neither in ../shared/testdata nor in tests/testdata", rel)
	return ""
}

func readTestdata(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(testdataPath(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// smugglingVariant is one entry of smtp-smuggling/end-of-data-variants.yaml.
type smugglingVariant struct {
	Name        string   `yaml:"name"`
	Escaped     string   `yaml:"escaped"`
	BytesHex    string   `yaml:"bytes_hex"`
	Description string   `yaml:"description"`
	Sources     []string `yaml:"sources"`
	Inbound     bool     `yaml:"inbound"`
	Outbound    bool     `yaml:"outbound"`
	Notes       string   `yaml:"notes"`
	Bytes       []byte   `yaml:"-"`
}

// loadSmugglingVariants returns the 13 non-standard end-of-data sequences
// and the valid terminator.
func loadSmugglingVariants(t testing.TB) ([]smugglingVariant, []byte) {
	t.Helper()
	var doc struct {
		Variants []smugglingVariant `yaml:"variants"`
		Valid    struct {
			BytesHex string `yaml:"bytes_hex"`
		} `yaml:"valid_terminator"`
	}
	if err := yaml.Unmarshal(readTestdata(t, "smtp-smuggling/end-of-data-variants.yaml"), &doc); err != nil {
		t.Fatal(err)
	}
	for i := range doc.Variants {
		v := &doc.Variants[i]
		b, err := hex.DecodeString(v.BytesHex)
		if err != nil || string(b) != v.Escaped {
			t.Fatalf("variant %s: bytes_hex %q does not decode to escaped %q (%v)", v.Name, v.BytesHex, v.Escaped, err)
		}
		v.Bytes = b
	}
	valid, err := hex.DecodeString(doc.Valid.BytesHex)
	if err != nil || string(valid) != "\r\n.\r\n" || len(doc.Variants) == 0 {
		t.Fatalf("valid terminator %q (%v), %d variants", doc.Valid.BytesHex, err, len(doc.Variants))
	}
	return doc.Variants, valid
}

// jamesInjection returns the client line of Apache James's
// starttls_with_injection.test with its \r\n escapes turned into bytes:
// "starttls\r\nmail from:<matthieu@yopmail.com>\r\n".
func jamesInjection(t testing.TB) string {
	t.Helper()
	script := readTestdata(t, "smtp-session/james-mpt/starttls_with_injection.test")
	for _, l := range strings.Split(string(script), "\n") {
		l = strings.TrimRight(l, "\r")
		if c, ok := strings.CutPrefix(l, "C: "); ok && strings.HasPrefix(strings.ToLower(c), "starttls") {
			return strings.ReplaceAll(c, `\r\n`, "\r\n")
		}
	}
	t.Fatal("starttls_with_injection.test has no STARTTLS client line")
	return ""
}

// stripTrace checks the header fields moat put in front of a relayed
// message and returns the rest, which must be the client's message byte for
// byte. The first field must be a Received field with "by mx.test"; SPEC.md
// also lets moat add Authentication-Results fields with its own authserv-id
// right after it. Line endings follow the message (CRLF, or LF for
// smtp-sink dumps).
func stripTrace(t testing.TB, msg []byte) (received string, rest []byte) {
	t.Helper()
	fields, _ := leadingFields(msg)
	if len(fields) == 0 || !strings.HasPrefix(strings.ToLower(fields[0]), "received:") {
		t.Fatalf("relayed message does not start with a Received field:\n%q", abbrev(string(msg)))
	}
	received = fields[0]
	if !strings.Contains(unfold(received), "by "+Hostname) {
		t.Fatalf("moat's Received field lacks %q: %q", "by "+Hostname, received)
	}
	n := 1
	for n < len(fields) && strings.HasPrefix(strings.ToLower(fields[n]), "authentication-results:") &&
		strings.HasPrefix(strings.TrimSpace(unfold(fields[n])[len("authentication-results:"):]), Hostname) {
		n++
	}
	var added int
	for _, f := range fields[:n] {
		added += len(f)
	}
	return received, msg[added:]
}

// leadingFields splits off header fields from the start of msg, each with
// its continuation lines and line ending, up to the first field that does
// not look like Received or Authentication-Results.
func leadingFields(msg []byte) (fields []string, rest []byte) {
	rest = msg
	for len(rest) > 0 {
		name, _, ok := bytes.Cut(rest, []byte(":"))
		lower := strings.ToLower(string(name))
		if !ok || (lower != "received" && lower != "authentication-results") {
			break
		}
		end := 0
		for {
			i := bytes.IndexByte(rest[end:], '\n')
			if i < 0 {
				end = len(rest)
				break
			}
			end += i + 1
			if end >= len(rest) || (rest[end] != ' ' && rest[end] != '\t') {
				break
			}
		}
		fields = append(fields, string(rest[:end]))
		rest = rest[end:]
	}
	return fields, rest
}

func unfold(field string) string {
	return strings.Join(strings.Fields(field), " ")
}
