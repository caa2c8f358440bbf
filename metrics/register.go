package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors that read another component's state at scrape time. cmd
// registers them once that component exists; registering again (a test,
// a component rebuilt) replaces the previous one.

var (
	quarantineDesc = prometheus.NewDesc("moat_quarantine_messages",
		"Entries in the quarantine (waiting for review or being released).", nil, nil)
	syslogQueueDesc = prometheus.NewDesc("moat_syslog_queue_length",
		"Events waiting in the syslog shipper's queue.", nil, nil)
	syslogSentDesc = prometheus.NewDesc("moat_syslog_sent_total",
		"Events the syslog shipper sent.", nil, nil)
	syslogDroppedDesc = prometheus.NewDesc("moat_syslog_dropped_total",
		"Events the syslog shipper dropped (queue full or server unreachable).", nil, nil)
)

var (
	registeredMu sync.Mutex
	registered   = map[string]prometheus.Collector{}
)

// replace registers c under key, unregistering what was there before.
func replace(key string, c prometheus.Collector) {
	registeredMu.Lock()
	defer registeredMu.Unlock()
	if old, ok := registered[key]; ok {
		Registry.Unregister(old)
	}
	Registry.MustRegister(c)
	registered[key] = c
}

// RegisterQuarantine makes moat_quarantine_messages report count() at
// each scrape; quarantine.Store.Count fits. When count fails the scrape
// leaves the metric out rather than report a wrong number.
func RegisterQuarantine(count func() (int, error)) {
	replace("quarantine", &funcCollector{
		descs: []*prometheus.Desc{quarantineDesc},
		collect: func(ch chan<- prometheus.Metric) {
			if n, err := count(); err == nil {
				ch <- prometheus.MustNewConstMetric(quarantineDesc, prometheus.GaugeValue, float64(n))
			}
		},
	})
}

// RegisterSyslog makes moat_syslog_queue_length, moat_syslog_sent_total
// and moat_syslog_dropped_total report the shipper's stats, read once per
// scrape. sent and dropped must only grow.
func RegisterSyslog(stats func() (queued, sent, dropped uint64)) {
	replace("syslog", &funcCollector{
		descs: []*prometheus.Desc{syslogQueueDesc, syslogSentDesc, syslogDroppedDesc},
		collect: func(ch chan<- prometheus.Metric) {
			q, s, d := stats()
			ch <- prometheus.MustNewConstMetric(syslogQueueDesc, prometheus.GaugeValue, float64(q))
			ch <- prometheus.MustNewConstMetric(syslogSentDesc, prometheus.CounterValue, float64(s))
			ch <- prometheus.MustNewConstMetric(syslogDroppedDesc, prometheus.CounterValue, float64(d))
		},
	})
}

// funcCollector reports metrics computed at scrape time, several from one
// call when they come from one snapshot (GaugeFunc and CounterFunc would
// each make their own call).
type funcCollector struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *funcCollector) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
