package dkim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"moat/filters"
	"moat/internal/dnstest"
)

// verify runs Verify with a generous deadline and fails the test on an
// error.
func verify(t *testing.T, r filters.Resolver, msg string) []filters.DKIMResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Verify(ctx, r, strings.NewReader(msg))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return res
}

func TestVerifyPass(t *testing.T) {
	s := dnstest.New(t,
		zoneTXT("rsa._domainkey.example.org", keyRecord(t, rsaKey())),
		zoneTXT("ed._domainkey.example.org", keyRecord(t, edKey())))
	for _, tc := range []struct {
		selector, algo string
		msg            string
	}{
		{"rsa", "rsa-sha256", sign(t, testMessage, rsaKey(), "example.org", "rsa")},
		{"ed", "ed25519-sha256", sign(t, testMessage, edKey(), "example.org", "ed")},
	} {
		t.Run(tc.algo, func(t *testing.T) {
			res := verify(t, s.Resolver(), tc.msg)
			if len(res) != 1 {
				t.Fatalf("got %d results, want 1: %+v", len(res), res)
			}
			r := res[0]
			b := tc.msg[strings.Index(tc.msg, " b=")+3:]
			want := filters.DKIMResult{Result: filters.Pass, Domain: "example.org", Selector: tc.selector,
				Identifier: "@example.org", Algorithm: tc.algo, HeaderB: stripSpace(b)[:8],
				Reason: "d=example.org s=" + tc.selector + ": verified"}
			if r != want {
				t.Errorf("got  %+v\nwant %+v", r, want)
			}
		})
	}
}

// One good ed25519 signature and one bad RSA one (its key record is
// another key's): the message passes on the ed25519 one, and the results
// come in header order, each with its own selector.
func TestVerifyMultipleSignatures(t *testing.T) {
	s := dnstest.New(t,
		zoneTXT("ed._domainkey.example.org", keyRecord(t, edKey())),
		zoneTXT("rsa._domainkey.mailer.example", keyRecord(t, otherRSAKey())))
	msg := sign(t, testMessage, edKey(), "example.org", "ed")
	msg = sign(t, msg, rsaKey(), "mailer.example", "rsa") // on top
	res := verify(t, s.Resolver(), msg)
	if len(res) != 2 {
		t.Fatalf("got %d results, want 2: %+v", len(res), res)
	}
	want := []struct{ result, domain, selector, algo, reason string }{
		{filters.Fail, "mailer.example", "rsa", "rsa-sha256", "d=mailer.example s=rsa: signature did not verify: crypto/rsa: verification error"},
		{filters.Pass, "example.org", "ed", "ed25519-sha256", "d=example.org s=ed: verified"},
	}
	for i, w := range want {
		r := res[i]
		if r.Result != w.result || r.Domain != w.domain || r.Selector != w.selector || r.Algorithm != w.algo || r.Reason != w.reason {
			t.Errorf("signature %d: got %+v, want %+v", i, r, w)
		}
	}
	if res[0].HeaderB == res[1].HeaderB || len(res[0].HeaderB) != 8 {
		t.Errorf("HeaderB %q and %q should be 8 characters and differ", res[0].HeaderB, res[1].HeaderB)
	}

	got, ok := NewCheck().Run(context.Background(), filters.StageData, &filters.Txn{
		DNS: s.Resolver(), Message: func() io.Reader { return strings.NewReader(msg) }})
	if !ok || got.Value != filters.Pass || got.Fields["domain"] != "example.org" || got.Fields["selector"] != "ed" {
		t.Errorf("check: got %v %+v, want pass from d=example.org s=ed", ok, got)
	}
	wantSigs := []map[string]string{
		{"domain": "mailer.example", "selector": "rsa", "result": "fail"},
		{"domain": "example.org", "selector": "ed", "result": "pass"},
	}
	if !reflect.DeepEqual(got.Fields["signatures"], wantSigs) {
		t.Errorf("signatures: got %v, want %v", got.Fields["signatures"], wantSigs)
	}
}

func TestVerifyBodyAltered(t *testing.T) {
	s := dnstest.New(t, zoneTXT("ed._domainkey.example.org", keyRecord(t, edKey())))
	msg := sign(t, testMessage, edKey(), "example.org", "ed")
	msg = strings.Replace(msg, "at noon", "at one", 1)
	res := verify(t, s.Resolver(), msg)
	if len(res) != 1 || res[0].Result != filters.Fail || res[0].Reason != "d=example.org s=ed: body hash did not verify" {
		t.Fatalf("got %+v, want one fail: body hash did not verify", res)
	}
}

