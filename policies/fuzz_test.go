package policies

import (
	"net/netip"
	"testing"

	"moat/filters"
)

// FuzzParse feeds arbitrary files to Parse and, when they are valid, to
// Compile and every method of the policies they make. The seed corpus in
// testdata/fuzz/FuzzParse holds the test files of testdata/ and
// example.yaml.
func FuzzParse(f *testing.F) {
	f.Add([]byte("policy: default\nchecks: { size: { max: 1KiB } }\n"))
	results := []filters.Result{
		{Check: "size", Value: filters.Fail, Reply: &filters.Reply{Code: 552, Enhanced: "5.3.4", Text: "x"}},
		{Check: "spf", Value: filters.TempError},
		{Check: "dkim", Value: filters.Fail, Score: 2},
		{Check: "dnsbl", Value: filters.Fail, Score: 7},
	}
	clients := []netip.Addr{{}, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
	f.Fuzz(func(t *testing.T, data []byte) {
		specs, errs := Parse("fuzz.yaml", data)
		for _, e := range errs {
			if e.File != "fuzz.yaml" || e.Line < 1 || e.Col < 1 || e.Msg == "" {
				t.Errorf("badly placed error: %#v", e)
			}
		}
		if errs.Err() != nil {
			return
		}
		s, errs := Compile(specs...)
		for _, e := range errs {
			if e.File != "fuzz.yaml" || e.Line < 1 || e.Col < 1 || e.Msg == "" {
				t.Errorf("badly placed error: %#v", e)
			}
		}
		if errs.Err() != nil {
			if s != nil {
				t.Error("Compile returned a Set and errors")
			}
			return
		}
		if s.Default() == nil || !s.Default().IsDefault() {
			t.Fatal("no default policy")
		}
		for _, p := range s.Policies() {
			_ = p.Checks()
			_ = p.Tag()
			_ = p.Spec()
			_ = p.Source()
			for _, c := range clients {
				_ = p.Lists(c, "a@example.com", "b@example.com")
				_ = s.For("b@example.com", "", c)
			}
			for i := range results {
				for _, final := range []bool{false, true} {
					d := p.Decide(results[:i+1], final)
					if d.Action == "" || (d.Reply != nil) != (d.Action == Reject || d.Action == Tempfail) {
						t.Errorf("policy %s: Decide = %+v", p.Name(), d)
					}
				}
			}
		}
	})
}
