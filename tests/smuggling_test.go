package tests

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"moat/internal/smtptest"
)

// The first message of every smuggling attempt, up to the variant bytes
// (no CRLF after "body": the variant supplies the line ending), and the
// smuggled second transaction after them, in the shape of
// shared/testdata/smtp-smuggling (PROVENANCE.md).
const (
	smugglePrefix = "From: <a@sender.example.net>\r\nTo: <victim@example.com>\r\nSubject: first\r\n\r\nbody"
	spoofSender   = "spoof@bank.test"
)

func smuggleTail(victim string) string {
	return "MAIL FROM:<" + spoofSender + ">\r\nRCPT TO:<" + victim + ">\r\nDATA\r\nFrom: ceo@bank.test\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n"
}

// smuggleCase is one variant with what a correct receiver makes of it.
type smuggleCase struct {
	name    string
	variant []byte
	sender  string // MAIL FROM of the first message, unique per case
	victim  string // RCPT of both transactions, unique per case
	payload []byte // everything after the 354 to DATA
	// first is the first message as RFC 5321 reads it (unstuffed), up to
	// the first CRLF.CRLF; split says that CRLF.CRLF lies inside the
	// variant, so the smuggled transaction is a real second one.
	first []byte
	split bool
}

func newSmuggleCase(name string, variant []byte) smuggleCase {
	c := smuggleCase{
		name:    name,
		variant: variant,
		sender:  "a-" + name + "@sender.example.net",
		victim:  "victim-" + name + "@example.com",
	}
	c.payload = []byte(smugglePrefix + string(variant) + smuggleTail(c.victim))
	data, end, _ := rfcData(c.payload)
	c.first = rfcUnstuff(data)
	c.split = end <= len(smugglePrefix)+len(variant)
	return c
}

func smuggleCases(t testing.TB) []smuggleCase {
	variants, valid := loadSmugglingVariants(t)
	var cs []smuggleCase
	for _, v := range variants {
		cs = append(cs, newSmuggleCase(v.Name, v.Bytes))
	}
	return append(cs, newSmuggleCase("valid-terminator", valid))
}

// run sends the case's first transaction and the payload in one write
// after the 354, and returns every reply up to the server's close.
func (c smuggleCase) run(t *testing.T, addr string) []Reply {
	t.Helper()
	d := Dial(t, addr)
	d.EHLO("client.example.net")
	d.Expect("MAIL FROM:<"+c.sender+">", "250")
	d.Expect("RCPT TO:<"+c.victim+">", "250")
	d.Expect("DATA", "354")
	d.Send(string(c.payload))
	return d.ReadUntilClosed()
}

// checkReplies compares the replies after the payload with the codes
// expected: eod1 for the first message, and, when the smuggled transaction
// is a real one, 250 250 354 250 for it; 221 for QUIT at the end.
func checkReplies(got []Reply, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range want {
		if !got[i].Is(want[i]) {
			return false
		}
	}
	return true
}

func repliesText(rs []Reply) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, r.String())
	}
	return strings.Join(parts, " | ")
}

// sinkTxs returns the sink's transactions from one sender to one victim.
func sinkTxs(s *smtptest.Sink, from, victim string) []smtptest.Transaction {
	var out []smtptest.Transaction
	for _, tx := range s.Transactions() {
		if tx.From == from && strings.Join(tx.Rcpts, ",") == victim {
			out = append(out, tx)
		}
	}
	return out
}

