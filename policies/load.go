package policies

import (
	"errors"
	"fmt"
	"io/fs"
	"moat/greylist"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"moat/internal/yamlx"
)

// builtinFile is the file name errors and Source use for the built-in
// default policy.
const builtinFile = "(built-in)"

// builtinYAML is the policy Load uses when there is no policy at all: no
// checks, the usual thresholds, enforcing.
const builtinYAML = `policy: default
actions: { tag: 5, quarantine: 8, reject: 12 }
mode: enforce
`

// maxAliasNodes bounds how many YAML nodes one document may reach through
// aliases, so that an alias bomb cannot stall a reload.
const maxAliasNodes = 100_000

// Load reads every policy file the globs name and compiles them into a Set.
//
// Each glob is expanded with filepath.Glob; a glob that matches nothing is
// a warning, a malformed one an error. Files load in glob order and, within
// a glob, in name order; a file named twice loads once. A later file may
// add policies or replace an earlier policy of the same name (whole, in its
// place in the load order). With no policy at all, Load returns the
// built-in default policy.
//
// The returned Errors hold warnings and errors, positioned as FILE:LINE:COL
// (errors about a glob or an unreadable file have line 0). When it holds an
// error (Errors.Err() != nil) the Set is nil. Cross-file checks (extends,
// the one default) run only when every file is valid on its own.
func Load(globs []string) (*Set, yamlx.Errors) {
	var errs yamlx.Errors
	var files []string
	seen := map[string]bool{}
	for _, g := range globs {
		matches, err := filepath.Glob(g)
		if err != nil {
			errs = append(errs, &yamlx.Error{File: g, Msg: fmt.Sprintf("bad file pattern: %v", err)})
			continue
		}
		if len(matches) == 0 {
			errs = append(errs, &yamlx.Error{File: g, Msg: "no policy file matches this pattern", Warning: true})
		}
		for _, m := range matches {
			if !seen[m] {
				seen[m] = true
				files = append(files, m)
			}
		}
	}
	return loadFiles(files, errs)
}

// LoadFile reads one policy file (no pattern expansion) and compiles it
// into a Set on its own, as Load does.
func LoadFile(path string) (*Set, yamlx.Errors) {
	return loadFiles([]string{path}, nil)
}

func loadFiles(files []string, errs yamlx.Errors) (*Set, yamlx.Errors) {
	var specs []*Spec
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.IsDir() {
			errs = append(errs, &yamlx.Error{File: f, Msg: "is a directory, not a policy file; skipped", Warning: true})
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			errs = append(errs, &yamlx.Error{File: f, Msg: fmt.Sprintf("cannot read policy file: %v", err)})
			continue
		}
		s, es := Parse(f, data)
		errs = append(errs, es...)
		specs = append(specs, s...)
	}
	if errs.Err() != nil {
		return nil, errs
	}
	set, es := Compile(specs...)
	errs = append(errs, es...)
	if errs.Err() != nil {
		return nil, errs
	}
	return set, errs
}

// Parse decodes the policies of one file (one per YAML document) and runs
// the checks that need nothing outside the file: the schema, names
// present and unique, score thresholds in order, patterns, regular
// expressions. Enabling a check this version does not run is a warning.
// The Specs are for Compile; a Spec from a document with errors is
// returned too, but a caller must not compile a file that had errors.
func Parse(file string, data []byte) ([]*Spec, yamlx.Errors) {
	docs, errs := yamlx.Parse(file, data)
	var specs []*Spec
	byName := map[string]*Spec{}
	policies := 0
	for _, doc := range docs {
		if len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" && root.Value == "" {
			continue // an empty document, such as a trailing "---"
		}
		policies++
		if e := checkAliases(file, root); e != nil {
			errs = append(errs, e)
			continue
		}
		s := &Spec{file: file, node: root}
		es := yamlx.Decode(file, doc, s)
		errs = append(errs, es...)
		if root.Kind != yaml.MappingNode {
			continue // yamlx said "want a mapping"
		}
		v := validator{file: file}
		v.spec(s)
		errs = append(errs, v.errs...)
		s.bad = es.Err() != nil || v.errs.Err() != nil
		if _, n := lookup(root, "policy"); n != nil && validName(s.Policy) {
			if prev, ok := byName[s.Policy]; ok {
				_, pn := lookup(prev.node, "policy")
				errs = append(errs, errAt(file, n, fmt.Sprintf("policy %q is already defined in this file at line %d", s.Policy, pn.Line)))
				s.bad = true
			} else {
				byName[s.Policy] = s
			}
		}
		specs = append(specs, s)
	}
	if policies == 0 && len(errs) == 0 {
		errs = append(errs, &yamlx.Error{File: file, Line: 1, Col: 1, Msg: "no policy in this file", Warning: true})
	}
	errs.Sort()
	return specs, errs
}

