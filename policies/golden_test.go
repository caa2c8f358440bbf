package policies

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"moat/internal/yamlx"
)

var update = flag.Bool("update", false, "rewrite the golden .errors files under testdata/errors")

// TestGoldenErrors loads every testdata/errors/NAME.yaml (alone) and every
// testdata/errors/NAME/ folder (its *.yaml files, as one Load) and compares
// the problems, and the policies loaded when it is valid, with NAME.errors.
func TestGoldenErrors(t *testing.T) {
	entries, err := os.ReadDir("testdata/errors")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		name, path := e.Name(), filepath.Join("testdata/errors", e.Name())
		var load func() string
		switch {
		case e.IsDir():
			load = func() string { return render(Load([]string{filepath.Join(path, "*.yaml")})) }
		case strings.HasSuffix(name, ".yaml"):
			name = strings.TrimSuffix(name, ".yaml")
			load = func() string { return render(LoadFile(path)) }
		default:
			continue
		}
		n++
		t.Run(name, func(t *testing.T) {
			got := load()
			golden := filepath.Join("testdata/errors", name+".errors")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to write it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs (go test -update rewrites it)\n--- got:\n%s--- want:\n%s", golden, got, want)
			}
		})
	}
	if n == 0 {
		t.Fatal("no golden cases found")
	}
}

// render writes what a load produced: one problem a line, then the
// policies of the set (when there is one).
func render(s *Set, errs yamlx.Errors) string {
	var b strings.Builder
	if msg := errs.Error(); msg != "" {
		b.WriteString(msg)
		b.WriteString("\n")
	}
	if s != nil {
		var names []string
		for _, p := range s.Policies() {
			n := p.Name()
			if p == s.Default() {
				n += " (default)"
			}
			names = append(names, n)
		}
		b.WriteString("policies: " + strings.Join(names, ", ") + "\n")
	}
	return b.String()
}