func TestVerifyHeaderAltered(t *testing.T) {
	s := dnstest.New(t, zoneTXT("ed._domainkey.example.org", keyRecord(t, edKey())))
	msg := sign(t, testMessage, edKey(), "example.org", "ed")
	msg = strings.Replace(msg, "Subject: Lunch", "Subject: Dinner", 1)
	res := verify(t, s.Resolver(), msg)
	if len(res) != 1 || res[0].Result != filters.Fail || !strings.Contains(res[0].Reason, "signature did not verify") {
		t.Fatalf("got %+v, want one fail: signature did not verify", res)
	}
}

func TestVerifyKeyMissing(t *testing.T) {
	s := dnstest.New(t, zoneTXT("other._domainkey.example.org", keyRecord(t, edKey())))
	msg := sign(t, testMessage, edKey(), "example.org", "ed")
	res := verify(t, s.Resolver(), msg)
	if len(res) != 1 || res[0].Result != filters.PermError ||
		!strings.HasPrefix(res[0].Reason, "d=example.org s=ed: no key for signature: lookup ed._domainkey.example.org") {
		t.Fatalf("got %+v, want one permerror: no key for signature", res)
	}
}

func TestVerifyServFail(t *testing.T) {
	s := dnstest.New(t)
	s.ServFail("ed._domainkey.example.org")
	msg := sign(t, testMessage, edKey(), "example.org", "ed")
	res := verify(t, s.Resolver(), msg)
	if len(res) != 1 || res[0].Result != filters.TempError ||
		!strings.HasPrefix(res[0].Reason, "d=example.org s=ed: key unavailable: ") {
		t.Fatalf("got %+v, want one temperror: key unavailable", res)
	}
}

// A DNS server that never answers: temperror once the deadline passes,
// not after the resolver's own timeouts and retries.
func TestVerifyDeadDNS(t *testing.T) {
	s := dnstest.New(t)
	s.Silent("ed._domainkey.example.org")
	msg := sign(t, testMessage, edKey(), "example.org", "ed")
	const deadline = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	res, err := Verify(ctx, s.Resolver(), strings.NewReader(msg))
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Result != filters.TempError {
		t.Fatalf("got %+v, want one temperror", res)
	}
	// The Go resolver alone would wait 5 s per try.
	if took > deadline+2*time.Second {
		t.Errorf("took %v with a %v deadline", took, deadline)
	}
}

// The lookup adapter turns what go-msgauth would take for a missing key
// into the temperror it is: a cancelled context, and a wrapped
// *net.DNSError.
func TestLookupErrors(t *testing.T) {
	msg := sign(t, testMessage, edKey(), "example.org", "ed")
	temp := &net.DNSError{Err: "server misbehaving", Name: "ed._domainkey.example.org", IsTemporary: true}
	for _, tc := range []struct {
		name   string
		r      filters.Resolver
		cancel bool
		want   string
	}{
		{"temporary", errResolver{temp}, false, filters.TempError},
		{"wrapped temporary", errResolver{fmt.Errorf("cache: %w", temp)}, false, filters.TempError},
		{"not found", errResolver{&net.DNSError{Err: "no such host", IsNotFound: true}}, false, filters.PermError},
		{"plain error", errResolver{errors.New("boom")}, false, filters.PermError},
		{"context cancelled", errResolver{context.Canceled}, true, filters.TempError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			if tc.cancel {
				cancel()
			}
			defer cancel()
			res, err := Verify(ctx, tc.r, strings.NewReader(msg))
			if err != nil || len(res) != 1 || res[0].Result != tc.want {
				t.Fatalf("got %+v, %v; want one %s", res, err, tc.want)
			}
		})
	}
}