// Compile links policies read by Parse, in load order, into a Set: a later
// policy replaces an earlier one of the same name; extends is resolved
// (the parent must exist, no cycles); exactly one policy must be the
// default (have no applies_to). With no specs it returns the built-in
// default policy.
func Compile(specs ...*Spec) (*Set, yamlx.Errors) {
	if len(specs) == 0 {
		specs = builtinSpecs()
	}
	l := &linker{byName: map[string]*Spec{}, eff: map[string]*Spec{}, state: map[string]int{}}
	var order []*Spec
	for _, s := range specs {
		if _, ok := l.byName[s.Policy]; ok {
			i := slices.IndexFunc(order, func(o *Spec) bool { return o.Policy == s.Policy })
			order[i] = s
		} else {
			order = append(order, s)
		}
		l.byName[s.Policy] = s
	}
	for _, s := range order {
		l.resolve(s)
	}

	var defaults []*Spec
	for _, s := range order {
		if s.AppliesTo == nil {
			defaults = append(defaults, s)
		}
	}
	switch {
	case len(defaults) == 0:
		l.errorAt(order[0], "policy", "no default policy: one policy must have no applies_to (it applies to everything no other policy takes)")
	case len(defaults) > 1:
		first := defaults[0]
		for _, s := range defaults[1:] {
			l.errorAt(s, "policy", fmt.Sprintf("policy %q is a second default policy (it has no applies_to); %q at %s is the default", s.Policy, first.Policy, position(first, "policy")))
		}
	}
	if l.errs.Err() != nil {
		return nil, l.errs
	}

	set := &Set{byName: map[string]*Policy{}}
	for _, s := range order {
		p := newPolicy(l.eff[s.Policy])
		set.list = append(set.list, p)
		set.byName[p.name] = p
		if s.AppliesTo == nil {
			set.def = p
		}
	}
	return set, l.errs
}

func builtinSpecs() []*Spec {
	specs, errs := Parse(builtinFile, []byte(builtinYAML))
	if errs.Err() != nil {
		panic("policies: the built-in default policy does not parse: " + errs.Error())
	}
	return specs
}

// linker resolves extends.
type linker struct {
	byName map[string]*Spec // the last spec of each name
	eff    map[string]*Spec // effective specs (after extends)
	state  map[string]int   // unset, visiting, done, failed
	stack  []string         // names being resolved
	errs   yamlx.Errors
}

const (
	visiting = iota + 1
	done
	failed
)

func (l *linker) errorAt(s *Spec, key, msg string) {
	l.errs = append(l.errs, errAtSpec(s, key, msg))
}

// resolve returns the effective spec of s, or nil when its extends chain
// is broken (the error is reported once).
func (l *linker) resolve(s *Spec) *Spec {
	switch l.state[s.Policy] {
	case done:
		return l.eff[s.Policy]
	case failed:
		return nil
	}
	if s.Extends == "" {
		l.eff[s.Policy] = clone(s)
		l.state[s.Policy] = done
		return l.eff[s.Policy]
	}
	l.state[s.Policy] = visiting
	l.stack = append(l.stack, s.Policy)
	defer func() { l.stack = l.stack[:len(l.stack)-1] }()

	parent, ok := l.byName[s.Extends]
	if !ok {
		l.errorAt(s, "extends", fmt.Sprintf("extends: no policy named %q", s.Extends))
		l.state[s.Policy] = failed
		return nil
	}
	if l.state[parent.Policy] == visiting {
		i := slices.Index(l.stack, parent.Policy)
		cycle := append(slices.Clone(l.stack[i:]), parent.Policy)
		l.errorAt(s, "extends", "extends cycle: "+strings.Join(cycle, " → "))
		l.state[s.Policy] = failed
		return nil
	}
	pe := l.resolve(parent)
	if pe == nil {
		l.state[s.Policy] = failed
		return nil
	}
	e := inherit(pe, s)
	if !s.bad {
		// Report a problem at the child's own threshold that takes part
		// in it; one made of inherited values only was reported at the
		// ancestor that set them.
		for _, pr := range thresholdProblems(e.Actions) {
			n := lookupNode(s.node, "actions", pr.hi)
			if n == nil {
				n = lookupNode(s.node, "actions", pr.lo)
			}
			if n != nil {
				l.errs = append(l.errs, errAt(s.file, n, fmt.Sprintf("%s (after extends %s)", pr.msg, s.Extends)))
			}
		}
	}
	l.eff[s.Policy] = e
	l.state[s.Policy] = done
	return e
}

