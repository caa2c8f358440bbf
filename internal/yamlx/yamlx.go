// Package yamlx decodes YAML files into Go structs strictly, reporting every
// problem as FILE:LINE:COL: message.
//
// yaml.v3's own decoder with KnownFields stops at the first unknown key and
// reports only a line, so moat walks the node tree itself: each struct field
// is matched by its `yaml` tag, unknown and duplicate keys are errors at the
// key's position, and values that implement Unmarshaler (durations, sizes,
// CIDRs) are parsed with their node so their errors point at the value.
package yamlx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Error is one problem at one place in a YAML file.
type Error struct {
	File      string
	Line, Col int
	Msg       string
	Warning   bool // a warning does not make the file invalid
}

func (e *Error) Error() string {
	w := ""
	if e.Warning {
		w = "warning: "
	}
	return fmt.Sprintf("%s:%d:%d: %s%s", e.File, e.Line, e.Col, w, e.Msg)
}

// Errors is every problem found in one decode, in file order.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Err returns es as an error when it holds at least one non-warning
// problem, and nil otherwise.
func (es Errors) Err() error {
	for _, e := range es {
		if !e.Warning {
			return es
		}
	}
	return nil
}

// Warnings returns the warnings among es.
func (es Errors) Warnings() Errors {
	var w Errors
	for _, e := range es {
		if e.Warning {
			w = append(w, e)
		}
	}
	return w
}

// Sort orders es by file, line and column.
func (es Errors) Sort() {
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

// Unmarshaler is implemented by value types that parse their own node.
// An error it returns is reported at the node's position.
type Unmarshaler interface {
	UnmarshalYAML(n *yaml.Node) error
}

// Decoder walks a node tree into Go values, collecting errors.
type Decoder struct {
	File string
	Errs Errors

	steps   int                 // values visited so far, bounded by maxSteps
	merging map[*yaml.Node]bool // mappings being merged (<<), to stop cycles
}

// maxSteps bounds the values one Decode visits. Aliases and merge keys let a
// few lines name the same node over and over (a "billion laughs" file);
// past this bound decoding stops with an error. A real config file has a few
// hundred values.
const maxSteps = 100_000

// step counts one visit and reports whether decoding may go on. The first
// visit over the bound is reported at n.
func (d *Decoder) step(n *yaml.Node, path string) bool {
	d.steps++
	if d.steps == maxSteps+1 {
		d.Errorf(n, "%s: the document expands to more than %d values (too many aliases?)", name(path), maxSteps)
	}
	return d.steps <= maxSteps
}

// Errorf records an error at n's position.
func (d *Decoder) Errorf(n *yaml.Node, format string, args ...any) {
	d.Errs = append(d.Errs, &Error{File: d.File, Line: n.Line, Col: n.Column, Msg: fmt.Sprintf(format, args...)})
}

// Warnf records a warning at n's position.
func (d *Decoder) Warnf(n *yaml.Node, format string, args ...any) {
	d.Errs = append(d.Errs, &Error{File: d.File, Line: n.Line, Col: n.Column, Msg: fmt.Sprintf(format, args...), Warning: true})
}

// Parse reads YAML text into documents. A syntax error is returned as
// Errors with the position yaml.v3 gives (column 1 when it names none).
func Parse(file string, data []byte) ([]*yaml.Node, Errors) {
	var docs []*yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return docs, Errors{syntaxError(file, err)}
		}
		docs = append(docs, &n)
	}
	return docs, nil
}

// parserProblems are the messages of yaml.v3's parser (as opposed to its
// scanner). yaml.v3 prints the line of a parser error 0-based and the line
// of a scanner error 1-based, so syntaxError adds one for these.
var parserProblems = []string{
	"did not find expected <stream-start>",
	"did not find expected <document start>",
	"did not find expected node content",
	"did not find expected '-' indicator",
	"did not find expected key",
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"found undefined tag handle",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found duplicate %TAG directive",
}

// syntaxError turns yaml.v3's "yaml: line N: msg" into a positioned Error.
// yaml.v3 never reports a column, so the column is always 1.
func syntaxError(file string, err error) *Error {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: ")
	line := 1
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.Index(rest, ":"); i > 0 {
			if n, err := strconv.Atoi(rest[:i]); err == nil && n > 0 {
				line = n
				msg = strings.TrimSpace(rest[i+1:])
				if slices.Contains(parserProblems, msg) {
					line++
				}
			}
		}
	}
	return &Error{File: file, Line: line, Col: 1, Msg: "syntax error: " + msg}
}

