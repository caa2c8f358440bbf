package maildir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDeliver(t *testing.T) {
	d := Dir(filepath.Join(t.TempDir(), "u"))
	msg := "Subject: hi\r\n\r\nbody\r\n"
	path, err := d.Deliver(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(path) != filepath.Join(string(d), "new") {
		t.Errorf("delivered to %s, want new/", path)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != msg {
		t.Errorf("content %q, %v", got, err)
	}
	tmp, _ := os.ReadDir(filepath.Join(string(d), "tmp"))
	if len(tmp) != 0 {
		t.Errorf("tmp/ holds %d files after delivery", len(tmp))
	}
	if !strings.HasSuffix(path, ",S=21") {
		t.Errorf("name %s lacks the size", path)
	}
}

type failReader struct{}

func (failReader) Read([]byte) (int, error) { return 0, errors.New("disk gone") }

func TestDeliverFailureLeavesNothing(t *testing.T) {
	d := Dir(t.TempDir())
	if _, err := d.Deliver(failReader{}); err == nil {
		t.Fatal("want an error")
	}
	for _, sub := range []string{"tmp", "new"} {
		ents, _ := os.ReadDir(filepath.Join(string(d), sub))
		if len(ents) != 0 {
			t.Errorf("%s/ holds %d files", sub, len(ents))
		}
	}
}

func TestSafeName(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"Someone", "someone", true},
		{"jörg", "jörg", true},
		{"..", "", false},
		{".hidden", "", false},
		{"a/b", "", false},
		{`a\b`, "", false},
		{"", "", false},
	} {
		got, err := SafeName(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("SafeName(%q) = %q, %v", tc.in, got, err)
		}
	}
}
