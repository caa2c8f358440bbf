package config

import (
	"crypto/x509"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"moat/internal/yamlx"
)

// EmbeddedFile names the embedded default configuration in messages.
const EmbeddedFile = "<embedded default>"

// defaultYAML is the configuration `moat serve` runs without --config. It
// is also the commented example users copy, so it must stay valid (tested).
//
//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the text of the embedded default configuration.
func DefaultYAML() []byte { return slices.Clone(defaultYAML) }

// Default returns the embedded default configuration: loopback listeners on
// unprivileged ports and the built-in store for localhost and example.test
// under ./moat-data (relative to the working directory). Its File is "".
func Default() *Config {
	c, errs := parse(EmbeddedFile, "", defaultYAML)
	if errs.Err() != nil {
		// default.yaml is embedded at build time and tested, so this is a
		// programming error, not bad input.
		panic("config: the embedded default is invalid:\n" + errs.Error())
	}
	c.File = ""
	return c
}

// Load reads, decodes and validates the config file at path. Keys missing
// from the file take the built-in defaults (see builtin). Relative paths in
// the file are taken relative to the file's directory.
//
// The returned Errors hold every problem, each printing as
// FILE:LINE:COL: message, in file order. They may hold only warnings (keys
// this build ignores), which do not make the file invalid: test
// errs.Err() != nil, not errs != nil. The Config is nil exactly when
// errs.Err() is not nil.
func Load(path string) (*Config, yamlx.Errors) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is already in front of the message
		}
		return nil, yamlx.Errors{{File: path, Line: 1, Col: 1, Msg: "cannot read config: " + err.Error()}}
	}
	dir := filepath.Dir(path)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return parse(path, dir, data)
}

// Parse decodes and validates config text as Load does, without reading a
// file: file names the text in messages and its directory anchors relative
// paths.
func Parse(file string, data []byte) (*Config, yamlx.Errors) {
	return parse(file, filepath.Dir(file), data)
}

// parse is Load and Parse. Relative paths are resolved against dir unless
// dir is "".
func parse(file, dir string, data []byte) (*Config, yamlx.Errors) {
	docs, errs := yamlx.Parse(file, data)
	if errs.Err() != nil {
		return nil, errs
	}
	c := builtin()
	c.File = file
	if len(docs) > 0 {
		c.node = docs[0]
		errs = append(errs, yamlx.Decode(file, docs[0], c)...)
	}
	if len(docs) > 1 {
		d := docs[1]
		errs = append(errs, &yamlx.Error{File: file, Line: d.Line, Col: d.Column,
			Msg: "a config file holds one YAML document; a second one starts here"})
	}
	c.fillOptional()
	if dir != "" {
		c.resolvePaths(dir)
	}
	errs = append(errs, c.Validate()...)
	errs.Sort()
	if errs.Err() != nil {
		return nil, errs
	}
	c.normalize()
	if len(errs) == 0 {
		return c, nil
	}
	return c, errs
}

