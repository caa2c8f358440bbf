package tests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"moat/internal/smtptest"
)

// TestGreetingAndEHLO: the greeting names the configured hostname, and EHLO
// advertises the configured size and every extension of the contract.
func TestGreetingAndEHLO(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{MaxMessageSize: 1 << 20, Routes: defaultRoutes(sink.Addr())})
	d := Dial(t, m.Addr)
	if g := d.Greeting; g.Code() != 220 || !strings.HasPrefix(g.Lines[len(g.Lines)-1], "220 mx.test ESMTP") {
		t.Fatalf("greeting %q, want \"220 mx.test ESMTP ...\"", g.String())
	}
	ext := d.EHLO("client.example.net")
	if ext["SIZE"] != "1048576" {
		t.Errorf("SIZE %q, want 1048576 (max_message_size)", ext["SIZE"])
	}
	for _, want := range []string{"8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8", "STARTTLS", "CHUNKING"} {
		if _, ok := ext[want]; !ok {
			t.Errorf("EHLO lacks %s: %v", want, ext)
		}
	}
	d.Expect("NOOP", "250")
	d.Expect("QUIT", "221")
}

// TestDeliveryToPostfixSink relays one message to a real peer, Postfix's
// smtp-sink: the client hears smtp-sink's own reply, and smtp-sink gets the
// message with one Received field added at the top and the rest unchanged.
func TestDeliveryToPostfixSink(t *testing.T) {
	t.Parallel()
	dumps := t.TempDir()
	upstream := smtptest.StartPostfixSink(t, dumps)
	m := StartMoat(t, Config{Routes: defaultRoutes(upstream)})
	msg := NewMessage(sender, rcptBob, "hello through moat")
	msg.Headers = []string{"Received: from old.example.net by relay.example.net; Thu, 26 Nov 2026 04:00:00 +0000"}
	msg.BodyLines = []string{"Hello Bob,", "", ".a line that starts with a dot", "caf\xc3\xa9 8-bit", "-- ", "Alice"}
	m.ForbidInLog(msg.Marker)

	r := MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: msg.Bytes()})
	if r.Reply != "2.0.0 Ok" {
		t.Errorf("end-of-data reply %q, want smtp-sink's own \"2.0.0 Ok\"", r.Reply)
	}
	ds := smtptest.WaitPostfixDumps(t, dumps, 1, waitTimeout)
	if len(ds) != 1 {
		t.Fatalf("smtp-sink got %d messages, want 1", len(ds))
	}
	d := ds[0]
	if !strings.HasPrefix(d.Mail, "<"+sender+">") || len(d.Rcpts) != 1 || !strings.HasPrefix(d.Rcpts[0], "<"+rcptBob+">") {
		t.Errorf("envelope at smtp-sink: MAIL %q RCPT %q", d.Mail, d.Rcpts)
	}
	_, rest := stripTrace(t, d.MessageCRLF())
	if !bytes.Equal(rest, msg.Bytes()) {
		t.Errorf("message at smtp-sink after moat's Received:\n got %q\nwant %q", rest, msg.Bytes())
	}
}

// TestDeliveryByteExact relays through the recording sink and compares the
// bytes on the upstream wire: dot-stuffing redone, nothing else changed.
func TestDeliveryByteExact(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	msg := NewMessage(sender, rcptBob, "byte exact")
	msg.BodyLines = []string{
		".", "..", ".leading dot", "trailing spaces   ", "\ttab", "",
		strings.Repeat("x", 990), "caf\xc3\xa9", "end",
	}
	m.ForbidInLog(msg.Marker)
	carol := "carol@example.com"
	r := MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob, carol}, Data: msg.Bytes()})

	tx := sink.WaitTransactions(1, waitTimeout)[0]
	if want := "2.0.0 Ok: queued as " + tx.QueueID; r.Reply != want {
		t.Errorf("end-of-data reply %q, want the sink's %q", r.Reply, want)
	}
	if tx.From != sender || strings.Join(tx.Rcpts, ",") != rcptBob+","+carol {
		t.Errorf("envelope at the sink: %s", tx)
	}
	if !strings.HasPrefix(tx.Mail, "FROM:<"+sender+">") {
		t.Errorf("MAIL argument %q", tx.Mail)
	}
	_, rest := stripTrace(t, tx.Message)
	if !bytes.Equal(rest, msg.Bytes()) {
		t.Errorf("message after moat's Received:\n got %q\nwant %q", rest, msg.Bytes())
	}
	if want := append(dotStuff(tx.Message), ".\r\n"...); !bytes.Equal(tx.Data, want) {
		t.Errorf("raw DATA is not the dot-stuffed message:\n got %q\nwant %q", tx.Data, want)
	}
	for _, stuffed := range []string{"\r\n..\r\n", "\r\n...\r\n", "\r\n..leading dot\r\n"} {
		if !bytes.Contains(tx.Data, []byte(stuffed)) {
			t.Errorf("raw DATA lacks %q", stuffed)
		}
	}
	if len(sink.Transactions()) != 1 {
		t.Errorf("sink transactions %d, want 1", len(sink.Transactions()))
	}
}