// TestSmugglingReject: with the default smtp.bare_newline (reject), every
// variant with a bare CR, bare LF or NUL is refused with 550 5.6.0 as one
// message; the smuggled commands never become a transaction upstream.
func TestSmugglingReject(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr())})
	for _, c := range smuggleCases(t) {
		t.Run(c.name, func(t *testing.T) {
			replies := c.run(t, m.Addr)
			eod1 := "250"
			if hasBareOrNUL(c.first) {
				eod1 = "550 5.6.0"
			}
			spoofDelivered := false
			switch {
			case checkReplies(replies, eod1, "221"):
			case c.split && checkReplies(replies, eod1, "250", "250", "354", "250", "221"):
				spoofDelivered = true
			default:
				want := eod1 + " | 221"
				if c.split {
					want = eod1 + " | 250 | 250 | 354 | 250 | 221"
				}
				t.Fatalf("replies after the payload: %s\nwant: %s", repliesText(replies), want)
			}
			if c.split && !spoofDelivered {
				t.Logf("moat missed the CRLF.CRLF inside %q and read the second transaction as body: not a smuggle, but a valid terminator was ignored", c.variant)
			}
			firsts := sinkTxs(sink, c.sender, c.victim)
			if eod1 == "250" && len(firsts) != 1 || eod1 != "250" && len(firsts) != 0 {
				t.Errorf("first message at the upstream: %d transactions (reply %s)", len(firsts), eod1)
			}
			spoofs := sinkTxs(sink, spoofSender, c.victim)
			if spoofDelivered != (len(spoofs) == 1) || len(spoofs) > 1 {
				t.Errorf("smuggled transaction at the upstream: %d (the client was answered as if it was %v)", len(spoofs), spoofDelivered)
			}
			for _, tx := range firsts {
				checkSmuggleForwarded(t, c, tx)
			}
		})
	}
}

// TestSmugglingNormalize: with smtp.bare_newline: normalize every variant
// is accepted as one message (unless a real CRLF.CRLF ends it), and the
// upstream gets CRLF for every bare CR/LF, no NUL, and every line that now
// starts with a dot stuffed: never an early CRLF.CRLF.
func TestSmugglingNormalize(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{BareNewline: "normalize", Routes: defaultRoutes(sink.Addr())})
	for _, c := range smuggleCases(t) {
		t.Run(c.name, func(t *testing.T) {
			replies := c.run(t, m.Addr)
			spoofDelivered := false
			switch {
			case checkReplies(replies, "250", "221"):
			case c.split && checkReplies(replies, "250", "250", "250", "354", "250", "221"):
				spoofDelivered = true
			default:
				want := "250 | 221"
				if c.split {
					want = "250 | 250 | 250 | 354 | 250 | 221"
				}
				t.Fatalf("replies after the payload: %s\nwant: %s", repliesText(replies), want)
			}
			firsts := sinkTxs(sink, c.sender, c.victim)
			if len(firsts) != 1 {
				t.Fatalf("first message at the upstream: %d transactions, want 1", len(firsts))
			}
			tx := firsts[0]
			if replies[0].String() != tx.Reply {
				t.Errorf("end-of-data reply %q, want the upstream's %q", replies[0].String(), tx.Reply)
			}
			spoofs := sinkTxs(sink, spoofSender, c.victim)
			if spoofDelivered != (len(spoofs) == 1) || len(spoofs) > 1 {
				t.Errorf("smuggled transaction at the upstream: %d (the client was answered as if it was %v)", len(spoofs), spoofDelivered)
			}
			if c.split && !spoofDelivered {
				// moat ignored a valid CRLF.CRLF (see TestSmugglingReject):
				// the whole payload is one message; check it stayed one.
				checkNoEarlyEnd(t, tx)
				if !bytes.Contains(tx.Message, []byte("MAIL FROM:<"+spoofSender+">")) {
					t.Errorf("the smuggled commands are not in the body: %q", tx.Message)
				}
				return
			}
			checkSmuggleForwarded(t, c, tx)
			if spoofDelivered {
				_, rest := stripTrace(t, spoofs[0].Message)
				if string(rest) != "From: ceo@bank.test\r\n\r\nsmuggled\r\n" {
					t.Errorf("second message %q", rest)
				}
			}
		})
	}
}

