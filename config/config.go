// Package config holds moat's infrastructure configuration: listeners,
// routes, TLS, DNS, data directory and logging. Filtering behaviour lives in
// policy files (package policies), never here.
package config

import (
	"net"
	"strings"

	"go.yaml.in/yaml/v3"

	"moat/internal/yamlx"
)

// Config is one moat.yaml, with defaults filled in and validated.
type Config struct {
	Hostname        string            `yaml:"hostname"`
	DataDir         string            `yaml:"data_dir"`
	ShutdownTimeout yamlx.Duration    `yaml:"shutdown_timeout"`
	SMTP            SMTP              `yaml:"smtp"`
	TLS             TLS               `yaml:"tls"`
	DNS             DNS               `yaml:"dns"`
	Routes          map[string]*Route `yaml:"routes"`
	Policies        []string          `yaml:"policies"`
	Greylist        Greylist          `yaml:"greylist"`
	Redis           Redis             `yaml:"redis"`
	Quarantine      Quarantine        `yaml:"quarantine"`
	POP3            Mailbox           `yaml:"pop3"`
	IMAP            Mailbox           `yaml:"imap"`
	Auth            Auth              `yaml:"auth"`
	Log             Log               `yaml:"log"`
	Admin           Admin             `yaml:"admin"`

	// File is the path the config was read from ("" for the embedded default).
	File string `yaml:"-"`

	// node is the parsed document, kept so that Validate reports each
	// problem at its line and column; nil for a Config built in code.
	node *yaml.Node
}

// SMTP configures the SMTP listeners and the limits of every session.
type SMTP struct {
	Listeners       []Listener     `yaml:"listeners"`
	TrustedNetworks []yamlx.Prefix `yaml:"trusted_networks"`
	TrustedProxies  []yamlx.Prefix `yaml:"trusted_proxies"`
	MaxMessageSize  yamlx.Size     `yaml:"max_message_size"`
	MaxRecipients   int            `yaml:"max_recipients"`
	MaxHeaderSize   yamlx.Size     `yaml:"max_header_size"`
	MaxLineLength   int            `yaml:"max_line_length"`
	SpoolMemory     yamlx.Size     `yaml:"spool_memory"`
	BareNewline     string         `yaml:"bare_newline"` // reject | normalize
	Timeouts        Timeouts       `yaml:"timeouts"`
	Limits          Limits         `yaml:"limits"`
	UpstreamPool    UpstreamPool   `yaml:"upstream_pool"`
}

// Listener is one SMTP listening socket.
type Listener struct {
	Addr          string `yaml:"addr"`
	Mode          string `yaml:"mode"` // mx | submission
	ImplicitTLS   bool   `yaml:"implicit_tls"`
	ProxyProtocol bool   `yaml:"proxy_protocol"`
}

// Timeouts bound each stage of a session (RFC 5321 section 4.5.3.2) and
// each step towards an upstream.
type Timeouts struct {
	Command         yamlx.Duration `yaml:"command"`
	Data            yamlx.Duration `yaml:"data"`
	UpstreamConnect yamlx.Duration `yaml:"upstream_connect"`
	UpstreamCommand yamlx.Duration `yaml:"upstream_command"`
	UpstreamData    yamlx.Duration `yaml:"upstream_data"`
}

// Limits are the connection-level defences; 0 turns one off.
type Limits struct {
	Connections         int            `yaml:"connections"`
	ConnectionsPerIP    int            `yaml:"connections_per_ip"`
	ConnectionRatePerIP string         `yaml:"connection_rate_per_ip"`
	ErrorsPerSession    int            `yaml:"errors_per_session"`
	PregreetWait        yamlx.Duration `yaml:"pregreet_wait"`

	// Rates of accepted mail, COUNT/DURATION like connection_rate_per_ip;
	// "" or "0" is no limit. A network is an IPv4 /24 or an IPv6 /64.
	MessagesPerNetwork   string `yaml:"messages_per_network"`
	RecipientsPerNetwork string `yaml:"recipients_per_network"`
	MessagesPerSender    string `yaml:"messages_per_sender"`

	Tarpit Tarpit `yaml:"tarpit"`
}

// Tarpit slows every reply to the clients it names (Postfix's
// smtpd_error_sleep_time, postscreen's tarpit); a zero Delay is off.
type Tarpit struct {
	Delay    yamlx.Duration `yaml:"delay"`
	Networks []yamlx.Prefix `yaml:"networks"`
	// DNSBLScore: tarpit clients whose DNSBL score reaches it; 0 is off.
	// Not implemented yet: Validate warns when it is set.
	DNSBLScore float64 `yaml:"dnsbl_score"`
}

// UpstreamPool bounds the idle upstream SMTP connections kept for reuse.
type UpstreamPool struct {
	MaxIdle     int            `yaml:"max_idle"`     // per upstream
	IdleTimeout yamlx.Duration `yaml:"idle_timeout"` // an idle connection older than this is closed
	MaxAge      yamlx.Duration `yaml:"max_age"`      // a connection is not reused past this age
}

// TLS names the certificate served for STARTTLS and implicit TLS. With
// neither file set, moat makes a self-signed certificate in data_dir.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// DNS configures the resolver every check shares.
type DNS struct {
	Servers []string       `yaml:"servers"`
	Timeout yamlx.Duration `yaml:"timeout"`
}

