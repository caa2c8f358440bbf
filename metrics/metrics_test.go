package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// gather returns the registry's metric families by name.
func gather(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// TestNames: every metric is moat_ (or the standard go_ and process_),
// counters end in _total and nothing else does, and each has help text.
func TestNames(t *testing.T) {
	RegisterQuarantine(func() (int, error) { return 3, nil })
	RegisterSyslog(func() (uint64, uint64, uint64) { return 1, 2, 3 })
	mfs := gather(t)
	if len(mfs) < 20 {
		t.Fatalf("only %d metric families", len(mfs))
	}
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "moat_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("%s: not a moat_, go_ or process_ metric", name)
		}
		if counter := mf.GetType() == dto.MetricType_COUNTER; counter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s: a %s; counters, and only counters, end in _total", name, mf.GetType())
		}
		if mf.GetHelp() == "" {
			t.Errorf("%s: no help text", name)
		}
	}
}

// TestLint runs promlint over everything registered.
func TestLint(t *testing.T) {
	RegisterQuarantine(func() (int, error) { return 3, nil })
	RegisterSyslog(func() (uint64, uint64, uint64) { return 1, 2, 3 })
	problems, err := testutil.CollectAndLint(Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestPreinitialised: the series whose label values are known exist at 0
// before anything is counted, and Expect adds those of a configuration.
func TestPreinitialised(t *testing.T) {
	Expect(Expected{Policies: []string{"strict"}, Checks: []string{"spf"}, Upstreams: []string{"mail.corp.test:25"}})
	tests := []struct {
		metric string
		labels map[string]string
	}{
		{"moat_smtp_connections", map[string]string{"listener": "submission"}},
		{"moat_smtp_connections_total", map[string]string{"listener": "mx", "outcome": "error_limit"}},
		{"moat_smtp_transactions_total", map[string]string{"action": "reject", "policy": "none"}},
		{"moat_smtp_transactions_total", map[string]string{"action": "quarantine", "policy": "strict"}},
		{"moat_check_results_total", map[string]string{"check": "spf", "result": "softfail"}},
		{"moat_check_duration_seconds", map[string]string{"check": "spf"}},
		{"moat_dns_queries_total", map[string]string{"result": "servfail"}},
		{"moat_dns_cache_requests_total", map[string]string{"result": "coalesced"}},
		{"moat_upstream_delivery_duration_seconds", map[string]string{"upstream": "mail.corp.test:25"}},
		{"moat_upstream_errors_total", map[string]string{"upstream": "mail.corp.test:25", "stage": "refused"}},
		{"moat_greylist_decisions_total", map[string]string{"result": "auto-allowed"}},
		{"moat_config_reloads_total", map[string]string{"outcome": "failure"}},
	}
	mfs := gather(t)
	for _, tt := range tests {
		mf := mfs[tt.metric]
		if mf == nil {
			t.Errorf("%s: not gathered", tt.metric)
			continue
		}
		if !hasSeries(mf, tt.labels) {
			t.Errorf("%s%v: no series", tt.metric, tt.labels)
		}
	}
}

func hasSeries(mf *dto.MetricFamily, labels map[string]string) bool {
	for _, m := range mf.GetMetric() {
		n := 0
		for _, lp := range m.GetLabel() {
			if labels[lp.GetName()] == lp.GetValue() {
				n++
			}
		}
		if n == len(labels) && len(m.GetLabel()) == len(labels) {
			return true
		}
	}
	return false
}

func TestHelpers(t *testing.T) {
	mx := SMTPListener("mx")
	if SMTPListener("mx") != mx {
		t.Error("SMTPListener does not cache")
	}
	type step struct {
		do     func()
		metric prometheus.Collector
		delta  float64
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"connection", []step{
			{mx.Opened, SMTPConnections.WithLabelValues("mx"), 1},
			{func() { mx.Closed("quit") }, SMTPConnections.WithLabelValues("mx"), -1},
			{func() { mx.Closed("timeout") }, SMTPConnectionsTotal.WithLabelValues("mx", "timeout"), 1},
			{mx.Refused, SMTPConnectionsTotal.WithLabelValues("mx", "refused"), 1},
		}},
		{"transaction", []step{
			{func() { Transaction("accept", "") }, Transactions.WithLabelValues("accept", "none"), 1},
			{func() { Transaction("tag", "strict") }, Transactions.WithLabelValues("tag", "strict"), 1},
		}},
		{"check", []step{
			{func() { CheckRun("dnsbl", "fail", time.Millisecond) }, CheckResults.WithLabelValues("dnsbl", "fail"), 1},
			{func() { CheckRun("dnsbl", "", time.Millisecond) }, CheckResults.WithLabelValues("dnsbl", "fail"), 0},
		}},
		{"upstream", []step{
			{func() { UpstreamError("up.test:25", "connect") }, UpstreamErrors.WithLabelValues("up.test:25", "connect"), 1},
		}},
		{"greylist", []step{
			{func() { Greylist("new") }, GreylistDecisions.WithLabelValues("new"), 1},
		}},
		{"login", []step{
			{func() { Login("imap", "failure", "bad_credentials") }, LoginAttempts.WithLabelValues("imap", "failure", "bad_credentials"), 1},
		}},
		{"reload", []step{
			{func() { Reloaded(true) }, ConfigReloads.WithLabelValues("success"), 1},
			{func() { Reloaded(false) }, ConfigReloads.WithLabelValues("failure"), 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, s := range tt.steps {
				before := testutil.ToFloat64(s.metric)
				s.do()
				if got := testutil.ToFloat64(s.metric) - before; got != s.delta {
					t.Errorf("step %d: changed by %v, want %v", i, got, s.delta)
				}
			}
		})
	}
	if n := testutil.CollectAndCount(CheckDuration, "moat_check_duration_seconds"); n == 0 {
		t.Error("no check duration series")
	}
	if ts := testutil.ToFloat64(ConfigLastReloadFailure); time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("last failure timestamp %v", ts)
	}
}

// TestRegisterReplaces: registering a component's collector again
// replaces the first; a failing quarantine count leaves the metric out.
func TestRegisterReplaces(t *testing.T) {
	RegisterQuarantine(func() (int, error) { return 1, nil })
	RegisterQuarantine(func() (int, error) { return 7, nil })
	RegisterSyslog(func() (uint64, uint64, uint64) { return 4, 5, 6 })
	want := `
# HELP moat_quarantine_messages Entries in the quarantine (waiting for review or being released).
# TYPE moat_quarantine_messages gauge
moat_quarantine_messages 7
# HELP moat_syslog_dropped_total Events the syslog shipper dropped (queue full or server unreachable).
# TYPE moat_syslog_dropped_total counter
moat_syslog_dropped_total 6
# HELP moat_syslog_queue_length Events waiting in the syslog shipper's queue.
# TYPE moat_syslog_queue_length gauge
moat_syslog_queue_length 4
# HELP moat_syslog_sent_total Events the syslog shipper sent.
# TYPE moat_syslog_sent_total counter
moat_syslog_sent_total 5
`
	if err := testutil.GatherAndCompare(Registry, strings.NewReader(want),
		"moat_quarantine_messages", "moat_syslog_queue_length", "moat_syslog_sent_total", "moat_syslog_dropped_total"); err != nil {
		t.Error(err)
	}
	RegisterQuarantine(func() (int, error) { return 0, errors.New("directory gone") })
	if _, ok := gather(t)["moat_quarantine_messages"]; ok {
		t.Error("a failed count still reported")
	}
}

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	for _, want := range []string{"moat_smtp_connections_total{listener=\"mx\",outcome=\"quit\"}", "go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}

// The helpers on the SMTP path must cost next to nothing.
func BenchmarkHelpers(b *testing.B) {
	mx := SMTPListener("mx")
	b.Run("connection", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			mx.Opened()
			mx.Closed("quit")
		}
	})
	b.Run("transaction", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Transaction("accept", "default")
		}
	})
	b.Run("check", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			CheckRun("spf", "pass", time.Millisecond)
		}
	})
	b.Run("upstream", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			UpstreamDelivered("up.test:25", 3*time.Millisecond)
		}
	})
	b.Run("parallel-transaction", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				Transaction("accept", "default")
			}
		})
	})
}
