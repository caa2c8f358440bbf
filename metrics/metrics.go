// Package metrics holds moat's Prometheus metrics: one registry, the
// metric vectors, and small helpers that keep the SMTP path cheap (label
// children are resolved once and cached, so a call is an atomic add and a
// lock-free map read, without allocation).
//
// The metrics (the README lists them from here):
//
//	moat_smtp_connections{listener}                           gauge      SMTP connections open now
//	moat_smtp_connections_total{listener,outcome}             counter    SMTP connections ended, by how: quit, timeout,
//	                                                                     error_limit, client_error, tls_error,
//	                                                                     protocol_error, refused, shutdown
//	moat_smtp_transactions_total{action,policy}               counter    transactions by action (accept, tag, quarantine,
//	                                                                     tempfail, reject, none) and policy name
//	moat_smtp_message_size_bytes                              histogram  size of the messages received (end of data)
//	moat_check_results_total{check,result}                    counter    check results (pass, fail, softfail, neutral,
//	                                                                     none, temperror, permerror)
//	moat_check_duration_seconds{check}                        histogram  time one check took
//	moat_dns_queries_total{result}                            counter    DNS queries sent upstream, by result: success,
//	                                                                     nxdomain, servfail, refused, timeout, error
//	moat_dns_cache_requests_total{result}                     counter    resolver lookups: hit, miss (a query was sent),
//	                                                                     coalesced (answered by a query in flight)
//	moat_upstream_delivery_duration_seconds{upstream}         histogram  time to hand a message to the next hop
//	moat_upstream_errors_total{upstream,stage}                counter    upstream failures: connect, command, data, refused
//	moat_greylist_decisions_total{result}                     counter    greylist verdicts: new, early, passed,
//	                                                                     auto-allowed, allowed, skipped, temperror
//	moat_quarantine_messages                                  gauge      entries in the quarantine (RegisterQuarantine)
//	moat_login_attempts_total{protocol,outcome,reason}        counter    logins (smtp, pop3, imap) by outcome and reason
//	moat_config_reloads_total{outcome}                        counter    configuration reloads: success, failure
//	moat_config_last_reload_success_timestamp_seconds         gauge      time of the last successful reload
//	moat_config_last_reload_failure_timestamp_seconds         gauge      time of the last failed reload
//	moat_syslog_queue_length                                  gauge      events waiting for the syslog shipper (RegisterSyslog)
//	moat_syslog_sent_total                                    counter    events the syslog shipper sent
//	moat_syslog_dropped_total                                 counter    events the syslog shipper dropped
//	moat_redis_roundtrips_total{client}                       counter    round trips to Redis (one command, or one pipeline
//	                                                                     or MULTI/EXEC block) by client: greylist, rate, auth
//
// plus the go_* and process_* metrics of the standard collectors.
//
// No label carries a client address, a user name or an envelope address:
// every label value comes from the code or from the configuration.
package metrics

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry holds every moat metric and the Go runtime and process
// collectors; Handler serves it.
var Registry = prometheus.NewRegistry()

