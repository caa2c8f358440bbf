package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"moat/config"
)

type slowBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (s *slowBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.b.Write(p)
}

// TestBatchWriterKeepsEveryLine writes from many goroutines and checks
// that every line arrives whole, in fewer writes than lines.
func TestBatchWriterKeepsEveryLine(t *testing.T) {
	out := &slowBuffer{}
	w := newBatchWriter(out)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				fmt.Fprintf(w, "{\"g\":%d,\"i\":%d}\n", g, i)
			}
		}()
	}
	wg.Wait()
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	lines := bytes.Count(out.b.Bytes(), []byte("\n"))
	if lines != 8000 {
		t.Errorf("%d lines, want 8000", lines)
	}
	for _, l := range bytes.Split(bytes.TrimSuffix(out.b.Bytes(), []byte("\n")), []byte("\n")) {
		if !bytes.HasPrefix(l, []byte(`{"g":`)) || !bytes.HasSuffix(l, []byte("}")) {
			t.Fatalf("torn line %q", l)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("write after close succeeded")
	}
	t.Logf("8000 lines in %d writes", out.writes)
}

func TestLoggerWritesOneJSONObjectPerLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.log")
	l, err := New(config.Log{Format: "json", Output: path})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		l.Event("smtp.transaction", zap.Int("moat.transaction", i), zap.Strings("email.to.address", []string{"b@example.com"}))
	}
	l.Debug("debug.chatter")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 100 {
		t.Fatalf("%d lines, want 100 (debug off by default)", len(lines))
	}
	var ev map[string]any
	if err := json.Unmarshal([]byte(lines[99]), &ev); err != nil {
		t.Fatal(err)
	}
	if ev["event.action"] != "smtp.transaction" || ev["log.level"] != "info" || ev["moat.transaction"] != float64(99) {
		t.Errorf("event %v", ev)
	}
	ts, _ := ev["@timestamp"].(string)
	if _, err := time.Parse("2006-01-02T15:04:05.000Z07:00", ts); err != nil || !strings.HasSuffix(ts, "Z") {
		t.Errorf("@timestamp %q: %v", ts, err)
	}
}

// TestReopen: after the log file is moved away (logrotate), Reopen makes
// the next events go to a new file at the configured path.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "moat.log")
	l, err := New(config.Log{Format: "json", Output: path, Level: "info"})
	if err != nil {
		t.Fatal(err)
	}
	l.Event("before.rotate")
	if err := l.Reopen(); err != nil { // flushes, reopens the same file
		t.Fatal(err)
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	l.Event("written.to.moved.file.until.reopen")
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Event("after.rotate")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(old), "before.rotate") || !strings.Contains(string(old), "written.to.moved.file") || strings.Contains(string(old), "after.rotate") {
		t.Errorf("rotated file:\n%s", old)
	}
	if !strings.Contains(string(cur), "after.rotate") || strings.Contains(string(cur), "before.rotate") {
		t.Errorf("new file:\n%s", cur)
	}
}
