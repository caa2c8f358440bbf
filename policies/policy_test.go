package policies

import (
	"net/netip"
	"reflect"
	"testing"

	"moat/filters"
	"moat/filters/content"
	"moat/internal/yamlx"
)

func TestInheritance(t *testing.T) {
	s := loadValid(t)
	mib := func(n int64) *yamlx.Size { v := yamlx.Size(n << 20); return &v }
	prefixes := func(ss ...string) []yamlx.Prefix {
		var out []yamlx.Prefix
		for _, p := range ss {
			out = append(out, yamlx.Prefix(netip.MustParsePrefix(p)))
		}
		return out
	}
	patterns := func(ss ...string) []string { return append([]string{}, ss...) }
	str := func(ps []AddrPattern) []string {
		out := []string{}
		for _, p := range ps {
			out = append(out, p.String())
		}
		return out
	}
	tests := []struct {
		policy         string
		wantSize       *SizeCheck
		wantActions    Actions
		wantTag        TagSettings
		wantMode       Mode
		wantAllowCl    []yamlx.Prefix
		wantAllowSnd   []string
		wantAllowRcpt  []string
		wantDenySnd    []string
		wantApplies    bool
		wantChecksRuns []string
	}{
		{
			policy:        "default",
			wantSize:      &SizeCheck{Max: mib(10)},
			wantActions:   Actions{Tag: ptr(5.0), Quarantine: ptr(8.0), Reject: ptr(12.0)},
			wantTag:       TagSettings{SubjectPrefix: "[SPAM] ", Header: true},
			wantMode:      Enforce,
			wantAllowCl:   prefixes("192.0.2.0/24"),
			wantAllowSnd:  patterns("*@partner.example"),
			wantAllowRcpt: patterns("postmaster@example.com", "abuse@example.com"),
			wantDenySnd:   patterns("spammer@bad.example", "@worse.example"),
		},
		{
			// checks per check, actions per threshold, lists replace.
			policy:        "finance",
			wantSize:      &SizeCheck{Max: mib(1), Action: Quarantine},
			wantActions:   Actions{Tag: ptr(5.0), Quarantine: ptr(5.0), Reject: ptr(8.0)},
			wantTag:       TagSettings{SubjectPrefix: "[SPAM] ", Header: true},
			wantMode:      Enforce,
			wantAllowCl:   prefixes("192.0.2.0/24"),
			wantAllowSnd:  patterns(),
			wantAllowRcpt: patterns("postmaster@example.com", "abuse@example.com"),
			wantDenySnd:   patterns("spammer@bad.example", "@worse.example"),
			wantApplies:   true,
		},
		{
			// The override of vip extends finance, two levels deep.
			policy:        "vip",
			wantSize:      &SizeCheck{Max: mib(1), Action: Quarantine},
			wantActions:   Actions{Tag: ptr(5.0), Quarantine: ptr(5.0), Reject: ptr(8.0)},
			wantTag:       TagSettings{SubjectPrefix: "[SPAM] ", Header: true},
			wantMode:      Observe,
			wantAllowCl:   prefixes("192.0.2.0/24"),
			wantAllowSnd:  patterns(),
			wantAllowRcpt: patterns("postmaster@example.com", "abuse@example.com"),
			wantDenySnd:   patterns("spammer@bad.example", "@worse.example"),
			wantApplies:   true,
		},
		{
			// checks: ~ drops every check, reject: ~ one threshold.
			policy:        "lab",
			wantActions:   Actions{Tag: ptr(5.0), Quarantine: ptr(8.0)},
			wantTag:       TagSettings{SubjectPrefix: "[SPAM] ", Header: false},
			wantMode:      Enforce,
			wantAllowCl:   prefixes("192.0.2.0/24"),
			wantAllowSnd:  patterns("*@partner.example"),
			wantAllowRcpt: patterns("postmaster@example.com", "abuse@example.com"),
			wantDenySnd:   patterns("spammer@bad.example", "@worse.example"),
			wantApplies:   true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			p := s.Policy(tt.policy)
			sp := p.Spec()
			if !reflect.DeepEqual(sp.Checks.Size, tt.wantSize) {
				t.Errorf("checks.size = %+v, want %+v", sp.Checks.Size, tt.wantSize)
			}
			if !reflect.DeepEqual(sp.Actions, tt.wantActions) {
				t.Errorf("actions = %s, want %s", fmtActions(sp.Actions), fmtActions(tt.wantActions))
			}
			if got := p.Tag(); got != tt.wantTag {
				t.Errorf("Tag() = %+v, want %+v", got, tt.wantTag)
			}
			if p.Mode() != tt.wantMode {
				t.Errorf("Mode() = %q, want %q", p.Mode(), tt.wantMode)
			}
			if !reflect.DeepEqual(sp.Allow.Clients, tt.wantAllowCl) {
				t.Errorf("allow.clients = %v, want %v", sp.Allow.Clients, tt.wantAllowCl)
			}
			if got := str(sp.Allow.Senders); !reflect.DeepEqual(got, tt.wantAllowSnd) {
				t.Errorf("allow.senders = %q, want %q", got, tt.wantAllowSnd)
			}
			if got := str(sp.Allow.Recipients); !reflect.DeepEqual(got, tt.wantAllowRcpt) {
				t.Errorf("allow.recipients = %q, want %q", got, tt.wantAllowRcpt)
			}
			if got := str(sp.Deny.Senders); !reflect.DeepEqual(got, tt.wantDenySnd) {
				t.Errorf("deny.senders = %q, want %q", got, tt.wantDenySnd)
			}
			if p.IsDefault() == tt.wantApplies {
				t.Errorf("IsDefault() = %v", p.IsDefault())
			}
			var runs []filters.Check
			if tt.wantSize != nil {
				runs = append(runs, filters.NewSize(int64(*tt.wantSize.Max)))
			}
			runs = append(runs, content.NewGTUBE()) // on unless turned off
			if got := p.Checks(); len(got) != len(runs) || (len(got) > 0 && !reflect.DeepEqual(got, runs)) {
				t.Errorf("Checks() = %v, want %v", got, runs)
			}
		})
	}
}

