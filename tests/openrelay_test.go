package tests

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/idna"

	"moat/internal/smtptest"
)

// The open-relay battery. moat routes ourdomain.test (and two IDN
// subdomains of it, one configured as a U-label, one as an A-label) to a
// recording upstream, local.test and users.test to the built-in store.
// Every address trick an open-relay probe uses must either be refused at
// RCPT or be delivered to a routed domain's own destination with the
// recipient unchanged. The invariant, checked after every run over all
// the bytes the upstream ever received and every folder of the store:
// nothing but a routed domain reaches an upstream, nothing lands in the
// store outside a routed local domain's folder.

const (
	// relayUser is the submission user; users.test has users, so the
	// store's recipient check applies there, and local.test has none, so
	// any safe local part is delivered (which lets the battery look at
	// the folders odd local parts land in).
	relayUser   = "submitter@users.test"
	relaySender = "probe@sender.example.net"
	// The replies the battery expects.
	relayDenied = "554 5.7.1 Relay access denied"
	// relayRouted: sender routing in the local part, refused from
	// untrusted clients for routed upstreams (allow_untrusted_routing=no).
	relayRouted     = "554 5.7.1 Relay access denied: no address routing (%, ! or @) in the local part"
	relayBadRcpt    = "501 5.1.3 Bad recipient address syntax"
	relayNeedUTF8   = "553 5.6.7 Internationalised address requires SMTPUTF8"
	relayBadMailbox = "550 5.1.1 Mailbox name not allowed"
	relayRcptOK     = "250 2.1.5 Ok"
)

// openRelayRoutes is the routes map of the battery; upstream is the sink.
func openRelayRoutes(upstream string) map[string]Route {
	return map[string]Route{
		"ourdomain.test":                {Upstream: upstream},
		"bücher.ourdomain.test":         {Upstream: upstream}, // written as a U-label
		"xn--mnchen-3ya.ourdomain.test": {Upstream: upstream}, // münchen, written as an A-label
		"local.test":                    {Upstream: "local"},
		"users.test":                    {Upstream: "local"},
	}
}

// relayUpstreamDomains are the ASCII forms of the domains routed to the sink;
// relayLocalDomains the store folders moat may create.
var (
	relayUpstreamDomains = []string{"ourdomain.test", "xn--bcher-kva.ourdomain.test", "xn--mnchen-3ya.ourdomain.test"}
	relayLocalDomains    = []string{"local.test", "users.test"}
)

// relayCase is one RCPT TO argument and what moat must do with it.
type relayCase struct {
	name string
	arg  string // after "RCPT TO:", brackets included
	utf8 bool   // MAIL FROM with SMTPUTF8
	want string // the RCPT reply: "CODE X.Y.Z [text]"
	// For an accepted recipient, where it must go: exactly this envelope
	// recipient at the upstream, or this folder under data_dir/mail.
	upstream, folder string
}

