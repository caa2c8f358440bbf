package dkim

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"moat/filters"
)

// BenchmarkVerify10KB verifies a 10 KB message carrying an RSA-2048 and an
// ed25519 signature, with the keys served from memory so that the figure
// is the cost of verifying, not of DNS. It reports messages verified per
// second and signature verifications (go-msgauth Verifications) per
// second, two per message.
func BenchmarkVerify10KB(b *testing.B) {
	var body strings.Builder
	for body.Len() < 10*1024 {
		body.WriteString("The quick brown fox jumps over the lazy dog, again and again and again.\r\n")
	}
	msg := testMessage[:strings.Index(testMessage, "\r\n\r\n")+4] + body.String()
	msg = sign(b, msg, edKey(), "example.org", "ed")
	msg = sign(b, msg, rsaKey(), "example.org", "rsa")
	r := mapResolver{
		"ed._domainkey.example.org":  {keyRecord(b, edKey())},
		"rsa._domainkey.example.org": {keyRecord(b, rsaKey())},
	}
	raw := []byte(msg)
	ctx := context.Background()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		res, err := Verify(ctx, r, bytes.NewReader(raw))
		if err != nil || len(res) != 2 || res[0].Result != filters.Pass || res[1].Result != filters.Pass {
			b.Fatalf("got %+v, %v; want two passes", res, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(2*float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}
