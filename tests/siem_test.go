package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"moat/internal/rsyslogtest"
	"moat/internal/smtptest"
)

// syslogEvents returns the smtp.transaction events among rsyslog's lines,
// failing on any line that is not a JSON object.
func syslogEvents(t *testing.T, lines []string, action string) []Event {
	t.Helper()
	var evs []Event
	for _, l := range lines {
		var e Event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("rsyslog received a line that is not JSON: %v\n%s", err, l)
		}
		if e.Action() == action {
			evs = append(evs, e)
		}
	}
	return evs
}

// waitSyslogEvents polls rsyslog's output until n events of action are
// there.
func waitSyslogEvents(t *testing.T, rs *rsyslogtest.Server, action string, n int) []Event {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		evs := syslogEvents(t, rs.Lines(t), action)
		if len(evs) >= n || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(50 * time.Millisecond) // polling a file another process writes
	}
}

// TestSyslogToRsyslog: with log.syslog set, N transactions through moat
// make exactly N smtp.transaction events in a real rsyslog's output, each
// a JSON object with the SPEC.md fields; over plain TCP and over TLS.
// Killing rsyslog neither slows the mail nor loses the events that fit in
// the queue: they arrive once it is back.
func TestSyslogToRsyslog(t *testing.T) {
	t.Parallel()
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "tls"}[useTLS], func(t *testing.T) {
			t.Parallel()
			rs := rsyslogtest.Start(t, rsyslogtest.Options{TLS: useTLS})
			sl := map[string]any{"network": "tcp", "addr": rs.Addr, "facility": "mail", "app_name": "moat-test"}
			if useTLS {
				ca := filepath.Join(t.TempDir(), "siem-ca.pem")
				if err := os.WriteFile(ca, rs.CAPEM, 0o644); err != nil {
					t.Fatal(err)
				}
				sl["tls"], sl["ca_file"] = true, ca
			}
			sink := smtptest.NewSink(t)
			m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), Extra: map[string]any{"log": map[string]any{"syslog": sl}}})

			const n = 40
			ids := map[string]bool{}
			for i := range n {
				msg := NewMessage(sender, rcptBob, fmt.Sprintf("to the SIEM %d", i))
				ids["<"+msg.ID+"@sender.example>"] = true
				MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: msg.Bytes()})
			}
			evs := waitSyslogEvents(t, rs, "smtp.transaction", n)
			if len(evs) != n {
				t.Fatalf("%d smtp.transaction events at rsyslog, want %d", len(evs), n)
			}
			required := []string{"@timestamp", "log.level", "event.action", "event.outcome", "event.duration",
				"moat.session_id", "moat.transaction", "moat.listener", "source.ip", "source.port", "source.domain",
				"moat.helo", "tls.version", "user.name", "email.from.address", "email.to.address", "email.message_id",
				"moat.size", "moat.checks", "moat.score", "moat.policy", "moat.action", "moat.reply", "moat.upstream"}
			seen := map[string]bool{}
			for _, e := range evs {
				for _, k := range required {
					if _, ok := e[k]; !ok {
						t.Errorf("event lacks %s: %v", k, e)
					}
				}
				key := e.Str("moat.session_id") + "/" + strconv.Itoa(int(must(e.Num("moat.transaction"))))
				if seen[key] {
					t.Errorf("transaction %s arrived twice", key)
				}
				seen[key] = true
			}

			// The collector goes away: mail flows on, events queue.
			rs.Stop()
			start := time.Now()
			const m2 = 30
			for i := range m2 {
				MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: NewMessage(sender, rcptBob, fmt.Sprintf("while rsyslog is down %d", i)).Bytes()})
			}
			t.Logf("%d messages with rsyslog down in %v", m2, time.Since(start))
			rs.Restart()
			evs = waitSyslogEvents(t, rs, "smtp.transaction", n+m2)
			if len(evs) < n+m2 {
				t.Errorf("after rsyslog came back: %d transaction events, want %d (none lost)", len(evs), n+m2)
			}
			uniq := map[string]bool{}
			for _, e := range evs {
				uniq[e.Str("moat.session_id")+"/"+strconv.Itoa(int(must(e.Num("moat.transaction"))))] = true
			}
			if len(uniq) != n+m2 {
				t.Errorf("%d distinct transactions at rsyslog, want %d", len(uniq), n+m2)
			}
			if dups := len(evs) - len(uniq); dups > 0 {
				t.Logf("%d events sent twice around the reconnect (at-least-once)", dups)
			}
			// The local log has every one too.
			if local := len(m.TransactionEvents()); local != n+m2 {
				t.Errorf("%d transaction events in the local log, want %d", local, n+m2)
			}
		})
	}
}