// relayCases is the battery run from an untrusted client on the MX port.
var relayCases = []relayCase{
	// The baseline: routed domains are accepted and go where routed.
	{name: "routed domain is accepted", arg: "<user@ourdomain.test>", want: relayRcptOK, upstream: "user@ourdomain.test"},
	{name: "routed local domain goes to its folder", arg: "<user@local.test>", want: relayRcptOK, folder: "local.test/user"},

	// Unrouted domains.
	{name: "unrouted domain is denied", arg: "<user@other.test>", want: relayDenied},
	{name: "subdomain of a routed domain is denied", arg: "<user@x.ourdomain.test>", want: relayDenied},
	{name: "routed domain as a prefix is denied", arg: "<user@ourdomain.test.evil.test>", want: relayDenied},
	{name: "routed domain as a suffix of a label is denied", arg: "<user@evilourdomain.test>", want: relayDenied},
	{name: "routed domain with a longer TLD is denied", arg: "<user@ourdomain.testevil>", want: relayDenied},
	{name: "parent of a routed domain is denied", arg: "<user@test>", want: relayDenied},
	{name: "localhost is denied", arg: "<user@localhost>", want: relayDenied},
	{name: "moat's own hostname is denied", arg: "<user@" + Hostname + ">", want: relayDenied},
	{name: "space after the colon changes nothing", arg: " <user@other.test>", want: relayDenied},

	// The percent hack and bang paths: accepted only as the routed
	// domain's own recipients, passed on unchanged (never rewritten into
	// user@other.test).
	{name: "percent hack to a routed upstream is denied", arg: "<user%other.test@ourdomain.test>", want: relayRouted},
	{name: "percent hack to the local store stays in the domain's folder", arg: "<user%other.test@local.test>", want: relayRcptOK, folder: "local.test/user%other.test"},
	{name: "percent hack to an unrouted domain is denied", arg: "<user%ourdomain.test@other.test>", want: relayDenied},
	{name: "bang path to a routed upstream is denied", arg: "<other.test!user@ourdomain.test>", want: relayRouted},
	{name: "bang path to an unrouted domain is denied", arg: "<ourdomain.test!user@other.test>", want: relayDenied},
	{name: "two at-signs, routed last, is a syntax error", arg: "<user@other.test@ourdomain.test>", want: relayBadRcpt},
	{name: "two at-signs, routed first, is a syntax error", arg: "<user@ourdomain.test@other.test>", want: relayBadRcpt},
	{name: "two at-signs to the store is a syntax error", arg: "<user@other.test@local.test>", want: relayBadRcpt},

	// Source routes (RFC 5321 section 4.1.2, appendix C): stripped; the
	// mailbox decides.
	{name: "source route via a routed domain to an unrouted one is denied", arg: "<@ourdomain.test:user@other.test>", want: relayDenied},
	{name: "two-hop source route to an unrouted domain is denied", arg: "<@a.test,@b.test:user@other.test>", want: relayDenied},
	{name: "source route via routed hops to an unrouted domain is denied", arg: "<@ourdomain.test,@local.test:user@other.test>", want: relayDenied},
	{name: "source route to a routed domain is stripped", arg: "<@other.test:user@ourdomain.test>", want: relayRcptOK, upstream: "user@ourdomain.test"},
	{name: "source route without a colon is a syntax error", arg: "<@ourdomain.test,user@other.test>", want: relayBadRcpt},
	{name: "source route with a quoted colon to an unrouted domain is denied", arg: `<@ourdomain.test:"a:b"@other.test>`, want: relayDenied},

	// Quoted local parts hiding an address.
	{name: "quoted local part with an at-sign to a routed upstream is denied", arg: `<"user@other.test"@ourdomain.test>`, want: relayRouted},
	{name: "quoted local part with a percent to a routed upstream is denied", arg: `<"user%other.test"@ourdomain.test>`, want: relayRouted},
	{name: "quoted local part with an at-sign stays in the local domain's folder", arg: `<"user@other.test"@local.test>`, want: relayRcptOK, folder: "local.test/user@other.test"},
	{name: "quoted routed address at an unrouted domain is denied", arg: `<"user@ourdomain.test"@other.test>`, want: relayDenied},
	{name: "quoted address without a domain is a syntax error", arg: `<"user@other.test">`, want: relayBadRcpt},
	{name: "quoted local part with an escaped quote and an at-sign is denied", arg: `<"user\"@other.test"@ourdomain.test>`, want: relayRouted},
	{name: "quoted local part with a closing bracket and an at-sign is denied", arg: `<"a>b@other.test"@ourdomain.test>`, want: relayRouted},
	{name: "quoted path traversal is refused by the store", arg: `<"../users.test/submitter"@local.test>`, want: relayBadMailbox},
	{name: "quoted dot-dot is refused by the store", arg: `<".."@local.test>`, want: relayBadMailbox},
	{name: "quoted backslash is refused by the store", arg: `<"a\\b"@local.test>`, want: relayBadMailbox},

	// Address literals: no route names one.
	{name: "IPv4 loopback literal is denied", arg: "<user@[127.0.0.1]>", want: relayDenied},
	{name: "IPv4 literal in the trusted network is denied", arg: "<user@[192.0.2.1]>", want: relayDenied},
	{name: "IPv6 loopback literal is denied", arg: "<user@[IPv6:::1]>", want: relayDenied},
	{name: "IPv4-mapped IPv6 literal is denied", arg: "<user@[IPv6:::ffff:127.0.0.1]>", want: relayDenied},
	{name: "domain name in brackets is a syntax error", arg: "<user@[ourdomain.test]>", want: relayBadRcpt},
	{name: "general address literal is a syntax error", arg: "<user@[x400:ourdomain.test]>", want: relayBadRcpt},

	// Trailing dots and case.
	{name: "unrouted domain with a trailing dot is denied", arg: "<user@other.test.>", want: relayDenied},
	{name: "routed domain with a trailing dot is accepted", arg: "<user@ourdomain.test.>", want: relayRcptOK, upstream: "user@ourdomain.test."},
	{name: "routed domain with two trailing dots is a syntax error", arg: "<user@ourdomain.test..>", want: relayBadRcpt},
	{name: "routed domain in upper case is accepted", arg: "<USER@OURDOMAIN.TEST>", want: relayRcptOK, upstream: "USER@OURDOMAIN.TEST"},
	{name: "unrouted domain in upper case is denied", arg: "<user@OTHER.TEST>", want: relayDenied},
	{name: "local domain in upper case goes to the lower-case folder", arg: "<USER@LOCAL.TEST>", want: relayRcptOK, folder: "local.test/user"},

	// Internationalised domains.
	{name: "unrouted U-label with SMTPUTF8 is denied", arg: "<user@bücher.test>", utf8: true, want: relayDenied},
	{name: "unrouted U-label without SMTPUTF8 needs it", arg: "<user@bücher.test>", want: relayNeedUTF8},
	{name: "unrouted A-label is denied", arg: "<user@xn--bcher-kva.test>", want: relayDenied},
	{name: "unrouted A-label with SMTPUTF8 is denied", arg: "<user@xn--bcher-kva.test>", utf8: true, want: relayDenied},
	{name: "route written as U-label accepts the U-label", arg: "<user@bücher.ourdomain.test>", utf8: true, want: relayRcptOK, upstream: "user@bücher.ourdomain.test"},
	{name: "route written as U-label accepts the A-label", arg: "<user@xn--bcher-kva.ourdomain.test>", want: relayRcptOK, upstream: "user@xn--bcher-kva.ourdomain.test"},
	{name: "route written as U-label, upper-case U-label", arg: "<user@BÜCHER.ourdomain.test>", utf8: true, want: relayRcptOK, upstream: "user@bücher.ourdomain.test"},
	{name: "route written as U-label, U-label without SMTPUTF8 needs it", arg: "<user@bücher.ourdomain.test>", want: relayNeedUTF8},
	{name: "route written as A-label accepts the U-label", arg: "<user@münchen.ourdomain.test>", utf8: true, want: relayRcptOK, upstream: "user@münchen.ourdomain.test"},
	{name: "route written as A-label accepts the upper-case A-label", arg: "<user@XN--MNCHEN-3YA.ourdomain.test>", want: relayRcptOK, upstream: "user@XN--MNCHEN-3YA.ourdomain.test"},
	{name: "Cyrillic o lookalike is denied", arg: "<user@\u043eurdomain.test>", utf8: true, want: relayDenied},
	{name: "Cyrillic i lookalike is denied", arg: "<user@ourdoma\u0456n.test>", utf8: true, want: relayDenied},
	{name: "Cyrillic e lookalike in the TLD is denied", arg: "<user@ourdomain.t\u0435st>", utf8: true, want: relayDenied},
	{name: "Greek omicron lookalike is denied", arg: "<user@\u03bfurdomain.test>", utf8: true, want: relayDenied},
	{name: "Cyrillic lookalike as an A-label is denied", arg: "<user@xn--urdomain-mbh.test>", want: relayDenied},
	{name: "dotless i lookalike is denied", arg: "<user@ourdoma\u0131n.test>", utf8: true, want: relayDenied},
	{name: "dotted capital I lookalike is denied", arg: "<user@ourdoma\u0130n.test>", utf8: true, want: relayDenied},
	{name: "zero-width joiner inside the routed name is denied", arg: "<user@our\u200ddomain.test>", utf8: true, want: relayDenied},
	// UTS #46 maps full-width letters, upper case and the ideographic
	// full stop: these ARE ourdomain.test to an IDNA lookup, so moat
	// routes them there (never anywhere else) and hands the upstream the
	// name they stand for, not the look-alike spelling.
	{name: "full-width routed name maps to the routed upstream", arg: "<user@\uff4f\uff55\uff52domain.test>", utf8: true, want: relayRcptOK, upstream: "user@ourdomain.test"},
	{name: "ideographic full stop maps to the routed upstream", arg: "<user@ourdomain\u3002test>", utf8: true, want: relayRcptOK, upstream: "user@ourdomain.test"},
	{name: "ideographic full stop to an unrouted domain is denied", arg: "<user@other\u3002test>", utf8: true, want: relayDenied},
	{name: "ideographic full stop making a subdomain is denied", arg: "<user@other\u3002ourdomain.test>", utf8: true, want: relayDenied},

	// Empty and odd paths.
	{name: "null path is a syntax error", arg: "<>", want: relayBadRcpt},
	// RFC 5321 section 4.5.1: <postmaster> is moat's own postmaster,
	// postmaster@hostname; mx.test is not routed here, so that mail goes
	// to the built-in store (and nothing else of the hostname does).
	{name: "bare postmaster goes to the store as the gateway's postmaster", arg: "<postmaster>", want: relayRcptOK, folder: Hostname + "/postmaster"},
	{name: "the gateway's postmaster goes to the store", arg: "<POSTMASTER@" + Hostname + ">", want: relayRcptOK, folder: Hostname + "/postmaster"},
	{name: "postmaster of a routed domain is accepted", arg: "<Postmaster@ourdomain.test>", want: relayRcptOK, upstream: "Postmaster@ourdomain.test"},
	{name: "postmaster of an unrouted domain is denied", arg: "<postmaster@other.test>", want: relayDenied},
	{name: "no angle brackets is a syntax error", arg: "user@other.test", want: relayBadRcpt},
	{name: "unclosed bracket is a syntax error", arg: "<user@other.test", want: relayBadRcpt},
	{name: "second path as a parameter is a syntax error", arg: "<user@ourdomain.test> <user@other.test>", want: relayBadRcpt},
	{name: "comma-separated list is a syntax error", arg: "<user@ourdomain.test,user@other.test>", want: relayBadRcpt},
	{name: "space inside the path is a syntax error", arg: "<user@ourdomain.test user@other.test>", want: relayBadRcpt},
	{name: "ORCPT naming an unrouted address is refused", arg: "<user@ourdomain.test> ORCPT=rfc822;user@other.test", want: "555 5.5.4"},
	{name: "overlong label is a syntax error", arg: "<user@" + strings.Repeat("a", 64) + ".ourdomain.test>", want: relayBadRcpt},
	{name: "overlong domain is a syntax error", arg: "<user@" + strings.Repeat("a.", 124) + "ourdomain.test>", want: relayBadRcpt},
	{name: "long unrouted subdomain of a routed domain is denied", arg: "<u@" + strings.Repeat("a.", 110) + "ourdomain.test>", want: relayDenied},
	{name: "overlong local part is a syntax error", arg: "<" + strings.Repeat("u", 65) + "@ourdomain.test>", want: relayBadRcpt},
	{name: "NUL in the local part is a syntax error", arg: "<user\x00@ourdomain.test>", want: relayBadRcpt},
	{name: "NUL truncating to an unrouted domain is a syntax error", arg: "<user@other.test\x00.ourdomain.test>", want: relayBadRcpt},
	{name: "NUL in a quoted local part is a syntax error", arg: "<\"user\x00\"@ourdomain.test>", want: relayBadRcpt},
	{name: "bare CR truncating to an unrouted domain is a syntax error", arg: "<user@other.test\r.ourdomain.test>", want: relayBadRcpt},
	{name: "bare CR before a second RCPT is a syntax error", arg: "<user@ourdomain.test>\rRCPT TO:<user@other.test>", want: relayBadRcpt},
	{name: "tab inside the domain is a syntax error", arg: "<user@other.test\t.ourdomain.test>", want: relayBadRcpt},
	{name: "invalid UTF-8 is a syntax error", arg: "<user@\xffourdomain.test>", utf8: true, want: relayBadRcpt},
}

