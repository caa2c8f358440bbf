package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// The messages loadgen builds verify against the record -genkey writes,
// and come out at about the size asked for.
func TestBuildSignedVerifies(t *testing.T) {
	dir := t.TempDir()
	if err := genKey(dir); err != nil {
		t.Fatal(err)
	}
	signer, err := readKey(filepath.Join(dir, "dkim.pem"))
	if err != nil {
		t.Fatal(err)
	}
	txt, err := os.ReadFile(filepath.Join(dir, "dkim.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1024, 10240, 102400} {
		msg, err := build(1, size, "s@bench.example", "r@example.com", "bench.example", "bench", signer)
		if err != nil {
			t.Fatal(err)
		}
		if d := len(msg) - size; d < -200 || d > 200 {
			t.Errorf("size %d: message is %d bytes", size, len(msg))
		}
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
			LookupTXT: func(domain string) ([]string, error) {
				if domain != "bench._domainkey.bench.example" {
					t.Errorf("lookup of %q", domain)
				}
				return []string{strings.TrimSpace(string(txt))}, nil
			},
		})
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			t.Fatalf("size %d: verify: %v %+v", size, err, vs)
		}
	}
}
