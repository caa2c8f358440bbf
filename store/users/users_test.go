package users

import (
	"golang.org/x/crypto/bcrypt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUsers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	d := Open(path)
	d.HashCost = bcrypt.MinCost // the test is about the file, not the hash's strength
	if known, has, err := d.Lookup("a@example.test"); known || has || err != nil {
		t.Fatalf("empty list: %v %v %v", known, has, err)
	}
	if err := d.Add("Alice@Example.Test", "correct horse"); err != nil {
		t.Fatal(err)
	}
	if err := d.Add("alice@example.test", "another one"); err != ErrExists {
		t.Errorf("second add: %v", err)
	}
	if err := d.Add("bob@example.test", "short"); err == nil {
		t.Error("a short password was taken")
	}
	if err := d.Add("not-an-address", "long enough"); err == nil {
		t.Error("a bad address was taken")
	}
	for _, tc := range []struct {
		addr       string
		known, has bool
	}{
		{"alice@example.test", true, true},
		{"ALICE@example.test", true, true},
		{"bob@example.test", false, true},
		{"bob@other.test", false, false},
	} {
		known, has, err := d.Lookup(tc.addr)
		if known != tc.known || has != tc.has || err != nil {
			t.Errorf("Lookup(%s) = %v %v %v", tc.addr, known, has, err)
		}
	}
	if !d.Verify("alice@example.test", "correct horse") || d.Verify("alice@example.test", "wrong") || d.Verify("eve@example.test", "correct horse") {
		t.Error("Verify")
	}
	if err := d.Passwd("alice@example.test", "battery staple"); err != nil || !d.Verify("alice@example.test", "battery staple") {
		t.Errorf("Passwd: %v", err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v", st.Mode())
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), "battery") || !strings.Contains(string(data), "alice@example.test:$2") {
		t.Errorf("file content:\n%s", data)
	}
	// Another process's edit is seen by a running gateway.
	other := Open(path)
	other.HashCost = bcrypt.MinCost
	if err := other.Add("carol@example.test", "carol's password"); err != nil {
		t.Fatal(err)
	}
	if known, _, _ := d.Lookup("carol@example.test"); !known {
		t.Error("an edit by another process was not seen")
	}
	if err := d.Delete("alice@example.test"); err != nil {
		t.Fatal(err)
	}
	if l, _ := d.List(); strings.Join(l, ",") != "carol@example.test" {
		t.Errorf("List = %v", l)
	}
	if err := d.Delete("alice@example.test"); err != ErrUnknown {
		t.Errorf("second delete: %v", err)
	}
	// A damaged file is an error naming the line; the last good list stays.
	os.WriteFile(path, []byte("garbage line\n"), 0o600)
	if known, _, _ := d.Lookup("carol@example.test"); !known {
		t.Error("a damaged file dropped the users")
	}
	if _, err := d.List(); err == nil || !strings.Contains(err.Error(), ":1:1: ") {
		t.Errorf("damaged file: %v", err)
	}
}
