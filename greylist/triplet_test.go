package greylist

import (
	"net/netip"
	"testing"
)

func TestNormalizeSender(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		// unchanged, lower-cased
		{"plain", "Alice@Example.ORG", "alice@example.org"},
		{"angle brackets", "<alice@example.org>", "alice@example.org"},
		{"null sender", "", ""},
		{"null sender in brackets", "<>", ""},
		{"no domain", "MAILER-DAEMON", "mailer-daemon"},
		{"dotted name", "john.doe@example.org", "john.doe@example.org"},
		{"hyphenated name", "mary-jane@example.org", "mary-jane@example.org"},
		{"short number kept", "team-42@example.org", "team-42@example.org"},
		{"year kept", "report-2024@example.org", "report-2024@example.org"},
		{"word that is hex, no digit", "info-decade@example.org", "info-decade@example.org"},
		{"letters-only tag after =", "bounces-tester@bounces.internal.example", "bounces-tester@bounces.internal.example"},
		{"quoted local part", `"john+doe"@example.org`, `"john+doe"@example.org`},
		{"bare equals, no hyphen", "user=example.com@lists.example.org", "user=example.com@lists.example.org"},

		// BATV
		{"prvs 9-digit tag", "prvs=000118587=alistair.francis@opensource.wdc.com", "alistair.francis@opensource.wdc.com"},
		{"prvs hex tag", "prvs=750139ea6=Alistair.Francis@wdc.com", "alistair.francis@wdc.com"},
		{"prvs 10-char tag", "prvs=4068eb2540=simexpand@ldap.example.com", "simexpand@ldap.example.com"},
		{"prvs user=tag", "prvs=bounce=0123456789@example.net", "bounce@example.net"},
		{"prvs user/tag (old Exim)", "prvs=jane/0123abcdef@example.net", "jane@example.net"},
		{"prvs without a tag", "prvs=hello=world@example.net", "prvs=hello=world@example.net"},
		{"msprvs1 SparkPost", "msprvs1=17445PmZxEW3P=bounces-39870-3@bounces.example.com", "bounces@bounces.example.com"},
		{"msprvs1 letters", "msprvs1=1202020UU5ulBw=bounces-tester@bounces.internal.example", "bounces-tester@bounces.internal.example"},
		{"btv1 Barracuda", "btv1==34826e458e2==Ryan.Carmichael@dynetics.example", "ryan.carmichael@dynetics.example"},
		{"btv1 Barracuda 2", "btv1==760cdc7c545==julian.burellaperez@heig-vd.example", "julian.burellaperez@heig-vd.example"},

		// SRS
		{"SRS0 kernel.org", "SRS0=Q4JT=33=vger.kernel.org=git-owner@kernel.org", "git-owner@vger.kernel.org"},
		{"SRS0 inumbo", "SRS0=K5hw=5U=suse.com=jbeulich@srs-se1.protection.inumbo.net", "jbeulich@suse.com"},
		{"SRS0 dotted local", "SRS0=hbbY=L6=arm.com=michal.orzel@srs-us1.protection.inumbo.net", "michal.orzel@arm.com"},
		{"SRS0 local with =", "SRS0=aaZh=XK=example.org=a=b@fwd.example.net", "a=b@example.org"},
		{"SRS0 + separator", "SRS0+xGtk=TZ=example.org=carol@fwd.example.net", "carol@example.org"},
		{"SRS0 of a VERP sender", "SRS0=6aBQ=PK=kvack.org=owner-linux-mm@kernel.org", "owner-linux-mm@kvack.org"},
		{"SRS1", "SRS1=X9kq=fwd1.example.net==Qx4j=TZ=example.org=dave@fwd2.example.com", "dave@example.org"},
		{"SRS1 unrecoverable", "SRS1=X9kq=fwd1.example.net=garbage@fwd2.example.com", "srs1=x9kq=fwd1.example.net=garbage@fwd2.example.com"},
		{"SRS0 malformed", "SRS0=abc@fwd.example.net", "srs0=abc@fwd.example.net"},
		{"BATV around SRS", "prvs=0123456789=SRS0=Q4JT=33=example.org=erin@fwd.example.net", "erin@example.org"},

		// VERP and tags
		{"plus tag", "Alice+Newsletter@Example.org", "alice@example.org"},
		{"Mailman VERP", "mailman-bounces+bob=example.com@lists.example.org", "mailman-bounces@lists.example.org"},
		{"SendGrid", "bounces+1234567-abcd-bob=example.com@em123.sendgrid.example", "bounces@em123.sendgrid.example"},
		{"ezmlm VERP", "linux-kernel-return-123-bob=example.com@vger.example.org", "linux-kernel-return@vger.example.org"},
		{"ezmlm VERP, hyphenated rcpt", "list-return-4567-mary-jane=example.com@lists.example.org", "list-return@lists.example.org"},
		{"owner VERP", "owner-announce-bob=example.com@lists.example.org", "owner-announce@lists.example.org"},
		{"Mailchimp", "bounce-mc.us5_12345678.1234567-bob=example.com@mail123.suw11.mcsv.example", "bounce@mail123.suw11.mcsv.example"},
		{"Salesforce", "bounce-123_HTML-456789012-1234567-7123456-123@bounce.email.example.com", "bounce@bounce.email.example.com"},
		{"bounces-digits", "bounces-39870-3@bounces.example.com", "bounces@bounces.example.com"},
		{"bounce dot", "bounce.98765@mailer.example.com", "bounce@mailer.example.com"},
		{"bounce word only", "bounce-handler@example.com", "bounce-handler@example.com"},
		{"trailing counter", "newsletter-20240115@news.example.com", "newsletter@news.example.com"},
		{"trailing hex id", "noreply-8f3a9c21d4@notify.example.com", "noreply@notify.example.com"},
		{"trailing = id", "user=1234567@example.com", "user@example.com"},
		{"two trailing ids", "news-20240115-998877@example.com", "news@example.com"},
		{"mostly digits", "alerts-x12345@example.com", "alerts@example.com"},
		{"Amazon SES", "0100018c5e3f1234-abcdef12-3456-7890-abcd-ef1234567890-000000@amazonses.com", "#@amazonses.com"},
		{"not a tag: start", "+tag@example.com", "+tag@example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NormalizeSender(tt.in); got != tt.want {
				t.Errorf("NormalizeSender(%q) = %q, want %q", tt.in, got, tt.want)
			}
			// Normalising is idempotent: a stored sender matches again.
			if got := NormalizeSender(tt.want); got != tt.want {
				t.Errorf("NormalizeSender(%q) = %q, not idempotent", tt.want, got)
			}
		})
	}
}