// relayUnrouted must be refused whoever the client is: outbound
// relay does not exist yet, for trusted networks or authenticated users.
var relayUnrouted = []string{
	"<user@other.test>",
	"<user@x.ourdomain.test>",
	"<user@ourdomain.test.evil.test>",
	"<user@evilourdomain.test>",
	"<user@[127.0.0.1]>",
	"<user@[192.0.2.1]>",
	"<user@[IPv6:::1]>",
	"<@ourdomain.test:user@other.test>",
	"<@a.test,@b.test:user@other.test>",
	"<user@other.test.>",
	"<user@OTHER.TEST>",
	"<user@xn--bcher-kva.test>",
	"<postmaster@other.test>",
}

// TestOpenRelay runs the battery from an untrusted client, the unrouted
// destinations from a trusted client and from an authenticated submission
// user, and a transaction mixing routed and unrouted recipients; then it
// checks the invariant over everything the upstreams and stores received.
func TestOpenRelay(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: openRelayRoutes(sink.Addr()), Mailboxes: true})
	m.ForbidInLog(mailboxPassword)
	addUser(t, m, relayUser, mailboxPassword)
	trustedSink := smtptest.NewSink(t)
	trusted := StartMoat(t, Config{Routes: openRelayRoutes(trustedSink.Addr()), TrustedNetworks: []string{"127.0.0.0/8", "::1/128"}})
	defer func() {
		relayCheckUpstream(t, "untrusted moat's upstream", sink)
		relayCheckUpstream(t, "trusted moat's upstream", trustedSink)
		relayCheckStore(t, m)
		relayCheckStore(t, trusted)
	}()

	t.Run("untrusted", func(t *testing.T) {
		for _, tc := range relayCases {
			t.Run(tc.name, func(t *testing.T) {
				d := Dial(t, m.Addr)
				d.EHLO("client.example.net")
				runRelayCase(t, d, m, sink, relaySender, tc)
				d.Expect("QUIT", "221")
			})
		}
	})

	t.Run("trusted client is denied unrouted destinations", func(t *testing.T) {
		for _, arg := range relayUnrouted {
			t.Run(arg, func(t *testing.T) {
				d := Dial(t, trusted.Addr)
				d.EHLO("client.example.net")
				runRelayCase(t, d, trusted, trustedSink, relaySender, relayCase{arg: arg, want: relayDenied})
				d.Expect("QUIT", "221")
			})
		}
		t.Run("routed domain is accepted", func(t *testing.T) {
			d := Dial(t, trusted.Addr)
			d.EHLO("client.example.net")
			runRelayCase(t, d, trusted, trustedSink, relaySender, relayCase{arg: "<trusted@ourdomain.test>", want: relayRcptOK, upstream: "trusted@ourdomain.test"})
		})
	})

	t.Run("authenticated user is denied unrouted destinations", func(t *testing.T) {
		// One session for all, the mixed transaction included: logging
		// in is slow under -race. No subtests, so that the Dialogue
		// fails the test that owns it.
		d := relaySubmissionLogin(t, m)
		for _, arg := range relayUnrouted {
			runRelayCase(t, d, m, sink, relayUser, relayCase{arg: arg, want: relayDenied})
		}
		runRelayCase(t, d, m, sink, relayUser, relayCase{arg: "<submitted@ourdomain.test>", want: relayRcptOK, upstream: "submitted@ourdomain.test"})
		relayMixedTransaction(t, d, sink, relayUser, "mixed-submission@ourdomain.test")
		d.Expect("QUIT", "221")
	})

	t.Run("mixed recipients", func(t *testing.T) {
		t.Run("untrusted", func(t *testing.T) {
			d := Dial(t, m.Addr)
			d.EHLO("client.example.net")
			relayMixedTransaction(t, d, sink, relaySender, "mixed-mx@ourdomain.test")
			d.Expect("QUIT", "221")
		})
		t.Run("trusted", func(t *testing.T) {
			d := Dial(t, trusted.Addr)
			d.EHLO("client.example.net")
			relayMixedTransaction(t, d, trustedSink, relaySender, "mixed-trusted@ourdomain.test")
			d.Expect("QUIT", "221")
		})
	})
}