func fmtActions(a Actions) string {
	f := func(p *float64) string {
		if p == nil {
			return "unset"
		}
		return formatScore(*p)
	}
	return "{tag " + f(a.Tag) + ", quarantine " + f(a.Quarantine) + ", reject " + f(a.Reject) + "}"
}

// TestInheritanceRules covers each rule of README.md "Inheritance" on
// small inline files.
func TestInheritanceRules(t *testing.T) {
	parent := `policy: default
checks:
  size: { max: 2MiB, mode: observe }
  spf: { fail: 5, softfail: 2 }
actions: { tag: 1, quarantine: 2, reject: 3 }
tag: { subject_prefix: "[P] ", header: false }
allow: { clients: [192.0.2.1], senders: ["*"] }
mode: observe
`
	tests := []struct {
		name  string
		child string
		check func(t *testing.T, sp *Spec)
	}{
		{
			name:  "nothing set: a deep copy",
			child: "",
			check: func(t *testing.T, sp *Spec) {
				if *sp.Checks.Size.Max != 2<<20 || sp.Checks.Size.Mode != Observe || *sp.Checks.SPF.SoftFail != (Outcome{Score: 2}) ||
					*sp.Actions.Reject != 3 || *sp.Tag.SubjectPrefix != "[P] " || sp.Mode != Observe || len(sp.Allow.Senders) != 1 {
					t.Errorf("child = %+v", sp)
				}
			},
		},
		{
			name:  "a check replaces the parent's check whole",
			child: "checks: { spf: { fail: 1 } }",
			check: func(t *testing.T, sp *Spec) {
				if *sp.Checks.SPF.Fail != (Outcome{Score: 1}) || sp.Checks.SPF.SoftFail != nil {
					t.Errorf("spf = %+v, want only fail 1", sp.Checks.SPF)
				}
				if sp.Checks.Size == nil {
					t.Error("size was not inherited")
				}
			},
		},
		{
			name:  "null turns a check off",
			child: "checks: { size: ~ }",
			check: func(t *testing.T, sp *Spec) {
				if sp.Checks.Size != nil || sp.Checks.SPF == nil {
					t.Errorf("checks = %+v", sp.Checks)
				}
			},
		},
		{
			name:  "an empty checks block changes nothing",
			child: "checks: {}",
			check: func(t *testing.T, sp *Spec) {
				if sp.Checks.Size == nil || sp.Checks.SPF == nil {
					t.Errorf("checks = %+v", sp.Checks)
				}
			},
		},
		{
			name:  "per threshold",
			child: "actions: { quarantine: 2.5, reject: ~ }",
			check: func(t *testing.T, sp *Spec) {
				if want := (Actions{Tag: ptr(1.0), Quarantine: ptr(2.5)}); !reflect.DeepEqual(sp.Actions, want) {
					t.Errorf("actions = %s", fmtActions(sp.Actions))
				}
			},
		},
		{
			name:  "lists replace, never append; the other list is inherited",
			child: "allow: { senders: [a@example.com] }",
			check: func(t *testing.T, sp *Spec) {
				if len(sp.Allow.Senders) != 1 || sp.Allow.Senders[0].String() != "a@example.com" || len(sp.Allow.Clients) != 1 {
					t.Errorf("allow = %+v", sp.Allow)
				}
			},
		},
		{
			name:  "an empty list clears",
			child: "allow: { clients: [] }",
			check: func(t *testing.T, sp *Spec) {
				if len(sp.Allow.Clients) != 0 || len(sp.Allow.Senders) != 1 {
					t.Errorf("allow = %+v", sp.Allow)
				}
			},
		},
		{
			name:  "tag per key, mode replaces",
			child: "tag: { header: true }\nmode: enforce",
			check: func(t *testing.T, sp *Spec) {
				if *sp.Tag.SubjectPrefix != "[P] " || !*sp.Tag.Header || sp.Mode != Enforce {
					t.Errorf("tag = %+v, mode %q", sp.Tag, sp.Mode)
				}
			},
		},
		{
			name:  "mode set to null goes back to enforce",
			child: "mode: ~",
			check: func(t *testing.T, sp *Spec) {
				if sp.Mode != "" {
					t.Errorf("mode = %q", sp.Mode)
				}
			},
		},
		{
			name:  "keys from a merge key count as set",
			child: "actions: { <<: { reject: 9 } }",
			check: func(t *testing.T, sp *Spec) {
				if want := (Actions{Tag: ptr(1.0), Quarantine: ptr(2.0), Reject: ptr(9.0)}); !reflect.DeepEqual(sp.Actions, want) {
					t.Errorf("actions = %s", fmtActions(sp.Actions))
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			child := "policy: child\napplies_to: { clients: [198.51.100.1] }\nextends: default\n" + tt.child + "\n"
			s := compile(t, parent, child)
			sp := s.Policy("child").Spec()
			if sp.Policy != "child" || sp.Extends != "default" || sp.AppliesTo == nil {
				t.Errorf("own keys = %q %q %v", sp.Policy, sp.Extends, sp.AppliesTo)
			}
			tt.check(t, sp)
			// The parent is untouched.
			ps := s.Default().Spec()
			if *ps.Checks.SPF.SoftFail != (Outcome{Score: 2}) || *ps.Actions.Reject != 3 || len(ps.Allow.Clients) != 1 {
				t.Errorf("parent changed: %+v", ps)
			}
		})
	}
}

func TestInheritanceAcrossFilesAndOrder(t *testing.T) {
	// The child comes first, its parent in a later file, and the parent
	// is then replaced: the child inherits the replacement.
	s := compile(t,
		"policy: child\napplies_to: { senders: ['*'] }\nextends: base\n",
		"policy: default\n---\npolicy: base\napplies_to: { clients: [192.0.2.1] }\nactions: { reject: 1 }\n",
		"policy: base\napplies_to: { clients: [192.0.2.1] }\nactions: { reject: 2 }\n",
	)
	if got := *s.Policy("child").Spec().Actions.Reject; got != 2 {
		t.Errorf("child reject = %v, want 2 (from the replacing base)", got)
	}
}

func TestSpecIsACopy(t *testing.T) {
	s := loadValid(t)
	p := s.Policy("finance")
	sp := p.Spec()
	*sp.Actions.Reject = 100
	sp.Allow.Clients[0] = yamlx.Prefix(netip.MustParsePrefix("0.0.0.0/0"))
	sp.Checks.Size = nil
	again := p.Spec()
	if *again.Actions.Reject != 8 || again.Allow.Clients[0].String() != "192.0.2.0/24" || again.Checks.Size == nil {
		t.Errorf("changing a Spec() changed the policy: %+v", again)
	}
	if *s.Default().Spec().Actions.Reject != 12 {
		t.Error("changing a child's Spec() changed the parent")
	}
}

func TestFor(t *testing.T) {
	s := loadValid(t)
	ip := netip.MustParseAddr
	tests := []struct {
		name       string
		rcpt, from string
		client     netip.Addr
		want       string
	}{
		{name: "nothing matches", rcpt: "a@example.com", from: "b@example.net", client: ip("198.51.100.1"), want: "default"},
		{name: "recipient pattern", rcpt: "ceo@example.com", want: "vip"},
		{name: "recipient pattern ignores case", rcpt: "CEO@EXAMPLE.com", want: "vip"},
		{name: "angle brackets", rcpt: "<cfo@example.com>", want: "vip"},
		{name: "the replaced vip's pattern is kept", rcpt: "cfo@example.com", want: "vip"},
		{name: "recipient domain", rcpt: "ann@finance.example.com", want: "finance"},
		{name: "recipient domain with a trailing dot", rcpt: "ann@Finance.Example.com.", want: "finance"},
		{name: "not a subdomain", rcpt: "ann@eu.finance.example.com", want: "default"},
		{name: "sender pattern", rcpt: "a@example.com", from: "x@bank.example", want: "finance"},
		{name: "client network", rcpt: "a@example.com", client: ip("203.0.113.77"), want: "lab"},
		{name: "client IPv6", client: ip("2001:db8:1ab::25"), want: "lab"},
		{name: "client IPv4-mapped", client: ip("::ffff:203.0.113.5"), want: "lab"},
		{name: "first in load order wins", rcpt: "ceo@example.com", client: ip("203.0.113.5"), want: "vip"},
		{name: "finance before lab", from: "x@bank.example", client: ip("203.0.113.5"), want: "finance"},
		{name: "empty everything", want: "default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.For(tt.rcpt, tt.from, tt.client).Name(); got != tt.want {
				t.Errorf("For(%q, %q, %v) = %s, want %s", tt.rcpt, tt.from, tt.client, got, tt.want)
			}
		})
	}
}

