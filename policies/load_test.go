package policies

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"moat/filters"
	"moat/internal/yamlx"
)

// compile parses each text as one file (a.yaml, b.yaml, …) and compiles
// them, failing the test on any error.
func compile(t *testing.T, files ...string) *Set {
	t.Helper()
	s, errs := compileTexts(files...)
	if errs.Err() != nil {
		t.Fatalf("unexpected errors:\n%v", errs)
	}
	return s
}

func compileTexts(files ...string) (*Set, yamlx.Errors) {
	var all []*Spec
	var errs yamlx.Errors
	for i, f := range files {
		specs, es := Parse(fmt.Sprintf("%c.yaml", 'a'+i), []byte(f))
		errs = append(errs, es...)
		all = append(all, specs...)
	}
	if errs.Err() != nil {
		return nil, errs
	}
	s, es := Compile(all...)
	return s, append(errs, es...)
}

func loadValid(t *testing.T) *Set {
	t.Helper()
	s, errs := Load([]string{"testdata/valid/*.yaml"})
	if len(errs) > 0 {
		t.Fatalf("testdata/valid: %v", errs)
	}
	return s
}

func ptr[T any](v T) *T { return &v }

func TestLoadBuiltinDefault(t *testing.T) {
	for _, globs := range [][]string{nil, {}} {
		s, errs := Load(globs)
		if len(errs) != 0 {
			t.Fatalf("Load(%v) errors: %v", globs, errs)
		}
		checkBuiltin(t, s)
	}
}

func checkBuiltin(t *testing.T, s *Set) {
	t.Helper()
	p := s.Default()
	if p == nil || p.Name() != "default" || !p.IsDefault() {
		t.Fatalf("Default() = %+v, want the built-in default", p)
	}
	if got := s.Policies(); len(got) != 1 || got[0] != p {
		t.Errorf("Policies() = %v, want just the default", got)
	}
	want := Actions{Tag: ptr(5.0), Quarantine: ptr(8.0), Reject: ptr(12.0)}
	if got := p.Spec().Actions; !reflect.DeepEqual(got, want) {
		t.Errorf("actions = %+v, want tag 5, quarantine 8, reject 12", got)
	}
	if p.Mode() != Enforce {
		t.Errorf("Mode() = %q, want enforce", p.Mode())
	}
	if got := p.Checks(); len(got) != 1 || got[0].Name() != "gtube" {
		t.Errorf("Checks() = %v, want gtube alone (on unless turned off)", got)
	}
	if p.Source() != "(built-in):1" {
		t.Errorf("Source() = %q", p.Source())
	}
	if got := s.For("a@example.com", "b@example.net", netip.MustParseAddr("192.0.2.1")); got != p {
		t.Errorf("For() = %v, want the default", got.Name())
	}
}

