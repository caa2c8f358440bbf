package yamlx

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// sample exercises every kind Decode handles.
type sample struct {
	Name     string            `yaml:"name"`
	Count    int               `yaml:"count"`
	Small    uint8             `yaml:"small"`
	Ratio    float64           `yaml:"ratio"`
	On       bool              `yaml:"on"`
	Wait     Duration          `yaml:"wait"`
	Max      Size              `yaml:"max"`
	Net      Prefix            `yaml:"net"`
	Tags     []string          `yaml:"tags"`
	Routes   map[string]*route `yaml:"routes"`
	Inner    inner             `yaml:"inner"`
	Optional *inner            `yaml:"optional"`
	Skipped  string            `yaml:"-"`
}

type inner struct {
	Addr string `yaml:"addr"`
	Port int    `yaml:"port"`
}

type route struct {
	Upstream string `yaml:"upstream"`
}

func decode(t *testing.T, src string) (*sample, Errors) {
	t.Helper()
	docs, errs := Parse("t.yaml", []byte(src))
	if errs != nil {
		return nil, errs
	}
	s := &sample{Name: "default", Count: 7, Inner: inner{Addr: "keep"}}
	if len(docs) == 0 {
		return s, nil
	}
	return s, Decode("t.yaml", docs[0], s)
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"unknown key with suggestion", "nmae: x\n",
			[]string{`t.yaml:1:1: unknown key "nmae" in document (did you mean "name"?)`}},
		{"unknown key far from any", "zzzzzzzz: x\n",
			[]string{`t.yaml:1:1: unknown key "zzzzzzzz" in document`}},
		{"unknown nested key", "inner:\n  adr: x\n",
			[]string{`t.yaml:2:3: unknown key "adr" in inner (did you mean "addr"?)`}},
		{"skipped field is unknown", "Skipped: x\n",
			[]string{`t.yaml:1:1: unknown key "Skipped" in document`}},
		{"duplicate key", "name: a\ncount: 1\nname: b\n",
			[]string{`t.yaml:3:1: duplicate key "name" in document`}},
		{"duplicate map key", "routes:\n  a: {upstream: x}\n  a: {upstream: y}\n",
			[]string{`t.yaml:3:3: duplicate key "a" in routes`}},
		{"int from text", "count: many\n",
			[]string{`t.yaml:1:8: count: want a whole number, got "many"`}},
		{"int from list", "count: [1]\n",
			[]string{`t.yaml:1:8: count: want a whole number, got a list`}},
		{"uint overflow", "small: 300\n",
			[]string{`t.yaml:1:8: small: want a whole number that is 0 or more, got "300"`}},
		{"float", "ratio: fast\n",
			[]string{`t.yaml:1:8: ratio: want a number, got "fast"`}},
		{"float nan", "ratio: .nan\n",
			[]string{`t.yaml:1:8: ratio: want a number, got ".nan"`}},
		{"bool", "on: maybe\n",
			[]string{`t.yaml:1:5: on: want true or false, got "maybe"`}},
		{"string from mapping", "name: {a: 1}\n",
			[]string{`t.yaml:1:7: name: want a string, got a mapping`}},
		{"struct from scalar", "inner: 5\n",
			[]string{`t.yaml:1:8: inner: want a mapping, got "5"`}},
		{"list from scalar", "tags: a\n",
			[]string{`t.yaml:1:7: tags: want a list, got "a"`}},
		{"list element", "tags: [a, [b]]\n",
			[]string{`t.yaml:1:11: tags[1]: want a string, got a list`}},
		{"map from list", "routes: [a]\n",
			[]string{`t.yaml:1:9: routes: want a mapping, got a list`}},
		{"map key not text", "routes:\n  ? [a]\n  : {upstream: x}\n",
			[]string{`t.yaml:2:5: routes: keys must be plain text, got a list`}},
		{"map value", "routes:\n  a.example: {upstream: [x]}\n",
			[]string{`t.yaml:2:25: routes.a.example.upstream: want a string, got a list`}},
		{"duration", "wait: soon\n",
			[]string{`t.yaml:1:7: wait: want a duration such as 30s, 5m, 36h or 2d, got "soon"`}},
		{"negative duration", "wait: -5m\n",
			[]string{`t.yaml:1:7: wait: want a duration that is 0 or more, got "-5m"`}},
		{"duration from list", "wait: [5m]\n",
			[]string{`t.yaml:1:7: wait: want a duration such as 30s, 5m, 36h or 2d, got a list`}},
		{"size", "max: lots\n",
			[]string{`t.yaml:1:6: max: want a size such as 25MiB, 512KiB or 1048576, got "lots"`}},
		{"size from mapping", "max: {a: 1}\n",
			[]string{`t.yaml:1:6: max: want a size such as 25MiB, 512KiB or 1048576, got a mapping`}},
		{"prefix", "net: 10.0.0.0/33\n",
			[]string{`t.yaml:1:6: net: want a network such as 192.0.2.0/24 or 2001:db8::/32, got "10.0.0.0/33"`}},
		{"several errors in file order", "count: x\ninner:\n  port: y\n  bogus: 1\n",
			[]string{
				`t.yaml:1:8: count: want a whole number, got "x"`,
				`t.yaml:3:9: inner.port: want a whole number, got "y"`,
				`t.yaml:4:3: unknown key "bogus" in inner`,
			}},
		{"merge of a scalar", "inner:\n  <<: 5\n",
			[]string{`t.yaml:2:7: inner: a merge key (<<) takes a mapping or a list of mappings, got "5"`}},
		{"merge cycle", "inner: &a\n  <<: *a\n  addr: x\n",
			[]string{`t.yaml:2:7: inner: a merge key (<<) includes the mapping it is in`}},
		{"error in a mapping merged twice is reported once",
			"optional: &x {adr: 1}\ninner: {<<: [*x, *x]}\n",
			[]string{
				`t.yaml:1:15: unknown key "adr" in optional (did you mean "addr"?)`,
				`t.yaml:1:15: unknown key "adr" in inner (did you mean "addr"?)`,
			}},
		{"document not a mapping", "- a\n",
			[]string{`t.yaml:1:1: document: want a mapping, got a list`}},

		// Syntax errors: yaml.v3 gives a line only. Parser errors were one
		// line early before the fix in syntaxError.
		{"syntax: unclosed flow list", "name: a\ntags: [a, b\ncount: 1\n",
			[]string{`t.yaml:2:1: syntax error: did not find expected ',' or ']'`}},
		{"syntax: unclosed flow map", "name: a\ninner: {addr: x\n",
			[]string{`t.yaml:2:1: syntax error: did not find expected ',' or '}'`}},
		{"syntax: list in mapping", "name: a\n- b\n",
			[]string{`t.yaml:2:1: syntax error: did not find expected key`}},
		{"syntax: tab", "name: a\ninner:\n\taddr: x\n",
			[]string{`t.yaml:3:1: syntax error: found character that cannot start any token`}},
		{"syntax: bad indentation", "name: a\ncount: 2\n  ratio: 3\n",
			[]string{`t.yaml:3:1: syntax error: mapping values are not allowed in this context`}},
		{"syntax: first line", "name: a: b\n",
			[]string{`t.yaml:1:1: syntax error: mapping values are not allowed in this context`}},
		{"syntax: unterminated string", "name: a\ncount: \"x\n",
			[]string{`t.yaml:2:1: syntax error: found unexpected end of stream`}},
		{"syntax: unknown anchor", "name: *nope\n",
			[]string{`t.yaml:1:1: syntax error: unknown anchor 'nope' referenced`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errs := decode(t, tt.src)
			checkErrors(t, errs, tt.want)
		})
	}
}

