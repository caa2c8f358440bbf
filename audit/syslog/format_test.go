package syslog

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var testNow = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

func TestAppendMessage(t *testing.T) {
	h := &header{facility: 16, hostname: "mx1", appName: "moat", procID: "42"}
	for _, tc := range []struct {
		name, line, want string
		facility         int
	}{
		{
			name: "info from zap",
			line: `{"log.level":"info","@timestamp":"2024-01-02T03:04:05.678Z","event.action":"smtp.transaction","x":1}`,
			want: `<134>1 2024-01-02T03:04:05.678Z mx1 moat 42 smtp.transaction - {"log.level":"info","@timestamp":"2024-01-02T03:04:05.678Z","event.action":"smtp.transaction","x":1}`,
		},
		{
			name: "warn, mail facility",
			line: `{"log.level":"warn","@timestamp":"2024-01-02T03:04:05Z","event.action":"config.reload"}`, facility: 2,
			want: `<20>1 2024-01-02T03:04:05Z mx1 moat 42 config.reload - {"log.level":"warn","@timestamp":"2024-01-02T03:04:05Z","event.action":"config.reload"}`,
		},
		{
			name: "error, offset time to UTC",
			line: `{"@timestamp":"2024-01-02T03:04:05.5+02:00","log.level":"error","event.action":"x"}`,
			want: `<131>1 2024-01-02T01:04:05.5Z mx1 moat 42 x - {"@timestamp":"2024-01-02T03:04:05.5+02:00","log.level":"error","event.action":"x"}`,
		},
		{
			name: "debug, nanoseconds cut to micro",
			line: `{"log.level":"debug","@timestamp":"2024-01-02T03:04:05.123456789Z","event.action":"d"}`,
			want: `<135>1 2024-01-02T03:04:05.123456Z mx1 moat 42 d - {"log.level":"debug","@timestamp":"2024-01-02T03:04:05.123456789Z","event.action":"d"}`,
		},
		{
			name: "no fields: now, info, nil MSGID",
			line: `{"message":"hi"}`,
			want: `<134>1 2024-05-06T07:08:09.123456Z mx1 moat 42 - - {"message":"hi"}`,
		},
		{
			name: "bad timestamp: now",
			line: `{"@timestamp":"yesterday","event.action":"a"}`,
			want: `<134>1 2024-05-06T07:08:09.123456Z mx1 moat 42 a - {"@timestamp":"yesterday","event.action":"a"}`,
		},
		{
			name: "MSGID sanitized and cut to 32",
			line: `{"event.action":"smtp reject\u00e9 with a very long name that goes on"}`,
			want: `<134>1 2024-05-06T07:08:09.123456Z mx1 moat 42 smtp_reject\u00e9_with_a_very_lo - {"event.action":"smtp reject\u00e9 with a very long name that goes on"}`,
		},
		{
			name: "MSGID with raw UTF-8",
			line: `{"event.action":"é"}`,
			want: `<134>1 2024-05-06T07:08:09.123456Z mx1 moat 42 __ - {"event.action":"é"}`,
		},
		{
			name: "not JSON",
			line: `plain text`,
			want: `<134>1 2024-05-06T07:08:09.123456Z mx1 moat 42 - - plain text`,
		},
		{
			name: "fatal",
			line: `{"log.level":"fatal"}`,
			want: `<130>1 2024-05-06T07:08:09.123456Z mx1 moat 42 - - {"log.level":"fatal"}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.facility = 16
			if tc.facility != 0 {
				h.facility = tc.facility
			}
			got := string(h.appendMessage(nil, []byte(tc.line), testNow))
			if got != tc.want {
				t.Errorf("\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestAppendFrame(t *testing.T) {
	h := &header{facility: 16, hostname: "h", appName: "moat", procID: "1"}
	frame, _ := h.appendFrame([]byte("prev"), nil, []byte(`{"event.action":"a"}`), testNow)
	want := `prev` + `68 <134>1 2024-05-06T07:08:09.123456Z h moat 1 a - {"event.action":"a"}`
	if string(frame) != want {
		t.Errorf("got %q\nwant %q", frame, want)
	}
	msg := strings.TrimPrefix(want, "prev68 ")
	if len(msg) != 68 {
		t.Fatalf("test's own length: %d", len(msg))
	}
}

func TestScanEvent(t *testing.T) {
	for _, tc := range []struct {
		name, line              string
		level, action, tsString string
	}{
		{"zap order", `{"log.level":"info","@timestamp":"T","event.action":"a","more":{"x":"}"}}`, "info", "a", "T"},
		{"after nested values", `{"a":{"b":[1,"x\"]",{"c":null}]},"n":-1.5e3,"t":true,"event.action":"act","log.level":"warn"}`, "warn", "act", ""},
		{"spaces", ` { "log.level" : "error" , "event.action":"e" }`, "error", "e", ""},
		{"escaped quote in value", `{"event.action":"a\"b","log.level":"info"}`, "info", `a\"b`, ""},
		{"nested key ignored", `{"x":{"event.action":"no"}}`, "", "", ""},
		{"not an object", `["event.action","a"]`, "", "", ""},
		{"non-string value", `{"event.action":5,"log.level":"info"}`, "info", "", ""},
		{"truncated", `{"log.level":"inf`, "", "", ""},
		{"empty", ``, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := scanEvent([]byte(tc.line))
			if string(e.level) != tc.level || string(e.action) != tc.action || string(e.timestamp) != tc.tsString {
				t.Errorf("got level %q action %q ts %q, want %q %q %q", e.level, e.action, e.timestamp, tc.level, tc.action, tc.tsString)
			}
		})
	}
}