// Route says where mail for one recipient domain goes.
type Route struct {
	Upstream         string `yaml:"upstream"` // host:port, or "local" for the built-in store
	VerifyRecipients bool   `yaml:"verify_recipients"`
}

// Local reports whether the route delivers into the built-in store.
func (r *Route) Local() bool { return r != nil && r.Upstream == "local" }

// Greylist selects the greylist store.
type Greylist struct {
	Store string `yaml:"store"` // bolt | memory | redis
}

// Quarantine configures the messages kept by the quarantine action, in
// data_dir/quarantine.
type Quarantine struct {
	Lifetime yamlx.Duration `yaml:"lifetime"` // an entry is removed this long after it was received
}

// Redis is the shared state server for several gateways.
type Redis struct {
	Addr string `yaml:"addr"`
}

// Mailbox configures a POP3 or IMAP4 service. Without listeners the
// service is off.
type Mailbox struct {
	Listeners []MailboxListener `yaml:"listeners"`
	// Upstream is "local" (the built-in store) or the host:port of the
	// internal server logins are proxied to (proxy mode).
	Upstream string `yaml:"upstream"`
	// Upstreams sends logins of some domains to other servers (proxy
	// mode): login domain → host:port.
	Upstreams map[string]string `yaml:"upstreams"`
	// UpstreamTLS is how moat talks to upstreams: implicit, starttls or
	// none. Default: implicit for ports 993 and 995, else starttls.
	UpstreamTLS string `yaml:"upstream_tls"`
	// CAFile adds the CA that signed the upstreams' certificates (they
	// are always verified).
	CAFile string `yaml:"ca_file"`
}

// Proxy reports whether the service proxies logins to internal servers.
func (m *Mailbox) Proxy() bool { return m.Upstream != "local" }

// UpstreamFor returns the upstream for a login user@domain: its domain's
// entry in Upstreams, else Upstream.
func (m *Mailbox) UpstreamFor(user string) string {
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		if u, ok := m.Upstreams[routeKey(user[i+1:])]; ok {
			return u
		}
	}
	return m.Upstream
}

// TLSFor is the TLS mode towards upstream addr: upstream_tls, or by port
// when it is not set.
func (m *Mailbox) TLSFor(addr string) string {
	if m.UpstreamTLS != "" {
		return m.UpstreamTLS
	}
	if _, port, _ := net.SplitHostPort(addr); port == "993" || port == "995" {
		return "implicit"
	}
	return "starttls"
}

// MailboxListener is one POP3 or IMAP4 listening socket.
type MailboxListener struct {
	Addr        string `yaml:"addr"`
	ImplicitTLS bool   `yaml:"implicit_tls"`
}

// Auth governs logins on POP3, IMAP4 and SMTP submission: where a
// password may travel in clear, and how password guessing is slowed down
// and locked out.
type Auth struct {
	// AllowPlaintextAuth lets clients outside smtp.trusted_networks send a
	// password over an unencrypted connection (off: they must use TLS).
	AllowPlaintextAuth bool `yaml:"allow_plaintext_auth"`
	// FailureDelays is the wait before answering the first, second, ...
	// failed login in a row; the last one repeats.
	FailureDelays []yamlx.Duration `yaml:"failure_delays"`
	// MaxFailuresPerIP and MaxFailuresPerUser failures within
	// FailureWindow lock that client or that user out for Lockout.
	MaxFailuresPerIP   int            `yaml:"max_failures_per_ip"`
	MaxFailuresPerUser int            `yaml:"max_failures_per_user"`
	FailureWindow      yamlx.Duration `yaml:"failure_window"`
	Lockout            yamlx.Duration `yaml:"lockout"`
	// AllowNetworks are never delayed nor locked out (monitoring, the
	// office's own NAT address).
	AllowNetworks []yamlx.Prefix `yaml:"allow_networks"`
}

// Log configures where events go.
type Log struct {
	Format string  `yaml:"format"` // json | text
	Output string  `yaml:"output"` // stdout | stderr | a file path
	Level  string  `yaml:"level"`  // info | debug
	Syslog *Syslog `yaml:"syslog"`
}

// Syslog ships every event to a collector as RFC 5424 messages whose
// body is the JSON event.
type Syslog struct {
	Network string `yaml:"network"` // tcp (default) | udp
	Addr    string `yaml:"addr"`    // host:port of the collector
	// TLS protects a tcp connection (RFC 5425); the collector's
	// certificate is verified against the system roots plus CAFile.
	TLS    bool   `yaml:"tls"`
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile: a client certificate, for collectors that
	// ask for one.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	Facility string `yaml:"facility"` // local0 (default) .. local7, mail, daemon, auth, authpriv, user
	AppName  string `yaml:"app_name"` // default moat
	Hostname string `yaml:"hostname"` // default the config's hostname
	// QueueSize events wait while the collector is slow or away; beyond
	// it new events are dropped, counted and reported (syslog.dropped).
	QueueSize int `yaml:"queue_size"`
}

// Facilities maps syslog.facility names to their RFC 5424 codes.
var Facilities = map[string]int{
	"user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
	"local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}

// Admin is the HTTP endpoint for /metrics, /healthz and /readyz; empty
// Addr: none.
type Admin struct {
	Addr string `yaml:"addr"`
	// Pprof serves Go's profiler under /debug/pprof/ (for performance
	// work; it exposes internals: keep admin.addr private).
	Pprof bool `yaml:"pprof"`
}
