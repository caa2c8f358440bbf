package tests

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"moat/internal/smtptest"
)

// The embedded default's fixed loopback ports (SPEC.md).
var defaultPorts = []string{
	"127.0.0.1:2525", "127.0.0.1:2587", "127.0.0.1:2465",
	"127.0.0.1:1110", "127.0.0.1:1995", "127.0.0.1:1143", "127.0.0.1:1993",
	"127.0.0.1:9025",
}

// TestEmbeddedDefault: `moat serve` with no config, in an empty directory,
// takes mail for someone@example.test from swaks on 127.0.0.1:2525 into a
// Maildir under ./moat-data. It uses fixed ports, so it does not run in
// parallel with the other tests (which only start once it is done).
func TestEmbeddedDefault(t *testing.T) {
	smtptest.RequireTool(t, "swaks")
	for _, addr := range defaultPorts {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			if smtptest.InCI() {
				t.Fatalf("port %s of the embedded default is taken: %v", addr, err)
			}
			t.Skipf("port %s of the embedded default is taken (%v): is a moat already running?", addr, err)
		}
		ln.Close()
	}
	dir := t.TempDir()
	m := StartMoatDefault(t, dir, "127.0.0.1:2525")
	marker := "default-body-" + randomHex(6)
	m.ForbidInLog(marker)
	res := RunSwaks(t, SwaksOptions{Server: "127.0.0.1:2525", To: "someone@example.test", Body: "hello " + marker})
	if res.ExitCode != 0 {
		t.Fatalf("swaks %v exited %d:\n%s", res.Args, res.ExitCode, res.Transcript)
	}
	if !strings.Contains(res.Transcript, "<-  250") {
		t.Errorf("swaks transcript:\n%s", res.Transcript)
	}
	files := waitFiles(t, filepath.Join(dir, "moat-data", "mail", "example.test", "someone", "new"), 1)
	if len(files) != 1 {
		t.Fatalf("%d messages in the Maildir, want 1: %v", len(files), files)
	}
	got, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Received:", "hello " + marker, "X-Mailer: swaks"} {
		if !bytes.Contains(got, []byte(want)) {
			t.Errorf("stored message lacks %q:\n%s", want, got)
		}
	}
	ev := m.WaitTransactionEvent(1)
	if ev.Outcome() != "success" || !strings.Contains(strings.Join(ev.Strings("email.to.address"), ","), "someone@example.test") {
		t.Errorf("event: %v", ev)
	}

	// The README's quick start: a user for the mailbox, then the message
	// read back with curl over IMAP (STARTTLS) and POP3S.
	cmd := exec.Command(requireMoat(t), "user", "add", "someone@example.test")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(mailboxPassword + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("moat user add: %v\n%s", err, out)
	}
	for _, url := range []string{"imap://127.0.0.1:1143/INBOX;UID=1", "pop3s://127.0.0.1:1995/1", "imaps://127.0.0.1:1993/INBOX;UID=1", "pop3://127.0.0.1:1110/1"} {
		r := curl(t, "someone@example.test", mailboxPassword, "--ssl-reqd", url)
		if r.code != 0 || !bytes.Equal(r.stdout, got) {
			t.Errorf("reading the message with curl %s: %s", url, r)
		}
	}
}
