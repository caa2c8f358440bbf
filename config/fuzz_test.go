package config

import (
	"net/netip"
	"os"
	"testing"
)

// FuzzLoad feeds arbitrary bytes through Parse, the parse, decode and
// validate path Load uses. It must never panic, and what it returns must
// keep the promises Load makes. Seeds live in testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	f.Add(DefaultYAML())
	if full, err := os.ReadFile("testdata/full.yaml"); err == nil {
		f.Add(full)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, errs := Parse("fuzz.yaml", data)
		if (c == nil) != (errs.Err() != nil) {
			t.Fatalf("config %v with errors %v: want a config exactly when there is no error", c != nil, errs.Err())
		}
		for _, e := range errs {
			if e.File != "fuzz.yaml" || e.Line < 1 || e.Col < 1 || e.Msg == "" {
				t.Fatalf("malformed problem %#v", *e)
			}
		}
		// Map iteration must not leak into the output.
		if _, again := Parse("fuzz.yaml", data); again.Error() != errs.Error() {
			t.Fatalf("two parses differ:\n%v\n--\n%v", errs, again)
		}
		if c == nil {
			return
		}
		// A loaded config stays valid once normalized.
		if verrs := c.Validate(); verrs.Err() != nil {
			t.Fatalf("Validate after Parse: %v", verrs)
		}
		for k, r := range c.Routes {
			if got, ok := c.Route(k); !ok || got != r {
				t.Fatalf("Route(%q) does not find its own route", k)
			}
		}
		c.Trusted(netip.MustParseAddr("192.0.2.1"))
		c.Trusted(netip.MustParseAddr("2001:db8::1"))
	})
}