// TestOpenRelayTurnaround: the commands that hand a connection's queue
// to the client or reveal addresses are not there.
func TestOpenRelayTurnaround(t *testing.T) {
	t.Parallel()
	m := StartMoat(t, Config{Routes: openRelayRoutes(smtptest.NewSink(t).Addr())})
	d := Dial(t, m.Addr)
	d.EHLO("client.example.net")
	for _, cmd := range []string{"TURN", "ATRN ourdomain.test", "ETRN ourdomain.test", "VRFY user@ourdomain.test", "EXPN postmaster"} {
		if r := d.Cmd(cmd); !r.Is("502 5.5.1") {
			t.Errorf("%s: reply %q, want 502 5.5.1", cmd, r.String())
		}
	}
	d.Expect("QUIT", "221")
}

// runRelayCase runs one transaction on d: MAIL, the RCPT under test, and
// for an accepted recipient DATA, then checks where the message went.
// It leaves the session ready for the next MAIL.
func runRelayCase(t *testing.T, d *Dialogue, m *Moat, sink *smtptest.Sink, from string, tc relayCase) {
	t.Helper()
	mail := "MAIL FROM:<" + from + ">"
	if tc.utf8 {
		mail += " SMTPUTF8"
	}
	d.Expect(mail, "250")
	r := d.Cmd("RCPT TO:" + tc.arg)
	if !r.Is(tc.want) {
		t.Errorf("RCPT TO:%q: reply %q, want %q", tc.arg, r.String(), tc.want)
	}
	if r.Code()/100 != 2 {
		d.Expect("RSET", "250")
		return
	}
	if tc.upstream == "" && tc.folder == "" {
		t.Errorf("RCPT TO:%q was accepted, and the case says nothing about where it may go", tc.arg)
	}
	msg := NewMessage(from, "relay-probe@ourdomain.test", "open relay probe")
	d.Expect("DATA", "354")
	d.Send(string(dotStuff(msg.Bytes())) + ".\r\n")
	if r := d.Read(); r.Code() != 250 {
		t.Fatalf("end of data for RCPT TO:%q: %q, want 250", tc.arg, r.String())
	}
	switch {
	case tc.upstream != "":
		tx := relayAwaitMarker(t, sink, msg.Marker)
		got := make([]string, len(tx.RcptArgs))
		for i, a := range tx.RcptArgs {
			got[i], _ = relayRcptPath(a)
		}
		if len(got) != 1 || got[0] != tc.upstream {
			t.Errorf("RCPT TO:%q reached the upstream as %q, want exactly [%q]", tc.arg, got, tc.upstream)
		}
	case tc.folder != "":
		if !relayStoredWith(t, filepath.Join(m.DataDir, "mail", filepath.FromSlash(tc.folder)), msg.Marker) {
			t.Errorf("RCPT TO:%q: the message is not in the store's %s", tc.arg, tc.folder)
		}
	}
}