// inherit returns the effective policy of child, which extends parent (an
// effective policy): a deep copy of parent where every key child sets
// replaces parent's value. For the blocks checks, actions, tag, allow and
// deny this goes one level down (checks.spf, actions.reject,
// allow.clients); a block set to null replaces the whole block. The name,
// applies_to and extends are the child's own.
func inherit(parent, child *Spec) *Spec {
	out := clone(parent)
	out.Policy, out.AppliesTo, out.Extends = child.Policy, clone(child.AppliesTo), child.Extends
	out.file, out.node, out.bad = child.file, child.node, child.bad
	ov, cv := reflect.ValueOf(out).Elem(), reflect.ValueOf(child).Elem()
	t := ov.Type()
	for i := range t.NumField() {
		key := yamlKey(t.Field(i))
		switch key {
		case "", "policy", "applies_to", "extends":
			continue
		}
		k, val := lookup(child.node, key)
		if k == nil {
			continue
		}
		if ft := t.Field(i).Type; ft.Kind() == reflect.Struct && val.Kind == yaml.MappingNode {
			for j := range ft.NumField() {
				if sk := yamlKey(ft.Field(j)); sk != "" {
					if k2, _ := lookup(child.node, key, sk); k2 != nil {
						ov.Field(i).Field(j).Set(deepCopy(cv.Field(i).Field(j)))
					}
				}
			}
			continue
		}
		ov.Field(i).Set(deepCopy(cv.Field(i)))
	}
	return out
}

// clone returns a deep copy of *v.
func clone[T any](v *T) *T {
	if v == nil {
		return nil
	}
	return deepCopy(reflect.ValueOf(v)).Interface().(*T)
}

// deepCopy copies v, its pointers, slices and maps, and the exported
// fields of its structs; unexported fields (compiled regular expressions,
// parsed patterns, positions) are immutable and shared.
func deepCopy(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		n := reflect.New(v.Type().Elem())
		n.Elem().Set(deepCopy(v.Elem()))
		return n
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		n := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			n.Index(i).Set(deepCopy(v.Index(i)))
		}
		return n
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		n := reflect.MakeMapWithSize(v.Type(), v.Len())
		for it := v.MapRange(); it.Next(); {
			n.SetMapIndex(it.Key(), deepCopy(it.Value()))
		}
		return n
	case reflect.Struct:
		n := reflect.New(v.Type()).Elem()
		n.Set(v)
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				n.Field(i).Set(deepCopy(v.Field(i)))
			}
		}
		return n
	}
	return v
}

func yamlKey(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	k, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if k == "-" {
		return ""
	}
	return k
}

// thresholdProblem is one pair of thresholds out of order.
type thresholdProblem struct {
	hi  string // the threshold that is too low: "quarantine"
	lo  string // the one it is below: "tag"
	msg string
}

// thresholdProblems checks tag ≤ quarantine ≤ reject among the thresholds
// that are set.
func thresholdProblems(a Actions) []thresholdProblem {
	type th struct {
		key string
		v   *float64
	}
	var set []th
	for _, t := range []th{{"tag", a.Tag}, {"quarantine", a.Quarantine}, {"reject", a.Reject}} {
		if t.v != nil {
			set = append(set, t)
		}
	}
	var out []thresholdProblem
	for i := 1; i < len(set); i++ {
		lo, hi := set[i-1], set[i]
		if *hi.v < *lo.v {
			out = append(out, thresholdProblem{hi.key, lo.key, fmt.Sprintf("actions.%s (%s) is below actions.%s (%s); want tag ≤ quarantine ≤ reject",
				hi.key, formatScore(*hi.v), lo.key, formatScore(*lo.v))})
		}
	}
	return out
}