func TestLists(t *testing.T) {
	s := loadValid(t)
	ip := netip.MustParseAddr
	deny := func(r string) ListResult {
		return ListResult{Denied: true, Reason: r, Reply: &filters.Reply{Code: 554, Enhanced: "5.7.1", Text: r}}
	}
	allow := func(r string) ListResult { return ListResult{Allowed: true, Reason: r} }
	tests := []struct {
		name       string
		policy     string
		client     netip.Addr
		from, rcpt string
		want       ListResult
	}{
		{name: "neither", policy: "default", client: ip("198.51.100.1"), from: "a@example.net", rcpt: "b@example.com"},
		{name: "deny client, one host", policy: "default", client: ip("198.51.100.7"), want: deny("client 198.51.100.7 is in deny.clients of policy default")},
		{name: "deny client, mapped", policy: "default", client: ip("::ffff:198.51.100.7"), want: deny("client 198.51.100.7 is in deny.clients of policy default")},
		{name: "deny client, network", policy: "default", client: ip("2001:db8:bad::1"), want: deny("client 2001:db8:bad::1 is in deny.clients of policy default (2001:db8:bad::/48)")},
		{name: "deny sender, exact", policy: "default", from: "Spammer@Bad.Example", want: deny("sender Spammer@Bad.Example is in deny.senders of policy default")},
		{name: "deny sender, domain", policy: "default", from: "x@worse.example", want: deny("sender x@worse.example is in deny.senders of policy default (@worse.example)")},
		{name: "allow client", policy: "default", client: ip("192.0.2.200"), from: "a@example.net", want: allow("client 192.0.2.200 is in allow.clients of policy default (192.0.2.0/24)")},
		{name: "allow sender", policy: "default", from: "z@partner.example", want: allow("sender z@partner.example is in allow.senders of policy default (*@partner.example)")},
		{name: "allow recipient", policy: "default", from: "a@example.net", rcpt: "postmaster@example.com", want: allow("recipient postmaster@example.com is in allow.recipients of policy default")},
		{
			name: "deny wins over allow", policy: "default", client: ip("192.0.2.1"), from: "x@worse.example", rcpt: "abuse@example.com",
			want: deny("sender x@worse.example is in deny.senders of policy default (@worse.example)"),
		},
		{name: "child's emptied list", policy: "finance", from: "z@partner.example"},
		{name: "child's inherited list", policy: "finance", client: ip("192.0.2.9"), want: allow("client 192.0.2.9 is in allow.clients of policy finance (192.0.2.0/24)")},
		{name: "no client address", policy: "default", client: netip.Addr{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := s.Policy(tt.policy).Lists(tt.client, tt.from, tt.rcpt)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Lists = %+v\nwant    %+v", got, tt.want)
			}
		})
	}
}