// builtin returns the value every key takes when the file leaves it out.
func builtin() *Config {
	// hostname: the system's host name; "localhost" when it has none.
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return &Config{
		Hostname:        host,
		DataDir:         "/var/lib/moat",                  // data_dir
		ShutdownTimeout: yamlx.Duration(30 * time.Second), // shutdown_timeout
		SMTP: SMTP{
			// smtp.listeners: one MX listener on port 25 (on every address).
			Listeners: []Listener{{Addr: ":25", Mode: "mx"}},
			// smtp.trusted_networks: loopback only. Never wider by default:
			// a trusted client may relay anywhere, so a wider default would
			// make moat an open relay by accident.
			TrustedNetworks: []yamlx.Prefix{
				yamlx.Prefix(netip.MustParsePrefix("127.0.0.1/32")),
				yamlx.Prefix(netip.MustParsePrefix("::1/128")),
			},
			MaxMessageSize: 25 << 20, // smtp.max_message_size: 25MiB
			MaxRecipients:  100,      // smtp.max_recipients
			MaxHeaderSize:  1 << 20,  // smtp.max_header_size: 1MiB
			MaxLineLength:  4096,     // smtp.max_line_length, for command lines
			// smtp.spool_memory: 1MiB; a larger message spills to a
			// temporary file in data_dir/spool.
			SpoolMemory: 1 << 20,
			BareNewline: "reject", // smtp.bare_newline: an SMTP smuggling guard
			Limits: Limits{
				// smtp.limits.connections: open SMTP connections in all
				// (a goroutine and two buffers each, ~40KiB).
				Connections: 5000,
				// smtp.limits.connections_per_ip: Postfix's anvil allows
				// 50; a real MTA rarely needs more than a few at once.
				ConnectionsPerIP: 20,
				// smtp.limits.connection_rate_per_ip: new connections per
				// client (IPv6: per /64) and period.
				ConnectionRatePerIP: "120/1m",
				// smtp.limits.errors_per_session: bad commands before 421
				// and disconnect (Postfix's smtpd_hard_error_limit is 20;
				// a legitimate client rarely errs twice).
				ErrorsPerSession: 10,
				// smtp.limits.pregreet_wait: off; postscreen waits 6s.
			},
			Timeouts: Timeouts{
				Command:         yamlx.Duration(5 * time.Minute),  // smtp.timeouts.command
				Data:            yamlx.Duration(10 * time.Minute), // smtp.timeouts.data
				UpstreamConnect: yamlx.Duration(30 * time.Second), // smtp.timeouts.upstream_connect
				UpstreamCommand: yamlx.Duration(5 * time.Minute),  // smtp.timeouts.upstream_command
				UpstreamData:    yamlx.Duration(5 * time.Minute),  // smtp.timeouts.upstream_data
			},
			UpstreamPool: UpstreamPool{
				MaxIdle:     32,                               // smtp.upstream_pool.max_idle
				IdleTimeout: yamlx.Duration(60 * time.Second), // smtp.upstream_pool.idle_timeout
				MaxAge:      yamlx.Duration(5 * time.Minute),  // smtp.upstream_pool.max_age
			},
		},
		DNS:      DNS{Timeout: yamlx.Duration(2 * time.Second)}, // dns.timeout; dns.servers: /etc/resolv.conf
		Greylist: Greylist{Store: "bolt"},                       // greylist.store
		// quarantine.lifetime: 30 days, then an entry nobody released or
		// deleted goes.
		Quarantine: Quarantine{Lifetime: yamlx.Duration(30 * 24 * time.Hour)},
		// pop3, imap: no listeners, so off unless the file asks;
		// upstream local (the built-in store).
		POP3: Mailbox{Upstream: "local"},
		IMAP: Mailbox{Upstream: "local"},
		Auth: Auth{
			// auth.failure_delays: 2s, 4s, 8s, then 15s for every further
			// failure in a row (Dovecot's auth_failure_delay is a flat 2s).
			FailureDelays: []yamlx.Duration{
				yamlx.Duration(2 * time.Second), yamlx.Duration(4 * time.Second),
				yamlx.Duration(8 * time.Second), yamlx.Duration(15 * time.Second),
			},
			MaxFailuresPerIP:   10,                               // auth.max_failures_per_ip
			MaxFailuresPerUser: 10,                               // auth.max_failures_per_user
			FailureWindow:      yamlx.Duration(15 * time.Minute), // auth.failure_window
			Lockout:            yamlx.Duration(15 * time.Minute), // auth.lockout
		},
		Log: Log{
			Format: "json",   // log.format
			Output: "stdout", // log.output
			Level:  "info",   // log.level
		},
	}
}

// fillOptional gives the optional sections the file set (pointers) the
// defaults of the keys it left out.
func (c *Config) fillOptional() {
	if sl := c.Log.Syslog; sl != nil {
		def := func(p *string, v string) {
			if *p == "" {
				*p = v
			}
		}
		def(&sl.Network, "tcp")                                // log.syslog.network
		def(&sl.Facility, "local0")                            // log.syslog.facility
		def(&sl.AppName, "moat")                               // log.syslog.app_name
		def(&sl.Hostname, strings.TrimSuffix(c.Hostname, ".")) // log.syslog.hostname
		if sl.QueueSize == 0 {
			sl.QueueSize = 10000 // log.syslog.queue_size
		}
	}
}

// resolvePaths makes the relative file paths of c relative to dir.
func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.DataDir)
	abs(&c.TLS.CertFile)
	abs(&c.TLS.KeyFile)
	for i := range c.Policies {
		abs(&c.Policies[i])
	}
	if c.Log.Output != "stdout" && c.Log.Output != "stderr" {
		abs(&c.Log.Output)
	}
	if c.Log.Syslog != nil {
		abs(&c.Log.Syslog.CAFile)
		abs(&c.Log.Syslog.CertFile)
		abs(&c.Log.Syslog.KeyFile)
	}
	abs(&c.POP3.CAFile)
	abs(&c.IMAP.CAFile)
}

// normalize puts a valid c in the form the rest of moat reads: listener
// mode set, route keys lower-case without a trailing dot, DNS servers with
// a port.
func (c *Config) normalize() {
	c.Hostname = strings.TrimSuffix(c.Hostname, ".")
	for i := range c.SMTP.Listeners {
		if c.SMTP.Listeners[i].Mode == "" {
			c.SMTP.Listeners[i].Mode = "mx"
		}
	}
	if c.Routes != nil {
		routes := make(map[string]*Route, len(c.Routes))
		for k, r := range c.Routes {
			routes[routeKey(k)] = r
		}
		c.Routes = routes
	}
	for i, s := range c.DNS.Servers {
		if addr, ok := dnsServer(s); ok {
			c.DNS.Servers[i] = addr
		}
	}
	for _, m := range []*Mailbox{&c.POP3, &c.IMAP} {
		if m.Upstreams != nil {
			ups := make(map[string]string, len(m.Upstreams))
			for k, u := range m.Upstreams {
				ups[routeKey(k)] = u
				if a, ok := toASCII(routeKey(k)); ok {
					ups[a] = u
				}
			}
			m.Upstreams = ups
		}
	}
}

