package dmarc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dmarc"
	"github.com/miekg/dns"
	"go.yaml.in/yaml/v3"

	"moat/filters"
	"moat/internal/dnstest"
)

// The shared copy of the DMARC test data when this checkout has one, else
// the copy in testdata (see testdata/PROVENANCE.md and LICENSES.md).
func testdataDir(t *testing.T) string {
	t.Helper()
	const shared = "../../../shared/testdata/dmarc"
	if _, err := os.Stat(filepath.Join(shared, "cases.yaml")); err == nil {
		return shared
	}
	return "testdata"
}

// caseTimeout bounds each case; the TIMEOUT name takes this long.
const caseTimeout = 1 * time.Second

type casesFile struct {
	DNS   map[string]any `yaml:"dns"`
	Cases []dmarcCase    `yaml:"cases"`
}

type dmarcCase struct {
	Name     string  `yaml:"name"`
	Message  string  `yaml:"message"`
	ClientIP *string `yaml:"client_ip"`
	MailFrom *string `yaml:"mail_from"`
	SPF      *struct {
		Domain string `yaml:"domain"`
		Result string `yaml:"result"`
	} `yaml:"spf"`
	DKIM []struct {
		D      string `yaml:"d"`
		Result string `yaml:"result"`
	} `yaml:"dkim"`
	ExpectSymbol string `yaml:"expect_symbol"`
	Expect       struct {
		DMARC       string `yaml:"dmarc"`
		Policy      string `yaml:"policy"`
		Disposition string `yaml:"disposition"`
		PolicyFrom  string `yaml:"policy_from"`
	} `yaml:"expect"`
}

func (c dmarcCase) dkim() []filters.DKIMResult {
	var out []filters.DKIMResult
	for _, d := range c.DKIM {
		out = append(out, filters.DKIMResult{Result: d.Result, Domain: d.D})
	}
	return out
}

func (c dmarcCase) spf() filters.SPFResult {
	if c.SPF == nil {
		return filters.SPFResult{Result: filters.None}
	}
	return filters.SPFResult{Result: c.SPF.Result, Domain: c.SPF.Domain, Identity: "mailfrom"}
}