func TestVerifyNoSignature(t *testing.T) {
	// A body that fails when read: without a signature it is not needed.
	body := io.MultiReader(strings.NewReader(strings.Repeat("x", 100000)), errReader{errors.New("disk on fire")})
	msg := io.MultiReader(strings.NewReader("From: a@example.org\r\nSubject: hi\r\n\r\n"), body)
	res, err := Verify(context.Background(), errResolver{errors.New("no DNS expected")}, msg)
	if err != nil || len(res) != 0 {
		t.Fatalf("got %+v, %v; want no results and no error", res, err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestVerifyReadError(t *testing.T) {
	msg := sign(t, testMessage, edKey(), "example.org", "ed")
	s := dnstest.New(t, zoneTXT("ed._domainkey.example.org", keyRecord(t, edKey())))
	boom := errors.New("spool read failed")
	for _, cut := range []int{10, strings.Index(msg, "\r\n\r\n") + 6} {
		r := io.MultiReader(strings.NewReader(msg[:cut]), errReader{boom})
		res, err := Verify(context.Background(), s.Resolver(), r)
		if !errors.Is(err, boom) || res != nil {
			t.Errorf("cut at %d: got %+v, %v; want the read error", cut, res, err)
		}
	}

	// The check reports temperror and leaves Auth unset, so that DMARC
	// does not take "no signature" from it.
	auth := &filters.Auth{}
	got, ok := NewCheck().Run(context.Background(), filters.StageData, &filters.Txn{DNS: s.Resolver(), Auth: auth,
		Message: func() io.Reader { return io.MultiReader(strings.NewReader(msg[:10]), errReader{boom}) }})
	if !ok || got.Value != filters.TempError || auth.DKIMDone {
		t.Errorf("check: got %v %+v (auth done %v), want temperror and auth not done", ok, got, auth.DKIMDone)
	}
}

// A message that ends inside its header (no empty line, so no body) is
// verified with an empty body.
func TestVerifyHeaderOnly(t *testing.T) {
	s := dnstest.New(t, zoneTXT("ed._domainkey.example.org", keyRecord(t, edKey())))
	header := testMessage[:strings.Index(testMessage, "\r\n\r\n")+4]
	signed := sign(t, header, edKey(), "example.org", "ed")
	for name, msg := range map[string]string{
		"empty line":         signed,
		"no empty line":      strings.TrimSuffix(signed, "\r\n"),
		"no final line end":  strings.TrimSuffix(signed, "\r\n\r\n"),
		"with one LF ending": strings.TrimSuffix(signed, "\r\n\r\n") + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			res := verify(t, s.Resolver(), msg)
			if len(res) != 1 || res[0].Result != filters.Pass {
				t.Fatalf("got %+v, want one pass", res)
			}
		})
	}
}

// More signatures than MaxSignatures: the first ones are verified, the
// others are reported as neutral, not dropped.
func TestVerifyTooManySignatures(t *testing.T) {
	s := dnstest.New(t, zoneTXT("ed._domainkey.example.org", keyRecord(t, edKey())))
	msg := testMessage
	const n = MaxSignatures + 2
	for range n {
		msg = sign(t, msg, edKey(), "example.org", "ed")
	}
	res := verify(t, s.Resolver(), msg)
	if len(res) != n {
		t.Fatalf("got %d results, want %d", len(res), n)
	}
	for i, r := range res {
		want := filters.Pass
		if i >= MaxSignatures {
			want = filters.Neutral
		}
		if r.Result != want || r.Selector != "ed" || r.Domain != "example.org" {
			t.Errorf("signature %d: got %+v, want %s", i, r, want)
		}
	}
	if !strings.Contains(res[n-1].Reason, "not verified") {
		t.Errorf("reason %q", res[n-1].Reason)
	}
}

// A signature go-msgauth rejects before reading d= (wrong v=) still gets
// its domain and selector from the field.
func TestVerifyUnusableSignature(t *testing.T) {
	msg := "DKIM-Signature: v=2; a=rsa-sha256; d=example.org; s=sel;\r\n" +
		"\th=from; bh=AAAA; b=ABCDEFGHIJKL\r\n" + testMessage
	res := verify(t, errResolver{errors.New("no DNS expected")}, msg)
	want := []filters.DKIMResult{{Result: filters.PermError, Domain: "example.org", Selector: "sel",
		Identifier: "@example.org", Algorithm: "rsa-sha256", HeaderB: "ABCDEFGH",
		Reason: "d=example.org s=sel: incompatible signature version"}}
	if !reflect.DeepEqual(res, want) {
		t.Errorf("got  %+v\nwant %+v", res, want)
	}
}

// scanReader must split the header into fields as go-msgauth does, or
// selectors would be matched to the wrong verifications.
func TestScanReaderFields(t *testing.T) {
	msg := "dkim-signature : d=a.example; s=one\r\n" +
		"X-Note: DKIM-Signature: d=no.example\r\n" +
		"DKIM-Signature: d=b.example;\r\n" +
		"\ts=two; b=12345678\r\n" +
		"  90\n" + // LF only, still a continuation
		"DKIM-Signature-Extra: d=no.example\r\n" +
		"DKIM-Signature:d=c.example;s=three\r\n" +
		"\r\n" +
		"DKIM-Signature: d=body.example\r\n"
	for _, chunk := range []int{1, 3, 7, 4096} {
		s := &scanReader{r: &chunkReader{data: []byte(msg), n: chunk}}
		got, err := io.ReadAll(s)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, []byte(msg)) {
			t.Errorf("chunk %d: passed on %q", chunk, got)
		}
		want := []sigTags{
			{d: "a.example", s: "one", i: "@a.example"},
			{d: "b.example", s: "two", i: "@b.example", b: "12345678"},
			{d: "c.example", s: "three", i: "@c.example"},
		}
		if !reflect.DeepEqual(s.sigs, want) {
			t.Errorf("chunk %d: got %+v, want %+v", chunk, s.sigs, want)
		}
	}
}