// Route returns the route for a recipient domain. The match ignores case
// and a trailing dot, and an internationalized domain matches whether the
// route key and the domain are written as Unicode (U-label) or as Punycode
// (A-label, "xn--...").
func (c *Config) Route(domain string) (*Route, bool) {
	d := routeKey(domain)
	if r := c.Routes[d]; r != nil {
		return r, true
	}
	if a, ok := toASCII(d); ok && a != d {
		if r := c.Routes[a]; r != nil {
			return r, true
		}
	}
	if u, ok := toUnicode(d); ok && u != d {
		if r := c.Routes[u]; r != nil {
			return r, true
		}
	}
	return nil, false
}

// routeKey is the form route keys are stored in: lower-case, no trailing dot.
func routeKey(domain string) string {
	return strings.ToLower(strings.TrimSuffix(domain, "."))
}

// Trusted reports whether ip is in smtp.trusted_networks. An IPv4-mapped
// IPv6 address counts as IPv4, and an IPv6 zone is ignored.
func (c *Config) Trusted(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	for _, p := range c.SMTP.TrustedNetworks {
		if p.P().Contains(ip) {
			return true
		}
	}
	return false
}

// TrustedProxy reports whether ip is in smtp.trusted_proxies: it may
// send a PROXY header and use XCLIENT.
func (c *Config) TrustedProxy(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	for _, p := range c.SMTP.TrustedProxies {
		if p.P().Contains(ip) {
			return true
		}
	}
	return false
}

// notImplemented lists the keys SPEC.md defines that this build reads but
// does not act on yet. When the file sets one, Validate warns
// "KEY: not implemented in this version; ignored". Delete a row when its
// feature lands.
// None at present.
var notImplemented = []struct {
	path string                // "[]" stands for every element of a list
	set  func(*yaml.Node) bool // whether the value asks for the feature
}{}

// Validate checks c against the rules of SPEC.md and returns every problem
// found, sorted by position, with warnings for keys this build ignores.
// A Config from Load or Parse reports each problem at the key or value at
// fault; one built in code has no positions and reports at 1:1 of File
// (EmbeddedFile when File is "").
func (c *Config) Validate() yamlx.Errors {
	file := c.File
	if file == "" {
		file = EmbeddedFile
	}
	v := &validator{file: file, root: c.node}

	if c.Hostname == "" {
		v.errorf("hostname", "must not be empty")
	} else if !validDomain(strings.TrimSuffix(c.Hostname, ".")) {
		if _, _, ok := find(c.node, "hostname"); ok {
			v.errorf("hostname", "%q is not a valid DNS name", c.Hostname)
		} else {
			v.errorf("hostname", "the system host name %q is not a valid DNS name; set hostname", c.Hostname)
		}
	}
	if c.DataDir == "" {
		v.errorf("data_dir", "must not be empty")
	}
	v.positive("shutdown_timeout", c.ShutdownTimeout)
	used := map[string]string{} // normalized listen address -> path of its first user
	v.smtp(&c.SMTP, used)
	v.mailbox("pop3", &c.POP3, used)
	v.mailbox("imap", &c.IMAP, used)
	v.auth(&c.Auth)
	v.routes(c.Routes)

	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		set, missing := "tls.cert_file", "key_file"
		if c.TLS.CertFile == "" {
			set, missing = "tls.key_file", "cert_file"
		}
		v.keyErrorf(set, "tls: cert_file and key_file must be set together; %s is missing", missing)
	}
	for i, p := range c.Policies {
		if _, err := filepath.Match(p, ""); err != nil {
			v.errorf(fmt.Sprintf("policies[%d]", i), "bad pattern %q: %v", p, err)
		}
	}

	for i, s := range c.DNS.Servers {
		if _, ok := dnsServer(s); !ok {
			v.errorf(fmt.Sprintf("dns.servers[%d]", i), "want an IP address with an optional port, such as 192.0.2.53, 192.0.2.53:53 or [2001:db8::53]:53, got %q", s)
		}
	}
	v.positive("dns.timeout", c.DNS.Timeout)

	switch c.Greylist.Store {
	case "bolt", "memory":
	case "redis":
		if c.Redis.Addr == "" {
			v.errorf("greylist.store", "redis needs redis.addr")
		}
	default:
		v.errorf("greylist.store", "want bolt, memory or redis, got %q", c.Greylist.Store)
	}

	v.positive("quarantine.lifetime", c.Quarantine.Lifetime)

	switch c.Log.Format {
	case "json", "text":
	default:
		v.errorf("log.format", "want json or text, got %q", c.Log.Format)
	}
	switch c.Log.Level {
	case "info", "debug":
	default:
		v.errorf("log.level", "want info or debug, got %q", c.Log.Level)
	}
	if c.Log.Output == "" {
		v.errorf("log.output", "must not be empty: want stdout, stderr or a file path")
	}
	if sl := c.Log.Syslog; sl != nil {
		v.syslog(sl)
	}
	if c.Admin.Addr != "" {
		if _, problem := listenAddr(c.Admin.Addr); problem != "" {
			v.errorf("admin.addr", "%s", problem)
		}
	}

	for _, ni := range notImplemented {
		for _, path := range expand(c.node, ni.path) {
			if key, val, ok := find(c.node, path); ok && ni.set(val) {
				v.add(key, true, path+": not implemented in this version; ignored")
			}
		}
	}

	v.errs.Sort()
	return v.errs
}

