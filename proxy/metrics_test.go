package proxy

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"moat/greylist"
	"moat/internal/smtptest"
	"moat/metrics"
)

const metricsPolicies = `policy: default
deny: { senders: ["*@spammer.example"] }
checks:
  size: { max: 100000 }
---
policy: temp
applies_to: { recipients: ["temp@example.com"] }
checks:
  headers:
    - { header: Subject, match: "hi", action: tempfail }
---
policy: grey
applies_to: { recipients: ["grey@example.com"] }
checks:
  greylist: { delay: 1h }
`

// sampleValue is the number of observations of a histogram child, or the
// value of a counter or gauge.
func sampleValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	if o, ok := c.(prometheus.Observer); ok {
		m, ok := o.(prometheus.Metric)
		if !ok {
			t.Fatalf("%T is not a metric", o)
		}
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		return float64(pb.GetHistogram().GetSampleCount())
	}
	return testutil.ToFloat64(c)
}

// TestMetricsFromTraffic drives a real server through accepted, refused,
// greylisted and tempfailed transactions and ended connections, and
// checks what each adds to the counters (deltas: the registry is the
// process's).
func TestMetricsFromTraffic(t *testing.T) {
	sink := smtptest.NewSink(t)
	ts := startServer(t, routeTo(sink.Addr(), "")+
		"smtp:\n  listeners: [ { addr: \"127.0.0.1:1\" } ]\n  trusted_networks: [192.0.2.0/24]\n  limits: { errors_per_session: 3 }\n  timeouts: { command: 1s }\n",
		metricsPolicies)
	withGreylist(ts, greylist.NewMemory(1000))

	conns := func(outcome string) prometheus.Collector {
		return metrics.SMTPConnectionsTotal.WithLabelValues("mx", outcome)
	}
	txn := func(action, policy string) prometheus.Collector {
		return metrics.Transactions.WithLabelValues(action, policy)
	}
	check := func(name, result string) prometheus.Collector {
		return metrics.CheckResults.WithLabelValues(name, result)
	}
	open := metrics.SMTPConnections.WithLabelValues("mx")
	delivery := metrics.UpstreamDeliveryDuration.WithLabelValues(sink.Addr()).(prometheus.Collector)
	sizes := metrics.MessageSize.(prometheus.Collector)

	type delta struct {
		c    prometheus.Collector
		want float64
	}
	tests := []struct {
		name    string
		session func(t *testing.T)
		want    []delta
	}{
		{"accepted", func(t *testing.T) {
			c := sendTo(t, ts, "a@example.net", "b@example.com", "250")
			c.cmd("DATA", "354")
			c.send(stuffed + ".\r\n")
			c.expect("250 ")
			c.cmd("QUIT", "221")
		}, []delta{{txn("accept", "default"), 1}, {check("size", "pass"), 1}, {delivery, 1}, {sizes, 1},
			{conns("quit"), 1}, {open, 0}}},
		{"policy reject", func(t *testing.T) {
			sendTo(t, ts, "x@spammer.example", "b@example.com", "554 5.7.1 ").cmd("QUIT", "221")
		}, []delta{{txn("reject", "default"), 1}, {conns("quit"), 1}, {delivery, 0}}},
		{"relay denied", func(t *testing.T) {
			sendTo(t, ts, "a@example.net", "x@elsewhere.example", "554 5.7.1 Relay access denied").cmd("QUIT", "221")
		}, []delta{{txn("reject", "none"), 1}, {conns("quit"), 1}}},
		{"greylisted", func(t *testing.T) {
			sendTo(t, ts, "a@example.net", "grey@example.com", "451 4.7.1 Greylisted").cmd("QUIT", "221")
		}, []delta{{txn("tempfail", "grey"), 1}, {metrics.GreylistDecisions.WithLabelValues("new"), 1}, {conns("quit"), 1}}},
		{"tempfailed at data", func(t *testing.T) {
			c := sendTo(t, ts, "a@example.net", "temp@example.com", "250")
			c.cmd("DATA", "354")
			c.send(stuffed + ".\r\n")
			c.expect("451 ")
			c.cmd("QUIT", "221")
		}, []delta{{txn("tempfail", "temp"), 1}, {check("headers", "fail"), 1}, {delivery, 0}, {conns("quit"), 1}}},
		{"HTTP probe", func(t *testing.T) {
			dial(t, ts.addr).cmd("GET / HTTP/1.1", "421 ")
		}, []delta{{conns("refused"), 1}, {txn("none", "none"), 0}}},
		{"too many errors", func(t *testing.T) {
			c := dial(t, ts.addr)
			c.cmd("BOGUS", "500 ")
			c.cmd("BOGUS", "500 ")
			c.send("BOGUS\r\n")
			c.expect("500 ")
			c.expect("421 4.7.0 ")
		}, []delta{{conns("error_limit"), 1}}},
		{"client vanishes mid-transaction", func(t *testing.T) {
			c := sendTo(t, ts, "a@example.net", "b@example.com", "250")
			c.conn.Close()
		}, []delta{{conns("client_error"), 1}, {txn("none", "default"), 1}}},
		{"timeout", func(t *testing.T) {
			dial(t, ts.addr).expect("421 4.4.2 ")
		}, []delta{{conns("timeout"), 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := make([]float64, len(tt.want))
			for i, d := range tt.want {
				before[i] = sampleValue(t, d.c)
			}
			tt.session(t)
			// The session's end is counted after its last reply: poll.
			deadline := time.Now().Add(5 * time.Second)
			for {
				var wrong []string
				for i, d := range tt.want {
					if got := sampleValue(t, d.c) - before[i]; got != d.want {
						wrong = append(wrong, fmt.Sprintf("%s changed by %v, want %v", d.c.(prometheus.Metric).Desc(), got, d.want))
					}
				}
				if len(wrong) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("metrics did not change as expected: %v", wrong)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	problems, err := testutil.GatherAndLint(metrics.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestUpstreamErrorMetrics: failures to reach an upstream are counted by
// stage.
func TestUpstreamErrorMetrics(t *testing.T) {
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := closed.Addr().String()
	closed.Close()
	refusing := smtptest.NewSink(t, smtptest.RefuseAtGreeting())
	dropping := smtptest.NewSink(t, smtptest.WithDropInData(10))
	for _, tc := range []struct {
		name, addr, stage string
	}{
		{"connection refused", dead, "connect"},
		{"refused at greeting", refusing.Addr(), "refused"},
		{"dropped in data", dropping.Addr(), "data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, routeTo(tc.addr, "")+"smtp:\n  listeners: [ { addr: \"127.0.0.1:1\" } ]\n  trusted_networks: [192.0.2.0/24]\n  timeouts: { upstream_connect: 2s, upstream_command: 2s, upstream_data: 1s }\n", "")
			errs := metrics.UpstreamErrors.WithLabelValues(tc.addr, tc.stage)
			before := testutil.ToFloat64(errs)
			c := sendTo(t, ts, "a@example.net", "b@example.com", "250")
			c.cmd("DATA", "354")
			c.send(stuffed + ".\r\n")
			c.expect("451 4.4.1 ")
			if got := testutil.ToFloat64(errs) - before; got != 1 {
				t.Errorf("moat_upstream_errors_total{stage=%q} went up by %v, want 1", tc.stage, got)
			}
		})
	}
}
