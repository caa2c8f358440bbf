package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

var (
	// repoRoot is the module root (the parent of tests/).
	repoRoot string
	// moatBin is the binary under test; buildErr says why there is none.
	moatBin  string
	buildErr error
)

const buildTimeout = 10 * time.Minute

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests:", err)
		return 1
	}
	repoRoot = root
	if p := os.Getenv("MOAT_BIN"); p != "" {
		moatBin, err = filepath.Abs(p)
		if err == nil {
			_, err = os.Stat(moatBin)
		}
		buildErr = err
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "moat-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	moatBin, buildErr = buildMoat(root, filepath.Join(dir, "moat"))
	if buildErr != nil {
		// Each test that needs the binary fails with this; the others run.
		fmt.Fprintln(os.Stderr, "tests: building moat failed:", buildErr)
	}
	return m.Run()
}

// buildMoat runs `go build -o out ./cmd/moat` in the module root, with
// -race when this test binary has it.
func buildMoat(root, out string) (string, error) {
	goBin, err := goTool()
	if err != nil {
		return "", err
	}
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/moat")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = root
	outText, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %v in %s: %v\n%s", goBin, args, root, err, outText)
	}
	return out, nil
}

// goTool finds the go command of the toolchain running the tests ($GOROOT,
// which go test sets), else the one on $PATH.
func goTool() (string, error) {
	if gr := os.Getenv("GOROOT"); gr != "" {
		p := filepath.Join(gr, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/local/go/bin/go"); err == nil {
		return "/usr/local/go/bin/go", nil
	}
	return "", fmt.Errorf("no go command in $GOROOT/bin, $PATH or /usr/local/go/bin")
}

// requireMoat fails the test when the binary could not be built.
func requireMoat(t testing.TB) string {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("the moat binary is not available: %v", buildErr)
	}
	return moatBin
}