func TestLoadGlobs(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("a/10-default.yaml", "policy: default\nactions: { reject: 10 }\n")
	write("a/20-x.yaml", "policy: x\napplies_to: { clients: [192.0.2.1] }\n")
	write("b/05-y.yaml", "policy: y\napplies_to: { clients: [192.0.2.2] }\n---\npolicy: x\napplies_to: { clients: [192.0.2.9] }\n")
	write("c/sub.yaml/keep", "")
	bad := write("bad/bad.yaml", "policy: default\nactions: { rejcet: 1 }\n")

	tests := []struct {
		name      string
		globs     []string
		wantErrs  []string // each a regexp matched against one line, in order
		wantNames []string // load order; nil when the load fails
	}{
		{
			name:      "name order within a glob, glob order across globs, override in place",
			globs:     []string{filepath.Join(dir, "a/*.yaml"), filepath.Join(dir, "b/*.yaml")},
			wantNames: []string{"default", "x", "y"},
		},
		{
			name:      "a file named twice loads once",
			globs:     []string{filepath.Join(dir, "a/*.yaml"), filepath.Join(dir, "a/10-default.yaml")},
			wantNames: []string{"default", "x"},
		},
		{
			name:      "a glob matching nothing is a warning",
			globs:     []string{filepath.Join(dir, "a/*.yaml"), filepath.Join(dir, "none/*.yaml")},
			wantErrs:  []string{`^.*/none/\*\.yaml:0:0: warning: no policy file matches this pattern$`},
			wantNames: []string{"default", "x"},
		},
		{
			name:      "nothing matches at all: the built-in default, with the warning",
			globs:     []string{filepath.Join(dir, "none/*.yaml")},
			wantErrs:  []string{`warning: no policy file matches this pattern$`},
			wantNames: []string{"default"},
		},
		{
			name:     "a bad pattern is an error",
			globs:    []string{filepath.Join(dir, "a/[.yaml")},
			wantErrs: []string{`^.*/a/\[\.yaml:0:0: bad file pattern: syntax error in pattern$`},
		},
		{
			name:      "a directory is skipped with a warning",
			globs:     []string{filepath.Join(dir, "a/*.yaml"), filepath.Join(dir, "c/*.yaml")},
			wantErrs:  []string{`/c/sub\.yaml:0:0: warning: is a directory, not a policy file; skipped$`},
			wantNames: []string{"default", "x"},
		},
		{
			name:     "a file with errors fails the load",
			globs:    []string{filepath.Join(dir, "a/*.yaml"), bad},
			wantErrs: []string{`/bad/bad\.yaml:2:12: unknown key "rejcet" in actions \(did you mean "reject"\?\)$`},
		},
		{
			name:     "without the default",
			globs:    []string{filepath.Join(dir, "b/*.yaml")},
			wantErrs: []string{`/b/05-y\.yaml:1:9: no default policy`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, errs := Load(tt.globs)
			var lines []string
			for _, e := range errs {
				lines = append(lines, e.Error())
			}
			if len(lines) != len(tt.wantErrs) {
				t.Fatalf("errors:\n%s\nwant %d matching %q", strings.Join(lines, "\n"), len(tt.wantErrs), tt.wantErrs)
			}
			for i, re := range tt.wantErrs {
				if !regexp.MustCompile(re).MatchString(lines[i]) {
					t.Errorf("error %d = %q, want match for %q", i, lines[i], re)
				}
			}
			if tt.wantNames == nil {
				if s != nil {
					t.Errorf("Set = %v, want nil on error", names(s))
				}
				return
			}
			if s == nil {
				t.Fatal("Set is nil")
			}
			if got := names(s); !reflect.DeepEqual(got, tt.wantNames) {
				t.Errorf("policies = %v, want %v", got, tt.wantNames)
			}
		})
	}

	t.Run("the later x replaced the earlier one whole", func(t *testing.T) {
		s, _ := Load([]string{filepath.Join(dir, "a/*.yaml"), filepath.Join(dir, "b/*.yaml")})
		if got := s.For("", "", netip.MustParseAddr("192.0.2.1")).Name(); got != "default" {
			t.Errorf("192.0.2.1 (only in the replaced x) -> %s, want default", got)
		}
		if got := s.For("", "", netip.MustParseAddr("192.0.2.9")).Name(); got != "x" {
			t.Errorf("192.0.2.9 -> %s, want x", got)
		}
		if got := s.Policy("x").Source(); !strings.HasSuffix(got, "b/05-y.yaml:4") {
			t.Errorf("x's Source = %q, want b/05-y.yaml:4", got)
		}
	})
}

func names(s *Set) []string {
	var out []string
	for _, p := range s.Policies() {
		out = append(out, p.Name())
	}
	return out
}

func TestLoadFileMissing(t *testing.T) {
	s, errs := LoadFile("testdata/does-not-exist.yaml")
	if s != nil || len(errs) != 1 {
		t.Fatalf("LoadFile = %v, %v; want nil and one error", s, errs)
	}
	if got, want := errs[0].Error(), "testdata/does-not-exist.yaml:0:0: cannot read policy file: no such file or directory"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
}