func TestMakeTriplet(t *testing.T) {
	p := DefaultParams()
	tests := []struct {
		name, client, sender, rcpt string
		p                          Params
		wantNet, wantKey           string
	}{
		{"IPv4 /24", "192.0.2.77", "Alice@Example.org", "Bob@Example.COM", p,
			"192.0.2.0/24", "t|192.0.2.0/24|alice@example.org|bob@example.com"},
		{"IPv4-mapped", "::ffff:192.0.2.77", "alice@example.org", "<bob@example.com>", p,
			"192.0.2.0/24", "t|192.0.2.0/24|alice@example.org|bob@example.com"},
		{"IPv6 /64", "2001:db8:1:2:a:b:c:d", "", "bob@example.com", p,
			"2001:db8:1:2::/64", "t|2001:db8:1:2::/64||bob@example.com"},
		{"IPv6 zone dropped", "fe80::1%eth0", "a@example.org", "b@example.com", p,
			"fe80::/64", "t|fe80::/64|a@example.org|b@example.com"},
		{"custom prefixes", "198.51.100.200", "a@example.org", "b@example.com", Params{IPv4Prefix: 32, IPv6Prefix: 48},
			"198.51.100.200/32", "t|198.51.100.200/32|a@example.org|b@example.com"},
		{"zero prefixes mean default", "2001:db8:1:2::5", "a@example.org", "b@example.com", Params{},
			"2001:db8:1:2::/64", "t|2001:db8:1:2::/64|a@example.org|b@example.com"},
		{"| in the address", "192.0.2.1", "we|ird%@example.org", "b@example.com", p,
			"192.0.2.0/24", "t|192.0.2.0/24|we%7cird%25@example.org|b@example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := MakeTriplet(netip.MustParseAddr(tt.client), tt.sender, tt.rcpt, tt.p)
			if tr.Network.String() != tt.wantNet {
				t.Errorf("Network = %v, want %s", tr.Network, tt.wantNet)
			}
			if got := tr.Key(); got != tt.wantKey {
				t.Errorf("Key() = %q, want %q", got, tt.wantKey)
			}
			back, ok := parseTripletKey(tr.Key())
			if !ok || back != tr {
				t.Errorf("parseTripletKey(%q) = %+v, %v; want %+v", tr.Key(), back, ok, tr)
			}
		})
	}
}

func TestTripletKeyBodyHash(t *testing.T) {
	tr := MakeTriplet(netip.MustParseAddr("192.0.2.1"), "a@example.org", "b@example.com", DefaultParams())
	tr.BodyHash = "9f86d081884c7d65"
	want := "t|192.0.2.0/24|a@example.org|b@example.com|9f86d081884c7d65"
	if got := tr.Key(); got != want {
		t.Fatalf("Key() = %q, want %q", got, want)
	}
	if back, ok := parseTripletKey(want); !ok || back != tr {
		t.Fatalf("parseTripletKey = %+v, %v", back, ok)
	}
	for _, bad := range []string{"", "t|", "t|nonsense|a|b", "n|192.0.2.0/24", "t|192.0.2.0/24|a", "t|192.0.2.0/24|a|b|c|d"} {
		if _, ok := parseTripletKey(bad); ok {
			t.Errorf("parseTripletKey(%q) succeeded", bad)
		}
	}
}

func TestParamsValidate(t *testing.T) {
	if err := DefaultParams().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := []Params{
		{Delay: -1, RetryWindow: 1, Lifetime: 1},
		{Delay: 10, RetryWindow: 10, Lifetime: 1},
		{Delay: 1, RetryWindow: 10, Lifetime: 0},
		{Delay: 1, RetryWindow: 10, Lifetime: 1, AutoAllowAfter: -1},
		{Delay: 1, RetryWindow: 10, Lifetime: 1, IPv4Prefix: 33},
		{Delay: 1, RetryWindow: 10, Lifetime: 1, IPv6Prefix: 129},
	}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("%+v validated", p)
		}
	}
}

func FuzzNormalizeSender(f *testing.F) {
	for _, s := range []string{"prvs=0123456789=a@b.example", "SRS0=Q4JT=33=vger.kernel.org=git-owner@kernel.org",
		"SRS1=X9kq=fwd1.example.net==Qx4j=TZ=example.org=dave@fwd2.example.com", "list-return-1-a=b.example@c.example", "a+b@c", "<>", "@", "x@"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := NormalizeSender(s)
		if NormalizeSender(n) != n {
			t.Errorf("NormalizeSender(%q) = %q, and again %q", s, n, NormalizeSender(n))
		}
	})
}
