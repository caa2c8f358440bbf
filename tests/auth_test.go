package tests

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"moat/internal/dnstest"
	"moat/internal/smtptest"
)

// authPolicy turns on the reputation and authentication checks the way an
// admin would: a listed client is over the reject threshold, an SPF fail
// is refused, DMARC policies of the From domain are honoured.
const authPolicy = `policy: default
checks:
  dnsbl:
    zones:
      - { zone: bl.test, score: 10 }
  spf: { fail: reject, softfail: 2, temperror: tempfail }
  dkim: { fail: 1 }
  dmarc: { honor_policy: true }
actions: { tag: 5, quarantine: 8, reject: 10 }
`

// authZone publishes what the senders of TestSenderAuthentication need:
// a DNSBL listing for 127.0.0.2, SPF records, and for signed.test a DKIM
// key and a DMARC p=reject record.
func authZone(t *testing.T, pub ed25519.PublicKey) *dnstest.Server {
	return dnstest.New(t,
		"2.0.0.127.bl.test. 300 IN A 127.0.0.2",
		`2.0.0.127.bl.test. 300 IN TXT "listed for testing"`,
		`spf-pass.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"`,
		`spf-fail.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`other.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"`,
		`sel._domainkey.signed.test. 300 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(pub)+`"`,
		`_dmarc.signed.test. 300 IN TXT "v=DMARC1; p=reject"`,
	)
}

func signMessage(t *testing.T, key ed25519.PrivateKey, msg []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	err := dkim.Sign(&out, bytes.NewReader(msg), &dkim.SignOptions{
		Domain: "signed.test", Selector: "sel", Signer: key, Hash: crypto.SHA256,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestSenderAuthentication drives the real binary against a zone server:
// DNSBL, SPF, DKIM and DMARC decide, and the forwarded message carries
// Authentication-Results.
func TestSenderAuthentication(t *testing.T) {
	t.Parallel()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	zone := authZone(t, pub)
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), DNS: zone, Policy: authPolicy})

	t.Run("DNSBL-listed client is refused", func(t *testing.T) {
		r := Send(t, m.Addr, Envelope{Source: "127.0.0.2", From: "a@spf-pass.test", To: []string{rcptBob},
			Data: NewMessage("a@spf-pass.test", rcptBob, "listed").Bytes()})
		se := r.RcptErrs[rcptBob]
		if se == nil || se.Code != 550 || se.EnhancedCode != [3]int{5, 7, 1} {
			t.Fatalf("want 550 5.7.1 at RCPT: %s", r)
		}
		ev := m.WaitEvent("transaction event", func(e Event) bool {
			return e.Str("event.action") == "smtp.transaction" && e.Str("source.ip") == "127.0.0.2"
		})
		if !strings.Contains(ev.String(), `"zone":"bl.test"`) || !strings.Contains(ev.String(), `"code":"127.0.0.2"`) {
			t.Errorf("the event does not name the list and its code: %v", ev)
		}
	})

	t.Run("SPF fail is refused", func(t *testing.T) {
		r := Send(t, m.Addr, Envelope{Source: "127.0.0.3", From: "a@spf-fail.test", To: []string{rcptBob},
			Data: NewMessage("a@spf-fail.test", rcptBob, "spf").Bytes()})
		se := r.RcptErrs[rcptBob]
		if se == nil || se.Code != 550 || se.EnhancedCode != [3]int{5, 7, 1} {
			t.Fatalf("want 550 5.7.1 at RCPT: %s", r)
		}
	})

	signed := signMessage(t, key, NewMessage("a@signed.test", rcptBob, "signed").Bytes())

	t.Run("DKIM-signed message of a p=reject domain passes", func(t *testing.T) {
		before := len(sink.Accepted())
		r := Send(t, m.Addr, Envelope{Source: "127.0.0.4", From: "bounce@other.test", To: []string{rcptBob}, Data: signed})
		if r.Stage != "" {
			t.Fatalf("refused: %s", r)
		}
		txs := sink.WaitTransactions(before+1, waitTimeout)
		got := string(txs[len(txs)-1].Message)
		ar := headerField(got, "Authentication-Results")
		for _, want := range []string{Hostname + ";", "spf=pass", "smtp.mailfrom=bounce@other.test", "dkim=pass", "header.d=signed.test", "header.s=sel", "dmarc=pass", "header.from=signed.test"} {
			if !strings.Contains(ar, want) {
				t.Errorf("Authentication-Results lacks %q:\n%s", want, ar)
			}
		}
	})

	t.Run("altered body without SPF alignment is refused by DMARC", func(t *testing.T) {
		altered := bytes.Replace(signed, []byte("body-marker-"), []byte("BODY-MARKER-"), 1)
		r := Send(t, m.Addr, Envelope{Source: "127.0.0.5", From: "bounce@other.test", To: []string{rcptBob}, Data: altered})
		if r.Err == nil || r.Err.Code != 550 || r.Err.EnhancedCode != [3]int{5, 7, 1} || r.Stage != StageEOD {
			t.Fatalf("want 550 5.7.1 at end of data: %s", r)
		}
		ev := m.WaitEvent("transaction event", func(e Event) bool {
			return e.Str("event.action") == "smtp.transaction" && e.Str("source.ip") == "127.0.0.5"
		})
		if ev.Str("moat.action") != "reject" || !strings.Contains(ev.String(), `"dmarc":{`) {
			t.Errorf("event %v", ev)
		}
	})

	t.Run("forged Authentication-Results are removed", func(t *testing.T) {
		before := len(sink.Accepted())
		msg := NewMessage("a@spf-pass.test", rcptBob, "forged")
		msg.Headers = append(msg.Headers, "Authentication-Results: "+Hostname+"; dkim=pass header.d=bank.example")
		r := Send(t, m.Addr, Envelope{Source: "127.0.0.6", From: "a@spf-pass.test", To: []string{rcptBob}, Data: msg.Bytes()})
		if r.Stage != "" {
			t.Fatalf("refused: %s", r)
		}
		txs := sink.WaitTransactions(before+1, waitTimeout)
		if got := string(txs[len(txs)-1].Message); strings.Contains(got, "bank.example") {
			t.Errorf("forged header forwarded:\n%s", got)
		}
	})
}