// Handler serves Registry in the Prometheus exposition formats.
func Handler() http.Handler {
	return promhttp.HandlerFor(Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Label values known in advance; their series are created at start so
// that a scrape shows zeros before any traffic.
var (
	listenerNames  = []string{"mx", "submission"}
	connOutcomes   = []string{"quit", "timeout", "error_limit", "client_error", "tls_error", "protocol_error", "refused", "shutdown"}
	txnActions     = []string{"accept", "tag", "quarantine", "tempfail", "reject", "none"}
	basePolicies   = []string{"none", "trusted", "authenticated"}
	checkResults   = []string{"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}
	dnsResults     = []string{"success", "nxdomain", "servfail", "refused", "timeout", "error"}
	cacheResults   = []string{"hit", "miss", "coalesced"}
	upstreamStages = []string{"connect", "command", "data", "refused"}
	greylistWords  = []string{"new", "early", "passed", "auto-allowed", "allowed", "skipped", "temperror"}
	reloadOutcomes = []string{"success", "failure"}
)

// The metric vectors. Call sites on hot paths use the helpers below,
// which cache the children; the vectors are exported for the rest.
var (
	SMTPConnections = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "moat_smtp_connections",
		Help: "SMTP connections open now, by listener.",
	}, []string{"listener"})
	SMTPConnectionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_smtp_connections_total",
		Help: "SMTP connections ended, by listener and outcome (quit, timeout, error_limit, client_error, tls_error, protocol_error, refused, shutdown).",
	}, []string{"listener", "outcome"})
	Transactions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_smtp_transactions_total",
		Help: "SMTP transactions ended, by action (accept, tag, quarantine, tempfail, reject, none) and policy name.",
	}, []string{"action", "policy"})
	MessageSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "moat_smtp_message_size_bytes",
		Help:    "Size of the messages received from SMTP clients, at the end of data.",
		Buckets: prometheus.ExponentialBuckets(1024, 4, 10), // 1 KiB .. 256 MiB
	})
	CheckResults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_check_results_total",
		Help: "Results of the policy checks, by check and result.",
	}, []string{"check", "result"})
	CheckDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "moat_check_duration_seconds",
		Help: "Time one run of a policy check took, DNS lookups included.",
		// From cached answers to the 20 s limit of a check.
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20},
	}, []string{"check"})
	DNSQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_dns_queries_total",
		Help: "DNS queries the resolver sent to its servers, one per attempt at one server (with its TCP retry after a truncated reply), by result (success, nxdomain, servfail, refused, timeout, error).",
	}, []string{"result"})
	DNSCacheRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_dns_cache_requests_total",
		Help: "Resolver lookups by how they were answered: hit (cache), miss (a query was sent), coalesced (joined a query in flight).",
	}, []string{"result"})
	UpstreamDeliveryDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "moat_upstream_delivery_duration_seconds",
		Help:    "Time to hand one message to its next hop (an upstream host:port, or local), until its final reply.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
	}, []string{"upstream"})
	UpstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_upstream_errors_total",
		Help: "Failures talking to an upstream, by stage: connect, command, data, refused (the upstream answered but refused the session).",
	}, []string{"upstream", "stage"})
	GreylistDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_greylist_decisions_total",
		Help: "Greylist verdicts, one per recipient triplet (new, early, passed, auto-allowed, allowed, skipped, temperror).",
	}, []string{"result"})
	LoginAttempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_login_attempts_total",
		Help: "Login attempts (SMTP AUTH, POP3, IMAP) by protocol, outcome and reason.",
	}, []string{"protocol", "outcome", "reason"})
	ConfigReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_config_reloads_total",
		Help: "Configuration reloads, by outcome (success, failure).",
	}, []string{"outcome"})
	ConfigLastReloadSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "moat_config_last_reload_success_timestamp_seconds",
		Help: "Unix time of the last successful configuration reload.",
	})
	ConfigLastReloadFailure = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "moat_config_last_reload_failure_timestamp_seconds",
		Help: "Unix time of the last failed configuration reload.",
	})
	RedisRoundTrips = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "moat_redis_roundtrips_total",
		Help: "Round trips to Redis (one command, or one pipeline or MULTI/EXEC block, answered or failed), by client: greylist, rate, auth.",
	}, []string{"client"})
)

func init() {
	Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		SMTPConnections, SMTPConnectionsTotal, Transactions, MessageSize,
		CheckResults, CheckDuration, DNSQueries, DNSCacheRequests,
		UpstreamDeliveryDuration, UpstreamErrors, GreylistDecisions,
		LoginAttempts, ConfigReloads, ConfigLastReloadSuccess, ConfigLastReloadFailure,
		RedisRoundTrips,
	)
	for _, l := range listenerNames {
		SMTPListener(l)
	}
	Expect(Expected{Policies: basePolicies})
	for _, r := range dnsResults {
		DNSQueries.WithLabelValues(r)
	}
	for _, r := range cacheResults {
		DNSCacheRequests.WithLabelValues(r)
	}
	for _, r := range greylistWords {
		greylist.get(r)
	}
	for _, o := range reloadOutcomes {
		ConfigReloads.WithLabelValues(o)
	}
}

// cache maps label values to a resolved child metric. Reads are a
// lock-free map lookup; a new key copies the map, which is fine because
// every label set is bounded and soon complete.
type cache[K comparable, M any] struct {
	mu       sync.Mutex
	m        atomic.Pointer[map[K]M]
	newChild func(K) M
}

func newCache[K comparable, M any](newChild func(K) M) *cache[K, M] {
	return &cache[K, M]{newChild: newChild}
}

func (c *cache[K, M]) get(k K) M {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
	}
	n := make(map[K]M, 1+lenOf(old))
	if old != nil {
		for k, v := range *old {
			n[k] = v
		}
	}
	v := c.newChild(k)
	n[k] = v
	c.m.Store(&n)
	return v
}

func lenOf[K comparable, M any](m *map[K]M) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// Listener is the connection metrics of one SMTP listener, resolved once.
type Listener struct {
	open  prometheus.Gauge
	ended *cache[string, prometheus.Counter]
}

var listeners = newCache(func(name string) *Listener {
	l := &Listener{
		open: SMTPConnections.WithLabelValues(name),
		ended: newCache(func(outcome string) prometheus.Counter {
			return SMTPConnectionsTotal.WithLabelValues(name, outcome)
		}),
	}
	for _, o := range connOutcomes {
		l.ended.get(o)
	}
	return l
})

// SMTPListener returns the connection metrics of the listener name ("mx",
// "submission"); keep it for the listener's life.
func SMTPListener(name string) *Listener { return listeners.get(name) }

// Opened counts a connection in.
func (l *Listener) Opened() { l.open.Inc() }

