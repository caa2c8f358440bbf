package proxy

import "testing"

func TestParseArg(t *testing.T) {
	for _, tc := range []struct {
		arg, prefix string
		null        bool
		want        string
		nonASCII    bool
		params      int
		ok          bool
	}{
		{"FROM:<a@example.com>", "FROM:", true, "a@example.com", false, 0, true},
		{"from: <a@example.com> SIZE=100 BODY=8BITMIME", "FROM:", true, "a@example.com", false, 2, true},
		{"FROM:<>", "FROM:", true, "", false, 0, true},
		{"TO:<>", "TO:", false, "", false, 0, false},
		{"TO:<@relay.example,@b.example:user@example.com>", "TO:", false, "user@example.com", false, 0, true},
		{`TO:<"john doe"@example.com>`, "TO:", false, `"john doe"@example.com`, false, 0, true},
		{`TO:<"a>b"@example.com>`, "TO:", false, `"a>b"@example.com`, false, 0, true},
		{"TO:<jörg@bücher.example>", "TO:", false, "jörg@bücher.example", true, 0, true},
		{"TO:<u@[192.0.2.1]>", "TO:", false, "u@[192.0.2.1]", false, 0, true},
		{"TO:<u@[IPv6:2001:db8::1]>", "TO:", false, "u@[IPv6:2001:db8::1]", false, 0, true},
		{"TO:<u@[300.0.2.1]>", "TO:", false, "", false, 0, false},
		{"TO:user@example.com", "TO:", false, "", false, 0, false},
		{"TO:<user@example.com", "TO:", false, "", false, 0, false},
		{"TO:<a..b@example.com>", "TO:", false, "", false, 0, false},
		{"TO:<a@-example.com>", "TO:", false, "", false, 0, false},
		{"TO:<a@example..com>", "TO:", false, "", false, 0, false},
		{"TO:<a@example.com>x", "TO:", false, "", false, 0, false},
		{"TO:<a@example.com> =x", "TO:", false, "", false, 0, false},
		{"TO:<a b@example.com>", "TO:", false, "", false, 0, false},
		{"TO:<@example.com>", "TO:", false, "", false, 0, false},
		{"TO:<a@>", "TO:", false, "", false, 0, false},
		{"TO:<\xff@example.com>", "TO:", false, "", false, 0, false},
	} {
		a, ps, err := parseArg(tc.arg, tc.prefix, tc.null)
		if (err == nil) != tc.ok {
			t.Errorf("parseArg(%q): err %v, want ok=%v", tc.arg, err, tc.ok)
			continue
		}
		if !tc.ok {
			continue
		}
		if a.String() != tc.want || a.NonASCII != tc.nonASCII || len(ps) != tc.params {
			t.Errorf("parseArg(%q) = %q nonASCII=%v params=%d", tc.arg, a, a.NonASCII, len(ps))
		}
	}
}

func TestASCIIDomain(t *testing.T) {
	a := Address{Local: "x", Domain: "Bücher.Example."}
	if got := a.ASCIIDomain(); got != "xn--bcher-kva.example" {
		t.Errorf("ASCIIDomain = %q", got)
	}
}

func FuzzParseArg(f *testing.F) {
	for _, s := range []string{"FROM:<a@b.c>", "FROM: <> SIZE=1", `FROM:<"x\"y"@[IPv6:::1]>`, "FROM:<@a:b@c>", "FROM:<jörg@bücher.example> SMTPUTF8"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, _, err := parseArg(s, "FROM:", true)
		if err != nil || a.IsNull() {
			return
		}
		// Whatever parses must be re-parseable as the same address: the
		// address is sent on upstream as <a>.
		b, _, err := parseArg("FROM:<"+a.String()+">", "FROM:", true)
		if err != nil || b != a {
			t.Fatalf("%q parsed as %q, which re-parses as %q, %v", s, a, b, err)
		}
	})
}

func TestCanonical(t *testing.T) {
	for _, tc := range []struct {
		in, want     string
		wantNonASCII bool
	}{
		{"bob@ｅｘａｍｐｌｅ.com", "bob@example.com", false},
		{"bob@ＥＸＡＭＰＬＥ.ＣＯＭ", "bob@example.com", false},
		{"jörg@BÜCHER.example", "jörg@bücher.example", true},
		{"bob@bücher.example", "bob@bücher.example", true},
		{"Bob@Example.COM", "Bob@Example.COM", false}, // ASCII: as sent
		{"bob@xn--bcher-kva.example", "bob@xn--bcher-kva.example", false},
		{"bob@[192.0.2.1]", "bob@[192.0.2.1]", false},
		{"bob@еxample.com", "bob@еxample.com", true}, // Cyrillic е: another name, kept
	} {
		a, _, err := parseArg("TO:<"+tc.in+">", "TO:", false)
		if err != nil {
			t.Fatalf("parseArg(%q): %v", tc.in, err)
		}
		c := a.canonical()
		if c.String() != tc.want || c.NonASCII != tc.wantNonASCII {
			t.Errorf("canonical(%q) = %q (NonASCII %v), want %q (%v)", tc.in, c.String(), c.NonASCII, tc.want, tc.wantNonASCII)
		}
	}
}
