package tests

import (
	"slices"
	"strings"
	"testing"
	"time"

	"moat/internal/smtptest"
)

// TestTransactionEventAccepted: one accepted transaction, one event with
// the fields SPEC.md requires, flat and dotted, and no body.
func TestTransactionEventAccepted(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	msg := NewMessage(sender, rcptBob, "event please")
	m.ForbidInLog(msg.Marker)
	carol := "carol@example.com"
	MustSend(t, m.Addr, Envelope{Helo: "mail.sender.example.net", From: sender, To: []string{rcptBob, carol}, Data: msg.Bytes()})
	tx := sink.WaitTransactions(1, waitTimeout)[0]
	ev := m.WaitTransactionEvent(1)

	str := map[string]string{
		"event.action":       "smtp.transaction",
		"event.outcome":      "success",
		"moat.action":        "accept",
		"moat.reply":         tx.Reply,
		"email.from.address": sender,
		"source.ip":          "127.0.0.1",
		"moat.upstream":      sink.Addr(),
		"moat.helo":          "mail.sender.example.net",
		"moat.listener":      "mx",
		"email.message_id":   "<" + msg.ID + "@client.example.net>",
	}
	for k, want := range str {
		if got := ev.Str(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := ev.Strings("email.to.address"); !slices.Equal(got, []string{rcptBob, carol}) {
		t.Errorf("email.to.address = %q, want [%s %s]", got, rcptBob, carol)
	}
	for _, k := range []string{"@timestamp", "log.level", "moat.session_id"} {
		if ev.Str(k) == "" {
			t.Errorf("%s missing or empty", k)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, ev.Str("@timestamp")); err != nil {
		t.Errorf("@timestamp: %v", err)
	}
	if n, ok := ev.Num("moat.size"); !ok || n < float64(len(msg.Bytes())) {
		t.Errorf("moat.size = %v, want at least the message's %d bytes", ev["moat.size"], len(msg.Bytes()))
	}
	for _, k := range []string{"event.duration", "source.port", "moat.transaction", "moat.score"} {
		if _, ok := ev.Num(k); !ok {
			t.Errorf("%s = %v, want a number", k, ev[k])
		}
	}
	if n, _ := ev.Num("moat.transaction"); n != 1 {
		t.Errorf("moat.transaction = %v, want 1", n)
	}
	if bad := m.Log().BadLines(); len(bad) != 0 {
		t.Errorf("stdout lines that are not one JSON object: %q", bad)
	}
	for _, l := range m.Log().Lines() {
		if strings.Contains(l, msg.Marker) {
			t.Errorf("an event holds the message body: %s", l)
		}
	}
}

// TestTransactionEventRefusedAtRCPT: a transaction refused at RCPT (relay
// denied) still writes its event, with outcome failure.
func TestTransactionEventRefusedAtRCPT(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	d := Dial(t, m.Addr)
	d.EHLO("client.example.net")
	d.Expect("MAIL FROM:<"+sender+">", "250")
	d.Expect("RCPT TO:<"+unrouted+">", "554 5.7.1 Relay access denied")
	d.Expect("QUIT", "221")
	ev := m.WaitTransactionEvent(1)
	if ev.Outcome() != "failure" || ev.Str("email.from.address") != sender || ev.Str("source.ip") != "127.0.0.1" {
		t.Errorf("event: %v", ev)
	}
	if r := ev.Str("moat.reply"); !strings.HasPrefix(r, "554 5.7.1") {
		t.Errorf("moat.reply = %q, want the 554 5.7.1 refusal", r)
	}
	if evs := m.TransactionEvents(); len(evs) != 1 {
		t.Errorf("%d transaction events, want 1: %v", len(evs), evs)
	}
}

// TestTransactionEventUpstreamDown: a tempfail because the upstream is
// down is a failure event naming the upstream and the 451 4.4.1 reply.
func TestTransactionEventUpstreamDown(t *testing.T) {
	t.Parallel()
	down := closedAddr(t)
	m := StartMoat(t, Config{Timeouts: faultTimeouts, Routes: defaultRoutes(down)})
	msg := NewMessage(sender, rcptBob, "nowhere to go")
	m.ForbidInLog(msg.Marker)
	Send(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: msg.Bytes()}).ExpectRefused(t, StageEOD, "451 4.4.1")
	ev := m.WaitTransactionEvent(1)
	if ev.Outcome() != "failure" || !strings.HasPrefix(ev.Str("moat.reply"), "451 4.4.1") || ev.Str("moat.upstream") != down {
		t.Errorf("event: %v", ev)
	}
}

// TestTransactionEventsPerSession: two transactions in one session are two
// events with one session id and transaction numbers 1 and 2.
func TestTransactionEventsPerSession(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	d := Dial(t, m.Addr)
	d.EHLO("client.example.net")
	for i := range 2 {
		msg := NewMessage(sender, rcptBob, "session")
		m.ForbidInLog(msg.Marker)
		d.Expect("MAIL FROM:<"+sender+">", "250")
		d.Expect("RCPT TO:<"+rcptBob+">", "250")
		d.Expect("DATA", "354")
		d.Send(string(dotStuff(msg.Bytes())) + ".\r\n")
		d.Read().Expect(t, "250")
		sink.WaitTransactions(i+1, waitTimeout)
	}
	d.Expect("QUIT", "221")
	evs := m.WaitTransactionEvents(2)
	if len(evs) != 2 {
		t.Fatalf("%d events, want 2", len(evs))
	}
	if evs[0].Str("moat.session_id") == "" || evs[0].Str("moat.session_id") != evs[1].Str("moat.session_id") {
		t.Errorf("session ids %q %q, want one non-empty id", evs[0].Str("moat.session_id"), evs[1].Str("moat.session_id"))
	}
	n1, _ := evs[0].Num("moat.transaction")
	n2, _ := evs[1].Num("moat.transaction")
	if n1 != 1 || n2 != 2 {
		t.Errorf("moat.transaction %v %v, want 1 2", n1, n2)
	}
}