// listener checks one listen address at path p, and that no other
// listener of any service took it already.
func (v *validator) listener(p, addr string, used map[string]string) {
	if norm, problem := listenAddr(addr); problem != "" {
		v.errorf(p+".addr", "%s", problem)
	} else if first, dup := used[norm]; dup {
		v.errorf(p+".addr", "%q is already used by %s", addr, first)
	} else {
		used[norm] = p
	}
}

// mailbox checks the pop3 or imap section.
func (v *validator) mailbox(name string, m *Mailbox, used map[string]string) {
	for i, l := range m.Listeners {
		v.listener(fmt.Sprintf("%s.listeners[%d]", name, i), l.Addr, used)
	}
	badTLS := false
	switch m.UpstreamTLS {
	case "", "implicit", "starttls", "none":
	default:
		badTLS = true
		v.errorf(name+".upstream_tls", "want implicit, starttls or none, got %q", m.UpstreamTLS)
	}
	switch {
	case m.Upstream == "local":
		for _, k := range []struct{ key, val string }{{"upstream_tls", m.UpstreamTLS}, {"ca_file", m.CAFile}} {
			if k.val != "" && !(badTLS && k.key == "upstream_tls") {
				v.warnf(name+"."+k.key, "only used in proxy mode (upstream host:port); ignored with upstream local")
			}
		}
		if len(m.Upstreams) > 0 {
			v.keyErrorf(name+".upstreams", "%s.upstreams: per-domain upstreams need proxy mode (upstream host:port), not local", name)
		}
	case m.Upstream == "":
		v.errorf(name+".upstream", "must be set: local or host:port")
	default:
		port := map[string]string{"pop3": ":995", "imap": ":993"}[name]
		example := func(problem string) string {
			return strings.Replace(problem, `"mail.corp.internal:25"`, `"mail.corp.internal`+port+`"`, 1)
		}
		if problem := upstreamAddr(m.Upstream); problem != "" {
			v.errorf(name+".upstream", "%s", example(problem))
		}
		for _, k := range v.keysInOrder(name+".upstreams", m.Upstreams) {
			p := name + ".upstreams." + k
			if ascii, ok := toASCII(routeKey(k)); !ok || !validDomain(ascii) {
				v.keyErrorf(p, "%s.upstreams: %q is not a valid domain name", name, k)
			}
			if problem := upstreamAddr(m.Upstreams[k]); problem != "" {
				v.errorf(p, "%s", example(strings.Replace(problem, "want local or host:port", "want host:port", 1)))
			}
		}
		if m.UpstreamTLS == "none" {
			v.warnf(name+".upstream_tls", "users' passwords cross to the upstream unencrypted")
		}
		if m.CAFile != "" {
			// Read now, so that moat check and a reload report it here
			// rather than every login failing later.
			if pem, err := os.ReadFile(m.CAFile); err != nil {
				v.errorf(name+".ca_file", "cannot read: %v", err)
			} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
				v.errorf(name+".ca_file", "%s holds no PEM certificate", m.CAFile)
			}
		}
	}
}

// keysInOrder returns the keys of the map at path in file order (so that
// problems print in order), any not found in the file last, sorted.
func (v *validator) keysInOrder(path string, m map[string]string) []string {
	type entry struct {
		key       string
		line, col int
	}
	var keys []entry
	for k := range m {
		e := entry{key: k, line: 1 << 30}
		if kn, _, ok := find(v.root, path+"."+k); ok && kn != nil {
			e.line, e.col = kn.Line, kn.Column
		}
		keys = append(keys, e)
	}
	slices.SortFunc(keys, func(a, b entry) int {
		if a.line != b.line {
			return a.line - b.line
		}
		if a.col != b.col {
			return a.col - b.col
		}
		return strings.Compare(a.key, b.key)
	})
	out := make([]string, len(keys))
	for i, e := range keys {
		out[i] = e.key
	}
	return out
}

