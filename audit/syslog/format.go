package syslog

import (
	"bytes"
	"strconv"
	"time"
)

// RFC 5424 field limits (§6): printable US-ASCII, at most this long.
const (
	maxHostname = 255
	maxAppName  = 48
	maxProcID   = 128
	maxMsgID    = 32
)

// header holds the parts of an RFC 5424 header that stay the same for every
// message of a shipper, already sanitized.
type header struct {
	facility int
	hostname string
	appName  string
	procID   string
}

// event is what the shipper reads from a JSON event line: the raw bytes of
// three top-level string values (escapes left as they are), nil when
// absent.
type event struct {
	level, action, timestamp []byte
}

// scanEvent finds "log.level", "event.action" and "@timestamp" among the
// top-level members of the JSON object in line, and stops as soon as it has
// all three (zap writes them first). It reads just enough JSON to step over
// other values (strings, numbers, nested objects and arrays); it does not
// validate the rest and never fails: what it cannot read is absent.
// Written by hand because encoding/json would decode (and allocate) the
// whole event to read three fields (see BenchmarkScanEvent).
func scanEvent(b []byte) event {
	var e event
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return e
	}
	i++
	for i < len(b) { // i grows on every pass
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != '"' {
			return e
		}
		key, j, ok := scanString(b, i)
		if !ok {
			return e
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return e
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == '"' {
			val, j, ok := scanString(b, i)
			if !ok {
				return e
			}
			switch string(key) {
			case "log.level":
				e.level = val
			case "event.action":
				e.action = val
			case "@timestamp":
				e.timestamp = val
			}
			i = j
		} else if i, ok = skipValue(b, i); !ok {
			return e
		}
		if e.level != nil && e.action != nil && e.timestamp != nil {
			return e
		}
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != ',' {
			return e
		}
		i++
	}
	return e
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// scanString reads the JSON string that starts at b[i] ('"') and returns
// its raw content and the index after the closing quote.
func scanString(b []byte, i int) (content []byte, next int, ok bool) {
	start := i + 1
	for j := start; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++ // the escaped byte cannot end the string
		case '"':
			return b[start:j], j + 1, true
		}
	}
	return nil, len(b), false
}

// skipValue steps over the non-string JSON value at b[i]: a number, a
// literal, or an object or array (with any strings inside).
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return i, false
	}
	switch b[i] {
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			case '"':
				_, j, ok := scanString(b, i)
				if !ok {
					return len(b), false
				}
				i = j
				continue
			}
			i++
		}
		return i, false
	case '}', ']', ',', ':':
		return i, false
	}
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i, true
		}
		i++
	}
	return i, true
}

// severity maps zap's level names to RFC 5424 severities; an event without
// a level (or with one zap does not write) is informational.
func severity(level []byte) int {
	switch {
	case bytes.EqualFold(level, []byte("debug")):
		return 7
	case bytes.EqualFold(level, []byte("info")):
		return 6
	case bytes.EqualFold(level, []byte("warn")), bytes.EqualFold(level, []byte("warning")):
		return 4
	case bytes.EqualFold(level, []byte("error")):
		return 3
	case bytes.EqualFold(level, []byte("dpanic")), bytes.EqualFold(level, []byte("panic")), bytes.EqualFold(level, []byte("fatal")):
		return 2
	}
	return 6
}

// appendTimestamp appends the event's @timestamp as an RFC 5424 TIMESTAMP
// (RFC 3339 in UTC, at most 6 fraction digits), or now when the event has
// none that parses. Parsing and re-formatting, rather than copying, is what
// guarantees the grammar whatever the event says.
func appendTimestamp(dst, ts []byte, now time.Time) []byte {
	t := now
	if len(ts) > 0 {
		if p, err := time.Parse(time.RFC3339Nano, string(ts)); err == nil {
			t = p
		}
	}
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		t = now.UTC()
	}
	return t.AppendFormat(dst, "2006-01-02T15:04:05.999999Z07:00")
}

// appendField appends s as an RFC 5424 header field: bytes outside
// printable US-ASCII (33..126) become '_', at most max bytes, and "-" (the
// NILVALUE) when empty.
func appendField(dst []byte, s []byte, max int) []byte {
	if len(s) == 0 {
		return append(dst, '-')
	}
	if len(s) > max {
		s = s[:max]
	}
	for _, c := range s {
		if c < 33 || c > 126 {
			c = '_'
		}
		dst = append(dst, c)
	}
	return dst
}

func sanitize(s string, max int) string { return string(appendField(nil, []byte(s), max)) }

// appendMessage appends one RFC 5424 message for the JSON event line msg:
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG
//
// with no structured data, and MSG the line as it is, without a BOM
// (RFC 5424 §6.4 allows any octets there; a BOM would stay in rsyslog's
// %msg% and break JSON parsing downstream).
func (h *header) appendMessage(dst, msg []byte, now time.Time) []byte {
	e := scanEvent(msg)
	dst = append(dst, '<')
	dst = strconv.AppendInt(dst, int64(h.facility*8+severity(e.level)), 10)
	dst = append(dst, ">1 "...)
	dst = appendTimestamp(dst, e.timestamp, now)
	dst = append(dst, ' ')
	dst = append(dst, h.hostname...)
	dst = append(dst, ' ')
	dst = append(dst, h.appName...)
	dst = append(dst, ' ')
	dst = append(dst, h.procID...)
	dst = append(dst, ' ')
	dst = appendField(dst, e.action, maxMsgID)
	dst = append(dst, " - "...)
	return append(dst, msg...)
}

// appendFrame appends msg as one octet-counted frame (RFC 6587 §3.4.1,
// RFC 5425 §4.3): "LEN SP MESSAGE". scratch is reused for the message so
// that the length can be written first.
func (h *header) appendFrame(dst, scratch, msg []byte, now time.Time) (frame, newScratch []byte) {
	scratch = h.appendMessage(scratch[:0], msg, now)
	dst = strconv.AppendInt(dst, int64(len(scratch)), 10)
	dst = append(dst, ' ')
	return append(dst, scratch...), scratch
}

// maxDatagram bounds one UDP message (header and MSG). RFC 5426 §3.2 makes
// receivers take at least 480 bytes and recommends 2048; 8 KiB is rsyslog's
// default maximum message size and what common SIEM collectors accept,
// and fits a loopback or a LAN datagram (IP fragments it).
const maxDatagram = 8192

// truncateUTF8 cuts b to at most n bytes without splitting a UTF-8
// sequence (the JSON is cut anyway; the text stays valid UTF-8).
func truncateUTF8(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	cut := n
	for i := 0; i < 3 && cut > 0 && b[cut]&0xC0 == 0x80; i++ {
		cut--
	}
	if b[cut]&0xC0 != 0x80 && b[cut] >= 0xC0 {
		// b[cut] starts the sequence that did not fit: drop it.
		return b[:cut]
	}
	return b[:n]
}