// TestEndOfDataReplyRelayed: whatever the upstream answers after the final
// dot, multi-line included, is what the client hears.
func TestEndOfDataReplyRelayed(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	cases := []struct {
		name  string
		reply []string // the sink's reply lines
		// what go-smtp's client reports
		stage, text string
	}{
		{"multi-line 250", []string{"250-2.0.0 first line", "250-2.0.0 second", "250 2.0.0 Ok: queued as ABC123"},
			"", "2.0.0 first line\n2.0.0 second\n2.0.0 Ok: queued as ABC123"},
		{"multi-line 554", []string{"554-5.7.1 Message rejected", "554 5.7.1 by upstream policy"},
			StageEOD, "Message rejected\nby upstream policy"},
		{"452", []string{"452 4.3.1 Insufficient system storage"}, StageEOD, "Insufficient system storage"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sink.Set(smtptest.WithDataReply(strings.Join(tc.reply, "\r\n")))
			msg := NewMessage(sender, rcptBob, tc.name)
			m.ForbidInLog(msg.Marker)

			// With go-smtp's client.
			r := Send(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: msg.Bytes()})
			if tc.stage == "" {
				if r.Stage != "" || r.Reply != tc.text {
					t.Fatalf("got %v, want delivered with %q", r, tc.text)
				}
			} else {
				r.ExpectRefused(t, tc.stage, tc.reply[len(tc.reply)-1][:9]+" "+tc.text)
			}

			// Raw: the exact lines.
			d := Dial(t, m.Addr)
			d.EHLO("client.example.net")
			d.Expect("MAIL FROM:<"+sender+">", "250")
			d.Expect("RCPT TO:<"+rcptBob+">", "250")
			d.Expect("DATA", "354")
			d.Send(string(dotStuff(msg.Bytes())) + ".\r\n")
			got := d.Read()
			if got.String() != strings.Join(tc.reply, "\r\n") {
				t.Fatalf("end-of-data reply lines:\n got %q\nwant %q", got.Lines, tc.reply)
			}
			d.Expect("QUIT", "221")
			sink.WaitTransactions(2*(i+1), waitTimeout)
		})
	}
}

// TestPooledConnectionReuse: consecutive messages to one upstream travel on
// one pooled connection.
func TestPooledConnectionReuse(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	const n = 3
	for i := range n {
		msg := NewMessage(sender, rcptBob, fmt.Sprintf("pooled %d", i))
		MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: msg.Bytes()})
	}
	txs := sink.WaitTransactions(n, waitTimeout)
	if c := sink.Connections(); c != 1 {
		t.Errorf("sink accepted %d connections for %d sequential messages, want 1 (pooled)", c, n)
	}
	for _, tx := range txs {
		if tx.ConnID != txs[0].ConnID {
			t.Errorf("transactions on different connections: %v", txs)
		}
	}
}

// TestPipelining sends the envelope in one write; replies come in order,
// a refused recipient does not disturb the others.
func TestPipelining(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	msg := NewMessage(sender, rcptBob, "pipelined")
	d := Dial(t, m.Addr)
	d.Send("EHLO client.example.net\r\nMAIL FROM:<" + sender + ">\r\nRCPT TO:<" + rcptBob + ">\r\nRCPT TO:<" + unrouted + ">\r\nDATA\r\n")
	d.Read().Expect(t, "250")
	d.Read().Expect(t, "250")
	d.Read().Expect(t, "250")
	d.Read().Expect(t, "554 5.7.1 Relay access denied")
	d.Read().Expect(t, "354")
	d.Send(string(dotStuff(msg.Bytes())) + ".\r\nQUIT\r\n")
	eod := d.Read()
	d.Read().Expect(t, "221")
	tx := sink.WaitTransactions(1, waitTimeout)[0]
	if eod.String() != "250 2.0.0 Ok: queued as "+tx.QueueID {
		t.Errorf("end-of-data reply %q, want the sink's %q", eod.String(), tx.Reply)
	}
	if strings.Join(tx.Rcpts, ",") != rcptBob {
		t.Errorf("sink recipients %v, want [%s]", tx.Rcpts, rcptBob)
	}
}