// syslog checks log.syslog.
func (v *validator) syslog(sl *Syslog) {
	switch sl.Network {
	case "tcp":
	case "udp":
		if sl.TLS {
			v.errorf("log.syslog.tls", "TLS needs network tcp (RFC 5425), not udp")
		}
	default:
		v.errorf("log.syslog.network", "want tcp or udp, got %q", sl.Network)
	}
	if sl.Addr == "" {
		v.errorf("log.syslog.addr", "must be set: host:port of the collector")
	} else if problem := upstreamAddr(sl.Addr); problem != "" {
		v.errorf("log.syslog.addr", "%s", strings.Replace(problem, `want local or host:port such as "mail.corp.internal:25"`, `want host:port such as "siem.corp.internal:6514"`, 1))
	}
	if _, ok := Facilities[sl.Facility]; !ok {
		v.errorf("log.syslog.facility", "want one of local0..local7, mail, daemon, auth, authpriv, user, syslog; got %q", sl.Facility)
	}
	if sl.QueueSize < 1 || sl.QueueSize > 10_000_000 {
		v.errorf("log.syslog.queue_size", "must be from 1 to 10000000, got %d", sl.QueueSize)
	}
	if (sl.CAFile != "" || sl.CertFile != "") && !sl.TLS {
		key := "log.syslog.ca_file"
		if sl.CAFile == "" {
			key = "log.syslog.cert_file"
		}
		v.warnf(key, "only used with tls: true; ignored")
	}
	if sl.TLS && sl.CAFile != "" {
		if pem, err := os.ReadFile(sl.CAFile); err != nil {
			v.errorf("log.syslog.ca_file", "cannot read: %v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			v.errorf("log.syslog.ca_file", "%s holds no PEM certificate", sl.CAFile)
		}
	}
	if (sl.CertFile == "") != (sl.KeyFile == "") {
		set, missing := "log.syslog.cert_file", "key_file"
		if sl.CertFile == "" {
			set, missing = "log.syslog.key_file", "cert_file"
		}
		v.errorf(set, "cert_file and key_file must be set together; %s is missing", missing)
	}
}

// auth checks the login settings.
func (v *validator) auth(a *Auth) {
	if len(a.FailureDelays) == 0 {
		v.errorf("auth.failure_delays", "needs at least one delay (0s for none)")
	}
	for i, d := range a.FailureDelays {
		if d < 0 || time.Duration(d) > time.Minute {
			v.errorf(fmt.Sprintf("auth.failure_delays[%d]", i), "must be from 0s to 1m, got %s", d)
		}
	}
	if a.MaxFailuresPerIP < 1 {
		v.errorf("auth.max_failures_per_ip", "must be 1 or more, got %d", a.MaxFailuresPerIP)
	}
	if a.MaxFailuresPerUser < 1 {
		v.errorf("auth.max_failures_per_user", "must be 1 or more, got %d", a.MaxFailuresPerUser)
	}
	v.positive("auth.failure_window", a.FailureWindow)
	v.positive("auth.lockout", a.Lockout)
	if a.AllowPlaintextAuth {
		v.warnf("auth.allow_plaintext_auth", "passwords may cross the network unencrypted from any client")
	}
}

func (v *validator) smtp(s *SMTP, used map[string]string) {
	if len(s.Listeners) == 0 {
		v.errorf("smtp.listeners", "at least one SMTP listener is needed")
	}
	for i, l := range s.Listeners {
		p := fmt.Sprintf("smtp.listeners[%d]", i)
		v.listener(p, l.Addr, used)
		switch l.Mode {
		case "", "mx", "submission":
		default:
			v.errorf(p+".mode", "want mx or submission, got %q", l.Mode)
		}
	}
	for i, p := range s.TrustedNetworks {
		if p.P().IsValid() && p.P().Bits() == 0 {
			v.warnf(fmt.Sprintf("smtp.trusted_networks[%d]", i), "%s trusts every client: moat relays for anyone (an open relay)", p)
		}
	}
	for i, p := range s.TrustedProxies {
		if p.P().IsValid() && p.P().Bits() == 0 {
			v.warnf(fmt.Sprintf("smtp.trusted_proxies[%d]", i), "%s lets every client choose the address moat sees (PROXY header, XCLIENT)", p)
		}
	}
	for i, l := range s.Listeners {
		if l.ProxyProtocol && len(s.TrustedProxies) == 0 {
			v.errorf(fmt.Sprintf("smtp.listeners[%d].proxy_protocol", i), "needs smtp.trusted_proxies: a PROXY header is taken only from them, so every connection would be refused")
		}
	}

	if s.MaxMessageSize <= 0 || s.MaxMessageSize > 2<<30 {
		v.errorf("smtp.max_message_size", "must be more than 0 and at most 2GiB, got %s", s.MaxMessageSize)
	}
	if s.MaxRecipients < 1 || s.MaxRecipients > 100000 {
		v.errorf("smtp.max_recipients", "must be from 1 to 100000, got %d", s.MaxRecipients)
	}
	if s.MaxHeaderSize < 1<<10 {
		v.errorf("smtp.max_header_size", "must be at least 1KiB, got %s", s.MaxHeaderSize)
	}
	if s.MaxLineLength < 512 || s.MaxLineLength > 65536 {
		v.errorf("smtp.max_line_length", "must be from 512 to 65536, got %d", s.MaxLineLength)
	}
	switch s.BareNewline {
	case "reject", "normalize":
	default:
		v.errorf("smtp.bare_newline", "want reject or normalize, got %q", s.BareNewline)
	}

	v.positive("smtp.timeouts.command", s.Timeouts.Command)
	v.positive("smtp.timeouts.data", s.Timeouts.Data)
	v.positive("smtp.timeouts.upstream_connect", s.Timeouts.UpstreamConnect)
	v.positive("smtp.timeouts.upstream_command", s.Timeouts.UpstreamCommand)
	v.positive("smtp.timeouts.upstream_data", s.Timeouts.UpstreamData)

	if s.UpstreamPool.MaxIdle < 0 {
		v.errorf("smtp.upstream_pool.max_idle", "must be 0 or more (0 keeps no idle connection), got %d", s.UpstreamPool.MaxIdle)
	}
	v.positive("smtp.upstream_pool.idle_timeout", s.UpstreamPool.IdleTimeout)
	v.positive("smtp.upstream_pool.max_age", s.UpstreamPool.MaxAge)

	for _, lim := range []struct {
		key string
		n   int
	}{
		{"connections", s.Limits.Connections},
		{"connections_per_ip", s.Limits.ConnectionsPerIP},
		{"errors_per_session", s.Limits.ErrorsPerSession},
	} {
		if lim.n < 0 {
			v.errorf("smtp.limits."+lim.key, "must be 0 or more (0 turns the limit off), got %d", lim.n)
		}
	}
	for _, lim := range []struct{ key, rate, example string }{
		{"connection_rate_per_ip", s.Limits.ConnectionRatePerIP, "120/1m"},
		{"messages_per_network", s.Limits.MessagesPerNetwork, "1000/1h"},
		{"recipients_per_network", s.Limits.RecipientsPerNetwork, "5000/1h"},
		{"messages_per_sender", s.Limits.MessagesPerSender, "500/1h"},
	} {
		if r := lim.rate; r != "" && r != "0" && !validRate(r) {
			v.errorf("smtp.limits."+lim.key, "want COUNT/DURATION such as %s, got %q", lim.example, r)
		}
	}
	// A tarpit delay is spent on every reply; more than a minute is
	// a hang, and the command timeout bounds it anyway.
	tp := s.Limits.Tarpit
	if w := tp.Delay; w < 0 || w.D() > time.Minute {
		v.errorf("smtp.limits.tarpit.delay", "must be from 0s (off) to 1m, got %s", w)
	}
	if tp.DNSBLScore < 0 {
		v.errorf("smtp.limits.tarpit.dnsbl_score", "must be 0 or more (0 turns it off), got %g", tp.DNSBLScore)
	} else if tp.DNSBLScore > 0 {
		v.warnf("smtp.limits.tarpit.dnsbl_score", "not implemented yet: only smtp.limits.tarpit.networks are tarpitted")
	}
	if tp.Delay == 0 && len(tp.Networks) > 0 {
		v.warnf("smtp.limits.tarpit.networks", "has no effect while smtp.limits.tarpit.delay is 0s")
	}
	// A client gives up on a greeting after 5 minutes (RFC 5321 section
	// 4.5.3.2); postscreen's greet_wait is 6s.
	if w := s.Limits.PregreetWait; w < 0 || w.D() > time.Minute {
		v.errorf("smtp.limits.pregreet_wait", "must be from 0s (off) to 1m, got %s", w)
	}
}

// validRate reports whether r reads COUNT/DURATION, like "120/1m".
func validRate(r string) bool {
	count, per, ok := strings.Cut(r, "/")
	if !ok {
		return false
	}
	n, err := strconv.Atoi(strings.TrimSpace(count))
	if err != nil || n < 0 {
		return false
	}
	d, err := yamlx.ParseDuration(per)
	return err == nil && d > 0
}

// routes checks every route. Keys are taken in file order, so that of two
// keys naming the same domain the later one is reported.
func (v *validator) routes(routes map[string]*Route) {
	type entry struct {
		key       string
		line, col int
	}
	var keys []entry
	for k := range routes {
		e := entry{key: k}
		if kn, _, ok := find(v.root, "routes."+k); ok && kn != nil {
			e.line, e.col = kn.Line, kn.Column
		}
		keys = append(keys, e)
	}
	slices.SortFunc(keys, func(a, b entry) int {
		if a.line != b.line {
			return a.line - b.line
		}
		if a.col != b.col {
			return a.col - b.col
		}
		return strings.Compare(a.key, b.key)
	})

	seen := map[string]string{} // A-label form -> key as written
	for _, e := range keys {
		k, r := e.key, routes[e.key]
		p := "routes." + k
		if ascii, ok := toASCII(routeKey(k)); !ok || !validDomain(ascii) {
			v.keyErrorf(p, "routes: %q is not a valid domain name", k)
		} else if first, dup := seen[ascii]; dup {
			v.keyErrorf(p, "routes: %q is the same domain as %q", k, first)
		} else {
			seen[ascii] = k
		}
		switch {
		case r == nil || r.Upstream == "":
			v.errorf(p+".upstream", "must be set: local or host:port")
		case r.Upstream == "local":
			if r.VerifyRecipients {
				v.keyErrorf(p+".verify_recipients", "%s: verify_recipients needs an upstream host:port", p)
			}
		default:
			if problem := upstreamAddr(r.Upstream); problem != "" {
				v.errorf(p+".upstream", "%s", problem)
			}
		}
	}
}

// listenAddr checks a listener address and returns it in a form where two
// spellings of one socket compare equal, or a problem.
func listenAddr(addr string) (norm, problem string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Sprintf("want host:port such as \":25\" or \"127.0.0.1:2525\", got %q", addr)
	}
	n, problem := portNumber(port)
	if problem != "" {
		return "", problem
	}
	if host != "" {
		if a, err := netip.ParseAddr(host); err == nil {
			host = a.String()
		} else if !validDomain(host) {
			return "", fmt.Sprintf("%q is not an IP address or host name", host)
		}
	}
	return net.JoinHostPort(strings.ToLower(host), strconv.Itoa(n)), ""
}

