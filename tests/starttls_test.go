package tests

import (
	"strings"
	"testing"

	"moat/internal/smtptest"
)

// TestSTARTTLSInjection: commands pipelined after STARTTLS in the same
// write (CVE-2011-0411 class; Apache James starttls_with_injection.test)
// are discarded: after the handshake and a new EHLO there is no
// transaction, so RCPT gets 503 5.5.1.
func TestSTARTTLSInjection(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	cases := []struct{ name, injection string }{
		{"james starttls_with_injection.test", jamesInjection(t)},
		{"uppercase", "STARTTLS\r\nMAIL FROM:<x@y>\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.HasPrefix(strings.ToLower(tc.injection), "starttls\r\nmail from:") {
				t.Fatalf("unexpected injection line %q", tc.injection)
			}
			d := Dial(t, m.Addr)
			if _, ok := d.EHLO("client.example.net")["STARTTLS"]; !ok {
				t.Fatal("STARTTLS not advertised")
			}
			d.Send(tc.injection)
			d.Read().Expect(t, "220")
			st := d.StartTLS() // fails on any plaintext after the 220
			if st.Version == 0 {
				t.Fatal("no TLS")
			}
			if _, ok := d.EHLO("client.example.net")["STARTTLS"]; ok {
				t.Error("STARTTLS advertised again inside TLS")
			}
			d.Expect("RCPT TO:<"+rcptBob+">", "503 5.5.1")
			// The TLS session itself works.
			d.Expect("MAIL FROM:<"+sender+">", "250")
			d.Expect("RCPT TO:<"+rcptBob+">", "250")
			d.Expect("DATA", "354")
			d.Send(string(dotStuff(NewMessage(sender, rcptBob, "after STARTTLS").Bytes())) + ".\r\n")
			d.Read().Expect(t, "250")
			d.Expect("QUIT", "221")
		})
	}
	for _, tx := range sink.Transactions() {
		if tx.From == "x@y" || tx.From == "matthieu@yopmail.com" {
			t.Errorf("the injected MAIL reached the upstream: %s", tx)
		}
	}
}

// TestSTARTTLSInTransaction: STARTTLS after MAIL is a bad sequence (503
// 5.5.1); after RSET it works.
func TestSTARTTLSInTransaction(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	for _, tc := range []struct {
		name   string
		before []string
	}{
		{"after MAIL", []string{"MAIL FROM:<" + sender + ">"}},
		{"after RCPT", []string{"MAIL FROM:<" + sender + ">", "RCPT TO:<" + rcptBob + ">"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Dial(t, m.Addr)
			d.EHLO("client.example.net")
			for _, c := range tc.before {
				d.Expect(c, "250")
			}
			d.Expect("STARTTLS", "503 5.5.1")
			d.Expect("RSET", "250")
			d.Expect("STARTTLS", "220")
			d.StartTLS()
			d.EHLO("client.example.net")
			d.Expect("QUIT", "221")
		})
	}
}

// TestSTARTTLSDelivery: go-smtp's client over STARTTLS (moat's self-signed
// certificate), and the event records the TLS version.
func TestSTARTTLSDelivery(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	msg := NewMessage(sender, rcptBob, "over TLS")
	m.ForbidInLog(msg.Marker)
	r := MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: msg.Bytes(), StartTLS: true})
	if !r.TLS {
		t.Fatal("not sent over TLS")
	}
	sink.WaitTransactions(1, waitTimeout)
	ev := m.WaitTransactionEvent(1)
	if v := ev.Str("tls.version"); v != "1.3" && v != "1.2" {
		t.Errorf("tls.version %q, want 1.3 or 1.2: %v", v, ev)
	}
}

// TestSTARTTLSWordIsData replays the client side of Apache James's
// rcpt_with_starttls.test, data_with_starttls.test and
// data_starts_with_starttls.test, pipelined as James sends them: the word
// "starttls" inside an address or the message is data, never a command.
// Only reply codes are compared (the texts are James's own).
func TestSTARTTLSWordIsData(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	routes := defaultRoutes(sink.Addr())
	routes["mydomain.tld"] = Route{Upstream: sink.Addr()}
	m := StartMoat(t, Config{Routes: routes})
	scripts := []string{"rcpt_with_starttls.test", "data_with_starttls.test", "data_starts_with_starttls.test"}
	for _, f := range scripts {
		var client []string
		for _, l := range strings.Split(string(readTestdata(t, "smtp-session/james-mpt/"+f)), "\n") {
			if c, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), "C:"); ok {
				client = append(client, strings.TrimPrefix(c, " "))
			}
		}
		if len(client) < 6 || client[len(client)-1] != "." {
			t.Fatalf("%s: unexpected script %q", f, client)
		}
		d := Dial(t, m.Addr)
		// ehlo, mail, rcpt, data go in one write, then the message.
		d.Send(strings.Join(client[:4], "\r\n") + "\r\n")
		for _, want := range []string{"250", "250", "250", "354"} {
			d.Read().Expect(t, want)
		}
		d.Send(strings.Join(client[4:], "\r\n") + "\r\n")
		d.Read().Expect(t, "250")
		d.Expect("QUIT", "221")
	}
	txs := sink.WaitTransactions(len(scripts), waitTimeout)
	if !strings.Contains(txs[0].Rcpts[0], "starttls@") {
		t.Errorf("rcpt_with_starttls: recipient %v", txs[0].Rcpts)
	}
	for _, tx := range txs[1:] {
		if !strings.Contains(string(tx.Message), "starttls content") {
			t.Errorf("message lost its starttls line: %s", tx)
		}
	}
}
