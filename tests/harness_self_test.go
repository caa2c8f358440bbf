package tests

// Tests of the harness itself; none of them needs the moat binary.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestHarnessFakeDNS(t *testing.T) {
	addr := startFakeDNS(t)
	for _, network := range []string{"udp", "tcp"} {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := r.LookupTXT(ctx, "sender.example.net")
		cancel()
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound {
			t.Errorf("%s: lookup: %v, want not found", network, err)
		}
	}
}

func TestHarnessConfigDocument(t *testing.T) {
	c := Config{
		MaxMessageSize: 1024, MaxRecipients: 3, BareNewline: "normalize",
		Timeouts: map[string]string{"upstream_command": "2s"},
		Routes:   defaultRoutes("127.0.0.1:2"),
		Extra:    map[string]any{"smtp": map[string]any{"limits": map[string]any{"errors_per_session": 5}}},
	}
	doc, err := c.document("/tmp/x", ports{smtp: "127.0.0.1:1", admin: "127.0.0.1:3", dns: "127.0.0.1:4"})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := yaml.Unmarshal(doc, &got); err != nil {
		t.Fatal(err)
	}
	smtp := got["smtp"].(map[string]any)
	checks := map[string]any{
		"hostname":                       got["hostname"],
		"data_dir":                       got["data_dir"],
		"smtp.max_message_size":          smtp["max_message_size"],
		"smtp.max_recipients":            smtp["max_recipients"],
		"smtp.bare_newline":              smtp["bare_newline"],
		"smtp.timeouts.upstream_command": smtp["timeouts"].(map[string]any)["upstream_command"],
		"smtp.timeouts.command":          smtp["timeouts"].(map[string]any)["command"],
		"smtp.limits.errors_per_session": smtp["limits"].(map[string]any)["errors_per_session"],
		"smtp.trusted_networks":          fmt.Sprint(smtp["trusted_networks"]),
		"smtp.listeners":                 fmt.Sprint(smtp["listeners"]),
		"routes.verify.test":             fmt.Sprint(got["routes"].(map[string]any)["verify.test"]),
		"routes.local.test":              fmt.Sprint(got["routes"].(map[string]any)["local.test"]),
		"log":                            fmt.Sprint(got["log"]),
		"dns":                            fmt.Sprint(got["dns"]),
		"admin":                          fmt.Sprint(got["admin"]),
	}
	want := map[string]any{
		"hostname":                       "mx.test",
		"data_dir":                       "/tmp/x/data",
		"smtp.max_message_size":          1024,
		"smtp.max_recipients":            3,
		"smtp.bare_newline":              "normalize",
		"smtp.timeouts.upstream_command": "2s",
		"smtp.timeouts.command":          "60s",
		"smtp.limits.errors_per_session": 5,
		"smtp.trusted_networks":          "[192.0.2.0/24]",
		"smtp.listeners":                 "[map[addr:127.0.0.1:1 mode:mx]]",
		"routes.verify.test":             "map[upstream:127.0.0.1:2 verify_recipients:true]",
		"routes.local.test":              "map[upstream:local]",
		"log":                            "map[format:json output:stdout]",
		"dns":                            "map[servers:[127.0.0.1:4] timeout:2s]",
		"admin":                          "map[addr:127.0.0.1:3]",
	}
	for k, w := range want {
		if checks[k] != w {
			t.Errorf("%s = %v, want %v", k, checks[k], w)
		}
	}
}

func TestHarnessEventLog(t *testing.T) {
	l := newEventLog()
	done := make(chan bool)
	go func() {
		done <- l.await(5*time.Second, func(evs []Event) bool {
			return len(filterEvents(evs, func(e Event) bool { return e.Action() == "smtp.transaction" })) == 2
		})
	}()
	fmt.Fprint(l, `{"event.action":"smtp.transaction","event.outcome":"success","email.to.address":["a@b","c@d"],"moat.size":12}`+"\n{\"event.act")
	fmt.Fprint(l, "ion\":\"config.reload\"}\nnot json\n{} {}\n")
	fmt.Fprint(l, `{"event.action":"smtp.transaction","event.outcome":"failure"}`+"\n")
	if !<-done {
		t.Fatal("await did not see two transactions")
	}
	evs := l.Events()
	if len(evs) != 3 || evs[1].Action() != "config.reload" {
		t.Fatalf("events: %v", evs)
	}
	if got := evs[0].Strings("email.to.address"); strings.Join(got, ",") != "a@b,c@d" {
		t.Errorf("Strings: %v", got)
	}
	if n, ok := evs[0].Num("moat.size"); !ok || n != 12 {
		t.Errorf("Num: %v %v", n, ok)
	}
	if bad := l.BadLines(); strings.Join(bad, "|") != "not json|{} {}" {
		t.Errorf("bad lines: %q", bad)
	}
	if l.await(10*time.Millisecond, func(evs []Event) bool { return len(evs) > 3 }) {
		t.Error("await returned true for a condition that cannot hold")
	}
}