// upstreamAddr checks a route's host:port upstream and returns a problem.
func upstreamAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("want local or host:port such as \"mail.corp.internal:25\", got %q", addr)
	}
	if host == "" {
		return fmt.Sprintf("want local or host:port such as \"mail.corp.internal:25\", got %q (no host)", addr)
	}
	if _, problem := portNumber(port); problem != "" {
		return problem
	}
	if _, err := netip.ParseAddr(host); err != nil && !validDomain(host) {
		return fmt.Sprintf("%q is not an IP address or host name", host)
	}
	return ""
}

func portNumber(port string) (int, string) {
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Sprintf("port must be a number from 1 to 65535, got %q", port)
	}
	return n, ""
}

// dnsServer returns a dns.servers entry as IP:port, adding port 53 to a
// bare address, and whether the entry is valid. The server must be an IP
// address: resolving the resolver's own name would need a resolver.
func dnsServer(s string) (string, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return net.JoinHostPort(a.String(), "53"), true
	}
	if inner, ok := strings.CutPrefix(s, "["); ok {
		if inner, ok := strings.CutSuffix(inner, "]"); ok {
			if a, err := netip.ParseAddr(inner); err == nil && a.Is6() {
				return net.JoinHostPort(a.String(), "53"), true
			}
		}
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "", false
	}
	n, problem := portNumber(port)
	if problem != "" {
		return "", false
	}
	return net.JoinHostPort(a.String(), strconv.Itoa(n)), true
}