func checkErrors(t *testing.T, errs Errors, want []string) {
	t.Helper()
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n got: %q\nwant: %q", got, want)
	}
}

func TestDecodeValues(t *testing.T) {
	src := `
name: moat
count: 010          # YAML 1.2: decimal, not octal
small: 0x1f
ratio: 0.5
on: True
wait: 2d
max: 25MiB
net: 192.0.2.7/24
tags: [a, b]
routes:
  b.example: {upstream: "mx:25"}
inner: {port: 25}
optional: {addr: x}
`
	s, errs := decode(t, src)
	checkErrors(t, errs, nil)
	want := sample{
		Name: "moat", Count: 10, Small: 31, Ratio: 0.5, On: true,
		Wait: Duration(48 * time.Hour), Max: 25 << 20,
		Net:  Prefix(netip.MustParsePrefix("192.0.2.0/24")),
		Tags: []string{"a", "b"},
	}
	if s.Name != want.Name || s.Count != want.Count || s.Small != want.Small || s.Ratio != want.Ratio ||
		s.On != want.On || s.Wait != want.Wait || s.Max != want.Max || s.Net != want.Net ||
		strings.Join(s.Tags, ",") != "a,b" {
		t.Errorf("got %+v\nwant %+v", *s, want)
	}
	if r := s.Routes["b.example"]; r == nil || r.Upstream != "mx:25" {
		t.Errorf("routes = %v", s.Routes)
	}
	// A key the file leaves out keeps the value the caller set before.
	if s.Inner.Addr != "keep" || s.Inner.Port != 25 {
		t.Errorf("inner = %+v, want addr kept and port 25", s.Inner)
	}
	if s.Optional == nil || s.Optional.Addr != "x" {
		t.Errorf("optional = %v", s.Optional)
	}
}

func TestDecodeNull(t *testing.T) {
	s, errs := decode(t, "name:\ncount: ~\ninner: null\ntags: null\noptional: ~\n")
	checkErrors(t, errs, nil)
	if s.Name != "" || s.Count != 0 {
		t.Errorf("null scalars: name %q count %d, want zero values", s.Name, s.Count)
	}
	if s.Inner.Addr != "keep" {
		t.Errorf("null mapping: inner = %+v, want it left alone", s.Inner)
	}
	if s.Tags != nil || s.Optional != nil {
		t.Errorf("null list and pointer: %v %v, want nil", s.Tags, s.Optional)
	}
}