// validator runs the checks of one document that need nothing else.
type validator struct {
	file string
	errs yamlx.Errors
}

func (v *validator) errorf(n *yaml.Node, format string, args ...any) {
	v.errs = append(v.errs, errAt(v.file, n, fmt.Sprintf(format, args...)))
}

func (v *validator) warnf(n *yaml.Node, format string, args ...any) {
	e := errAt(v.file, n, fmt.Sprintf(format, args...))
	e.Warning = true
	v.errs = append(v.errs, e)
}

func (v *validator) spec(s *Spec) {
	root := s.node
	if _, n := lookup(root, "policy"); n == nil {
		v.errorf(root, "missing key \"policy\": every policy needs a name")
	} else if n.Kind == yaml.ScalarNode && !validName(s.Policy) {
		v.errorf(n, "policy: want a name of letters, digits, '.', '_' and '-', got %q", s.Policy)
	}
	if _, n := lookup(root, "extends"); n != nil && n.Kind == yaml.ScalarNode && !validName(s.Extends) {
		v.errorf(n, "extends: want the name of another policy, got %q", s.Extends)
	}
	if _, n := lookup(root, "applies_to"); n != nil && s.AppliesTo != nil && s.AppliesTo.empty() && onlyKnownKeys(n, reflect.TypeFor[AppliesTo]()) {
		v.errorf(n, "applies_to: lists nothing to match; leave applies_to out to make this the default policy")
	}
	for _, pr := range thresholdProblems(s.Actions) {
		if _, n := lookup(root, "actions", pr.hi); n != nil {
			v.errorf(n, "%s", pr.msg)
		}
	}
	if _, n := lookup(root, "tag", "subject_prefix"); n != nil && s.Tag.SubjectPrefix != nil {
		if strings.ContainsFunc(*s.Tag.SubjectPrefix, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			v.errorf(n, "tag.subject_prefix: must not hold control characters (line breaks, tabs), got %q", *s.Tag.SubjectPrefix)
		}
	}
	v.checks(s)
}