func TestListsStar(t *testing.T) {
	s := compile(t, "policy: default\ndeny: { senders: ['*'] }\nallow: { recipients: ['*'] }\n")
	p := s.Default()
	if got := p.Lists(netip.Addr{}, "", ""); !got.Denied || got.Reason != "sender <> is in deny.senders of policy default (*)" {
		t.Errorf("null sender vs *: %+v", got)
	}
	s = compile(t, "policy: default\nallow: { recipients: ['*'] }\n")
	if got := s.Default().Lists(netip.Addr{}, "a@b.example", ""); got.Allowed {
		t.Errorf("an unknown recipient matched *: %+v", got)
	}
}

func TestAddrPattern(t *testing.T) {
	tests := []struct {
		pattern string
		match   []string
		noMatch []string
	}{
		{"user@example.com", []string{"user@example.com", "USER@Example.Com", "<user@example.com>", "user@example.com."}, []string{"user2@example.com", "user@example.org", "", "user"}},
		{"*@example.com", []string{"a@example.com", "B@EXAMPLE.COM"}, []string{"a@sub.example.com", "a@example.comx", "example.com", ""}},
		{"@Example.com", []string{"a@example.com"}, []string{"a@example.org"}},
		{"*", []string{"a@b.example", "", "anything"}, nil},
		// Look-alike spellings of a domain match the domain they stand
		// for (UTS #46 mapping): full-width letters, U-label and A-label.
		{"*@example.com", []string{"a@ｅｘａｍｐｌｅ.com", "a@ＥＸＡＭＰＬＥ.ＣＯＭ"}, []string{"a@еxample.com"}}, // the last: Cyrillic е, another name
		{"*@bücher.example", []string{"a@bücher.example", "a@xn--bcher-kva.example", "a@BÜCHER.example"}, []string{"a@bucher.example"}},
		{"*@xn--bcher-kva.example", []string{"a@bücher.example"}, nil},
		{"spam@Ｅｖｉｌ.example", []string{"spam@evil.example"}, nil},
		{`"a@b"@example.com`, nil, nil}, // not allowed, see TestAddrPatternErrors
	}
	for _, tt := range tests {
		p, err := ParseAddrPattern(tt.pattern)
		if err != nil {
			if tt.match == nil {
				continue
			}
			t.Fatalf("ParseAddrPattern(%q): %v", tt.pattern, err)
		}
		for _, a := range tt.match {
			if !p.Match(a) {
				t.Errorf("%q does not match %q", tt.pattern, a)
			}
		}
		for _, a := range tt.noMatch {
			if p.Match(a) {
				t.Errorf("%q matches %q", tt.pattern, a)
			}
		}
	}
}

