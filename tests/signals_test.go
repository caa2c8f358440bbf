package tests

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"moat/internal/smtptest"
)

// TestSIGTERMExitsZero: SIGTERM stops moat with exit code 0 and the port
// closes.
func TestSIGTERMExitsZero(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: NewMessage(sender, rcptBob, "before TERM").Bytes()})
	m.Stop() // SIGTERM; fails the test unless the exit code is 0
	if !m.Exited() {
		t.Fatal("moat still running after Stop")
	}
	if c, err := net.DialTimeout("tcp", m.Addr, time.Second); err == nil {
		c.Close()
		t.Error("the SMTP port still accepts after exit")
	}
}

// TestSIGTERMFinishesInFlight: a transaction in the middle of DATA when
// SIGTERM arrives is finished and delivered; new connections are refused;
// then moat exits 0.
func TestSIGTERMFinishesInFlight(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{ShutdownTimeout: "20s", Routes: defaultRoutes(sink.Addr())})
	msg := NewMessage(sender, rcptBob, "in flight")
	wire := string(dotStuff(msg.Bytes()))
	d := Dial(t, m.Addr)
	d.EHLO("client.example.net")
	d.Expect("MAIL FROM:<"+sender+">", "250")
	d.Expect("RCPT TO:<"+rcptBob+">", "250")
	d.Expect("DATA", "354")
	d.Send(wire[:len(wire)/2])

	m.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(waitTimeout)
	for {
		c, err := net.DialTimeout("tcp", m.Addr, time.Second)
		if err != nil {
			break // the listener is closed
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("moat still accepts connections %v after SIGTERM", waitTimeout)
		}
		time.Sleep(25 * time.Millisecond) // polling a port: nothing to wait on
	}
	if m.Exited() {
		t.Fatal("moat exited with a transaction in flight")
	}
	d.Send(wire[len(wire)/2:] + ".\r\n")
	eod := d.Read()
	tx := sink.WaitTransactions(1, waitTimeout)[0]
	if eod.String() != tx.Reply {
		t.Errorf("end-of-data reply %q, want the upstream's %q", eod.String(), tx.Reply)
	}
	d.Send("QUIT\r\n")
	d.TryRead() // 221, or 421 as moat closes, or EOF: all fine
	if code := m.WaitExit(stopTimeout); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestSIGHUPBrokenConfig: a reload with a broken file keeps the running
// config (mail still flows) and writes a config.reload failure event.
func TestSIGHUPBrokenConfig(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	cfg := Config{Routes: defaultRoutes(sink.Addr())}
	m := StartMoat(t, cfg)
	good := readFileOr(m.ConfigPath)
	if !strings.Contains(good, "shutdown_timeout: 10s") {
		t.Fatalf("generated config lacks shutdown_timeout: 10s:\n%s", good)
	}
	cases := []struct{ name, text string }{
		{"unknown key", good + "bogus_key: 1\n"},
		{"YAML syntax error", good + "smtp: [unclosed\n"},
		{"bad value", strings.Replace(good, "shutdown_timeout: 10s", "shutdown_timeout: soon", 1)},
	}
	for i, tc := range cases {
		m.WriteConfigText(tc.text)
		m.Signal(syscall.SIGHUP)
		n := 0
		m.WaitEvent("config.reload failure #"+tc.name, func(e Event) bool {
			if e.Action() == "config.reload" && e.Outcome() == "failure" {
				n++
			}
			return n == i+1
		})
		if m.Exited() {
			t.Fatalf("%s: moat exited after SIGHUP", tc.name)
		}
		MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: NewMessage(sender, rcptBob, tc.name).Bytes()})
		sink.WaitTransactions(i+1, waitTimeout)
	}
}

// TestSIGHUPReload: a good reload takes effect for new transactions
// without dropping a session that was open across it.
func TestSIGHUPReload(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	cfg := Config{Routes: defaultRoutes(sink.Addr())}
	m := StartMoat(t, cfg)

	open := Dial(t, m.Addr)
	open.EHLO("client.example.net")
	open.Expect("MAIL FROM:<"+sender+">", "250")
	open.Expect("RCPT TO:<user@new.test>", "554 5.7.1 Relay access denied")

	cfg.Routes["new.test"] = Route{Upstream: sink.Addr()}
	m.RewriteConfig(cfg)
	m.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(waitTimeout)
	for {
		d := Dial(t, m.Addr)
		d.EHLO("client.example.net")
		d.Expect("MAIL FROM:<"+sender+">", "250")
		r := d.Cmd("RCPT TO:<user@new.test>")
		d.Close()
		if r.Is("250") {
			break
		}
		r.Expect(t, "554 5.7.1 Relay access denied")
		if time.Now().After(deadline) {
			t.Fatalf("new.test still not routed %v after SIGHUP", waitTimeout)
		}
		time.Sleep(50 * time.Millisecond) // the reload has no event to wait on in the contract
	}
	MustSend(t, m.Addr, Envelope{From: sender, To: []string{"user@new.test"}, Data: NewMessage(sender, "user@new.test", "after reload").Bytes()})

	// The session opened before the reload is still served.
	open.Expect("RCPT TO:<"+rcptBob+">", "250")
	open.Expect("DATA", "354")
	open.Send(string(dotStuff(NewMessage(sender, rcptBob, "across reload").Bytes())) + ".\r\n")
	open.Read().Expect(t, "250")
	open.Expect("QUIT", "221")
	sink.WaitTransactions(2, waitTimeout)
}