func TestTruncateUTF8(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"},                              // é is 2 bytes: cut before it
		{"a€b", 3, "a"},                             // € is 3 bytes
		{"a€b", 4, "a€"},                            // fits exactly
		{"a😀", 4, "a"},                              // 4-byte rune
		{"\x80\x80\x80\x80\x80", 3, "\x80\x80\x80"}, // invalid stays cut at n
	} {
		got := string(truncateUTF8([]byte(tc.in), tc.n))
		if got != tc.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

// rfc5424 is the header grammar the shipper writes: PRI, version 1, a UTC
// TIMESTAMP, then HOSTNAME, APP-NAME, PROCID, MSGID (printable ASCII, RFC
// lengths), NILVALUE structured data.
var rfc5424 = regexp.MustCompile(`^<([0-9]{1,3})>1 ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z) ([!-~]{1,255}) ([!-~]{1,48}) ([!-~]{1,128}) ([!-~]{1,32}) - `)

// checkFrame fails t unless frame is "LEN SP MSG" with a well-formed
// RFC 5424 MSG ending in line; it returns MSGID.
func checkFrame(t testing.TB, frame, line []byte) string {
	t.Helper()
	sp := strings.IndexByte(string(frame), ' ')
	n, err := strconv.Atoi(string(frame[:max(sp, 0)]))
	if sp <= 0 || err != nil || n != len(frame)-sp-1 || frame[0] == '0' {
		t.Fatalf("bad octet count in %q", frame)
	}
	msg := frame[sp+1:]
	m := rfc5424.FindSubmatch(msg)
	if m == nil {
		t.Fatalf("not RFC 5424: %q", msg)
	}
	if pri, _ := strconv.Atoi(string(m[1])); pri > 191 {
		t.Fatalf("PRI %d > 191", pri)
	}
	if _, err := time.Parse(time.RFC3339Nano, string(m[2])); err != nil {
		t.Fatalf("TIMESTAMP %q: %v", m[2], err)
	}
	if got := string(msg[len(m[0]):]); got != string(line) {
		t.Fatalf("MSG %q, want the line %q", got, line)
	}
	return string(m[7])
}

func FuzzFormat(f *testing.F) {
	for _, s := range []string{
		`{"log.level":"info","@timestamp":"2024-01-02T03:04:05.678Z","event.action":"smtp.transaction","x":1}`,
		`{"@timestamp":"0000-01-01T00:00:00+01:00","event.action":"a b"}`,
		`{"@timestamp":"9999-12-31T23:59:59-01:00"}`,
		`{"a":[{"b":"}"}],"event.action":"\"x"}`,
		"\xff\xfe",
		`{`,
	} {
		f.Add([]byte(s))
	}
	h := &header{facility: 23, hostname: "h", appName: "moat", procID: "1"}
	f.Fuzz(func(t *testing.T, line []byte) {
		frame, _ := h.appendFrame(nil, nil, line, testNow)
		msgID := checkFrame(t, frame, line)
		// The scanner agrees with encoding/json on valid UTF-8 objects whose
		// action has no escapes.
		var v map[string]any
		if utf8.Valid(line) && json.Unmarshal(line, &v) == nil {
			if a, ok := v["event.action"].(string); ok && a != "" && !strings.ContainsAny(a, `\"`) &&
				strings.Count(string(line), `"event.action"`) == 1 && !strings.Contains(string(line), `\`) {
				want := sanitize(a, maxMsgID)
				if msgID != want {
					t.Fatalf("MSGID %q, want %q from %q", msgID, want, line)
				}
			}
		}
	})
}
