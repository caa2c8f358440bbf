package tests

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"moat/internal/smtptest"
)

const maxSize = 64 << 10

// TestDeclaredSizeTooBig: MAIL FROM with SIZE= above max_message_size is
// refused with 552 5.3.4 at MAIL; exactly the maximum is fine.
func TestDeclaredSizeTooBig(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{MaxMessageSize: maxSize, Routes: defaultRoutes(sink.Addr())})
	d := Dial(t, m.Addr)
	if ext := d.EHLO("client.example.net"); ext["SIZE"] != strconv.Itoa(maxSize) {
		t.Errorf("SIZE %q, want %d", ext["SIZE"], maxSize)
	}
	for _, tc := range []struct {
		size int
		want string
	}{
		{maxSize + 1, "552 5.3.4"},
		{10 * maxSize, "552 5.3.4"},
		{maxSize, "250"},
	} {
		d.Expect(fmt.Sprintf("MAIL FROM:<%s> SIZE=%d", sender, tc.size), tc.want)
		d.Expect("RSET", "250")
	}
	d.Expect("QUIT", "221")
	if n := len(sink.Transactions()); n != 0 {
		t.Errorf("the upstream got %d transactions", n)
	}
}

// TestBodyTooBig: a body over max_message_size gets 552 5.3.4 after the
// final dot and the upstream gets nothing; a message under it goes through.
func TestBodyTooBig(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{MaxMessageSize: maxSize, Routes: defaultRoutes(sink.Addr())})

	big := NewMessage(sender, rcptBob, "too big")
	for len(big.Bytes()) < 2*maxSize {
		big.BodyLines = append(big.BodyLines, strings.Repeat("y", 76))
	}
	m.ForbidInLog(big.Marker)
	Send(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: big.Bytes()}).ExpectRefused(t, StageEOD, "552 5.3.4")
	if n := len(sink.Transactions()); n != 0 {
		t.Fatalf("the upstream got %d transactions for an oversized message", n)
	}

	// Raw, with the first body byte already past the limit.
	d := Dial(t, m.Addr)
	d.EHLO("client.example.net")
	d.Expect("MAIL FROM:<"+sender+">", "250")
	d.Expect("RCPT TO:<"+rcptBob+">", "250")
	d.Expect("DATA", "354")
	d.Send(string(dotStuff(big.Bytes())) + ".\r\n")
	d.Read().Expect(t, "552 5.3.4")
	d.Expect("QUIT", "221")

	small := NewMessage(sender, rcptBob, "fits")
	for len(small.Bytes()) < maxSize/2 {
		small.BodyLines = append(small.BodyLines, strings.Repeat("z", 76))
	}
	MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: small.Bytes()})
	if n := len(sink.WaitTransactions(1, waitTimeout)); n != 1 {
		t.Errorf("the upstream got %d transactions, want 1 (the small message)", n)
	}
}

// TestMaxRecipients: RCPTs past max_recipients get 452 4.5.3, the others
// are delivered.
func TestMaxRecipients(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{MaxRecipients: 3, Routes: defaultRoutes(sink.Addr())})
	d := Dial(t, m.Addr)
	d.EHLO("client.example.net")
	d.Expect("MAIL FROM:<"+sender+">", "250")
	var want []string
	for i := 1; i <= 5; i++ {
		rcpt := fmt.Sprintf("r%d@example.com", i)
		if i <= 3 {
			d.Expect("RCPT TO:<"+rcpt+">", "250")
			want = append(want, rcpt)
		} else {
			d.Expect("RCPT TO:<"+rcpt+">", "452 4.5.3")
		}
	}
	d.Expect("DATA", "354")
	d.Send(string(dotStuff(NewMessage(sender, rcptBob, "many").Bytes())) + ".\r\n")
	d.Read().Expect(t, "250")
	d.Expect("QUIT", "221")
	tx := sink.WaitTransactions(1, waitTimeout)[0]
	if strings.Join(tx.Rcpts, ",") != strings.Join(want, ",") {
		t.Errorf("upstream recipients %v, want %v", tx.Rcpts, want)
	}
}
