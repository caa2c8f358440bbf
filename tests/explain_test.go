package tests

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"moat/internal/smtptest"
)

// TestExplain dry-runs transactions with the real binary, resolver and
// policy: every check's result and the reply show, JSON parses, and no
// greylist state is written.
func TestExplain(t *testing.T) {
	t.Parallel()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	zone := authZone(t, pub)
	sink := smtptest.NewSink(t)
	policy := strings.Replace(authPolicy, "  dmarc: { honor_policy: true }\n", "  dmarc: { honor_policy: true }\n  greylist: { delay: 1m }\n", 1)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), DNS: zone, Policy: policy})

	code, out, errOut := runMoat(t, m.Dir, "explain", "--config", m.ConfigPath, "--ip", "127.0.0.2", "--helo", "mail.sender.example",
		"--from", "a@spf-pass.test", "--to", rcptBob+",nobody@elsewhere.example")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"RCPT TO:<bob@example.com>", "policy    default (the default policy)", "dnsbl", "127.0.0.2 listed on bl.test",
		"spf", "pass", "reply     550 5.7.1 score 10 >= reject 10", "RCPT TO:<nobody@elsewhere.example>", "554 5.7.1 Relay access denied"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}

	msgPath := filepath.Join(m.Dir, "signed.eml")
	altered := strings.Replace(string(signMessage(t, key, NewMessage("a@signed.test", rcptBob, "explain").Bytes())), "body-marker-", "BODY-MARKER-", 1)
	if err := os.WriteFile(msgPath, []byte(altered), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runMoat(t, m.Dir, "explain", "--config", m.ConfigPath, "--ip", "127.0.0.9", "--from", "bounce@other.test",
		"--to", rcptBob, "--message", msgPath, "--json")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	var res struct {
		Recipients []struct{ Reply, Greylist string }
		Data       struct {
			Action, Reply string
			Checks        map[string]map[string]any
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if len(res.Recipients) != 1 || !strings.HasPrefix(res.Recipients[0].Reply, "250") || res.Recipients[0].Greylist == "" {
		t.Errorf("recipients %+v", res.Recipients)
	}
	if res.Data.Action != "reject" || !strings.Contains(res.Data.Reply, "DMARC policy of signed.test") ||
		res.Data.Checks["dkim"]["result"] != "fail" || res.Data.Checks["dmarc"]["result"] != "fail" {
		t.Errorf("end of data: %+v", res.Data)
	}
	// Nothing was recorded.
	code, out, _ = runMoat(t, m.Dir, "greylist", "list", "--config", m.ConfigPath)
	if code != 0 || !strings.Contains(out, "0 entries") {
		t.Errorf("explain wrote greylist state:\n%s", out)
	}
	if len(sink.Transactions()) != 0 {
		t.Error("explain delivered something")
	}
}
