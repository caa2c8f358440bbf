package yamlx

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written the Go way ("5m", "36h") or, for
// the long spans greylisting uses, in days ("2d", "36d").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML implements Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a duration such as 30s, 5m, 36h or 2d, got %s", kindName(n))
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ParseDuration parses a Go duration with an added "d" unit for days
// ("2d", "1.5d"; days cannot be combined with other units). Negative
// durations are refused.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return 0, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok && isDecimal(days) {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n*float64(24*time.Hour) > math.MaxInt64 {
			return 0, fmt.Errorf("want a duration such as 30s, 5m, 36h or 2d, got %q", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("want a duration such as 30s, 5m, 36h or 2d, got %q", s)
	}
	if v < 0 {
		return 0, fmt.Errorf("want a duration that is 0 or more, got %q", s)
	}
	return v, nil
}

// Size is a byte count written as a number or with a unit: 10MiB, 512KiB,
// 1GiB (powers of 1024) or 10MB, 512KB (powers of 1000).
type Size int64

// String writes s with the largest binary unit that divides it exactly
// ("25MiB", "1KiB"), or as plain bytes.
func (s Size) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s != 0 && int64(s)%u.mult == 0 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// UnmarshalYAML implements Unmarshaler.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a size such as 25MiB, 512KiB or 1048576, got %s", kindName(n))
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return err
	}
	*s = Size(v)
	return nil
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	{"B", 1},
}

// ParseSize parses a byte count with an optional unit. Units are matched
// without regard to case ("10mb" is 10MB); the number is decimal and may
// have a fraction ("1.5MiB").
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if len(t) >= len(u.suffix) && strings.EqualFold(t[len(t)-len(u.suffix):], u.suffix) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if !isDecimal(t) || err != nil || n*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("want a size such as 25MiB, 512KiB or 1048576, got %q", s)
	}
	return int64(n * float64(mult)), nil
}

// isDecimal reports whether s is digits with at most one decimal point and
// at least one digit: no sign, exponent, hex, underscore, Inf or NaN, which
// strconv.ParseFloat would all accept.
func isDecimal(s string) bool {
	digits, dots := 0, 0
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}

// Prefix is a network in CIDR form; a bare address means that one host.
type Prefix netip.Prefix

// P returns p as a netip.Prefix.
func (p Prefix) P() netip.Prefix { return netip.Prefix(p) }

func (p Prefix) String() string { return netip.Prefix(p).String() }

// UnmarshalYAML implements Unmarshaler.
func (p *Prefix) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a network such as 192.0.2.0/24 or 2001:db8::/32, got %s", kindName(n))
	}
	v, err := ParsePrefix(n.Value)
	if err != nil {
		return err
	}
	*p = Prefix(v)
	return nil
}

// ParsePrefix parses "192.0.2.0/24", "2001:db8::/32" or a bare address.
// Host bits are cleared; an IPv4-mapped IPv6 prefix becomes IPv4.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("want a network such as 192.0.2.0/24 or 2001:db8::/32, got %q", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("want a network such as 192.0.2.0/24 or 2001:db8::/32, got %q", s)
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}