func (v *validator) checks(s *Spec) {
	root, c := s.node, &s.Checks
	for _, name := range checkNames {
		if k, _ := lookup(root, "checks", name); k != nil && c.spec(name) != nil && !Implemented(name) {
			v.warnf(k, "check %q is not implemented in this version; ignored", name)
		}
	}
	if _, n := lookup(root, "checks", "size"); n != nil && c.Size != nil {
		if _, m := lookup(root, "checks", "size", "max"); m == nil {
			v.errorf(n, "checks.size: max is required (for example max: 25MiB)")
		} else if _, err := yamlx.ParseSize(m.Value); err == nil && c.Size.Max != nil && *c.Size.Max <= 0 {
			v.errorf(m, "checks.size.max: want a size above 0 (leave size out for no limit)")
		}
	}
	if g := c.Greylist; g != nil {
		at := func(key string) *yaml.Node {
			if _, n := lookup(root, "checks", "greylist", key); n != nil {
				return n
			}
			_, n := lookup(root, "checks", "greylist")
			return n
		}
		if g.IPv4Prefix != 0 && (g.IPv4Prefix < 8 || g.IPv4Prefix > 32) {
			v.errorf(at("ipv4_prefix"), "checks.greylist.ipv4_prefix: want 8 to 32, got %d", g.IPv4Prefix)
		}
		if g.IPv6Prefix != 0 && (g.IPv6Prefix < 16 || g.IPv6Prefix > 128) {
			v.errorf(at("ipv6_prefix"), "checks.greylist.ipv6_prefix: want 16 to 128, got %d", g.IPv6Prefix)
		}
		if g.At != "" && g.At != "rcpt" && g.At != "data" {
			v.errorf(at("at"), "checks.greylist.at: want rcpt or data, got %q", g.At)
		}
		if g.AutoAllowAfter != nil && *g.AutoAllowAfter < 0 {
			v.errorf(at("auto_allow_after"), "checks.greylist.auto_allow_after: want 0 (off) or more, got %d", *g.AutoAllowAfter)
		}
		// The effective timings, defaults filled in, must let a retry pass.
		p := greylist.DefaultParams()
		if g.Delay > 0 {
			p.Delay = g.Delay.D()
		}
		if g.RetryWindow > 0 {
			p.RetryWindow = g.RetryWindow.D()
		}
		if g.Lifetime > 0 {
			p.Lifetime = g.Lifetime.D()
		}
		if p.RetryWindow <= p.Delay {
			key := "retry_window"
			if g.RetryWindow == 0 {
				key = "delay"
			}
			v.errorf(at(key), "checks.greylist: retry_window (%s) must be longer than delay (%s), or no retry can pass", yamlx.Duration(p.RetryWindow), yamlx.Duration(p.Delay))
		}
	}
	if _, n := lookup(root, "checks", "dnsbl"); n != nil && c.DNSBL != nil {
		if len(c.DNSBL.Zones) == 0 {
			v.errorf(n, "checks.dnsbl: zones lists no zone")
		}
		zones := seqItems(lookupNode(root, "checks", "dnsbl", "zones"))
		for i, z := range c.DNSBL.Zones {
			if i >= len(zones) {
				break
			}
			if _, zn := lookup(zones[i], "zone"); zn == nil {
				v.errorf(zones[i], "checks.dnsbl.zones[%d]: zone is required", i)
			} else if _, err := parseDomain(z.Zone); err != nil {
				v.errorf(zn, "checks.dnsbl.zones[%d].zone: %v", i, err)
			}
			switch z.Lookup {
			case "", "client", "helo", "sender":
			default:
				_, ln := lookup(zones[i], "lookup")
				v.errorf(ln, "checks.dnsbl.zones[%d].lookup: want client, helo or sender, got %q", i, z.Lookup)
			}
		}
	}
	rules := seqItems(lookupNode(root, "checks", "headers"))
	for i, r := range c.Headers {
		if i >= len(rules) {
			break
		}
		rn := rules[i]
		if rn.Kind != yaml.MappingNode {
			continue // yamlx said "want a mapping"
		}
		if _, hn := lookup(rn, "header"); hn == nil {
			v.errorf(rn, "checks.headers[%d]: header is required", i)
		} else if !validHeaderName(r.Header) {
			v.errorf(hn, "checks.headers[%d].header: want a header field name such as Subject, got %q", i, r.Header)
		}
		if _, mn := lookup(rn, "match"); mn == nil {
			v.errorf(rn, "checks.headers[%d]: match is required", i)
		}
		if r.Score == nil && r.Action == "" {
			v.errorf(rn, "checks.headers[%d]: a rule needs a score, an action or both", i)
		}
	}
	if _, n := lookup(root, "checks", "attachments", "block_extensions"); n != nil && c.Attachments != nil {
		items := seqItems(n)
		for i, ext := range c.Attachments.BlockExtensions {
			e := strings.TrimPrefix(ext, ".")
			if i < len(items) && (e == "" || strings.ContainsAny(e, "/\\ \t*.")) {
				v.errorf(items[i], "checks.attachments.block_extensions[%d]: want an extension such as exe, got %q", i, ext)
			}
		}
	}
	if _, n := lookup(root, "checks", "attachments", "block_mime_types"); n != nil && c.Attachments != nil {
		items := seqItems(n)
		for i, mt := range c.Attachments.BlockMIMETypes {
			if i < len(items) && !validMIMEType(mt) {
				v.errorf(items[i], "checks.attachments.block_mime_types[%d]: want a media type such as application/x-msdownload (or application/*), got %q", i, mt)
			}
		}
	}
}

// validName reports whether s is a usable policy name.
func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case i > 0 && (r == '.' || r == '_' || r == '-'):
		default:
			return false
		}
	}
	return true
}

