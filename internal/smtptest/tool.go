package smtptest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sbinDirs are searched after $PATH: smtp-sink lives in /usr/sbin, which a
// non-root PATH often lacks.
var sbinDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// InCI reports whether the tests run under CI (CI=true, as CI services and
// .ci/run set it; "1" and "yes" count too).
func InCI() bool {
	switch strings.ToLower(strings.TrimSpace(os.Getenv("CI"))) {
	case "true", "1", "yes":
		return true
	}
	return false
}

// RequireTool returns the path of an external program. When it is missing
// the test is skipped on a developer machine, and fails under CI (InCI):
// the CI script installs every tool, so a missing one is a broken setup,
// never a reason to skip. It returns "" only when t's Skipf/Fatalf return,
// which the real testing.T never does.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := lookTool(name); err == nil {
		return p
	}
	if InCI() {
		t.Fatalf("smtptest: required tool %q not found in $PATH or %v, and CI is set: install it (scripts/test installs the test dependencies)", name, sbinDirs)
	} else {
		t.Skipf("smtptest: tool %q not found in $PATH or %v; skipping (this would fail under CI=true)", name, sbinDirs)
	}
	return ""
}

func lookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	if strings.ContainsRune(name, filepath.Separator) {
		return "", err
	}
	for _, d := range sbinDirs {
		if p2, err2 := exec.LookPath(filepath.Join(d, name)); err2 == nil {
			return p2, nil
		}
	}
	return "", err
}