// serveCasesDNS serves the cases' DNS: TXT records, NXDOMAIN (nothing),
// TIMEOUT (a silent name).
func serveCasesDNS(t *testing.T, data map[string]any) *dnstest.Server {
	t.Helper()
	srv := dnstest.New(t)
	for name, v := range data {
		owner := dns.Fqdn(strings.ToLower(name))
		switch v := v.(type) {
		case string:
			switch v {
			case "NXDOMAIN":
			case "TIMEOUT":
				srv.Silent(owner)
			default:
				t.Fatalf("dns %s: unknown %q", name, v)
			}
		case map[string]any:
			for typ, vals := range v {
				if typ != "TXT" {
					t.Fatalf("dns %s: type %s not handled", name, typ)
				}
				for _, s := range vals.([]any) {
					srv.AddRR(&dns.TXT{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300},
						Txt: []string{strings.ReplaceAll(s.(string), `\`, `\\`)}})
				}
			}
		default:
			t.Fatalf("dns %s: %v", name, v)
		}
	}
	return srv
}

// headerOf returns a message's header section, up to the empty line.
func headerOf(msg []byte) []byte {
	for _, sep := range []string{"\r\n\r\n", "\n\n"} {
		if i := bytes.Index(msg, []byte(sep)); i >= 0 {
			return msg[:i+len(sep)]
		}
	}
	return msg
}

func loadCases(t *testing.T) (string, casesFile) {
	t.Helper()
	dir := testdataDir(t)
	data, err := os.ReadFile(filepath.Join(dir, "cases.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf casesFile
	if err := yaml.Unmarshal(data, &cf); err != nil {
		t.Fatal(err)
	}
	return dir, cf
}

// TestRspamdCases runs the rspamd DMARC cases twice: through Evaluate with
// the case's SPF and DKIM results, and through the check (From from the
// message header, SPF evaluated for real against the cases' DNS, DKIM
// results injected through VerifyDKIM).
func TestRspamdCases(t *testing.T) {
	dir, cf := loadCases(t)
	srv := serveCasesDNS(t, cf.DNS)
	r := srv.Resolver()
	var passed, total int
	t.Run("cases", func(t *testing.T) {
		for _, c := range cf.Cases {
			msg, err := os.ReadFile(filepath.Join(dir, c.Message))
			if err != nil {
				t.Fatal(err)
			}
			// Never sampled in: every pct in the cases is 0 or 100.
			never := func(int) int { return 99 }

			total++
			ok := t.Run(c.Name+"/evaluate", func(t *testing.T) {
				from, err := FromDomain(headerOf(msg))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
				defer cancel()
				e := Evaluator{IntN: never}
				o := e.evaluate(ctx, r, from, c.spf(), c.dkim())
				checkOutcome(t, c, o)
			})

			total++
			ok2 := t.Run(c.Name+"/check", func(t *testing.T) {
				txn := &filters.Txn{
					Helo: "mx.example.net", Header: headerOf(msg), DNS: r, Auth: &filters.Auth{},
					Message: func() io.Reader { return bytes.NewReader(msg) },
				}
				if c.ClientIP != nil && c.MailFrom != nil {
					txn.ClientIP = netip.MustParseAddr(*c.ClientIP)
					txn.From = *c.MailFrom
				} else {
					// No envelope in the case: SPF has nothing to say.
					txn.Auth.SPF = &filters.SPFResult{Result: filters.None}
				}
				verify := func(context.Context, filters.Resolver, io.Reader) ([]filters.DKIMResult, error) {
					return c.dkim(), nil
				}
				ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
				defer cancel()
				res, ok := NewCheck(verify, WithIntN(never)).Run(ctx, filters.StageData, txn)
				if !ok {
					t.Fatal("no result")
				}
				if c.SPF != nil && (txn.Auth.SPF.Result != c.SPF.Result || txn.Auth.SPF.Domain != c.SPF.Domain) {
					t.Errorf("SPF evaluated as %s for %s, the case says %s for %s (%s)",
						txn.Auth.SPF.Result, txn.Auth.SPF.Domain, c.SPF.Result, c.SPF.Domain, txn.Auth.SPF.Reason)
				}
				if !txn.Auth.DKIMDone || len(txn.Auth.DKIM) != len(c.DKIM) {
					t.Errorf("DKIM not stored: %+v", txn.Auth)
				}
				if txn.Auth.DMARC == nil {
					t.Fatal("DMARC not stored")
				}
				if res.Check != "dmarc" || res.Value != c.Expect.DMARC {
					t.Errorf("%s (%s): got %s, want %s; reason: %s", c.Name, c.ExpectSymbol, res.Value, c.Expect.DMARC, res.Reason)
				}
				want := c.Expect.Disposition
				if want == "" {
					want = PolicyNone
				}
				if res.Fields["policy"] != want {
					t.Errorf("policy field %v, want %s", res.Fields["policy"], want)
				}
				if res.Fields["domain"] != txn.Auth.DMARC.FromDomain {
					t.Errorf("domain field %v", res.Fields["domain"])
				}
			})
			for _, b := range []bool{ok, ok2} {
				if b {
					passed++
				}
			}
		}
	})
	t.Logf("rspamd DMARC cases: %d of %d runs pass (%d cases, each through Evaluate and through the check)",
		passed, total, len(cf.Cases))
}

func checkOutcome(t *testing.T, c dmarcCase, o outcome) {
	t.Helper()
	t.Logf("%s: %s", o.Result, o.Reason)
	if o.Result != c.Expect.DMARC {
		t.Errorf("%s (%s): got %s, want %s; reason: %s", c.Name, c.ExpectSymbol, o.Result, c.Expect.DMARC, o.Reason)
	}
	if c.Expect.Policy != "" && o.requested != c.Expect.Policy {
		t.Errorf("requested policy %q, want %q", o.requested, c.Expect.Policy)
	}
	wantDisp := c.Expect.Disposition
	if wantDisp == "" {
		wantDisp = PolicyNone
	}
	if o.Policy != wantDisp {
		t.Errorf("applied policy %q, want %q", o.Policy, wantDisp)
	}
	if (c.Expect.PolicyFrom == "sp") != o.fromSP {
		t.Errorf("policy from sp=: %v, want %q", o.fromSP, c.Expect.PolicyFrom)
	}
}

type opendmarcTables struct {
	RecordParse []struct {
		N      int    `yaml:"n"`
		Record string `yaml:"record"`
		Expect string `yaml:"expect"`
		Note   string `yaml:"note"`
	} `yaml:"record_parse"`
	Alignment []struct {
		N       int    `yaml:"n"`
		A       string `yaml:"domain_a"`
		B       string `yaml:"domain_b"`
		Mode    string `yaml:"mode"`
		Aligned bool   `yaml:"aligned"`
		Note    string `yaml:"note"`
	} `yaml:"alignment"`
}

// Where moat follows RFC 7489 rather than OpenDMARC's leniency. The test
// fails if one of these starts to agree with OpenDMARC (then delete it).
var (
	parseDeviations = map[int]string{
		5: "p=n: RFC 7489 section 6.3 allows only none, quarantine and reject; OpenDMARC accepts a prefix. " +
			"moat reports the record as malformed (permerror)",
	}
	alignmentDeviations = map[int]string{
		5: `".mac.com." has an empty first label: malformed, so never aligned; OpenDMARC strips the dots`,
		6: `"....mac.com...." likewise`,
	}
)

// TestOpenDMARCTables runs OpenDMARC's record-parsing and alignment tables.
func TestOpenDMARCTables(t *testing.T) {
	dir := testdataDir(t)
	data, err := os.ReadFile(filepath.Join(dir, "opendmarc-tables.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var tb opendmarcTables
	if err := yaml.Unmarshal(data, &tb); err != nil {
		t.Fatal(err)
	}
	agree, deviate := 0, 0
	for _, c := range tb.RecordParse {
		t.Run(fmt.Sprintf("parse/%d", c.N), func(t *testing.T) {
			// ok: a usable record; empty, bad_version: not a DMARC record
			// (discarded, RFC 7489 6.6.3 step 2); bad_value, no_required_p:
			// a DMARC record that is malformed (permerror).
			got := "ok"
			var perr error
			switch {
			case !isDMARC(c.Record):
				got = "not_dmarc"
			default:
				if _, perr = parseRecord(c.Record); perr != nil {
					got = "malformed"
				}
			}
			want := map[string]string{"ok": "ok", "empty": "not_dmarc", "bad_version": "not_dmarc",
				"bad_value": "malformed", "no_required_p": "malformed"}[c.Expect]
			why, dev := parseDeviations[c.N]
			switch {
			case got == want && dev:
				t.Errorf("%q: now agrees with OpenDMARC (%s); remove the deviation", c.Record, got)
			case got == want:
				agree++
			case dev:
				deviate++
				t.Logf("%q: %s (OpenDMARC: %s): %s", c.Record, got, c.Expect, why)
			default:
				t.Errorf("%q: got %s (%v), want %s (OpenDMARC %s)", c.Record, got, perr, want, c.Expect)
			}
		})
	}
	for _, c := range tb.Alignment {
		t.Run(fmt.Sprintf("alignment/%d", c.N), func(t *testing.T) {
			mode := dmarc.AlignmentMode(dmarc.AlignmentRelaxed)
			if c.Mode == "strict" {
				mode = dmarc.AlignmentStrict
			}
			got := Aligned(c.A, c.B, mode)
			why, dev := alignmentDeviations[c.N]
			switch {
			case got == c.Aligned && dev:
				t.Errorf("%q %q %s: now agrees with OpenDMARC; remove the deviation", c.A, c.B, c.Mode)
			case got == c.Aligned:
				agree++
			case dev:
				deviate++
				t.Logf("%q %q %s: aligned=%v (OpenDMARC %v): %s", c.A, c.B, c.Mode, got, c.Aligned, why)
			default:
				t.Errorf("%q %q %s: aligned=%v, want %v", c.A, c.B, c.Mode, got, c.Aligned)
			}
		})
	}
	t.Logf("OpenDMARC tables: %d entries, %d agree, %d deliberate deviations",
		len(tb.RecordParse)+len(tb.Alignment), agree, deviate)
}