// relayMixedTransaction sends one message to an unrouted, a routed and a
// subdomain recipient: the unrouted ones are denied at RCPT, the routed
// one alone reaches the upstream.
func relayMixedTransaction(t *testing.T, d *Dialogue, sink *smtptest.Sink, from, routed string) {
	t.Helper()
	msg := NewMessage(from, routed, "mixed recipients")
	d.Expect("MAIL FROM:<"+from+">", "250")
	d.Expect("RCPT TO:<user@other.test>", relayDenied)
	d.Expect("RCPT TO:<"+routed+">", relayRcptOK)
	d.Expect("RCPT TO:<user@x.ourdomain.test>", relayDenied)
	d.Expect("RCPT TO:<user%other.test@ourdomain.test.evil.test>", relayDenied)
	// The store is another destination: not in this transaction.
	d.Expect("RCPT TO:<user@local.test>", "452 4.5.3")
	d.Expect("DATA", "354")
	d.Send(string(dotStuff(msg.Bytes())) + ".\r\n")
	if r := d.Read(); r.Code() != 250 {
		t.Fatalf("end of data: %q, want 250", r.String())
	}
	tx := relayAwaitMarker(t, sink, msg.Marker)
	if len(tx.RcptArgs) != 1 || tx.RcptArgs[0] != "TO:<"+routed+">" {
		t.Errorf("the upstream heard RCPT %q, want only TO:<%s>", tx.RcptArgs, routed)
	}
}

