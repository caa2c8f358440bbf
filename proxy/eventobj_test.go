package proxy

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestChecksObject: the hand-written encoding of moat.checks reads back
// as the same JSON as reflection's, keys in the same (sorted) order.
func TestChecksObject(t *testing.T) {
	checks := map[string]map[string]any{
		"spf":  {"result": "pass", "score": 0.0, "domain": "example.org", "reason": `a "quoted" <tag> & more`},
		"dkim": {"result": "pass", "score": -1.5, "signatures": []map[string]string{{"result": "pass", "domain": "example.org", "selector": "s1"}}},
		"size": {"result": "pass", "score": 0.0, "size": int64(10240), "limit": 26214400, "parts": []string{"a", "b"}},
		"misc": {"observe": true, "map": map[string]string{"b": "2", "a": "1"}, "other": []int{1, 2}, "n": 3},
	}
	encode := func(f zap.Field) string {
		var b strings.Builder
		enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{})
		buf, err := enc.EncodeEntry(zapcore.Entry{}, []zap.Field{f})
		if err != nil {
			t.Fatal(err)
		}
		b.Write(buf.Bytes())
		return b.String()
	}
	byHand := encode(zap.Object("moat.checks", checksObject(checks)))
	byReflection := encode(zap.Any("moat.checks", checks))
	var a, b any
	if err := json.Unmarshal([]byte(byHand), &a); err != nil {
		t.Fatalf("%v: %s", err, byHand)
	}
	if err := json.Unmarshal([]byte(byReflection), &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("by hand:\n%s\nby reflection:\n%s", byHand, byReflection)
	}
	// Same key order: compare the key sequence of each text.
	order := func(s string) []string {
		var keys []string
		d := json.NewDecoder(strings.NewReader(s))
		for {
			tok, err := d.Token()
			if err != nil {
				return keys
			}
			if k, ok := tok.(string); ok {
				keys = append(keys, k)
			}
		}
	}
	if ha, re := order(byHand), order(byReflection); !reflect.DeepEqual(ha, re) {
		t.Errorf("key order by hand %v, by reflection %v", ha, re)
	}
}

func BenchmarkChecksObject(b *testing.B) {
	checks := map[string]map[string]any{
		"spf":   {"result": "pass", "score": 0.0, "domain": "bench.example"},
		"dkim":  {"result": "pass", "score": 0.0, "signatures": []map[string]string{{"result": "pass", "domain": "bench.example", "selector": "bench"}}},
		"dmarc": {"result": "pass", "score": 0.0, "domain": "bench.example", "policy": "reject"},
		"dnsbl": {"result": "none", "score": 0.0},
	}
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{})
	for _, c := range []struct {
		name string
		f    zap.Field
	}{{"by hand", zap.Object("moat.checks", checksObject(checks))}, {"reflection", zap.Any("moat.checks", checks)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				buf, _ := enc.EncodeEntry(zapcore.Entry{}, []zap.Field{c.f})
				buf.Free()
			}
		})
	}
}