// TestChunking sends the message with BDAT in two chunks, split inside a
// line; the upstream gets it over DATA, dot-stuffed.
func TestChunking(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	msg := NewMessage(sender, rcptBob, "chunked")
	msg.BodyLines = []string{".dot line", "."}
	body := msg.Bytes()
	half := len(body) / 2
	d := Dial(t, m.Addr)
	d.EHLO("client.example.net")
	d.Expect("MAIL FROM:<"+sender+">", "250")
	d.Expect("RCPT TO:<"+rcptBob+">", "250")
	d.Send(fmt.Sprintf("BDAT %d\r\n%s", half, body[:half]))
	d.Read().Expect(t, "250")
	d.Send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body)-half, body[half:]))
	eod := d.Read()
	tx := sink.WaitTransactions(1, waitTimeout)[0]
	if eod.String() != tx.Reply {
		t.Errorf("BDAT LAST reply %q, want the sink's %q", eod.String(), tx.Reply)
	}
	_, rest := stripTrace(t, tx.Message)
	if !bytes.Equal(rest, body) {
		t.Errorf("message:\n got %q\nwant %q", rest, body)
	}
	if !bytes.Contains(tx.Data, []byte("\r\n..dot line\r\n..\r\n")) {
		t.Errorf("raw DATA not dot-stuffed: %q", tx.Data)
	}
	d.Expect("QUIT", "221")
}

// TestLocalRoute delivers into the built-in store: a Maildir under
// data_dir/mail/<domain>/<user>/new/.
func TestLocalRoute(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	msg := NewMessage(sender, "user@local.test", "to the store")
	MustSend(t, m.Addr, Envelope{From: sender, To: []string{"user@local.test"}, Data: msg.Bytes()})
	files := waitFiles(t, filepath.Join(m.DataDir, "mail", "local.test", "user", "new"), 1)
	got, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	lf := func(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }
	_, rest := stripTrace(t, lf(got))
	if !bytes.Equal(rest, lf(msg.Bytes())) {
		t.Errorf("stored message (line endings aside):\n got %q\nwant %q", rest, lf(msg.Bytes()))
	}
	if len(sink.Transactions()) != 0 {
		t.Errorf("the upstream got mail for a local route")
	}
}

// TestSwaksSTARTTLSToPostfixSink: swaks, a real client, with --tls through
// moat to smtp-sink, a real peer.
func TestSwaksSTARTTLSToPostfixSink(t *testing.T) {
	t.Parallel()
	dumps := t.TempDir()
	upstream := smtptest.StartPostfixSink(t, dumps)
	m := StartMoat(t, Config{Routes: defaultRoutes(upstream)})
	marker := "swaks-body-" + randomHex(6)
	m.ForbidInLog(marker)
	res := RunSwaks(t, SwaksOptions{Server: m.Addr, To: rcptBob, From: sender, Helo: "client.example.net", TLS: true, Body: "hello " + marker})
	if res.ExitCode != 0 {
		t.Fatalf("swaks %v exited %d:\n%s", res.Args, res.ExitCode, res.Transcript)
	}
	for _, want := range []string{" -> STARTTLS", "<-  220", "<~  250 2.0.0 Ok", "~> QUIT"} {
		if !strings.Contains(res.Transcript, want) {
			t.Errorf("swaks transcript lacks %q:\n%s", want, res.Transcript)
		}
	}
	ds := smtptest.WaitPostfixDumps(t, dumps, 1, waitTimeout)
	if !bytes.Contains(ds[0].Message, []byte("hello "+marker)) {
		t.Errorf("smtp-sink dump lacks the body: %q", ds[0].Message)
	}
	ev := m.WaitTransactionEvent(1)
	if ev.Str("tls.version") == "" || ev.Outcome() != "success" {
		t.Errorf("event for a TLS transaction: %v", ev)
	}
}

// waitFiles polls dir until it holds at least n regular files.
func waitFiles(t testing.TB, dir string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		var files []string
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Type().IsRegular() {
				files = append(files, filepath.Join(dir, e.Name()))
			}
		}
		if len(files) >= n {
			return files
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d files in %s within %v, have %d", n, dir, waitTimeout, len(files))
		}
		time.Sleep(25 * time.Millisecond) // polling a directory: nothing to wait on
	}
}