func TestDecodeMerge(t *testing.T) {
	src := `
name: x
routes:
  base: &base {upstream: "a:25"}
  other:
    <<: *base
inner:
  port: 1
  <<: [{addr: first, port: 2}, {addr: second, port: 3}]
`
	s, errs := decode(t, src)
	checkErrors(t, errs, nil)
	// Explicit keys win over merged ones whatever their order; of several
	// merged mappings the first wins.
	if s.Inner.Addr != "first" || s.Inner.Port != 1 {
		t.Errorf("inner = %+v, want addr first, port 1", s.Inner)
	}
	if r := s.Routes["other"]; r == nil || r.Upstream != "a:25" {
		t.Errorf("merged route = %+v", r)
	}
}

func TestAliasBomb(t *testing.T) {
	// Each level merges the one below twice: 2^30 visits without a bound.
	var b strings.Builder
	b.WriteString("a0: &a0 {addr: x}\n")
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&b, "a%d: &a%d {<<: [*a%d, *a%d]}\n", i, i, i-1, i-1)
	}
	b.WriteString("inner:\n  <<: *a30\n")
	_, errs := decode(t, b.String())
	if errs.Err() == nil {
		t.Fatal("no error for an alias bomb")
	}
	if !strings.Contains(errs.Error(), "too many aliases") {
		t.Errorf("errors = %v", errs)
	}
}

func TestErrorsHelpers(t *testing.T) {
	es := Errors{
		{File: "b.yaml", Line: 1, Col: 1, Msg: "b"},
		{File: "a.yaml", Line: 2, Col: 5, Msg: "later", Warning: true},
		{File: "a.yaml", Line: 2, Col: 1, Msg: "earlier"},
	}
	es.Sort()
	checkErrors(t, es, []string{
		"a.yaml:2:1: earlier",
		"a.yaml:2:5: warning: later",
		"b.yaml:1:1: b",
	})
	if es.Err() == nil {
		t.Error("Err() = nil with an error present")
	}
	if w := es.Warnings(); len(w) != 1 || w.Err() != nil {
		t.Errorf("Warnings() = %v; its Err() = %v, want one warning and nil", w, w.Err())
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"30s", 30 * time.Second, true},
		{"5m", 5 * time.Minute, true},
		{"36h", 36 * time.Hour, true},
		{"1h30m", 90 * time.Minute, true},
		{"2d", 48 * time.Hour, true},
		{"1.5d", 36 * time.Hour, true},
		{" 36d ", 36 * 24 * time.Hour, true},
		{"", 0, false},
		{"5", 0, false},
		{"d", 0, false},
		{"-1d", 0, false},
		{"-5m", 0, false},
		{"1d12h", 0, false},
		{"Infd", 0, false},
		{"NaNd", 0, false},
		{"1e300d", 0, false},
		{"99999999999d", 0, false},
		{"0x10d", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1048576", 1 << 20, true},
		{"25MiB", 25 << 20, true},
		{"512KiB", 512 << 10, true},
		{"1GiB", 1 << 30, true},
		{"10MB", 10_000_000, true},
		{"10mb", 10_000_000, true},
		{"512KB", 512_000, true},
		{"2K", 2048, true},
		{"1.5MiB", 3 << 19, true},
		{"25 MiB", 25 << 20, true},
		{"100B", 100, true},
		{"", 0, false},
		{"MiB", 0, false},
		{"-1", 0, false},
		{"-1MiB", 0, false},
		{"NaN", 0, false},
		{"Inf", 0, false},
		{"1e6", 0, false},
		{"0x10", 0, false},
		{"1_000", 0, false},
		{"10TiB", 0, false},
		{"9999999999GiB", 0, false},
		{"1.2.3", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestSizeString(t *testing.T) {
	for _, tt := range []struct {
		in   Size
		want string
	}{{0, "0"}, {100, "100"}, {1024, "1KiB"}, {25 << 20, "25MiB"}, {3 << 30, "3GiB"}, {10_000_000, "10000000"}} {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(tt.in), got, tt.want)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" for an error
	}{
		{"192.0.2.0/24", "192.0.2.0/24"},
		{"192.0.2.77/24", "192.0.2.0/24"}, // host bits cleared
		{"192.0.2.7", "192.0.2.7/32"},
		{"2001:db8::/32", "2001:db8::/32"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"::ffff:192.0.2.0/120", "192.0.2.0/24"},
		{"::ffff:192.0.2.7", "192.0.2.7/32"},
		{" 10.0.0.0/8 ", "10.0.0.0/8"},
		{"0.0.0.0/0", "0.0.0.0/0"},
		{"", ""},
		{"10.0.0.0/33", ""},
		{"10.0.0", ""},
		{"example.com", ""},
		{"fe80::1%eth0", ""},
		{"10.0.0.0/-1", ""},
	}
	for _, tt := range tests {
		got, err := ParsePrefix(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("ParsePrefix(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}
