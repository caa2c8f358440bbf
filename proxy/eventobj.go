package proxy

import (
	"slices"

	"go.uber.org/zap/zapcore"
)

// checksObject is the event's moat.checks, encoded field by field, keys
// sorted as encoding/json sorts them: zap.Any would encode it by
// reflection, which was a tenth of the allocations of a filtered message.
// Values of a type not listed here still go through reflection.
type checksObject map[string]map[string]any

func (c checksObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	var buf [16]string
	for _, name := range sortedKeys(buf[:0], c) {
		if err := enc.AddObject(name, checkObject(c[name])); err != nil {
			return err
		}
	}
	return nil
}

// checkObject is one check's entry of moat.checks.
type checkObject map[string]any

func (c checkObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	var buf [16]string
	for _, k := range sortedKeys(buf[:0], c) {
		switch v := c[k].(type) {
		case string:
			enc.AddString(k, v)
		case float64:
			enc.AddFloat64(k, v)
		case int:
			enc.AddInt(k, v)
		case int64:
			enc.AddInt64(k, v)
		case bool:
			enc.AddBool(k, v)
		case []string:
			if err := enc.AddArray(k, stringArray(v)); err != nil {
				return err
			}
		case map[string]string:
			if err := enc.AddObject(k, stringObject(v)); err != nil {
				return err
			}
		case []map[string]string:
			if err := enc.AddArray(k, stringObjects(v)); err != nil {
				return err
			}
		default:
			if err := enc.AddReflected(k, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// sortedKeys appends m's keys to buf, sorted: with a buffer on the
// caller's stack, no allocation for small maps.
func sortedKeys[V any](buf []string, m map[string]V) []string {
	for k := range m {
		buf = append(buf, k)
	}
	slices.Sort(buf)
	return buf
}

type stringArray []string

func (a stringArray) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, s := range a {
		enc.AppendString(s)
	}
	return nil
}

type stringObject map[string]string

func (o stringObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	var buf [16]string
	for _, k := range sortedKeys(buf[:0], o) {
		enc.AddString(k, o[k])
	}
	return nil
}

type stringObjects []map[string]string

func (a stringObjects) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, o := range a {
		if err := enc.AppendObject(stringObject(o)); err != nil {
			return err
		}
	}
	return nil
}