func TestHarnessReplies(t *testing.T) {
	r := Reply{Lines: []string{"250-2.0.0 first line", "250-2.0.0 second", "250 2.0.0 Ok: queued as ABC123"}}
	if r.Code() != 250 || r.Enhanced() != "2.0.0" || r.Text() != "first line\nsecond\nOk: queued as ABC123" {
		t.Errorf("multi-line: %d %q %q", r.Code(), r.Enhanced(), r.Text())
	}
	for _, tc := range []struct {
		line, want string
		is         bool
	}{
		{"554 5.7.1 Relay access denied", "554 5.7.1 Relay access denied", true},
		{"554 5.7.1 Relay access denied", "554 5.7.1", true},
		{"554 5.7.1 Relay access denied", "554", true},
		{"554 5.7.1 <x@y>: Relay access denied", "554 5.7.1 Relay access denied", false},
		{"554 5.7.2 Relay access denied", "554 5.7.1", false},
		{"250 mx.test", "250", true},
		{"250 mx.test", "250 2.0.0", false},
		{"220 mx.test ESMTP", "220", true},
		{"503 5.5.1", "503 5.5.1", true},
	} {
		if got := (Reply{Lines: []string{tc.line}}).Is(tc.want); got != tc.is {
			t.Errorf("%q.Is(%q) = %v", tc.line, tc.want, got)
		}
	}
}

func TestHarnessStripTrace(t *testing.T) {
	orig := "Received: from old by relay; now\r\nFrom: a\r\n\r\nbody\r\n"
	for _, added := range []string{
		"Received: from client.example.net (client.example.net [127.0.0.1])\r\n\tby mx.test with ESMTP id 1;\r\n\tThu, 26 Nov 2026 04:26:37 +0000\r\n",
		"Received: from c by mx.test; now\r\nAuthentication-Results: mx.test; spf=none\r\n",
	} {
		rcv, rest := stripTrace(t, []byte(added+orig))
		if string(rest) != orig || !strings.HasPrefix(added, rcv) {
			t.Errorf("stripTrace: received %q rest %q", rcv, rest)
		}
	}
}

func TestHarnessWire(t *testing.T) {
	if got := string(dotStuff([]byte(".a\r\nb\r\n.\r\n\n.c"))); got != "..a\r\nb\r\n..\r\n\n.c" {
		t.Errorf("dotStuff: %q", got)
	}
	if got := string(normalizeBare([]byte("a\rb\nc\r\nd\x00\r\r\n"))); got != "a\r\nb\r\nc\r\nd\r\n\r\n" {
		t.Errorf("normalizeBare: %q", got)
	}
	for in, want := range map[string]bool{"a\r\n": false, "a\n": true, "a\r": true, "a\x00": true, "\r\n\r\n": false} {
		if hasBareOrNUL([]byte(in)) != want {
			t.Errorf("hasBareOrNUL(%q) != %v", in, want)
		}
	}
	data, end, ok := rfcData([]byte("x\r\n..\r\ny\r\n.\r\nQUIT\r\n"))
	if !ok || string(data) != "x\r\n..\r\ny\r\n" || end != 13 || string(rfcUnstuff(data)) != "x\r\n.\r\ny\r\n" {
		t.Errorf("rfcData: %q %d %v", data, end, ok)
	}
}

// TestHarnessTestdataCopies: the copies in tests/testdata are the shared
// files, byte for byte (when the shared collection is present).
func TestHarnessTestdataCopies(t *testing.T) {
	shared := filepath.Join(repoRoot, "..", "shared", "testdata")
	if _, err := os.Stat(shared); err != nil {
		t.Skipf("no shared test data at %s: the copies are all there is", shared)
	}
	for _, rel := range []string{
		"smtp-smuggling/end-of-data-variants.yaml",
		"smtp-smuggling/PROVENANCE.md",
		"smtp-session/PROVENANCE.md",
		"smtp-session/james-mpt/starttls_with_injection.test",
	} {
		a, err1 := os.ReadFile(filepath.Join(shared, rel))
		b, err2 := os.ReadFile(filepath.Join("testdata", rel))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: the copy differs from the shared file (%v, %v)", rel, err1, err2)
		}
	}
	if got := jamesInjection(t); got != "starttls\r\nmail from:<matthieu@yopmail.com>\r\n" {
		t.Errorf("james injection line %q", got)
	}
}