// Decode decodes the document node n into out (a pointer), returning every
// problem found. Keys missing from n leave out's fields as they were, so
// callers fill defaults first.
func Decode(file string, n *yaml.Node, out any) Errors {
	if n == nil {
		return nil
	}
	d := &Decoder{File: file}
	d.Value(n, reflect.ValueOf(out).Elem(), "")
	return d.Errs.dedup()
}

// dedup drops repeats of the same message at the same place, which an
// anchor merged or aliased in several places would otherwise produce.
func (es Errors) dedup() Errors {
	type key struct {
		file      string
		line, col int
		msg       string
		warning   bool
	}
	seen := map[key]bool{}
	out := es[:0]
	for _, e := range es {
		k := key{e.File, e.Line, e.Col, e.Msg, e.Warning}
		if !seen[k] {
			seen[k] = true
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

var unmarshalerType = reflect.TypeFor[Unmarshaler]()
var nodeType = reflect.TypeFor[yaml.Node]()

// Value decodes n into v; path names the place for messages ("smtp.timeouts").
func (d *Decoder) Value(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	n = resolveAlias(n)
	if !d.step(n, path) {
		return
	}
	if v.Type() == nodeType {
		v.Set(reflect.ValueOf(*n))
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		if isNull(n) {
			v.Set(reflect.Zero(v.Type()))
			return
		}
		if err := v.Addr().Interface().(Unmarshaler).UnmarshalYAML(n); err != nil {
			var ye *Error
			if errors.As(err, &ye) {
				d.Errs = append(d.Errs, ye)
			} else {
				d.Errorf(n, "%s: %v", name(path), err)
			}
		}
		return
	}
	if isNull(n) && isScalarKind(v.Kind()) {
		// "key:", "key: ~" and "key: null" set the zero value.
		v.Set(reflect.Zero(v.Type()))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if isNull(n) {
			v.Set(reflect.Zero(v.Type()))
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.Value(n, v.Elem(), path)
	case reflect.Struct:
		d.structValue(n, v, path)
	case reflect.Map:
		d.mapValue(n, v, path)
	case reflect.Slice:
		d.sliceValue(n, v, path)
	case reflect.String:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		if s, ok := d.scalar(n, path, "true or false"); ok {
			switch strings.ToLower(s) {
			case "true", "yes", "on":
				v.SetBool(true)
			case "false", "no", "off":
				v.SetBool(false)
			default:
				d.Errorf(n, "%s: want true or false, got %q", name(path), s)
			}
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if s, ok := d.scalar(n, path, "a whole number"); ok {
			i, err := strconv.ParseInt(s, intBase(s), v.Type().Bits())
			if err != nil {
				d.Errorf(n, "%s: want a whole number, got %q", name(path), s)
				return
			}
			v.SetInt(i)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if s, ok := d.scalar(n, path, "a whole number"); ok {
			i, err := strconv.ParseUint(s, intBase(s), v.Type().Bits())
			if err != nil {
				d.Errorf(n, "%s: want a whole number that is 0 or more, got %q", name(path), s)
				return
			}
			v.SetUint(i)
		}
	case reflect.Float32, reflect.Float64:
		if s, ok := d.scalar(n, path, "a number"); ok {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				d.Errorf(n, "%s: want a number, got %q", name(path), s)
				return
			}
			v.SetFloat(f)
		}
	case reflect.Interface:
		var x any
		if err := n.Decode(&x); err != nil {
			d.Errorf(n, "%s: %v", name(path), err)
			return
		}
		if x != nil {
			v.Set(reflect.ValueOf(x))
		}
	default:
		d.Errorf(n, "%s: cannot decode into %s", name(path), v.Type())
	}
}

// intBase returns the base for strconv: 0 (so 0x1f, 0o17 and 0b101 work)
// except for a decimal number with leading zeros, which YAML 1.2 reads as
// decimal ("010" is ten) where strconv would read octal.
func intBase(s string) int {
	t := strings.TrimLeft(s, "+-")
	if len(t) > 1 && t[0] == '0' && strings.Trim(t, "0123456789") == "" {
		return 10
	}
	return 0
}

func isScalarKind(k reflect.Kind) bool {
	switch k {
	case reflect.String, reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

func name(path string) string {
	if path == "" {
		return "document"
	}
	return path
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// scalar returns n's text when n is a scalar, and reports otherwise.
func (d *Decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.Errorf(n, "%s: want %s, got %s", name(path), want, kindName(n))
		return "", false
	}
	return n.Value, true
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Fields lists the yaml keys of struct type t, in declaration order.
func Fields(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if k := fieldKey(t.Field(i)); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

func fieldKey(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag := f.Tag.Get("yaml")
	if tag == "-" {
		return ""
	}
	k, _, _ := strings.Cut(tag, ",")
	if k == "" {
		k = strings.ToLower(f.Name)
	}
	return k
}

func (d *Decoder) structValue(n *yaml.Node, v reflect.Value, path string) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.Errorf(n, "%s: want a mapping, got %s", name(path), kindName(n))
		return
	}
	t := v.Type()
	index := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		if k := fieldKey(t.Field(i)); k != "" {
			index[k] = i
		}
	}
	d.merges(n, path, func(m *yaml.Node) { d.structValue(m, v, path) })
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := resolveAlias(n.Content[i]), n.Content[i+1]
		if isMerge(k) {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.Errorf(k, "%s: keys must be plain text, got %s", name(path), kindName(k))
			continue
		}
		fi, ok := index[k.Value]
		if !ok {
			d.Errorf(k, "unknown key %q in %s%s", k.Value, name(path), suggest(k.Value, Fields(t)))
			continue
		}
		if seen[k.Value] {
			d.Errorf(k, "duplicate key %q in %s", k.Value, name(path))
			continue
		}
		seen[k.Value] = true
		d.Value(val, v.Field(fi), join(path, k.Value))
	}
}

func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Tag == "!!merge" && k.Value == "<<"
}

// merges applies each merge key ("<<: *anchor" or "<<: [*a, *b]") of the
// mapping n through into. Callers then decode n's own keys, so they win
// over merged ones whatever their order, as YAML's merge key says; in a
// list of merged mappings the earlier ones win, so they are applied last.
func (d *Decoder) merges(n *yaml.Node, path string, into func(m *yaml.Node)) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if !isMerge(n.Content[i]) {
			continue
		}
		type merged struct{ at, m *yaml.Node } // at: where it is written
		var maps []merged
		val := resolveAlias(n.Content[i+1])
		switch val.Kind {
		case yaml.MappingNode:
			maps = []merged{{n.Content[i+1], val}}
		case yaml.SequenceNode:
			for j := len(val.Content) - 1; j >= 0; j-- {
				maps = append(maps, merged{val.Content[j], resolveAlias(val.Content[j])})
			}
		default:
			d.Errorf(val, "%s: a merge key (<<) takes a mapping or a list of mappings, got %s", name(path), kindName(val))
			continue
		}
		for _, mm := range maps {
			m := mm.m
			if m.Kind != yaml.MappingNode {
				d.Errorf(mm.at, "%s: a merge key (<<) takes a mapping or a list of mappings, got %s", name(path), kindName(m))
				continue
			}
			if d.merging[m] {
				d.Errorf(mm.at, "%s: a merge key (<<) includes the mapping it is in", name(path))
				continue
			}
			if !d.step(m, path) {
				return
			}
			if d.merging == nil {
				d.merging = map[*yaml.Node]bool{}
			}
			d.merging[m] = true
			into(m)
			delete(d.merging, m)
		}
	}
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}

func (d *Decoder) mapValue(n *yaml.Node, v reflect.Value, path string) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.Errorf(n, "%s: want a mapping, got %s", name(path), kindName(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		d.Errorf(n, "%s: map keys must be strings", name(path))
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	d.merges(n, path, func(m *yaml.Node) { d.mapValue(m, v, path) })
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := resolveAlias(n.Content[i]), n.Content[i+1]
		if isMerge(k) {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.Errorf(k, "%s: keys must be plain text, got %s", name(path), kindName(k))
			continue
		}
		if seen[k.Value] {
			d.Errorf(k, "duplicate key %q in %s", k.Value, name(path))
			continue
		}
		seen[k.Value] = true
		elem := reflect.New(v.Type().Elem()).Elem()
		d.Value(val, elem, join(path, k.Value))
		v.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), elem)
	}
}

func (d *Decoder) sliceValue(n *yaml.Node, v reflect.Value, path string) {
	if isNull(n) {
		v.Set(reflect.Zero(v.Type()))
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.Errorf(n, "%s: want a list, got %s", name(path), kindName(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.Value(item, s.Index(i), fmt.Sprintf("%s[%d]", name(path), i))
	}
	v.Set(s)
}

// suggest returns ` (did you mean "x"?)` when a known key is close to k.
func suggest(k string, known []string) string {
	best, bestD := "", 3
	for _, c := range known {
		if dist := levenshtein(k, c); dist < bestD {
			best, bestD = c, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
