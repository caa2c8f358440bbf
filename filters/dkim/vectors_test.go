package dkim

// Third-party DKIM test vectors (see testdata/PROVENANCE.md), each
// message verified with its key records served by dnstest:
//
//   - cases.yaml: the RFC 6376 and RFC 8463 examples, go-msgauth's raw
//     PKCS#1 key case and dkimpy's signed messages, per signature;
//   - dkimpy's key records and private keys: a message signed here with
//     dkimpy's published test keys, verified against each of dkimpy's good
//     and bad key records;
//   - mail-dkim/expected.yaml: the Mail::DKIM corpus, per message.
//
// Where moat's result differs from the one upstream expects, the case is
// listed in a differences table below with the reason. A case that
// differs and is not listed fails, and so does a listed case that no
// longer differs.

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"moat/filters"
	"moat/internal/dnstest"
)

// difference is a documented departure from upstream's expectation.
type difference struct {
	want   string // moat's result
	reason string // what go-msgauth's error says, in the result's reason
	why    string
}

// tally counts the cases of one set for the summary the tests log.
type tally struct {
	name              string
	cases, checks     int
	asUpstream        int
	differences       []string
	seenDifference    map[string]bool
	differencesListed map[string]difference
}

func newTally(name string, listed map[string]difference) *tally {
	return &tally{name: name, seenDifference: map[string]bool{}, differencesListed: listed}
}

// expect compares got with upstream's expectation for key, allowing a
// listed difference.
func (ty *tally) expect(t *testing.T, key, upstream, got, detail string) {
	t.Helper()
	ty.checks++
	want := upstream
	d, listed := ty.differencesListed[key]
	if listed {
		ty.seenDifference[key] = true
		want = d.want
		if d.want == upstream {
			t.Errorf("%s: listed as a difference but upstream also expects %s", key, upstream)
		}
	}
	if got != want {
		t.Errorf("%s: got %s, want %s (upstream %s): %s", key, got, want, upstream, detail)
		return
	}
	if listed && !strings.Contains(detail, d.reason) {
		t.Errorf("%s: %s as listed, but not because %q: %s", key, got, d.reason, detail)
		return
	}
	if listed {
		ty.differences = append(ty.differences, key+": upstream "+upstream+", moat "+got+": "+d.why)
	} else {
		ty.asUpstream++
	}
}

func (ty *tally) report(t *testing.T) {
	t.Helper()
	for key := range ty.differencesListed {
		if !ty.seenDifference[key] {
			t.Errorf("difference listed for %s, which was not run", key)
		}
	}
	sort.Strings(ty.differences)
	t.Logf("%s: %d cases, %d results checked: %d as upstream expects, %d documented differences",
		ty.name, ty.cases, ty.checks, ty.asUpstream, len(ty.differences))
	for _, d := range ty.differences {
		t.Logf("  %s", d)
	}
}

