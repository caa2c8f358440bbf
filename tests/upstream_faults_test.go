package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"moat/internal/smtptest"
)

// faultTimeouts keep the upstream stalls short.
var faultTimeouts = map[string]string{
	"upstream_connect": "2s",
	"upstream_command": "2s",
	"upstream_data":    "3s",
}

// TestUpstreamFaults: whatever goes wrong with the upstream, the client
// hears 451 4.4.1 at the end of data (it will retry) and nothing is
// delivered anywhere. One moat carries one route per fault.
func TestUpstreamFaults(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		opts []smtptest.Option // nil with down: no sink at all
		down bool
	}{
		{name: "down (closed port)", down: true},
		// A 554 greeting is the upstream refusing the connection, not this
		// message: a gateway tempfails so that the sender retries.
		{name: "refuses at greeting", opts: []smtptest.Option{smtptest.RefuseAtGreeting()}},
		{name: "stalls before greeting", opts: []smtptest.Option{smtptest.WithStall(smtptest.StageGreeting)}},
		{name: "stalls at EHLO", opts: []smtptest.Option{smtptest.WithStall("EHLO")}},
		{name: "stalls at MAIL", opts: []smtptest.Option{smtptest.WithStall("MAIL")}},
		{name: "stalls at RCPT", opts: []smtptest.Option{smtptest.WithStall("RCPT")}},
		{name: "stalls at DATA", opts: []smtptest.Option{smtptest.WithStall("DATA")}},
		{name: "stalls after the final dot", opts: []smtptest.Option{smtptest.WithStall(smtptest.StageEndOfData)}},
		{name: "hangs up at MAIL", opts: []smtptest.Option{smtptest.WithHangupAt("MAIL")}},
		{name: "drops mid-DATA", opts: []smtptest.Option{smtptest.WithDropInData(100)}},
	}
	routes := map[string]Route{}
	sinks := make([]*smtptest.Sink, len(cases))
	domain := func(i int) string { return "fault" + string(rune('a'+i)) + ".example" }
	for i, tc := range cases {
		up := closedAddr(t)
		if !tc.down {
			sinks[i] = smtptest.NewSink(t, tc.opts...)
			up = sinks[i].Addr()
		}
		routes[domain(i)] = Route{Upstream: up}
	}
	m := StartMoat(t, Config{Timeouts: faultTimeouts, Routes: routes})
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rcpt := "user@" + domain(i)
			msg := NewMessage(sender, rcpt, tc.name)
			for len(msg.BodyLines) < 20 {
				msg.BodyLines = append(msg.BodyLines, strings.Repeat("b", 60))
			}
			m.ForbidInLog(msg.Marker)
			r := Send(t, m.Addr, Envelope{From: sender, To: []string{rcpt}, Data: msg.Bytes()})
			r.ExpectRefused(t, StageEOD, "451 4.4.1")
			if s := sinks[i]; s != nil {
				if acc := s.Accepted(); len(acc) != 0 {
					t.Errorf("the upstream accepted %v", acc)
				}
			}
		})
	}
	t.Cleanup(func() { assertNothingStored(t, m) })
}

// TestVerifyRecipientsUpstreamDown: with verify_recipients, an unreachable
// upstream tempfails the recipient at RCPT.
func TestVerifyRecipientsUpstreamDown(t *testing.T) {
	t.Parallel()
	m := StartMoat(t, Config{Timeouts: faultTimeouts, Routes: defaultRoutes(closedAddr(t))})
	d := Dial(t, m.Addr)
	d.EHLO("client.example.net")
	d.Expect("MAIL FROM:<"+sender+">", "250")
	d.Expect("RCPT TO:<user@verify.test>", "451 4.4.1")
	d.Expect("QUIT", "221")
}

// TestUpstreamRecovers: after a failed attempt the pool does not keep a
// broken connection: once the upstream behaves, mail flows again.
func TestUpstreamRecovers(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t, smtptest.WithDropInData(10))
	m := StartMoat(t, Config{Timeouts: faultTimeouts, Routes: defaultRoutes(sink.Addr())})
	msg := NewMessage(sender, rcptBob, "first try")
	Send(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: msg.Bytes()}).ExpectRefused(t, StageEOD, "451 4.4.1")
	sink.Set(smtptest.WithoutFaults())
	MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: msg.Bytes()})
	if n := len(sink.WaitTransactions(1, waitTimeout)); n != 1 {
		t.Errorf("upstream transactions %d, want 1", n)
	}
}

// assertNothingStored fails if the built-in store holds any message.
func assertNothingStored(t testing.TB, m *Moat) {
	t.Helper()
	filepath.WalkDir(filepath.Join(m.DataDir, "mail"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			t.Errorf("the built-in store holds %s", p)
		}
		return nil
	})
}
