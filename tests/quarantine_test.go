package tests

import (
	"encoding/json"
	"strings"
	"testing"

	"moat/internal/smtptest"
)

// quarantinePolicy holds back every message over 10 bytes, that is all.
const quarantinePolicy = `policy: default
checks:
  size: { max: 10, action: quarantine }
`

// quarantineList runs `moat quarantine list --json` and returns the entries.
func quarantineList(t *testing.T, m *Moat) []map[string]any {
	t.Helper()
	code, out, errOut := runMoat(t, m.Dir, "quarantine", "list", "--config", m.ConfigPath, "--json")
	if code != 0 {
		t.Fatalf("moat quarantine list --json: exit %d\n%s%s", code, out, errOut)
	}
	var es []map[string]any
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		t.Fatalf("moat quarantine list --json: %v\n%s", err, out)
	}
	return es
}

// quarantineSend sends one message that the policy quarantines and returns
// the id the reply names.
func quarantineSend(t *testing.T, m *Moat, subject string) (id string, msg *Message) {
	t.Helper()
	msg = NewMessage(sender, rcptBob, subject)
	m.ForbidInLog(msg.Marker)
	r := MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: msg.Bytes()})
	if !strings.Contains(r.Reply, "Ok: queued as ") {
		t.Fatalf("reply %q, want Ok: queued as ID", r.Reply)
	}
	f := strings.Fields(r.Reply)
	return f[len(f)-1], msg
}