// chunkReader hands out data n bytes at a time.
type chunkReader struct {
	data []byte
	n    int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.n)], c.data)
	c.data = c.data[n:]
	return n, nil
}

func TestCheck(t *testing.T) {
	c := NewCheck()
	if c.Name() != "dkim" || !reflect.DeepEqual(c.Stages(), []filters.Stage{filters.StageData}) {
		t.Fatalf("name %q stages %v", c.Name(), c.Stages())
	}
	if _, ok := c.Run(context.Background(), filters.StageRcpt, &filters.Txn{}); ok {
		t.Error("a result at RCPT")
	}

	s := dnstest.New(t, zoneTXT("ed._domainkey.example.org", keyRecord(t, edKey())))
	msg := sign(t, testMessage, edKey(), "example.org", "ed")
	reads := 0
	auth := &filters.Auth{}
	txn := &filters.Txn{DNS: s.Resolver(), Auth: auth, Message: func() io.Reader {
		reads++
		return strings.NewReader(msg)
	}}
	got, ok := c.Run(context.Background(), filters.StageData, txn)
	if !ok || got.Check != "dkim" || got.Value != filters.Pass || got.Reason != "d=example.org s=ed: verified" {
		t.Fatalf("got %v %+v", ok, got)
	}
	if !auth.DKIMDone || len(auth.DKIM) != 1 || auth.DKIM[0].Selector != "ed" {
		t.Fatalf("auth not filled: %+v", auth)
	}
	// A second run (another policy) reuses the results.
	again, _ := c.Run(context.Background(), filters.StageData, txn)
	if reads != 1 || !reflect.DeepEqual(again, got) {
		t.Errorf("second run read the message again (%d reads) or differs: %+v", reads, again)
	}
	if s.Queries() != 1 {
		t.Errorf("%d DNS queries, want 1", s.Queries())
	}

	// Results another check stored are used as they are.
	stored := &filters.Auth{DKIMDone: true, DKIM: []filters.DKIMResult{{Result: filters.TempError, Domain: "x.example", Selector: "s", Reason: "stored"}}}
	got, _ = c.Run(context.Background(), filters.StageData, &filters.Txn{Auth: stored})
	if got.Value != filters.TempError || got.Reason != "stored" {
		t.Errorf("stored results: got %+v", got)
	}

	// No signature: none.
	got, _ = c.Run(context.Background(), filters.StageData, &filters.Txn{DNS: s.Resolver(),
		Message: func() io.Reader { return strings.NewReader(testMessage) }})
	if got.Value != filters.None {
		t.Errorf("unsigned: got %+v, want none", got)
	}
}

func TestSummarize(t *testing.T) {
	sig := func(result, domain string) filters.DKIMResult {
		return filters.DKIMResult{Result: result, Domain: domain, Selector: "s", Reason: result + " " + domain}
	}
	for _, tc := range []struct {
		name   string
		sigs   []filters.DKIMResult
		value  string
		domain string
	}{
		{"none", nil, filters.None, ""},
		{"one fail", []filters.DKIMResult{sig("fail", "a")}, filters.Fail, "a"},
		{"pass wins", []filters.DKIMResult{sig("fail", "a"), sig("temperror", "b"), sig("pass", "c"), sig("pass", "d")}, filters.Pass, "c"},
		{"temperror over fail", []filters.DKIMResult{sig("fail", "a"), sig("temperror", "b")}, filters.TempError, "b"},
		{"temperror over permerror", []filters.DKIMResult{sig("permerror", "a"), sig("temperror", "b")}, filters.TempError, "b"},
		{"fail over permerror", []filters.DKIMResult{sig("permerror", "a"), sig("fail", "b"), sig("fail", "c")}, filters.Fail, "b"},
		{"permerror over neutral", []filters.DKIMResult{sig("neutral", "a"), sig("permerror", "b")}, filters.PermError, "b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := check{}.summarize(tc.sigs)
			if got.Value != tc.value {
				t.Errorf("value %q, want %q", got.Value, tc.value)
			}
			if d, _ := got.Fields["domain"].(string); d != tc.domain {
				t.Errorf("domain %q, want %q", d, tc.domain)
			}
			if sigs := got.Fields["signatures"].([]map[string]string); len(sigs) != len(tc.sigs) {
				t.Errorf("%d signatures listed, want %d", len(sigs), len(tc.sigs))
			}
		})
	}
}
