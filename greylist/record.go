package greylist

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"
)

// Records are stored in a compact binary form: a version byte, a kind
// byte, then the fields as varints (times as Unix nanoseconds, 0 for
// none) and length-prefixed strings. Every record carries its own times,
// so decisions never depend on when a store happens to expire it.
//
// A record of an unknown version or kind reads as absent: a triplet then
// starts over, which costs a delay and nothing else. The allow list is the
// exception: it is never overwritten when unreadable (see updateAllows).
const recordVersion = 1

const (
	kindTriplet byte = 't'
	kindNetwork byte = 'n'
	kindAllows  byte = 'a'
)

var errBadRecord = errors.New("greylist: unreadable record")

// tripletRecord is what is known of one triplet.
type tripletRecord struct {
	FirstSeen time.Time
	LastSeen  time.Time
	PassedAt  time.Time // zero until a retry passed
	Attempts  int       // deliveries tried, up to and including the one that passed
}

// networkRecord counts what one client network passed.
type networkRecord struct {
	Passed    int       // distinct triplets that passed
	LastPass  time.Time // when the last of them passed
	AutoUntil time.Time // auto-allowed until then; zero: not auto-allowed
}

// allowEntry is one manual allow: a network or a sender.
type allowEntry struct {
	Network netip.Prefix // valid for a network allow
	Sender  string       // for a sender allow: an address, "@domain", or "" (the null sender)
	Added   time.Time
	Until   time.Time // zero: no end
	By      string
}

func (e allowEntry) isNetwork() bool { return e.Network.IsValid() }

func (e allowEntry) live(now time.Time) bool { return e.Until.IsZero() || now.Before(e.Until) }

// key names the entry in List and Delete ("a|n|192.0.2.0/24",
// "a|s|user@example.com").
func (e allowEntry) key() string {
	if e.isNetwork() {
		return "a|n|" + e.Network.String()
	}
	return "a|s|" + e.Sender
}

type encoder []byte

func (b encoder) header(kind byte) encoder { return append(b, recordVersion, kind) }
func (b encoder) int(v int) encoder        { return binary.AppendUvarint(b, uint64(max(v, 0))) }
func (b encoder) str(s string) encoder     { return append(binary.AppendUvarint(b, uint64(len(s))), s...) }
func (b encoder) time(t time.Time) encoder {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

type decoder struct {
	b   []byte
	bad bool
}

func newDecoder(b []byte, kind byte) *decoder {
	if len(b) < 2 || b[0] != recordVersion || b[1] != kind {
		return &decoder{bad: true}
	}
	return &decoder{b: b[2:]}
}

func (d *decoder) uint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.bad = true
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) int() int {
	v := d.uint()
	if v > 1<<31 {
		d.bad = true
		return 0
	}
	return int(v)
}

func (d *decoder) time() time.Time {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.bad = true
		return time.Time{}
	}
	d.b = d.b[n:]
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v)
}

func (d *decoder) str() string {
	l := d.uint()
	if d.bad || l > uint64(len(d.b)) {
		d.bad = true
		return ""
	}
	s := string(d.b[:l])
	d.b = d.b[l:]
	return s
}

func (r tripletRecord) encode() []byte {
	return encoder(make([]byte, 0, 40)).header(kindTriplet).
		time(r.FirstSeen).time(r.LastSeen).time(r.PassedAt).int(r.Attempts)
}

func decodeTriplet(b []byte) (tripletRecord, error) {
	d := newDecoder(b, kindTriplet)
	r := tripletRecord{FirstSeen: d.time(), LastSeen: d.time(), PassedAt: d.time(), Attempts: d.int()}
	if d.bad || r.FirstSeen.IsZero() {
		return tripletRecord{}, errBadRecord
	}
	return r, nil
}

func (r networkRecord) encode() []byte {
	return encoder(make([]byte, 0, 32)).header(kindNetwork).int(r.Passed).time(r.LastPass).time(r.AutoUntil)
}

func decodeNetwork(b []byte) (networkRecord, error) {
	d := newDecoder(b, kindNetwork)
	r := networkRecord{Passed: d.int(), LastPass: d.time(), AutoUntil: d.time()}
	if d.bad {
		return networkRecord{}, errBadRecord
	}
	return r, nil
}

func encodeAllows(entries []allowEntry) []byte {
	b := encoder(make([]byte, 0, 16+48*len(entries))).header(kindAllows).int(len(entries))
	for _, e := range entries {
		network := ""
		if e.isNetwork() {
			network = e.Network.String()
		}
		b = b.str(network).str(e.Sender).time(e.Added).time(e.Until).str(e.By)
	}
	return b
}

func decodeAllows(b []byte) ([]allowEntry, error) {
	d := newDecoder(b, kindAllows)
	n := d.int()
	if d.bad || n > len(d.b) {
		return nil, errBadRecord
	}
	entries := make([]allowEntry, 0, n)
	for range n {
		var e allowEntry
		network := d.str()
		e.Sender, e.Added, e.Until, e.By = d.str(), d.time(), d.time(), d.str()
		if d.bad {
			return nil, errBadRecord
		}
		if network != "" {
			p, err := netip.ParsePrefix(network)
			if err != nil {
				return nil, errBadRecord
			}
			e.Network = p
		}
		entries = append(entries, e)
	}
	return entries, nil
}