func TestAddrPatternErrors(t *testing.T) {
	for _, s := range []string{"", "example.com", "a*@example.com", "*@*.example.com", "user@", "@", `"a@b"@example.com`, "a b@example.com", "@@example.com"} {
		if _, err := ParseAddrPattern(s); err == nil {
			t.Errorf("ParseAddrPattern(%q) = nil error", s)
		}
	}
}

func TestIPRange(t *testing.T) {
	tests := []struct {
		in       string
		in1, out []string
	}{
		{"127.0.0.2-127.0.0.11", []string{"127.0.0.2", "127.0.0.11", "127.0.0.5", "::ffff:127.0.0.3"}, []string{"127.0.0.1", "127.0.0.12", "::1"}},
		{"127.0.0.2", []string{"127.0.0.2"}, []string{"127.0.0.3"}},
		{"127.0.1.0/24", []string{"127.0.1.0", "127.0.1.255"}, []string{"127.0.2.0", "127.0.0.255"}},
		{"2001:db8::/127", []string{"2001:db8::", "2001:db8::1"}, []string{"2001:db8::2"}},
	}
	for _, tt := range tests {
		r, err := ParseIPRange(tt.in)
		if err != nil {
			t.Fatalf("ParseIPRange(%q): %v", tt.in, err)
		}
		for _, a := range tt.in1 {
			if !r.Contains(netip.MustParseAddr(a)) {
				t.Errorf("%s does not hold %s", tt.in, a)
			}
		}
		for _, a := range tt.out {
			if r.Contains(netip.MustParseAddr(a)) {
				t.Errorf("%s holds %s", tt.in, a)
			}
		}
	}
	for _, bad := range []string{"", "x", "127.0.0.11-127.0.0.2", "127.0.0.1-::1", "1.2.3.4/33", "1-2"} {
		if _, err := ParseIPRange(bad); err == nil {
			t.Errorf("ParseIPRange(%q) = nil error", bad)
		}
	}
}