// validDomain reports whether d (ASCII, no trailing dot) is a plausible DNS
// name: at most 253 characters, labels of 1 to 63 letters, digits and
// hyphens that neither start nor end with a hyphen, a last label that is
// not all digits (so an IP address is not a domain), and A-labels that
// decode.
func validDomain(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	labels := strings.Split(d, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
		if len(l) > len("xn--") && strings.EqualFold(l[:len("xn--")], "xn--") {
			if _, ok := toUnicode(l); !ok {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}

// validator collects the problems Validate finds, placing each at the node
// the path names.
type validator struct {
	file string
	root *yaml.Node // the document; nil for a Config built in code
	errs yamlx.Errors
}

// errorf reports a problem with the value at path, as "path: message".
func (v *validator) errorf(path, format string, args ...any) {
	_, val := v.nodes(path)
	v.add(val, false, path+": "+fmt.Sprintf(format, args...))
}

// warnf is errorf for a warning.
func (v *validator) warnf(path, format string, args ...any) {
	_, val := v.nodes(path)
	v.add(val, true, path+": "+fmt.Sprintf(format, args...))
}

// keyErrorf reports a problem at the key of path; the message is as given.
func (v *validator) keyErrorf(path, format string, args ...any) {
	key, _ := v.nodes(path)
	v.add(key, false, fmt.Sprintf(format, args...))
}

// nodes returns where to report a problem with path: the key and value
// nodes of path, or, when the file does not hold path (the value is a
// built-in default), the key of the nearest enclosing entry for both.
// Either may be nil; add then reports at 1:1.
func (v *validator) nodes(path string) (key, val *yaml.Node) {
	key, val, ok := find(v.root, path)
	if !ok && key != nil {
		val = key
	}
	if key == nil {
		key = val
	}
	return key, val
}

func (v *validator) add(n *yaml.Node, warning bool, msg string) {
	line, col := 1, 1
	if n != nil && n.Line > 0 {
		line, col = n.Line, n.Column
	}
	v.errs = append(v.errs, &yamlx.Error{File: v.file, Line: line, Col: col, Msg: msg, Warning: warning})
}

// positive reports a duration at path that is not more than zero.
func (v *validator) positive(path string, d yamlx.Duration) {
	if d <= 0 {
		v.errorf(path, "must be more than 0, got %s", d)
	}
}

// find walks the document root along path, such as "smtp.listeners[1].mode"
// or "routes.example.com.upstream", and returns the key and value nodes at
// its end (key is nil for a list element). Keys may hold dots (route
// domains do), so the path is not split on dots: at each mapping the keys
// that the rest of the path starts with, followed by ".", "[" or the end,
// are tried longest first. Aliases and merge keys (<<) are followed.
//
// When the document lacks the path, ok is false and key and val are the
// nodes of the deepest step found along the longest keys (nil if none was).
func find(root *yaml.Node, path string) (key, val *yaml.Node, ok bool) {
	if root == nil || path == "" {
		return nil, nil, false
	}
	n := root
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil, nil, false
		}
		n = n.Content[0]
	}
	return walk(n, path, true)
}

// walk follows the non-empty rest of a path from n; top says n is the
// document's root, where the path has no leading dot.
func walk(n *yaml.Node, rest string, top bool) (key, val *yaml.Node, ok bool) {
	n = deref(n)
	switch {
	case n.Kind == yaml.SequenceNode && rest[0] == '[':
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return nil, nil, false
		}
		i, err := strconv.Atoi(rest[1:end])
		if err != nil || i < 0 || i >= len(n.Content) {
			return nil, nil, false
		}
		elem, after := n.Content[i], rest[end+1:]
		if after == "" {
			return nil, elem, true
		}
		if k, v, ok := walk(elem, after, false); ok || k != nil || v != nil {
			return k, v, ok
		}
		return nil, elem, false
	case n.Kind == yaml.MappingNode:
		if !top {
			var dot bool
			if rest, dot = strings.CutPrefix(rest, "."); !dot || rest == "" {
				return nil, nil, false
			}
		}
		var pk, pv *yaml.Node // the partial result of the longest key
		for i, c := range matchingKeys(n, rest, 0) {
			after := rest[len(c.key.Value):]
			if after == "" {
				return c.key, c.val, true
			}
			k, v, ok := walk(c.val, after, false)
			if ok {
				return k, v, true
			}
			if i == 0 {
				pk, pv = k, v
				if pk == nil && pv == nil {
					pk, pv = c.key, c.val
				}
			}
		}
		return pk, pv, false
	}
	return nil, nil, false
}

