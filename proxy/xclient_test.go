package proxy

import (
	"os/exec"
	"strings"
	"testing"

	"moat/internal/smtptest"
)

const xclientConfig = "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_networks: [192.0.2.0/24]\n  trusted_proxies: [127.0.0.1/32]\nroutes:\n  local.test: { upstream: local }\n"

func TestXclient(t *testing.T) {
	ts, logs := startObserved(t, xclientConfig, "")
	c := dial(t, ts.addr)
	if r := c.cmd("EHLO proxy.example", "250"); !strings.Contains(r, "\n250-"+xclientCapability+"\n") && !strings.HasSuffix(r, "250 "+xclientCapability) {
		t.Errorf("EHLO does not offer XCLIENT: %q", r)
	}
	c.cmd("XCLIENT FOO=bar", "501 5.5.4")
	c.cmd("XCLIENT ADDR=[UNAVAILABLE]", "501 5.5.4")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("XCLIENT ADDR=192.0.2.9", "503 5.5.1 Mail transaction in progress")
	c.cmd("RSET", "250")
	c.cmd("XCLIENT ADDR=IPV6:2001:db8::9 PORT=4000 NAME=mail.example.net HELO=client+2Eexample LOGIN=[UNAVAILABLE]", "220 mx.test ESMTP moat")
	c.cmd("XCLIENT ADDR=192.0.2.9 NAME=mail.example.net HELO=h.example PROTO=ESMTP", "220 mx.test ESMTP moat")
	// Trusted now (192.0.2.0/24): the built-in store takes mail unfiltered.
	c.cmd("EHLO client.example", "250")
	c.cmd("MAIL FROM:<a@example.net>", "250")
	c.cmd("RCPT TO:<b@local.test>", "250")
	c.cmd("QUIT", "221")
	ev := connEvents(t, logs, 1)[0]
	if ev["source.ip"] != "192.0.2.9" || ev["source.domain"] != "mail.example.net" || ev["moat.proxy_ip"] != "127.0.0.1" || ev["moat.helo"] != "client.example" {
		t.Errorf("event %v", ev)
	}
	x := logs.FilterMessage("smtp.xclient").All()
	if len(x) != 2 || x[0].ContextMap()["source.ip"] != "2001:db8::9" || x[0].ContextMap()["moat.helo"] != "client.example" {
		t.Errorf("xclient events %v", x)
	}
}

func TestXclientUnauthorized(t *testing.T) {
	ts := startServer(t, "smtp:\n  listeners: [{addr: \"127.0.0.1:1\"}]\n  trusted_proxies: [192.0.2.1/32]\n", "")
	c := dial(t, ts.addr)
	if r := c.cmd("EHLO client.example", "250"); strings.Contains(r, "XCLIENT") {
		t.Errorf("EHLO offers XCLIENT to an untrusted client: %q", r)
	}
	c.cmd("XCLIENT ADDR=192.0.2.9", "550 5.7.0 Insufficient authorization")
}

func TestParseXclient(t *testing.T) {
	for _, tt := range []struct {
		in, err string
	}{
		{"ADDR=192.0.2.1", ""}, {"addr=IPV6:2001:db8::1 port=25", ""}, {"NAME=[TEMPUNAVAIL] HELO=[UNAVAILABLE]", ""},
		{"LOGIN=user+40example.com PROTO=smtp DESTADDR=1.2.3.4 DESTPORT=25 REVERSE_NAME=x", ""},
		{"", "no attributes"}, {"ADDR", "bad attribute"}, {"ADDR=300.1.1.1", "bad ADDR"}, {"ADDR=fe80::1%eth0", "bad ADDR"},
		{"PORT=70000", "bad PORT"}, {"NAME=a..b", "bad NAME"}, {"HELO=a+20b", "bad HELO"}, {"PROTO=LMTP", "bad PROTO"},
		{"LOGIN=a+0Ab", "bad LOGIN"}, {"HELO=a+2", "truncated"}, {"HELO=a+ZZ", "bad xtext"}, {"X=1", "bad attribute name"},
	} {
		_, err := parseXclient(tt.in)
		if (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("parseXclient(%q): %v, want %q", tt.in, err, tt.err)
		}
	}
}

// FuzzXclient: the XCLIENT attribute parser never panics, and what it
// takes is clean (no line breaks or spaces in HELO, a valid address).
func FuzzXclient(f *testing.F) {
	for _, s := range []string{"ADDR=192.0.2.1 NAME=a.example HELO=h+2Ex", "ADDR=IPV6:2001:db8::1 PORT=1", "LOGIN=+", "PROTO=esmtp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		x, err := parseXclient(in)
		if err != nil {
			return
		}
		if x.helo != nil && strings.ContainsAny(*x.helo, " \r\n") {
			t.Errorf("HELO %q", *x.helo)
		}
		if x.addr != nil && !x.addr.IsValid() {
			t.Error("invalid ADDR taken")
		}
	})
}

// TestXclientSwaks: swaks's --xclient-addr against moat.
func TestXclientSwaks(t *testing.T) {
	swaks := smtptest.RequireTool(t, "swaks")
	ts, logs := startObserved(t, xclientConfig, "")
	out, err := exec.Command(swaks, "--server", ts.addr, "--from", "a@example.net", "--to", "b@local.test",
		"--helo", "proxy.example", "--xclient-addr", "192.0.2.77", "--xclient-name", "mail.example.net").CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "<-  220 mx.test ESMTP moat") {
		t.Errorf("no greeting after XCLIENT:\n%s", out)
	}
	ev := connEvents(t, logs, 1)[0]
	if ev["source.ip"] != "192.0.2.77" || ev["moat.accepted"] != int64(1) {
		t.Errorf("event %v", ev)
	}
}