// Refused counts a connection closed at once, without a session (the
// server is shutting down).
func (l *Listener) Refused() { l.ended.get("refused").Inc() }

// Closed counts a connection out and records how it ended.
func (l *Listener) Closed(outcome string) {
	l.open.Dec()
	l.ended.get(outcome).Inc()
}

var transactions = newCache(func(k [2]string) prometheus.Counter {
	return Transactions.WithLabelValues(k[0], k[1])
})

// Transaction counts one ended transaction. An empty policy (refused
// before a policy applied) counts as "none".
func Transaction(action, policy string) {
	if policy == "" {
		policy = "none"
	}
	transactions.get([2]string{action, policy}).Inc()
}

// checkMetrics is one check's duration histogram and result counters.
type checkMetrics struct {
	duration prometheus.Observer
	results  *cache[string, prometheus.Counter]
}

var checks = newCache(func(name string) *checkMetrics {
	c := &checkMetrics{
		duration: CheckDuration.WithLabelValues(name),
		results: newCache(func(result string) prometheus.Counter {
			return CheckResults.WithLabelValues(name, result)
		}),
	}
	for _, r := range checkResults {
		c.results.get(r)
	}
	return c
})

// CheckRun records one run of a check: how long it took and, when it had
// something to say, its result ("" for none).
func CheckRun(check, result string, d time.Duration) {
	c := checks.get(check)
	c.duration.Observe(d.Seconds())
	if result != "" {
		c.results.get(result).Inc()
	}
}

// DNS are the resolver's counters, resolved once.
var DNS = struct {
	Success, NXDomain, ServFail, Refused, Timeout, Error prometheus.Counter // moat_dns_queries_total
	CacheHit, CacheMiss, Coalesced                       prometheus.Counter // moat_dns_cache_requests_total
}{
	Success:   DNSQueries.WithLabelValues("success"),
	NXDomain:  DNSQueries.WithLabelValues("nxdomain"),
	ServFail:  DNSQueries.WithLabelValues("servfail"),
	Refused:   DNSQueries.WithLabelValues("refused"),
	Timeout:   DNSQueries.WithLabelValues("timeout"),
	Error:     DNSQueries.WithLabelValues("error"),
	CacheHit:  DNSCacheRequests.WithLabelValues("hit"),
	CacheMiss: DNSCacheRequests.WithLabelValues("miss"),
	Coalesced: DNSCacheRequests.WithLabelValues("coalesced"),
}

// upstreamMetrics is one upstream's delivery histogram and error counters.
type upstreamMetrics struct {
	duration prometheus.Observer
	errors   *cache[string, prometheus.Counter]
}

var upstreams = newCache(func(name string) *upstreamMetrics {
	u := &upstreamMetrics{
		duration: UpstreamDeliveryDuration.WithLabelValues(name),
		errors: newCache(func(stage string) prometheus.Counter {
			return UpstreamErrors.WithLabelValues(name, stage)
		}),
	}
	for _, s := range upstreamStages {
		u.errors.get(s)
	}
	return u
})

// UpstreamDelivered records the time one delivery to upstream took.
func UpstreamDelivered(upstream string, d time.Duration) {
	upstreams.get(upstream).duration.Observe(d.Seconds())
}

// UpstreamError counts one failure talking to upstream at stage
// (connect, command, data, refused).
func UpstreamError(upstream, stage string) {
	upstreams.get(upstream).errors.get(stage).Inc()
}

var greylist = newCache(func(result string) prometheus.Counter {
	return GreylistDecisions.WithLabelValues(result)
})

// Greylist counts one greylist verdict.
func Greylist(result string) { greylist.get(result).Inc() }

// Login counts one login attempt. protocol is "smtp", "pop3" or "imap";
// reason is one of the fixed words of package auth.
func Login(protocol, outcome, reason string) {
	LoginAttempts.WithLabelValues(protocol, outcome, reason).Inc()
}

// Reloaded records a configuration reload and its time.
func Reloaded(ok bool) {
	if ok {
		ConfigReloads.WithLabelValues("success").Inc()
		ConfigLastReloadSuccess.SetToCurrentTime()
		return
	}
	ConfigReloads.WithLabelValues("failure").Inc()
	ConfigLastReloadFailure.SetToCurrentTime()
}

// Expected are label values a configuration names, for Expect.
type Expected struct {
	Policies  []string // policy names
	Checks    []string // check names ("spf", "dnsbl", …)
	Upstreams []string // route upstreams, host:port or "local"
}

// Expect creates the series of the label values a configuration names,
// so that a scrape shows them at 0 before any traffic. Series of values a
// later configuration drops stay (counters must not go back).
func Expect(e Expected) {
	for _, p := range e.Policies {
		for _, a := range txnActions {
			transactions.get([2]string{a, p})
		}
	}
	for _, c := range e.Checks {
		checks.get(c)
	}
	for _, u := range e.Upstreams {
		upstreams.get(u)
	}
}
