package policies

import (
	"net/netip"
	"testing"

	"moat/filters"
)

// BenchmarkEvaluate is the policy's work for one transaction: choosing the
// recipient's policy, the allow/deny lists, and deciding on five check
// results at RCPT and at the end of data.
func BenchmarkEvaluate(b *testing.B) {
	set := compile(&testing.T{}, `policy: default
checks:
  dnsbl: { zones: [ { zone: zen.example, score: 6 }, { zone: wl.example, score: -4 } ] }
  spf: { fail: 5, softfail: 2, temperror: tempfail }
  dkim: { fail: 3 }
  dmarc: { honor_policy: true }
  size: { max: 25MiB }
actions: { tag: 5, quarantine: 8, reject: 12 }
deny: { senders: ["*@spammer.example"], clients: [198.51.100.0/24] }
---
policy: finance
applies_to: { recipients: ["*@finance.example.com"] }
extends: default
actions: { quarantine: 5, reject: 8 }
`)
	client := netip.MustParseAddr("192.0.2.1")
	results := []filters.Result{
		{Check: "dnsbl", Value: filters.None, Fields: map[string]any{}},
		{Check: "spf", Value: filters.SoftFail, Fields: map[string]any{"domain": "example.net"}},
		{Check: "size", Value: filters.Pass},
		{Check: "dkim", Value: filters.Pass, Fields: map[string]any{"domain": "example.net"}},
		{Check: "dmarc", Value: filters.Pass, Fields: map[string]any{"policy": "none"}},
	}
	b.ReportAllocs()
	for b.Loop() {
		p := set.For("bob@example.com", "alice@example.net", client)
		p.Lists(client, "alice@example.net", "bob@example.com")
		p.Decide(results[:3], false)
		p.Decide(results, true)
	}
}