// relaySubmissionLogin opens a submission session as relayUser: STARTTLS,
// EHLO again, AUTH PLAIN.
func relaySubmissionLogin(t *testing.T, m *Moat) *Dialogue {
	t.Helper()
	d := Dial(t, m.SubmissionAddr)
	if _, ok := d.EHLO("client.example.net")["STARTTLS"]; !ok {
		t.Fatal("submission does not offer STARTTLS")
	}
	d.Expect("STARTTLS", "220")
	d.StartTLS()
	d.EHLO("client.example.net")
	creds := base64.StdEncoding.EncodeToString([]byte("\x00" + relayUser + "\x00" + mailboxPassword))
	// The store's bcrypt cost takes seconds in a -race binary on a busy
	// machine: more than the per-reply default.
	d.Timeout = 2 * time.Minute
	d.Expect("AUTH PLAIN "+creds, "235")
	d.Timeout = waitTimeout
	return d
}

// relayAwaitMarker waits for the upstream transaction whose message carries
// marker.
func relayAwaitMarker(t *testing.T, sink *smtptest.Sink, marker string) smtptest.Transaction {
	t.Helper()
	var found *smtptest.Transaction
	sink.Await(waitTimeout, func(s *smtptest.Sink) bool {
		for _, tx := range s.Transactions() {
			if bytes.Contains(tx.Message, []byte(marker)) {
				found = &tx
				return true
			}
		}
		return false
	})
	if found == nil {
		t.Fatalf("no upstream transaction with marker %s within %v", marker, waitTimeout)
	}
	return *found
}