// checkSmuggleForwarded compares the first message as the upstream got it
// with the RFC reading of the payload, normalized.
func checkSmuggleForwarded(t *testing.T, c smuggleCase, tx smtptest.Transaction) {
	t.Helper()
	checkNoEarlyEnd(t, tx)
	want := normalizeBare(c.first)
	_, rest := stripTrace(t, tx.Message)
	if !bytes.Equal(rest, want) {
		t.Errorf("first message at the upstream (after moat's Received):\n got %q\nwant %q", rest, want)
	}
	if !c.split && !bytes.Contains(tx.Message, []byte("MAIL FROM:<"+spoofSender+">\r\nRCPT TO:<"+c.victim+">\r\nDATA\r\n")) {
		t.Errorf("the smuggled commands are not in the body: %q", tx.Message)
	}
}

// checkNoEarlyEnd: the raw DATA towards the upstream holds no bare CR, bare
// LF or NUL, and is exactly the message dot-stuffed plus ".\r\n", so no
// line of it but the last is a lone dot.
func checkNoEarlyEnd(t *testing.T, tx smtptest.Transaction) {
	t.Helper()
	if hasBareOrNUL(tx.Data) {
		t.Errorf("raw DATA to the upstream holds a bare CR/LF or NUL: %q", tx.Data)
	}
	if want := append(dotStuff(tx.Message), ".\r\n"...); !bytes.Equal(tx.Data, want) {
		t.Errorf("raw DATA to the upstream is not the dot-stuffed message:\n got %q\nwant %q", tx.Data, want)
	}
}

// TestSmugglingCases pins the expectations derived from the data file, so
// a change in it or in the RFC helpers shows up here first.
func TestSmugglingCases(t *testing.T) {
	got := map[string]string{}
	for _, c := range smuggleCases(t) {
		got[c.name] = fmt.Sprintf("split=%v bare=%v", c.split, hasBareOrNUL(c.first))
		if !c.split && !bytes.Contains(c.first, []byte("smuggled")) {
			t.Errorf("%s: the first message does not run to the real end", c.name)
		}
	}
	want := map[string]string{
		"lflf": "split=false bare=true", "lfcr": "split=false bare=true", "crlf": "split=false bare=true",
		"crcr": "split=false bare=true", "lfcrlf": "split=false bare=true", "crcrlf": "split=false bare=true",
		"nullbefore": "split=false bare=true", "nullafter": "split=false bare=true",
		"crlflf": "split=false bare=true", "crlfcr": "split=false bare=true",
		"crlf-dot-crcrlf": "split=false bare=true", "crcrlf-dot-crlf": "split=true bare=true",
		"crcrlf-dot-crcrlf": "split=false bare=true", "valid-terminator": "split=true bare=false",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d cases, want %d: %v", len(got), len(want), got)
	}
	// Two normalisations worth spelling out.
	for name, wantTail := range map[string]string{
		"lflf":            "body\r\n.\r\nMAIL FROM:", // forwarded as "body\r\n..\r\nMAIL FROM:"
		"nullbefore":      "body\r\n.\r\nMAIL FROM:", // NUL dropped: the dot line must be re-stuffed
		"crlflf":          "body\r\n\r\nMAIL FROM:",  // "\r\n." then bare LF: the dot is stuffing
		"crlfcr":          "body\r\n\r\nMAIL FROM:",  // ".\r" is a dot-stuffed line "\r"
		"crcr":            "body\r\n.\r\nMAIL FROM:", // bare CRs
		"lfcrlf":          "body\r\n.\r\nMAIL FROM:", // bare LF, then a real CRLF
		"nullafter":       "body\r\n\r\nMAIL FROM:",  // ".\x00" unstuffed, NUL dropped
		"crcrlf":          "body\r\n.\r\nMAIL FROM:", // bare CR, then CRLF
		"lfcr":            "body\r\n.\r\nMAIL FROM:", // bare LF, bare CR
		"crlf":            "body\r\n.\r\nMAIL FROM:", // bare CR, bare LF
		"crlf-dot-crcrlf": "body\r\n\r\n\r\nMAIL",    // ".\r\r\n": the dot is stuffing, bare CR, CRLF
	} {
		for _, c := range smuggleCases(t) {
			if c.name == name && !bytes.Contains(normalizeBare(c.first), []byte(wantTail)) {
				t.Errorf("%s normalized: %q lacks %q", name, normalizeBare(c.first), wantTail)
			}
		}
	}
}
