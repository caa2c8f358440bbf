package proxy

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"moat/internal/dnstest"
	"moat/internal/smtptest"
	"moat/resolver"
	"moat/store/quarantine"
)

// faultPolicies: SPF's temperror adds nothing by default and tempfails
// mail to strict.test (a dead DNS server is then a 451 4.7.1 at RCPT: the
// policy decides); everything to hold.test is quarantined.
const faultPolicies = `policy: default
checks:
  spf: { fail: reject, temperror: 0 }
---
policy: strict
applies_to: { recipient_domains: [strict.test] }
checks:
  spf: { fail: reject, temperror: tempfail }
---
policy: hold
applies_to: { recipient_domains: [hold.test] }
checks:
  size: { max: 10, action: quarantine }
`

// deadDNS is a UDP socket that reads every query and answers none.
func deadDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String()
}

// TestFaultsLeakNoGoroutines runs an in-process server against each
// failing dependency (an upstream that refuses the connection, drops it
// mid-DATA, never greets or hangs past upstream_data; a DNS server that
// never answers; a data_dir whose store and quarantine cannot be written),
// checks the client's 4xx, that a normal message still goes through
// afterwards, and after Shutdown that no goroutine is left behind.
func TestFaultsLeakNoGoroutines(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct {
		name     string
		upstream []smtptest.Option // nil: the fault is elsewhere, the route is healthy
		refused  bool              // the fault route's upstream is a closed port
		dns      bool              // the only DNS server never answers
		rcpt     string
		data     bool   // the fault shows at the end of data (else at RCPT)
		want     string // the reply that shows the fault
		setup    func(t *testing.T, ts *testServer, q *quarantine.Store)
	}{
		{name: "upstream refuses the connection", refused: true, rcpt: "u@fault.test", data: true, want: "451 4.4.1 "},
		{name: "upstream drops mid-DATA", upstream: []smtptest.Option{smtptest.WithDropInData(10)}, rcpt: "u@fault.test", data: true, want: "451 4.4.1 "},
		{name: "upstream never greets", upstream: []smtptest.Option{smtptest.WithStall(smtptest.StageGreeting)}, rcpt: "u@fault.test", data: true, want: "451 4.4.1 "},
		{name: "upstream hangs past upstream_data", upstream: []smtptest.Option{smtptest.WithStall(smtptest.StageEndOfData)}, rcpt: "u@fault.test", data: true, want: "451 4.4.1 "},
		{name: "DNS server never answers", dns: true, rcpt: "u@strict.test", want: "451 4.7.1 "},
		{name: "store cannot be written", rcpt: "u@local.test", data: true, want: "452 4.3.1 ",
			setup: func(t *testing.T, ts *testServer, _ *quarantine.Store) {
				// A file where the store's folder would be: every
				// delivery fails (root ignores permissions, not this).
				if err := os.WriteFile(filepath.Join(ts.dir, "mail"), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "quarantine cannot be written", rcpt: "u@hold.test", data: true, want: "452 4.3.1 ",
			setup: func(t *testing.T, ts *testServer, q *quarantine.Store) {
				tmp := filepath.Join(q.Dir(), "tmp")
				if err := os.RemoveAll(tmp); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(tmp, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Registered first, so it runs last: after the server's
			// Shutdown, the sinks' Close and the DNS socket's Close. Every
			// goroutine that existed before this test is ignored.
			ignore := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

			healthy := smtptest.NewSink(t)
			faultAddr := healthy.Addr()
			var faulty *smtptest.Sink
			switch {
			case tc.refused:
				faultAddr = refused
			case tc.upstream != nil:
				faulty = smtptest.NewSink(t, tc.upstream...)
				faultAddr = faulty.Addr()
			}
			var dnsAddr string
			if tc.dns {
				dnsAddr = deadDNS(t)
			} else {
				dnsAddr = dnstest.New(t).Addr // NXDOMAIN for everything
			}
			cfg := "routes:\n" +
				"  example.com: { upstream: \"" + healthy.Addr() + "\" }\n" +
				"  hold.test: { upstream: \"" + healthy.Addr() + "\" }\n" +
				"  strict.test: { upstream: \"" + healthy.Addr() + "\" }\n" +
				"  fault.test: { upstream: \"" + faultAddr + "\" }\n" +
				"  local.test: { upstream: local }\n" +
				"smtp:\n  listeners: [ { addr: \"127.0.0.1:1\" } ]\n  trusted_networks: [192.0.2.0/24]\n" +
				"  timeouts: { upstream_connect: 1s, upstream_command: 1s, upstream_data: 1s }\n"
			ts := startServer(t, cfg, faultPolicies)
			res, err := resolver.New(resolver.Config{Servers: []string{dnsAddr}, Timeout: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			q, err := quarantine.Open(filepath.Join(ts.dir, "quarantine"), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { q.Close() })
			rt := *ts.srv.Runtime()
			rt.DNS, rt.Quarantine = res, q
			ts.srv.Reload(&rt)
			if tc.setup != nil {
				tc.setup(t, ts, q)
			}

			start := time.Now()
			c := dial(t, ts.addr)
			c.cmd("EHLO client.example.net", "250")
			c.cmd("MAIL FROM:<a@sender.test>", "250")
			if !tc.data {
				c.cmd("RCPT TO:<"+tc.rcpt+">", tc.want)
			} else {
				c.cmd("RCPT TO:<"+tc.rcpt+">", "250")
				c.cmd("DATA", "354")
				c.send(stuffed + ".\r\n")
				if r := c.reply(); !strings.HasPrefix(r, tc.want) {
					t.Errorf("got %q, want %q", r, tc.want)
				}
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("the fault cost the client %v", d)
			}
			c.cmd("QUIT", "221")
			if faulty != nil {
				if n := len(faulty.Accepted()); n != 0 {
					t.Errorf("the failing upstream accepted %d", n)
				}
			}

			// Still serving: a normal message, not touching the fault
			// (with the dead DNS still dead: the default policy lets
			// SPF's temperror pass).
			before := len(healthy.Accepted())
			c = dial(t, ts.addr)
			c.cmd("EHLO client.example.net", "250")
			c.cmd("MAIL FROM:<a@sender.test>", "250")
			c.cmd("RCPT TO:<b@example.com>", "250")
			c.cmd("DATA", "354")
			c.send(stuffed + ".\r\n")
			c.expect("250 ")
			c.cmd("QUIT", "221")
			healthy.WaitTransactions(before+1, 5*time.Second)
		})
	}
}