// crlf turns LF line ends into CRLF.
func crlf(b []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

func readVector(t *testing.T, dir, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(file)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// casesFile is cases.yaml.
type casesFile struct {
	DNS   map[string][]string `yaml:"dns"`
	Cases []struct {
		File        string `yaml:"file"`
		What        string `yaml:"what"`
		LineEndings string `yaml:"line_endings"`
		Signatures  []struct {
			A      string `yaml:"a"`
			D      string `yaml:"d"`
			S      string `yaml:"s"`
			Expect string `yaml:"expect"`
		} `yaml:"signatures"`
	} `yaml:"cases"`
}

func loadCases(t *testing.T, dir string) casesFile {
	t.Helper()
	var cf casesFile
	if err := yaml.Unmarshal(readVector(t, dir, "cases.yaml"), &cf); err != nil {
		t.Fatal(err)
	}
	if len(cf.Cases) == 0 {
		t.Fatal("no cases in cases.yaml")
	}
	return cf
}

// caseDifferences: none. Every signature in cases.yaml gets the result
// upstream expects (the RFC example as published fails on its body hash,
// as the manifest says).
var caseDifferences = map[string]difference{}

// TestVectorsCases runs cases.yaml, per signature, as three sets: the RFC
// examples, go-msgauth's raw-key case and dkimpy's signed messages.
func TestVectorsCases(t *testing.T) {
	dir := vectorsDir(t)
	cf := loadCases(t, dir)
	s := dnstest.New(t)
	for name, txts := range cf.DNS {
		for _, txt := range txts {
			if err := s.Add(zoneTXT(name, txt)); err != nil {
				t.Fatal(err)
			}
		}
	}
	sets := map[string]*tally{}
	var order []string
	for _, c := range cf.Cases {
		set := c.File[:strings.Index(c.File, "/")]
		ty := sets[set]
		if ty == nil {
			ty = newTally(set, caseDifferences)
			sets[set] = ty
			order = append(order, set)
		}
		ty.cases++
		t.Run(c.File, func(t *testing.T) {
			msg := readVector(t, dir, c.File)
			if c.LineEndings == "lf" {
				msg = crlf(msg)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := Verify(ctx, s.Resolver(), bytes.NewReader(msg))
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != len(c.Signatures) {
				t.Fatalf("%d results, manifest lists %d signatures: %+v", len(res), len(c.Signatures), res)
			}
			for i, sig := range c.Signatures {
				r := res[i]
				if r.Domain != sig.D || r.Selector != sig.S || r.Algorithm != sig.A {
					t.Errorf("signature %d is d=%s s=%s a=%s, manifest says d=%s s=%s a=%s",
						i, r.Domain, r.Selector, r.Algorithm, sig.D, sig.S, sig.A)
				}
				ty.expect(t, c.File+"#"+sig.S, sig.Expect, r.Result, r.Reason)
			}
		})
	}
	for _, set := range order {
		sets[set].report(t)
	}
}

// dkimpyKeyCases sign a message with one of dkimpy's published private
// keys and verify it against one of dkimpy's key records. upstream is what
// dkimpy's tests expect of verify(): true (pass) or false (not pass). The
// results moat gives for dkimpy's false are permerror, named in want.
var dkimpyKeyCases = []struct {
	name     string
	message  string // dkimpy/ file to sign (LF line ends)
	key      string // dkimpy/ private key
	domain   string
	selector string
	record   string // dkimpy/ file holding the key record
	upstream bool
	want     string
}{
	{"rsa test.txt", "test.message", "test.private", "example.com", "test", "test.txt", true, filters.Pass},
	{"rsa test2.txt (no k=)", "test.message", "test.private", "example.com", "test", "test2.txt", true, filters.Pass},
	{"rsa badversion.txt", "test.message", "test.private", "example.com", "test", "badversion.txt", false, filters.PermError},
	{"rsa badk.txt", "test.message", "test.private", "example.com", "test", "badk.txt", false, filters.PermError},
	{"rsa test_bad.txt", "test.message", "test.private", "example.com", "test", "test_bad.txt", false, filters.PermError},
	{"rsa test_tlsrpt.txt (s=tlsrpt)", "test.message", "test.private", "example.com", "test", "test_tlsrpt.txt", false, filters.PermError},
	{"rsa test_extra.message", "test_extra.message", "test.private", "example.com", "test", "test.txt", true, filters.Pass},
	{"ed25519 ed25519test", "ed25519test.msg", "ed25519test.key", "example.net", "test", "ed25519test.dns", true, filters.Pass},
	{"ed25519 rfc6376.msg (RFC 8463 brisbane)", "rfc6376.msg", "rfc8032_7_1.key", "football.example.com", "brisbane", "", true, filters.Pass},
}

// dkimpyKeyDifferences: none. (dkimpy's test_nofrom.message is a signing
// test, refused by dkimpy's signer; moat does not sign.)
var dkimpyKeyDifferences = map[string]difference{}

func TestVectorsDkimpyKeys(t *testing.T) {
	dir := vectorsDir(t)
	cf := loadCases(t, dir)
	ty := newTally("dkimpy key records", dkimpyKeyDifferences)
	for _, c := range dkimpyKeyCases {
		ty.cases++
		t.Run(c.name, func(t *testing.T) {
			record := ""
			if c.record != "" {
				record = strings.TrimSpace(string(readVector(t, dir, "dkimpy/"+c.record)))
			} else {
				record = cf.DNS[c.selector+"._domainkey."+c.domain][0]
			}
			s := dnstest.New(t, zoneTXT(c.selector+"._domainkey."+c.domain, record))
			msg := sign(t, string(crlf(readVector(t, dir, "dkimpy/"+c.message))),
				dkimpyKey(t, readVector(t, dir, "dkimpy/"+c.key)), c.domain, c.selector)
			res := verify(t, s.Resolver(), msg)
			if len(res) != 1 {
				t.Fatalf("%d results: %+v", len(res), res)
			}
			upstream := filters.Pass
			if !c.upstream {
				upstream = "not pass"
			}
			got := res[0].Result
			if !c.upstream && got != filters.Pass {
				if got != c.want {
					t.Errorf("got %s, want %s: %s", got, c.want, res[0].Reason)
				}
				got = "not pass"
			}
			ty.expect(t, c.name, upstream, got, res[0].Reason)
			t.Logf("%s: %s", res[0].Result, res[0].Reason)
		})
	}
	ty.report(t)
}

// dkimpyKey reads one of dkimpy's private keys: PEM (RSA), or the
// base64 32-byte seed of an ed25519 key.
func dkimpyKey(t *testing.T, b []byte) crypto.Signer {
	t.Helper()
	if blk, _ := pem.Decode(b); blk != nil {
		k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		t.Fatalf("not an ed25519 seed: %v", err)
	}
	return ed25519.NewKeyFromSeed(seed)
}

// mailDKIMFile is mail-dkim/expected.yaml.
type mailDKIMFile struct {
	Cases []struct {
		File       string `yaml:"file"`
		Expect     string `yaml:"expect"`
		Comment    string `yaml:"comment"`
		Signatures string `yaml:"signatures"`
	} `yaml:"cases"`
}

// mailDKIMDifferences lists every corpus message for which moat (through
// go-msgauth) gives another result than Mail::DKIM's default, lenient
// mode. Most of the corpus predates RFC 6376 and RFC 8301. Each entry names
// the rule that decides and the text of go-msgauth's error, which the test
// checks: go-msgauth stops at the first problem it finds (v=, then i=,
// then the key record, then the hash algorithm), so a 512-bit rsa-sha1
// signature reads "key is too short".
var mailDKIMDifferences = func() map[string]difference {
	d := map[string]difference{}
	add := func(want, reason, why string, files ...string) {
		for _, f := range files {
			d["corpus/"+f] = difference{want: want, reason: reason, why: why}
		}
	}
	const badVersion = "incompatible signature version"
	add(filters.PermError, badVersion,
		"no v= tag (a pre-RFC 4871 draft signature): RFC 6376 3.5 requires v=1",
		"good_ietf00_1.txt", "good_ietf00_2.txt", "good_ietf00_3.txt", "good_ietf00_4.txt", "good_ietf00_5.txt",
		"mine_ietf01_1.txt", "mine_ietf01_2.txt", "mine_ietf01_3.txt", "mine_ietf01_4.txt",
		"good_ietf01_1.txt", "good_ietf01_2.txt")
	add(filters.PermError, badVersion,
		"no v= tag in any of its 4 signatures (RFC 6376 3.5 requires v=1); the one Mail::DKIM passes also has a 768-bit key",
		"multiple_1.txt")
	add(filters.PermError, badVersion,
		"v=0.5 (a draft signature): RFC 6376 3.5 requires v=1; it is also rsa-sha1",
		"mine_ietf05_1.txt", "no_body_1.txt", "no_body_2.txt", "no_body_3.txt")
	add(filters.PermError, badVersion,
		"no v= tag (RFC 6376 3.5 requires v=1), checked before the signature, which does not verify either",
		"bad_ietf01_1.txt", "bad_ietf01_2.txt", "bad_ietf01_3.txt", "bad_1.txt")
	add(filters.PermError, "key is too short: want 1024 bits, has 512 bits",
		"512-bit RSA key: RFC 8301 3.2 says verifiers must not accept keys under 1024 bits; it is also rsa-sha1 (RFC 8301 3.1)",
		"good_rfc4871_3.txt", "good_1878523.txt", "good_qp_1.txt",
		"goodkey_1.txt", "goodkey_2.txt", "goodkey_3.txt", "goodkey_4.txt")
	add(filters.PermError, "domain mismatch",
		"i=JLong@Messiah.Edu differs from d=messiah.edu only in case, and go-msgauth compares them case-sensitively "+
			"(a go-msgauth limitation: domain names are case-insensitive); rsa-sha1 and a 512-bit key would refuse it anyway",
		"good_rfc4871_4.txt")
	add(filters.PermError, "domain mismatch",
		"i= is written in dkim-quoted-printable (=2E, =40), which go-msgauth does not decode (a go-msgauth limitation, RFC 6376 2.11); "+
			"rsa-sha1 and a 512-bit key would refuse it anyway",
		"good_qp_2.txt", "good_qp_3.txt")
	add(filters.PermError, "hash algorithm too weak: sha1",
		"rsa-sha1: RFC 8301 3.1 says verifiers must not accept it",
		"good_83176.txt")
	add(filters.PermError, "hash algorithm too weak: sha1",
		"the signature Mail::DKIM passes is rsa-sha1 (RFC 8301 3.1); the others are rsa-sha1 too, or lack a=",
		"multiple_2.txt")
	add(filters.PermError, "hash algorithm too weak: sha1",
		"rsa-sha1 (RFC 8301 3.1), checked before the body hash, which does not match either",
		"bad_1878954.txt")
	add(filters.None, "",
		"DomainKeys (RFC 4870, historic) only, no DKIM-Signature: a DKIM verifier reports none",
		"good_dk_gmail.txt", "good_dk_yahoo.txt", "good_dk_1.txt", "good_dk_2.txt", "good_dk_3.txt",
		"good_dk_4.txt", "good_dk_5.txt", "good_dk_6.txt", "good_dk_7.txt", "dk_headers_1.txt",
		"dk_headers_2.txt", "dk_multiple_1.txt",
		"bad_dk_1.txt", "bad_dk_2.txt", "bad_dk_3.txt", "bad_dk_4.txt", "bad_dk_5.txt")
	return d
}()

// mapMailDKIM maps a Mail::DKIM result to RFC 8601 as expected.yaml says:
// invalid is permerror, or temperror when the key lookup hit a DNS error.
func mapMailDKIM(expect, facts string) string {
	if expect == "invalid" {
		if strings.Contains(facts, "(dns ~~") {
			return filters.TempError
		}
		return filters.PermError
	}
	return expect
}

// modernPass tells from expected.yaml's per-signature facts whether an
// RFC 6376 + RFC 8301 verifier must pass the message: Mail::DKIM passes
// it and some signature verifies with v=1, a=rsa-sha256 with a key of
// 1024 bits or more, or a=ed25519-sha256.
func modernPass(expect, facts string) bool {
	if expect != "pass" {
		return false
	}
	for _, sig := range strings.Split(facts, "; ") {
		if !strings.HasPrefix(sig, "pass[v=1 ") {
			continue
		}
		if strings.Contains(sig, " ed25519-sha256 ") {
			return true
		}
		if strings.Contains(sig, " rsa-sha256 ") {
			for _, bits := range []string{"bits=1024]", "bits=2048]", "bits=4096]"} {
				if strings.HasSuffix(sig, bits) {
					return true
				}
			}
		}
	}
	return false
}

// TestVectorsMailDKIM verifies the Mail::DKIM corpus, per message. Beyond
// the differences table it holds two rules: a message an RFC 6376 + RFC
// 8301 verifier must pass passes, and no message Mail::DKIM fails or finds
// invalid (bad_*, badkey*, ignore_*) passes.
func TestVectorsMailDKIM(t *testing.T) {
	dir := vectorsDir(t)
	var mf mailDKIMFile
	if err := yaml.Unmarshal(readVector(t, dir, "mail-dkim/expected.yaml"), &mf); err != nil {
		t.Fatal(err)
	}
	if len(mf.Cases) == 0 {
		t.Fatal("no cases in expected.yaml")
	}
	s := dnstest.New(t)
	timedOut := loadFakeDNS(t, s, readVector(t, dir, "mail-dkim/FAKE_DNS.dat"))
	ty := newTally("mail-dkim corpus", mailDKIMDifferences)
	modern := 0
	for _, c := range mf.Cases {
		ty.cases++
		t.Run(c.File, func(t *testing.T) {
			timeout := 30 * time.Second
			for _, name := range timedOut {
				if strings.Contains(c.Signatures, " d="+name+" ") {
					timeout = 300 * time.Millisecond // the server will not answer
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			msg := readVector(t, dir, "mail-dkim/"+c.File)
			res, err := Verify(ctx, s.Resolver(), bytes.NewReader(msg))
			if err != nil {
				t.Fatal(err)
			}
			got := check{}.summarize(res)
			upstream := mapMailDKIM(c.Expect, c.Signatures)
			var reasons []string
			for _, r := range res {
				reasons = append(reasons, r.Result+" "+r.Reason)
			}
			detail := strings.Join(reasons, "; ")
			ty.expect(t, c.File, upstream, got.Value, detail)
			t.Logf("%s (upstream %s): %s", got.Value, c.Expect, detail)
			if modernPass(c.Expect, c.Signatures) {
				modern++
				if got.Value != filters.Pass {
					t.Errorf("a modern verifier must pass this message; got %s", got.Value)
				}
			}
			if c.Expect != "pass" && got.Value == filters.Pass {
				t.Errorf("Mail::DKIM says %s; moat must not pass it", c.Expect)
			}
		})
	}
	if modern == 0 {
		t.Error("no case a modern verifier must pass")
	}
	t.Logf("mail-dkim corpus: %d messages a modern verifier must pass, all checked", modern)
	ty.report(t)
}

// loadFakeDNS serves Mail::DKIM's FAKE_DNS.dat: "name value" lines; the
// value NXDOMAIN means no such name (dnstest's answer for names it does
// not hold), ~~SERVFAIL~~ a SERVFAIL, ~~Query timed out~~ no answer. It
// returns the names that get no answer.
func loadFakeDNS(t *testing.T, s *dnstest.Server, data []byte) (silent []string) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value := line, ""
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			name, value = line[:i], strings.TrimSpace(line[i:])
		}
		switch value {
		case "NXDOMAIN":
		case "~~SERVFAIL~~":
			s.ServFail(name)
		case "~~Query timed out~~":
			s.Silent(name)
			// expected.yaml's facts name the signature's domain.
			silent = append(silent, strings.SplitN(name, "._domainkey.", 2)[1])
		case `""`:
			if err := s.Add(zoneTXT(name, "")); err != nil {
				t.Fatal(err)
			}
		default:
			if strings.HasPrefix(value, "~~") {
				t.Fatalf("FAKE_DNS.dat: unknown fault %q", value)
			}
			if err := s.Add(zoneTXT(name, value)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return silent
}

// TestVectorsCopy checks that the vectors copied into testdata/ are still
// the shared ones, byte for byte (the licence notes and PROVENANCE.md are
// this folder's own).
func TestVectorsCopy(t *testing.T) {
	shared := vectorsDir(t)
	if shared == "testdata" {
		t.Skip("no shared/testdata/dkim beside this checkout: the tests use the copy")
	}
	own := map[string]bool{"PROVENANCE.md": true, "go-msgauth/LICENSE": true, "mail-dkim/LICENSE": true,
		"mail-dkim/LICENSE.Artistic": true, "mail-dkim/LICENSE.GPL-1": true, "rfc-examples/LICENSE": true}
	n := 0
	err := filepath.WalkDir("testdata", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel("testdata", path)
		if err != nil {
			return err
		}
		if own[filepath.ToSlash(rel)] {
			return nil
		}
		n++
		copied, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		orig, err := os.ReadFile(filepath.Join(shared, rel))
		if err != nil {
			t.Errorf("%s: not in %s: %v", rel, shared, err)
			return nil
		}
		if !bytes.Equal(copied, orig) {
			t.Errorf("%s differs from %s", path, filepath.Join(shared, rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 100 {
		t.Errorf("only %d vector files in testdata/", n)
	}
}