// TestQuarantine drives the quarantine through the real binary: a held
// message gets 250 and stays away from the next hop, the admin commands
// list, show and release it (exactly once), a next hop's refusal keeps it,
// and without moat serve list, show and delete still work while release
// says why it cannot.
func TestQuarantine(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), Policy: quarantinePolicy})
	run := func(args ...string) (int, string, string) {
		t.Helper()
		return runMoat(t, m.Dir, append([]string{"quarantine", args[0], "--config", m.ConfigPath}, args[1:]...)...)
	}

	id, msg := quarantineSend(t, m, "held")
	ev := m.WaitEvent("quarantine transaction", func(e Event) bool { return e.Action() == "smtp.transaction" })
	if ev.Str("moat.action") != "quarantine" || ev.Str("moat.upstream") != "quarantine" || ev.Outcome() != "success" ||
		ev.Str("moat.reply") != "250 2.0.0 Ok: queued as "+id {
		t.Errorf("transaction event %v", ev)
	}
	if n := len(sink.Transactions()); n != 0 {
		t.Fatalf("the next hop got %d transactions of a quarantined message", n)
	}

	// list: the table and the JSON.
	code, out, errOut := run("list")
	if code != 0 {
		t.Fatalf("list: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"ID", "RECEIVED", "FROM", "TO", "SCORE", "REASON", "STATE", id, sender, rcptBob, "quarantined", "1 entry"} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	es := quarantineList(t, m)
	if len(es) != 1 || es[0]["id"] != id || es[0]["state"] != "quarantined" {
		t.Fatalf("list --json: %v", es)
	}
	env, _ := es[0]["envelope"].(map[string]any)
	verdict, _ := es[0]["verdict"].(map[string]any)
	if env["from"] != sender || env["client_ip"] != "127.0.0.1" || env["helo"] != "client.example.net" ||
		verdict["policy"] != "default" || verdict["action"] != "quarantine" {
		t.Errorf("list --json entry: %v", es[0])
	}
	if code, out, _ := run("list", "--rcpt", "nobody@"); code != 0 || !strings.Contains(out, "0 entries") {
		t.Errorf("list --rcpt nobody@: exit %d\n%s", code, out)
	}

	// show: metadata and header; --raw: the message as it would go out.
	code, out, errOut = run("show", id)
	if code != 0 {
		t.Fatalf("show: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"ID:", id, "State:", "quarantined", "From:", "<" + sender + ">", "Policy:", "default", "size:", "Received: from client.example.net", "Subject: held"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, msg.Marker) {
		t.Errorf("show printed the body:\n%s", out)
	}
	code, raw, errOut := run("show", id, "--raw")
	if code != 0 || !strings.HasPrefix(raw, "Received: ") || !strings.Contains(raw, "Authentication-Results: "+Hostname) ||
		!strings.HasSuffix(raw, string(msg.Bytes())) {
		t.Errorf("show --raw: exit %d\n%s%s", code, raw, errOut)
	}

	// A refusal of the next hop keeps the entry and is the command's error.
	sink.Set(smtptest.WithDataReply("554 5.7.1 Not today"))
	code, out, errOut = run("release", id)
	if code != 1 || !strings.Contains(errOut, "554 5.7.1 Not today") {
		t.Errorf("release refused by the next hop: exit %d\n%s%s", code, out, errOut)
	}
	if es := quarantineList(t, m); len(es) != 1 || es[0]["state"] != "quarantined" {
		t.Errorf("after a refused release: %v", es)
	}
	m.WaitEvent("failed release event", func(e Event) bool {
		return e.Action() == "quarantine.admin" && e.Outcome() == "failure" && strings.HasPrefix(e.Str("moat.reply"), "554 5.7.1")
	})

	// release: delivered exactly once.
	sink.Set(smtptest.WithDataReply("250 2.0.0 Ok: queued as SINK1"))
	code, out, errOut = run("release", strings.ToLower(id))
	if code != 0 || out != id+": released: 250 2.0.0 Ok: queued as SINK1\n" {
		t.Fatalf("release: exit %d\n%s%s", code, out, errOut)
	}
	txs := sink.WaitTransactions(2, waitTimeout)
	got := txs[len(txs)-1]
	if !got.Accepted() || got.From != sender || len(got.Rcpts) != 1 || got.Rcpts[0] != rcptBob || string(got.Message) != raw {
		t.Errorf("the next hop got from %q to %v (%s):\n%s", got.From, got.Rcpts, got.Reply, got.Message)
	}
	ev = m.WaitEvent("release event", func(e Event) bool {
		return e.Action() == "quarantine.admin" && e.Outcome() == "success"
	})
	if ev.Str("moat.operation") != "release" || ev.Str("moat.quarantine_id") != id || ev.Str("moat.reply") != "250 2.0.0 Ok: queued as SINK1" {
		t.Errorf("release event %v", ev)
	}
	code, out, errOut = run("release", id)
	if code != 1 || !strings.Contains(errOut, "no such quarantine entry") {
		t.Errorf("second release: exit %d\n%s%s", code, out, errOut)
	}
	if n := len(sink.Accepted()); n != 1 {
		t.Errorf("the next hop accepted %d copies, want 1", n)
	}
	if es := quarantineList(t, m); len(es) != 0 {
		t.Errorf("released entry still listed: %v", es)
	}

	// delete through moat serve.
	gone, _ := quarantineSend(t, m, "deleted while serving")
	if code, out, errOut := run("delete", gone); code != 0 || out != gone+": deleted\n" {
		t.Errorf("delete: exit %d\n%s%s", code, out, errOut)
	}
	m.WaitEvent("delete event", func(e Event) bool {
		return e.Action() == "quarantine.admin" && e.Str("moat.operation") == "delete" && e.Str("moat.quarantine_id") == gone &&
			e.Outcome() == "success"
	})

	// Without moat serve: list, show and delete work on the directory;
	// release says moat serve must run.
	kept, _ := quarantineSend(t, m, "kept over a stop")
	m.Stop()
	if es := quarantineList(t, m); len(es) != 1 || es[0]["id"] != kept {
		t.Errorf("list without moat serve: %v", es)
	}
	if code, out, errOut := run("show", kept); code != 0 || !strings.Contains(out, "Subject: kept over a stop") {
		t.Errorf("show without moat serve: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = run("release", kept)
	if code != 1 || !strings.Contains(errOut, "moat serve must run") || !strings.Contains(errOut, "not running") {
		t.Errorf("release without moat serve: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := run("delete", kept); code != 0 || out != kept+": deleted\n" {
		t.Errorf("delete without moat serve: exit %d\n%s%s", code, out, errOut)
	}
	if es := quarantineList(t, m); len(es) != 0 {
		t.Errorf("after delete: %v", es)
	}
	if code, _, errOut := run("show", "../../etc/passwd"); code != 1 || !strings.Contains(errOut, "not a quarantine id") {
		t.Errorf("show of a path: exit %d\n%s", code, errOut)
	}
}