func TestExampleLoads(t *testing.T) {
	s, errs := LoadFile("example.yaml")
	if errs.Err() != nil {
		t.Fatalf("example.yaml: %v", errs)
	}
	var warned []string
	for _, e := range errs.Warnings() {
		m := regexp.MustCompile(`^check "(\w+)" is not implemented in this version; ignored$`).FindStringSubmatch(e.Msg)
		if m == nil {
			t.Errorf("unexpected warning: %v", e)
			continue
		}
		warned = append(warned, m[1])
	}
	var wantWarned []string
	for _, c := range []string{"dnsbl", "spf", "dkim", "dmarc", "greylist", "headers", "attachments", "gtube"} {
		if !Implemented(c) {
			wantWarned = append(wantWarned, c)
		}
	}
	if !reflect.DeepEqual(warned, wantWarned) {
		t.Errorf("warned about %v, want %v", warned, wantWarned)
	}
	if got := names(s); !reflect.DeepEqual(got, []string{"default", "finance"}) {
		t.Errorf("policies = %v", got)
	}
	fin := s.Policy("finance")
	want := Actions{Tag: ptr(5.0), Quarantine: ptr(5.0), Reject: ptr(8.0)}
	if got := fin.Spec().Actions; !reflect.DeepEqual(got, want) {
		t.Errorf("finance actions = %v, want tag 5 quarantine 5 reject 8", got)
	}
	if got := fin.Spec().Checks.SPF; got == nil || *got.Fail != (Outcome{Score: 5}) || *got.TempError != (Outcome{Action: Tempfail}) {
		t.Errorf("finance did not inherit spf: %+v", got)
	}
	if got := s.For("bob@finance.example.com", "", netip.Addr{}); got != fin {
		t.Errorf("For(finance recipient) = %s", got.Name())
	}
	var size filters.Check
	for _, c := range fin.Checks() {
		if !Implemented(c.Name()) {
			t.Errorf("Checks() holds %s, which is not implemented", c.Name())
		}
		if c.Name() == "size" {
			size = c
		}
	}
	if size == nil {
		t.Fatal("Checks() lacks size")
	}
	r, ok := size.Run(t.Context(), filters.StageData, &filters.Txn{Size: 25<<20 + 1})
	if !ok || r.Value != filters.Fail {
		t.Errorf("size check with 25MiB+1 = %+v, want fail", r)
	}
	if tag := s.Default().Tag(); tag != (TagSettings{SubjectPrefix: "[SPAM] ", Header: true}) {
		t.Errorf("Tag() = %+v", tag)
	}
}

// TestREADMEExamples parses every ```yaml block of README.md.
func TestREADMEExamples(t *testing.T) {
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(data, -1)
	if len(blocks) == 0 {
		t.Fatal("no yaml blocks in README.md")
	}
	for i, b := range blocks {
		s, errs := compileTexts(string(b[1]))
		for _, e := range errs {
			if !e.Warning {
				t.Errorf("README.md block %d: %v", i+1, e)
			}
		}
		if s == nil {
			continue
		}
		if fin := s.Policy("finance"); fin != nil {
			// The README spells out the effective finance policy.
			sp := fin.Spec()
			if *sp.Checks.Size.Max != 10<<20 || sp.Checks.SPF == nil || len(sp.Allow.Senders) != 0 ||
				len(sp.Allow.Clients) != 1 || !reflect.DeepEqual(sp.Actions, Actions{Tag: ptr(5.0), Quarantine: ptr(5.0), Reject: ptr(8.0)}) {
				t.Errorf("README.md block %d: effective finance = %+v", i+1, sp)
			}
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name      string
		text      string
		wantSpecs int
		wantErrs  string
	}{
		{name: "empty file", text: "", wantErrs: "x.yaml:1:1: warning: no policy in this file"},
		{name: "comments only", text: "# nothing\n", wantErrs: "x.yaml:1:1: warning: no policy in this file"},
		{name: "empty documents are skipped", text: "---\n---\npolicy: default\n---\n", wantSpecs: 1},
		{name: "three policies", text: "policy: a\n---\npolicy: b\napplies_to: {senders: ['*']}\n---\npolicy: c\napplies_to: {clients: ['::1']}\n", wantSpecs: 3},
		{name: "yaml anchors and merge keys", text: "policy: default\nchecks:\n  size: &s { max: 1MiB }\nactions: &a { tag: 1 }\n---\npolicy: b\napplies_to: {senders: ['*']}\nactions: { <<: *a, reject: 3 }\n", wantSpecs: 2},
		{name: "a scalar document", text: "hello\n", wantErrs: `x.yaml:1:1: document: want a mapping, got "hello"`},
		{
			name:     "aliases that refer to themselves",
			text:     "policy: default\nallow: &a { senders: *a }\n",
			wantErrs: "x.yaml:2:22: alias *a refers to a value that contains it",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			specs, errs := Parse("x.yaml", []byte(tt.text))
			if errs.Error() != tt.wantErrs {
				t.Errorf("errors:\n%v\nwant:\n%v", errs, tt.wantErrs)
			}
			if tt.wantErrs == "" && len(specs) != tt.wantSpecs {
				t.Errorf("%d specs, want %d", len(specs), tt.wantSpecs)
			}
		})
	}
}

func TestParseAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("policy: default\nx0: &x0 [a, a, a, a, a, a, a, a, a, a]\n")
	for i := 1; i < 9; i++ {
		fmt.Fprintf(&b, "x%d: &x%d [*x%d, *x%d, *x%d, *x%d, *x%d, *x%d, *x%d, *x%d, *x%d, *x%d]\n", i, i, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1)
	}
	b.WriteString("allow: { senders: *x8 }\n")
	_, errs := Parse("bomb.yaml", []byte(b.String()))
	if got, want := errs.Error(), "bomb.yaml:1:1: the document's aliases expand to more than 100000 values"; got != want {
		t.Errorf("errors = %q, want %q", got, want)
	}
}

func TestPolicyNameOrder(t *testing.T) {
	s := loadValid(t)
	if got, want := names(s), []string{"default", "vip", "finance", "lab"}; !reflect.DeepEqual(got, want) {
		t.Errorf("load order = %v, want %v", got, want)
	}
	if s.Policy("nope") != nil {
		t.Error("Policy(nope) is not nil")
	}
	if got := s.Policy("vip").Source(); got != "testdata/valid/20-override.yaml:2" {
		t.Errorf("vip Source = %q", got)
	}
}

func TestGreylistValidation(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"policy: default\nchecks:\n  greylist: { delay: 3d }\n", "a.yaml:3:22: checks.greylist: retry_window (48h0m0s) must be longer than delay (72h0m0s), or no retry can pass"},
		{"policy: default\nchecks:\n  greylist: { delay: 10m, retry_window: 5m }\n", "a.yaml:3:41: checks.greylist: retry_window (5m0s) must be longer than delay (10m0s), or no retry can pass"},
		{"policy: default\nchecks:\n  greylist: { ipv4_prefix: 33 }\n", "a.yaml:3:28: checks.greylist.ipv4_prefix: want 8 to 32, got 33"},
		{"policy: default\nchecks:\n  greylist: { at: body }\n", `a.yaml:3:19: checks.greylist.at: want rcpt or data, got "body"`},
	} {
		_, errs := compileTexts(tc.text)
		if errs.Err() == nil || !strings.Contains(errs.Error(), tc.want) {
			t.Errorf("%q: got %v, want %s", tc.text, errs, tc.want)
		}
	}
	s := compile(t, "policy: default\nchecks:\n  greylist: { delay: 1m, min_score: 2, ipv6_prefix: 48, at: data }\n")
	g := s.Default().Greylist()
	if g == nil || g.Params.Delay != time.Minute || g.Params.RetryWindow != 48*time.Hour || g.MinScore != 2 || g.Params.IPv6Prefix != 48 || !g.AtData {
		t.Errorf("Greylist() = %+v", g)
	}
	if compile(t, "policy: default\nchecks:\n  greylist: { enabled: false }\n").Default().Greylist() != nil {
		t.Error("enabled: false still greylists")
	}
}
