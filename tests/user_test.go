package tests

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

// TestUserCommand: `moat user` manages the built-in store's users while
// moat serve runs; once a local domain has a user, unknown names of that
// domain are refused at RCPT.
func TestUserCommand(t *testing.T) {
	t.Parallel()
	m := StartMoat(t, Config{Routes: map[string]Route{"local.test": {Upstream: "local"}}})
	bin := requireMoat(t)
	run := func(stdin string, args ...string) (int, string) {
		cmd := exec.CommandContext(context.Background(), bin, append(args, "--config", m.ConfigPath)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	// Before any user: the newcomer's catch-all.
	if r := Send(t, m.Addr, Envelope{From: sender, To: []string{"anyone@local.test"}, Data: NewMessage(sender, "anyone@local.test", "catch-all").Bytes()}); r.Stage != "" {
		t.Fatalf("catch-all: %s", r)
	}
	if code, out := run("a password of some length\n", "user", "add", "alice@local.test"); code != 0 {
		t.Fatalf("user add: %d %s", code, out)
	}
	if code, out := run("", "user", "add", "bob@local.test"); code != 1 || !strings.Contains(out, "no password") {
		t.Errorf("user add without a password: %d %s", code, out)
	}
	if code, out := run("", "user", "list"); code != 0 || strings.TrimSpace(out) != "alice@local.test" {
		t.Errorf("user list: %d %q", code, out)
	}
	r := Send(t, m.Addr, Envelope{From: sender, To: []string{"nobody@local.test"}, Data: NewMessage(sender, "nobody@local.test", "unknown").Bytes()})
	if se := r.RcptErrs["nobody@local.test"]; se == nil || se.Code != 550 || se.EnhancedCode != [3]int{5, 1, 1} {
		t.Errorf("unknown local user: %s", r)
	}
	if r := Send(t, m.Addr, Envelope{From: sender, To: []string{"alice@local.test"}, Data: NewMessage(sender, "alice@local.test", "known").Bytes()}); r.Stage != "" {
		t.Errorf("known user: %s", r)
	}
	if code, out := run("", "user", "del", "alice@local.test"); code != 0 {
		t.Errorf("user del: %d %s", code, out)
	}
}