// relayStoredWith reports whether a message with marker is in the Maildir at
// dir (new/ or cur/).
func relayStoredWith(t *testing.T, dir, marker string) bool {
	t.Helper()
	for _, sub := range []string{"new", "cur"} {
		files, _ := filepath.Glob(filepath.Join(dir, sub, "*"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err == nil && bytes.Contains(b, []byte(marker)) {
				return true
			}
		}
	}
	return false
}

// relayRcptPath returns the path of a RCPT argument as the upstream got it
// ("TO:<path> params"), quoted strings skipped when looking for '>'.
func relayRcptPath(arg string) (string, bool) {
	if len(arg) < 3 || !strings.EqualFold(arg[:3], "TO:") {
		return "", false
	}
	s := strings.TrimLeft(arg[3:], " ")
	if !strings.HasPrefix(s, "<") {
		return "", false
	}
	inQuote := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '>':
			return s[1:i], true
		}
	}
	return "", false
}

// relayRouteForm is the routing form of the domain of path (source route
// dropped): A-labels, lower case, no trailing dot.
func relayRouteForm(path string) string {
	if i := strings.IndexByte(path, ':'); strings.HasPrefix(path, "@") && i >= 0 {
		path = path[i+1:]
	}
	at := strings.LastIndexByte(path, '@')
	if at < 0 {
		return ""
	}
	d := strings.TrimSuffix(path[at+1:], ".")
	if a, err := idna.Lookup.ToASCII(d); err == nil {
		d = a
	}
	return strings.ToLower(d)
}

// relayCheckUpstream reads every RCPT command the upstream ever
// received, in its raw bytes (finished transactions or not), and fails
// for any whose domain is not routed to it.
func relayCheckUpstream(t *testing.T, what string, sink *smtptest.Sink) {
	t.Helper()
	for _, line := range strings.Split(string(sink.Raw()), "\r\n") {
		verb, arg, _ := strings.Cut(line, " ")
		if !strings.EqualFold(verb, "RCPT") {
			continue
		}
		path, ok := relayRcptPath(arg)
		if !ok || strings.HasPrefix(path, "@") || !slices.Contains(relayUpstreamDomains, relayRouteForm(path)) {
			t.Errorf("RELAY: %s received %q, which is not for a routed domain", what, line)
		}
	}
}

// relayCheckStore fails for any folder of the built-in store that is
// not a routed local domain's.
func relayCheckStore(t *testing.T, m *Moat) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(m.DataDir, "mail"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == Hostname {
			// The gateway's own postmaster (RFC 5321 section 4.5.1), and
			// nobody else under the hostname.
			names, _ := os.ReadDir(filepath.Join(m.DataDir, "mail", Hostname))
			for _, n := range names {
				if n.Name() != "postmaster" {
					t.Errorf("the store has %s/%s: only the postmaster is taken for the hostname", Hostname, n.Name())
				}
			}
			continue
		}
		if !slices.Contains(relayLocalDomains, e.Name()) {
			t.Errorf("the store has %q under mail/, which is not a routed local domain", e.Name())
		}
	}
}