func must(f float64, ok bool) float64 { return f }

// scrape fetches /metrics and returns the samples by series
// (`name{labels}` as printed).
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	r := runTool(t, "curl", "-sS", "--max-time", "30", "http://"+addr+"/metrics")
	if r.code != 0 {
		t.Fatalf("curl /metrics: %s", r)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(r.stdout)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// TestMetricsScrape: after a known mix of accepted, rejected and
// greylisted messages, /metrics shows the matching counts.
func TestMetricsScrape(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	policy := `policy: default
---
policy: grey
applies_to: { recipients: ["grey@example.com"] }
checks:
  greylist: { delay: 1h, retry_window: 2h, lifetime: 36d, auto_allow_after: 0 }
---
policy: closed
applies_to: { recipients: ["closed@example.com"] }
deny: { senders: ["*"] }
`
	m := StartMoat(t, Config{Routes: defaultRoutes(sink.Addr()), Policy: policy})
	// Counted from here: the harness's own readiness probe connected once.
	base := scrape(t, m.AdminAddr)
	const accepted, greyed, denied, relay = 5, 3, 2, 4
	for i := range accepted {
		MustSend(t, m.Addr, Envelope{From: sender, To: []string{rcptBob}, Data: NewMessage(sender, rcptBob, fmt.Sprint(i)).Bytes()})
	}
	for i := range greyed {
		from := fmt.Sprintf("s%d@sender.example", i)
		if r := Send(t, m.Addr, Envelope{From: from, To: []string{"grey@example.com"}, Data: NewMessage(from, "grey@example.com", "grey").Bytes()}); r.RcptErrs["grey@example.com"] == nil || r.RcptErrs["grey@example.com"].Code != 451 {
			t.Fatalf("not greylisted: %s", r)
		}
	}
	for range denied {
		if r := Send(t, m.Addr, Envelope{From: sender, To: []string{"closed@example.com"}, Data: NewMessage(sender, "closed@example.com", "deny").Bytes()}); r.Stage == "" {
			t.Fatalf("deny list let it through: %s", r)
		}
	}
	for range relay {
		if r := Send(t, m.Addr, Envelope{From: sender, To: []string{"someone@elsewhere.test"}, Data: NewMessage(sender, "someone@elsewhere.test", "relay").Bytes()}); r.Stage == "" {
			t.Fatalf("relayed: %s", r)
		}
	}
	m.WaitTransactionEvents(accepted + greyed + denied + relay)
	got := scrape(t, m.AdminAddr)
	for series, want := range map[string]float64{
		`moat_smtp_transactions_total{action="accept",policy="default"}`:             accepted,
		`moat_smtp_transactions_total{action="tempfail",policy="grey"}`:              greyed,
		`moat_smtp_transactions_total{action="reject",policy="closed"}`:              denied,
		`moat_smtp_transactions_total{action="reject",policy="none"}`:                relay,
		`moat_greylist_decisions_total{result="new"}`:                                greyed,
		`moat_smtp_connections{listener="mx"}`:                                       0,
		`moat_upstream_errors_total{stage="connect",upstream="` + sink.Addr() + `"}`: 0,
	} {
		if v, ok := got[series]; !ok || v-base[series] != want {
			t.Errorf("%s = %v (present %v), want %v", series, v, ok, want)
		}
	}
	var conns float64
	for k, v := range got {
		if strings.HasPrefix(k, `moat_smtp_connections_total{listener="mx"`) {
			conns += v - base[k]
		}
	}
	if conns != accepted+greyed+denied+relay {
		t.Errorf("moat_smtp_connections_total over every outcome = %v, want %d", conns, accepted+greyed+denied+relay)
	}
	if got[`moat_upstream_delivery_duration_seconds_count{upstream="`+sink.Addr()+`"}`]-base[`moat_upstream_delivery_duration_seconds_count{upstream="`+sink.Addr()+`"}`] != accepted {
		t.Errorf("upstream delivery count: %v", got[`moat_upstream_delivery_duration_seconds_count{upstream="`+sink.Addr()+`"}`])
	}
	for _, name := range []string{"moat_quarantine_messages", "moat_config_last_reload_success_timestamp_seconds", "go_goroutines", "process_resident_memory_bytes"} {
		found := false
		for k := range got {
			found = found || strings.HasPrefix(k, name)
		}
		if !found {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}
