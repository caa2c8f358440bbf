package tests

import (
	"strings"
	"testing"

	"moat/internal/smtptest"
)

// TestRelayDenied: a client from outside trusted_networks may only send to
// routed domains; anything else is 554 5.7.1 Relay access denied at RCPT
// and nothing reaches the upstream.
func TestRelayDenied(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	const denied = "554 5.7.1 Relay access denied"
	cases := []struct {
		name, rcpt, want string
	}{
		{"unrouted domain", unrouted, denied},
		{"routed domain as a prefix", "user@example.com.evil.test", denied},
		{"routed domain as a suffix", "user@evilexample.com", denied},
		{"localhost is not routed by this config", "postmaster@localhost", denied},
		{"address literal", "user@[127.0.0.1]", denied},
		{"routed domain, other case", "user@EXAMPLE.COM", "250"},
		{"routed domain", rcptBob, "250"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Dial(t, m.Addr)
			d.EHLO("client.example.net")
			d.Expect("MAIL FROM:<"+sender+">", "250")
			d.Expect("RCPT TO:<"+tc.rcpt+">", tc.want)
			d.Expect("RSET", "250")
			d.Expect("QUIT", "221")
		})
	}
	if n := len(sink.Transactions()); n != 0 {
		t.Errorf("the upstream got %d transactions, want 0", n)
	}
}

// TestRelayMixedRecipients: a refused recipient does not stop the message
// for the routed ones, and only they reach the upstream.
func TestRelayMixedRecipients(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	msg := NewMessage(sender, rcptBob, "mixed")
	r := MustSend(t, m.Addr, Envelope{From: sender, To: []string{unrouted, rcptBob}, Data: msg.Bytes()})
	se := r.RcptErrs[unrouted]
	if se == nil || len(r.RcptErrs) != 1 {
		t.Fatalf("refused recipients %v, want only %s", r.RcptErrs, unrouted)
	}
	checkSMTPError(t, se, "554 5.7.1 Relay access denied")
	tx := sink.WaitTransactions(1, waitTimeout)[0]
	if strings.Join(tx.Rcpts, ",") != rcptBob {
		t.Errorf("upstream recipients %v, want [%s]", tx.Rcpts, rcptBob)
	}
}

// TestVerifyRecipients: on a verify_recipients route the upstream's own
// RCPT refusal reaches the client at RCPT, verbatim; accepted recipients
// still get the message.
func TestVerifyRecipients(t *testing.T) {
	t.Parallel()
	const nobody = "nobody@verify.test"
	const unknown = "550 5.1.1 <nobody@verify.test>: Recipient address rejected: User unknown"
	sink := smtptest.NewSink(t, smtptest.WithRcptReply(nobody, unknown))
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})

	// Raw: the exact reply line.
	d := Dial(t, m.Addr)
	d.EHLO("client.example.net")
	d.Expect("MAIL FROM:<"+sender+">", "250")
	if r := d.Cmd("RCPT TO:<" + nobody + ">"); r.String() != unknown {
		t.Errorf("RCPT %s: reply %q, want the upstream's %q", nobody, r.String(), unknown)
	}
	d.Expect("RCPT TO:<carol@verify.test>", "250")
	d.Expect("QUIT", "221")

	// go-smtp: the refusal at RCPT, delivery to the other recipient.
	msg := NewMessage(sender, "carol@verify.test", "verified")
	r := MustSend(t, m.Addr, Envelope{From: sender, To: []string{nobody, "carol@verify.test"}, Data: msg.Bytes()})
	se := r.RcptErrs[nobody]
	if se == nil {
		t.Fatalf("%s was not refused at RCPT: %v", nobody, r)
	}
	checkSMTPError(t, se, unknown)
	var delivered []smtptest.Transaction
	for _, tx := range sink.WaitTransactions(1, waitTimeout) {
		if tx.Accepted() {
			delivered = append(delivered, tx)
		}
	}
	if len(delivered) != 1 || strings.Join(delivered[0].Rcpts, ",") != "carol@verify.test" {
		t.Errorf("delivered: %v, want one message to carol@verify.test", delivered)
	}
}