// headerField returns the first field of that name in msg, unfolded.
func headerField(msg, name string) string {
	lines := strings.Split(msg, "\r\n")
	for i, l := range lines {
		if len(l) > len(name) && strings.EqualFold(l[:len(name)+1], name+":") {
			v := l
			for _, c := range lines[i+1:] {
				if c == "" || (c[0] != ' ' && c[0] != '\t') {
					break
				}
				v += " " + strings.TrimSpace(c)
			}
			return v
		}
	}
	return ""
}

// TestDeadDNS: with the zone server silent, checks answer temperror within
// the configured DNS timeout and the policy decides: SPF's temperror
// tempfails (451 4.7.1) by default, DNSBL's adds no score.
func TestDeadDNS(t *testing.T) {
	t.Parallel()
	zone := dnstest.New(t)
	zone.Silent("dead.test.")
	zone.Silent("4.0.0.127.bl.test.")
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), DNS: zone, Policy: authPolicy,
		Extra: map[string]any{"dns": map[string]any{"timeout": "300ms"}}})
	r := Send(t, m.Addr, Envelope{Source: "127.0.0.4", From: "a@dead.test", To: []string{rcptBob},
		Data: NewMessage("a@dead.test", rcptBob, "dead dns").Bytes()})
	se := r.RcptErrs[rcptBob]
	if se == nil || se.Code != 451 || se.EnhancedCode != [3]int{4, 7, 1} {
		t.Fatalf("want 451 4.7.1 at RCPT: %s", r)
	}
	// Two attempts of 300 ms for one server, and the DNSBL lookup in
	// parallel: well under the 20 s a check may take.
	if r.Elapsed > 5*time.Second {
		t.Errorf("the session waited %v for a dead DNS server", r.Elapsed)
	}
	ev := m.WaitTransactionEvent(1)
	if !strings.Contains(ev.String(), `"spf":{`) || !strings.Contains(ev.String(), `"result":"temperror"`) {
		t.Errorf("event %v", ev)
	}
}
