package tests

import (
	"context"
	"errors"
	"fmt"
	"moat/internal/syncbuf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// runMoat runs the binary to completion (bounded) and returns its exit
// code, stdout and stderr.
func runMoat(t testing.TB, dir string, args ...string) (int, string, string) {
	t.Helper()
	bin := requireMoat(t)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.SysProcAttr = childAttr()
	var out, errOut syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("moat %v still running after %v (killed); stderr:\n%s", args, startTimeout, errOut.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errOut.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errOut.String()
	}
	t.Fatalf("moat %v: %v", args, err)
	return 0, "", ""
}

// baseConfigLines is a small valid config written by hand, so that the
// tests know the line and column of everything in it.
func baseConfigLines(t testing.TB, dir string) []string {
	return []string{
		"hostname: mx.test",
		"data_dir: " + filepath.Join(dir, "data"),
		"smtp:",
		"  listeners:",
		`    - addr: "` + freeAddr(t) + `"`,
		"      mode: mx",
		"  max_recipients: 10",
		"routes:",
		"  example.com:",
		`    upstream: "127.0.0.1:2"`,
		"log:",
		"  format: json",
		"  output: stdout",
	}
}

// TestUnknownConfigKey: an unknown key anywhere makes `moat check` and
// `moat serve` exit 1 with FILE:LINE:COL: message on stderr.
func TestUnknownConfigKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	valid := filepath.Join(dir, "valid.yaml")
	if err := os.WriteFile(valid, []byte(strings.Join(baseConfigLines(t, dir), "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runMoat(t, dir, "check", "--config", valid); code != 0 {
		t.Fatalf("moat check on a valid config: exit %d, stderr:\n%s", code, stderr)
	}
	cases := []struct {
		name   string
		at     int // insert before this 0-based line
		indent int
	}{
		{"top level", 2, 0},
		{"in smtp", 6, 2},
		{"in a listener", 6, 6},
		{"in a route", 10, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			lines := baseConfigLines(t, dir)
			lines = slices.Insert(lines, tc.at, strings.Repeat(" ", tc.indent)+"bogus_key: 1")
			file := filepath.Join(dir, "moat.yaml")
			if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			pos := fmt.Sprintf("%s:%d:%d: ", file, tc.at+1, tc.indent+1)
			for _, sub := range []string{"check", "serve"} {
				code, _, stderr := runMoat(t, dir, sub, "--config", file)
				if code != 1 {
					t.Errorf("moat %s: exit %d, want 1; stderr:\n%s", sub, code, stderr)
				}
				if !hasLine(stderr, func(l string) bool { return strings.HasPrefix(l, pos) && strings.Contains(l, "bogus_key") }) {
					t.Errorf("moat %s: stderr lacks a line %q...bogus_key...:\n%s", sub, pos, stderr)
				}
			}
		})
	}
}

// TestCheckEmbeddedDefault: `moat check` with no config validates the
// embedded default, which is valid.
func TestCheckEmbeddedDefault(t *testing.T) {
	t.Parallel()
	if code, _, stderr := runMoat(t, t.TempDir(), "check"); code != 0 {
		t.Fatalf("moat check (embedded default): exit %d, stderr:\n%s", code, stderr)
	}
}

func hasLine(text string, match func(string) bool) bool {
	for _, l := range strings.Split(text, "\n") {
		if match(l) {
			return true
		}
	}
	return false
}

// TestDeployExample: the production example in deploy/ (the one the
// systemd unit points at) passes `moat check`, and the unit runs that
// check before starting and asks /healthz on the example's admin.addr.
func TestDeployExample(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runMoat(t, root, "check", "--config", "deploy/moat.yaml")
	if code != 0 || !strings.Contains(stdout, "ok") {
		t.Errorf("moat check deploy/moat.yaml: exit %d\n%s%s", code, stdout, stderr)
	}
	unit, err := os.ReadFile(filepath.Join(root, "deploy", "moat.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ExecStartPre=/usr/local/bin/moat check --config /etc/moat/moat.yaml",
		"ExecStart=/usr/local/bin/moat serve --config /etc/moat/moat.yaml",
		"http://127.0.0.1:9025/healthz", "ExecReload=/bin/kill -HUP $MAINPID",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("deploy/moat.service lacks %q", want)
		}
	}
	example, _ := os.ReadFile(filepath.Join(root, "deploy", "moat.yaml"))
	if !strings.Contains(string(example), `admin: { addr: "127.0.0.1:9025" }`) {
		t.Errorf("deploy/moat.yaml no longer serves admin on the address the unit asks")
	}
}
