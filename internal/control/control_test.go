package control

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]string
		if err := decode(r, &in); err != nil {
			Reply(w, nil, err, http.StatusBadRequest)
			return
		}
		if in["fail"] != "" {
			Reply(w, nil, errors.New(in["fail"]), http.StatusUnprocessableEntity)
			return
		}
		Reply(w, in, nil, 0)
	})
	path := Path(dir)
	s, err := Listen(path, mux)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Errorf("socket mode %v, %v: want no access for group and others", st.Mode(), err)
	}
	if _, err := Listen(path, mux); err == nil {
		t.Error("a second server on the same data_dir was allowed")
	}
	c := NewClient(path)
	var out map[string]string
	if err := c.Call(context.Background(), "POST", "/echo", map[string]string{"a": "b"}, &out); err != nil || out["a"] != "b" {
		t.Errorf("echo: %v %v", out, err)
	}
	if err := c.Call(context.Background(), "POST", "/echo", map[string]string{"fail": "no such entry"}, nil); err == nil || err.Error() != "no such entry" {
		t.Errorf("error reply: %v", err)
	}
	s.Close()
	if err := c.Call(context.Background(), "POST", "/echo", nil, nil); !errors.Is(err, ErrNotRunning) {
		t.Errorf("after close: %v", err)
	}
	if err := NewClient(filepath.Join(dir, "none.sock")).Call(context.Background(), "GET", "/", nil, nil); !errors.Is(err, ErrNotRunning) {
		t.Errorf("missing socket: %v", err)
	}
}