type pair struct{ key, val *yaml.Node }

// matchingKeys returns the entries of mapping m whose key path starts
// with, followed by ".", "[" or the end, longest key first; for equal
// keys, m's own entry comes before one from a merged mapping.
func matchingKeys(m *yaml.Node, path string, depth int) []pair {
	if depth > 16 { // merges that include themselves
		return nil
	}
	var out []pair
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := deref(m.Content[i])
		if k.Kind != yaml.ScalarNode || k.Value == "" || k.Tag == "!!merge" {
			continue
		}
		if !strings.HasPrefix(path, k.Value) {
			continue
		}
		if len(path) > len(k.Value) && path[len(k.Value)] != '.' && path[len(k.Value)] != '[' {
			continue
		}
		out = append(out, pair{k, m.Content[i+1]})
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := deref(m.Content[i])
		if k.Kind != yaml.ScalarNode || k.Tag != "!!merge" {
			continue
		}
		merged := deref(m.Content[i+1])
		maps := []*yaml.Node{merged}
		if merged.Kind == yaml.SequenceNode {
			maps = merged.Content
		}
		for _, mm := range maps {
			if mm = deref(mm); mm.Kind == yaml.MappingNode {
				out = append(out, matchingKeys(mm, path, depth+1)...)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b pair) int { return len(b.key.Value) - len(a.key.Value) })
	return out
}

// expand returns path for every element of the list that "[]" in path
// stands for ("smtp.listeners[].proxy_protocol" gives
// "smtp.listeners[0].proxy_protocol", ...), or path itself without "[]".
func expand(root *yaml.Node, path string) []string {
	before, after, ok := strings.Cut(path, "[]")
	if !ok {
		return []string{path}
	}
	_, list, found := find(root, before)
	if !found {
		return nil
	}
	list = deref(list)
	if list.Kind != yaml.SequenceNode {
		return nil
	}
	paths := make([]string, len(list.Content))
	for i := range list.Content {
		paths[i] = fmt.Sprintf("%s[%d]%s", before, i, after)
	}
	return paths
}

func deref(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}
