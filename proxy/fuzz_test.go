package proxy

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzSession replays arbitrary client bytes against a real session (the
// command parser, DATA/BDAT framing, STARTTLS refusal paths, delivery into
// the built-in store) and requires that the server neither panics nor
// hangs: every session ends when the client stops sending.
func FuzzSession(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/dialogues/*.txt")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(strings.ReplaceAll(string(b), "\n", "\r\n")))
	}
	ts := startServerTB(f, "routes:\n  local.test: { upstream: local }\n", "policy: default\nchecks:\n  size: { max: 100KiB }\n")
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			c.Write(in)
			c.(*net.TCPConn).CloseWrite()
		}()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("session did not end: %v", err)
		}
	})
}