// validMIMEType: type/subtype of RFC 2045 tokens, or type/* for every
// subtype.
func validMIMEType(s string) bool {
	typ, sub, ok := strings.Cut(s, "/")
	token := func(t string) bool {
		if t == "" {
			return false
		}
		for _, r := range t {
			if r <= ' ' || r >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?=*`, r) {
				return false
			}
		}
		return true
	}
	return ok && token(typ) && (sub == "*" || token(sub))
}

// validHeaderName: RFC 5322 field names are printable ASCII but ':'.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || r == ':' {
			return false
		}
	}
	return true
}

// errAt builds an error at n's position in file.
func errAt(file string, n *yaml.Node, msg string) *yamlx.Error {
	return &yamlx.Error{File: file, Line: n.Line, Col: n.Column, Msg: msg}
}

// errAtSpec builds an error at the value of top-level key in s, or at the
// start of s when the key is missing.
func errAtSpec(s *Spec, key, msg string) *yamlx.Error {
	n := s.node
	if _, v := lookup(s.node, key); v != nil {
		n = v
	}
	if n == nil {
		return &yamlx.Error{File: s.file, Msg: msg}
	}
	return errAt(s.file, n, msg)
}

// position is "FILE:LINE" of the value of key in s.
func position(s *Spec, key string) string {
	if _, v := lookup(s.node, key); v != nil {
		return fmt.Sprintf("%s:%d", s.file, v.Line)
	}
	return s.file
}

// lookup follows path through nested mappings (resolving aliases and <<
// merge keys) and returns the key and value nodes of its last element, or
// nils when a step is missing.
func lookup(n *yaml.Node, path ...string) (key, val *yaml.Node) {
	if n == nil {
		return nil, nil
	}
	val = n
	for _, p := range path {
		val = resolve(val)
		if val.Kind != yaml.MappingNode {
			return nil, nil
		}
		key, val = entry(val, p, 0)
		if key == nil {
			return nil, nil
		}
	}
	return key, resolve(val)
}

// lookupNode is lookup's value node.
func lookupNode(n *yaml.Node, path ...string) *yaml.Node {
	_, v := lookup(n, path...)
	return v
}

// entry finds key in mapping m; the last occurrence wins, as it does when
// yamlx decodes merge keys.
func entry(m *yaml.Node, key string, depth int) (k, v *yaml.Node) {
	if depth > 16 {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		kn, vn := m.Content[i], m.Content[i+1]
		if kn.Value == "<<" && kn.Tag == "!!merge" {
			if mm := resolve(vn); mm.Kind == yaml.MappingNode {
				if k2, v2 := entry(mm, key, depth+1); k2 != nil {
					k, v = k2, v2
				}
			}
			continue
		}
		if kn.Kind == yaml.ScalarNode && kn.Value == key {
			k, v = kn, vn
		}
	}
	return k, v
}

func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

// seqItems returns the items of a sequence node (nil for anything else).
func seqItems(n *yaml.Node) []*yaml.Node {
	if n == nil || n.Kind != yaml.SequenceNode {
		return nil
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, it := range n.Content {
		items[i] = resolve(it)
	}
	return items
}

// checkAliases refuses a document whose aliases refer to a node that
// contains them (yamlx would follow them forever) or reach more than
// maxAliasNodes nodes in all.
func checkAliases(file string, root *yaml.Node) *yamlx.Error {
	count := 0
	open := map[*yaml.Node]bool{}
	var bad *yamlx.Error
	var walk func(n *yaml.Node, aliased bool) bool
	walk = func(n *yaml.Node, aliased bool) bool {
		if n.Kind == yaml.AliasNode {
			if n.Alias == nil {
				return true
			}
			if open[n.Alias] {
				bad = errAt(file, n, fmt.Sprintf("alias *%s refers to a value that contains it", n.Value))
				return false
			}
			n, aliased = n.Alias, true
		}
		if aliased {
			count++
			if count > maxAliasNodes {
				bad = errAt(file, root, fmt.Sprintf("the document's aliases expand to more than %d values", maxAliasNodes))
				return false
			}
		}
		open[n] = true
		defer delete(open, n)
		for _, c := range n.Content {
			if !walk(c, aliased) {
				return false
			}
		}
		return true
	}
	walk(root, false)
	return bad
}

// onlyKnownKeys reports whether every key of mapping n is a key of struct
// type t (else yamlx has reported the others, and the rest may be empty
// because of them).
func onlyKnownKeys(n *yaml.Node, t reflect.Type) bool {
	known := yamlx.Fields(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		if !slices.Contains(known, n.Content[i].Value) {
			return false
		}
	}
	return true
}
