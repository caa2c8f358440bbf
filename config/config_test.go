package config

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"moat/internal/yamlx"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// messages returns errs as the lines `moat check` prints.
func messages(errs yamlx.Errors) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

func checkMessages(t *testing.T, errs yamlx.Errors, want []string) {
	t.Helper()
	got := messages(errs)
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}
}

func TestDefault(t *testing.T) {
	c := Default()
	if c.File != "" {
		t.Errorf("File = %q, want empty for the embedded default", c.File)
	}
	checkMessages(t, c.Validate(), nil)

	want := []Listener{
		{Addr: "127.0.0.1:2525", Mode: "mx"},
		{Addr: "127.0.0.1:2587", Mode: "submission"},
		{Addr: "127.0.0.1:2465", Mode: "submission", ImplicitTLS: true},
	}
	if !slices.Equal(c.SMTP.Listeners, want) {
		t.Errorf("listeners = %+v, want %+v", c.SMTP.Listeners, want)
	}
	if c.Hostname != "localhost" || c.DataDir != "./moat-data" || c.ShutdownTimeout.D() != 30*time.Second {
		t.Errorf("hostname %q, data_dir %q, shutdown_timeout %v", c.Hostname, c.DataDir, c.ShutdownTimeout)
	}
	if got := prefixes(c.SMTP.TrustedNetworks); got != "127.0.0.1/32 ::1/128" {
		t.Errorf("trusted_networks = %s", got)
	}
	for _, d := range []string{"localhost", "example.test"} {
		if r, ok := c.Route(d); !ok || !r.Local() {
			t.Errorf("Route(%q) = %+v, %v; want the built-in store", d, r, ok)
		}
	}
	if len(c.Routes) != 2 {
		t.Errorf("routes = %v, want localhost and example.test only", c.Routes)
	}
	if c.Policies == nil || len(c.Policies) != 0 {
		t.Errorf("policies = %#v, want an empty list", c.Policies)
	}
	if c.Log.Format != "json" || c.Log.Output != "stdout" {
		t.Errorf("log = %+v", c.Log)
	}
	// POP3 and IMAP on the loopback ports SPEC.md names, over the store.
	wantMailbox := func(name string, m Mailbox, plain, implicit string) {
		t.Helper()
		if m.Upstream != "local" || len(m.Listeners) != 2 ||
			m.Listeners[0] != (MailboxListener{Addr: plain}) || m.Listeners[1] != (MailboxListener{Addr: implicit, ImplicitTLS: true}) {
			t.Errorf("%s = %+v, want %s and %s (implicit TLS) over the store", name, m, plain, implicit)
		}
	}
	wantMailbox("pop3", c.POP3, "127.0.0.1:1110", "127.0.0.1:1995")
	wantMailbox("imap", c.IMAP, "127.0.0.1:1143", "127.0.0.1:1993")
	if c.Auth.AllowPlaintextAuth || len(c.Auth.FailureDelays) != 4 || c.Auth.Lockout.D() != 15*time.Minute {
		t.Errorf("auth = %+v", c.Auth)
	}
	if c.Admin.Addr != "127.0.0.1:9025" || c.Log.Syslog != nil {
		t.Errorf("admin %q, syslog %v: want the admin endpoint on 127.0.0.1:9025 and no syslog", c.Admin.Addr, c.Log.Syslog)
	}

	// The embedded text is the example users copy: it loads from a file too,
	// without a warning.
	dir := t.TempDir()
	path := filepath.Join(dir, "moat.yaml")
	if err := os.WriteFile(path, DefaultYAML(), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile, errs := Load(path)
	checkMessages(t, errs, nil)
	if fromFile != nil && fromFile.DataDir != filepath.Join(dir, "moat-data") {
		t.Errorf("data_dir from a copied default = %q, want it next to the file", fromFile.DataDir)
	}
}

func prefixes(ps []yamlx.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, " ")
}

// TestBuiltinDefaults checks the value of every key a file leaves out.
func TestBuiltinDefaults(t *testing.T) {
	c, errs := Parse("t.yaml", []byte("hostname: mx.example.test\n"))
	checkMessages(t, errs, nil)
	if c == nil {
		t.FailNow()
	}
	s := c.SMTP
	checks := []struct {
		key       string
		got, want any
	}{
		{"data_dir", c.DataDir, "/var/lib/moat"},
		{"shutdown_timeout", c.ShutdownTimeout.D(), 30 * time.Second},
		{"smtp.listeners", s.Listeners, []Listener{{Addr: ":25", Mode: "mx"}}},
		{"smtp.trusted_networks", prefixes(s.TrustedNetworks), "127.0.0.1/32 ::1/128"},
		{"smtp.trusted_proxies", len(s.TrustedProxies), 0},
		{"smtp.max_message_size", int64(s.MaxMessageSize), int64(25 << 20)},
		{"smtp.max_recipients", s.MaxRecipients, 100},
		{"smtp.max_header_size", int64(s.MaxHeaderSize), int64(1 << 20)},
		{"smtp.max_line_length", s.MaxLineLength, 4096},
		{"smtp.spool_memory", int64(s.SpoolMemory), int64(1 << 20)},
		{"smtp.bare_newline", s.BareNewline, "reject"},
		{"smtp.timeouts.command", s.Timeouts.Command.D(), 5 * time.Minute},
		{"smtp.timeouts.data", s.Timeouts.Data.D(), 10 * time.Minute},
		{"smtp.timeouts.upstream_connect", s.Timeouts.UpstreamConnect.D(), 30 * time.Second},
		{"smtp.timeouts.upstream_command", s.Timeouts.UpstreamCommand.D(), 5 * time.Minute},
		{"smtp.timeouts.upstream_data", s.Timeouts.UpstreamData.D(), 5 * time.Minute},
		{"smtp.upstream_pool.max_idle", s.UpstreamPool.MaxIdle, 32},
		{"smtp.upstream_pool.idle_timeout", s.UpstreamPool.IdleTimeout.D(), 60 * time.Second},
		{"smtp.upstream_pool.max_age", s.UpstreamPool.MaxAge.D(), 5 * time.Minute},
		{"smtp.limits", fmt.Sprintf("%+v", s.Limits), fmt.Sprintf("%+v", Limits{Connections: 5000, ConnectionsPerIP: 20, ConnectionRatePerIP: "120/1m", ErrorsPerSession: 10})},
		{"tls", c.TLS, TLS{}},
		{"dns.servers", len(c.DNS.Servers), 0},
		{"dns.timeout", c.DNS.Timeout.D(), 2 * time.Second},
		{"routes", len(c.Routes), 0},
		{"greylist.store", c.Greylist.Store, "bolt"},
		{"quarantine.lifetime", c.Quarantine.Lifetime.D(), 30 * 24 * time.Hour},
		{"log.format", c.Log.Format, "json"},
		{"log.output", c.Log.Output, "stdout"},
		{"log.level", c.Log.Level, "info"},
		{"log.syslog", c.Log.Syslog == nil, true},
	}
	for _, ch := range checks {
		if !equal(ch.got, ch.want) {
			t.Errorf("%s = %v, want %v", ch.key, ch.got, ch.want)
		}
	}
}

func equal(a, b any) bool {
	if la, ok := a.([]Listener); ok {
		return slices.Equal(la, b.([]Listener))
	}
	return a == b
}

func TestSystemHostname(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || !validDomain(host) {
		t.Skipf("this machine's host name %q is not a DNS name", host)
	}
	c, errs := Parse("t.yaml", []byte("data_dir: /tmp/x\n"))
	checkMessages(t, errs, nil)
	if c != nil && c.Hostname != strings.TrimSuffix(host, ".") {
		t.Errorf("hostname = %q, want the system's %q", c.Hostname, host)
	}
}

func TestEmptyFile(t *testing.T) {
	for _, src := range []string{"", "# nothing but a comment\n", "---\n"} {
		c := builtin()
		if !validDomain(c.Hostname) {
			t.Skipf("this machine's host name %q is not a DNS name", c.Hostname)
		}
		got, errs := Parse("t.yaml", []byte(src))
		checkMessages(t, errs, nil)
		if got == nil || len(got.SMTP.Listeners) != 1 || got.SMTP.Listeners[0].Addr != ":25" {
			t.Errorf("Parse(%q) = %+v, want the built-in defaults", src, got)
		}
	}
}

// TestFull loads an example holding every key SPEC.md shows, with only the
// warnings for what this build does not implement yet (golden file).
func TestFull(t *testing.T) {
	c, errs := Load("testdata/full.yaml")
	if errs.Err() != nil {
		t.Fatalf("Load: %v", errs)
	}
	got := strings.Join(messages(errs), "\n") + "\n"
	golden := "testdata/full.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("warnings differ from %s (go test -update rewrites it):\n got:\n%s\nwant:\n%s", golden, got, want)
	}

	if c.File != "testdata/full.yaml" || c.Hostname != "mx.example.test" {
		t.Errorf("File %q, hostname %q", c.File, c.Hostname)
	}
	if c.TLS.CertFile != "/etc/moat/cert.pem" || c.TLS.KeyFile != "/etc/moat/key.pem" {
		t.Errorf("tls = %+v", c.TLS)
	}
	if !slices.Equal(c.Policies, []string{"/etc/moat/policies/*.yaml"}) {
		t.Errorf("policies = %v", c.Policies)
	}
	if r, ok := c.Route("example.org"); !ok || r.Upstream != "domino.corp.internal:25" || !r.VerifyRecipients {
		t.Errorf("Route(example.org) = %+v, %v", r, ok)
	}
	if c.SMTP.Limits.ConnectionRatePerIP != "120/1m" || c.SMTP.Limits.ConnectionsPerIP != 20 {
		t.Errorf("limits = %+v", c.SMTP.Limits)
	}
	if c.Log.Syslog == nil || c.Log.Syslog.Addr != "siem.corp.internal:6514" || !c.Log.Syslog.TLS {
		t.Errorf("log.syslog = %+v", c.Log.Syslog)
	}
	if len(c.POP3.Listeners) != 2 || !c.POP3.Listeners[1].ImplicitTLS || c.POP3.UpstreamTLS != "implicit" {
		t.Errorf("pop3 = %+v", c.POP3)
	}
	if c.Quarantine.Lifetime.D() != 14*24*time.Hour {
		t.Errorf("quarantine.lifetime = %v", c.Quarantine.Lifetime)
	}
	if c.Admin.Addr != "127.0.0.1:9025" || c.Redis.Addr != "127.0.0.1:6379" {
		t.Errorf("admin %q redis %q", c.Admin.Addr, c.Redis.Addr)
	}
}

// TestProblems has one failing case per rule, with the exact messages
// `moat check` prints.
func TestProblems(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		// decoding (yamlx)
		{"unknown key", "hostname: mx.example.test\nsmtp:\n  max_recipient: 5\n", []string{
			`t.yaml:3:3: unknown key "max_recipient" in smtp (did you mean "max_recipients"?)`}},
		{"wrong type", "hostname: mx.example.test\nsmtp:\n  max_recipients: lots\n", []string{
			`t.yaml:3:19: smtp.max_recipients: want a whole number, got "lots"`}},
		{"bad duration", "hostname: mx.example.test\nsmtp:\n  timeouts: {command: soon}\n", []string{
			`t.yaml:3:23: smtp.timeouts.command: want a duration such as 30s, 5m, 36h or 2d, got "soon"`}},
		{"bad network", "hostname: mx.example.test\nsmtp:\n  trusted_networks: [10.0.0.0/8, 10.0.0.0/40]\n", []string{
			`t.yaml:3:34: smtp.trusted_networks[1]: want a network such as 192.0.2.0/24 or 2001:db8::/32, got "10.0.0.0/40"`}},
		{"syntax error", "hostname: mx.example.test\nsmtp: [\n", []string{
			`t.yaml:3:1: syntax error: did not find expected node content`}},
		{"several documents", "hostname: mx.example.test\n---\nhostname: other.example.test\n", []string{
			`t.yaml:2:1: a config file holds one YAML document; a second one starts here`}},

		// hostname, data_dir, shutdown_timeout
		{"hostname empty", "hostname: \"\"\n", []string{
			`t.yaml:1:11: hostname: must not be empty`}},
		{"hostname underscore", "hostname: mx_1.example.test\n", []string{
			`t.yaml:1:11: hostname: "mx_1.example.test" is not a valid DNS name`}},
		{"hostname IP address", "hostname: 192.0.2.1\n", []string{
			`t.yaml:1:11: hostname: "192.0.2.1" is not a valid DNS name`}},
		{"hostname leading hyphen", "hostname: -mx.example.test\n", []string{
			`t.yaml:1:11: hostname: "-mx.example.test" is not a valid DNS name`}},
		{"hostname empty label", "hostname: mx..example.test\n", []string{
			`t.yaml:1:11: hostname: "mx..example.test" is not a valid DNS name`}},
		{"hostname label too long", "hostname: " + strings.Repeat("a", 64) + ".test\n", []string{
			`t.yaml:1:11: hostname: "` + strings.Repeat("a", 64) + `.test" is not a valid DNS name`}},
		{"data_dir empty", "hostname: mx.example.test\ndata_dir:\n", []string{
			`t.yaml:2:10: data_dir: must not be empty`}},
		{"shutdown_timeout zero", "hostname: mx.example.test\nshutdown_timeout: 0s\n", []string{
			`t.yaml:2:19: shutdown_timeout: must be more than 0, got 0s`}},

		// listeners
		{"no listener", "hostname: mx.example.test\nsmtp:\n  listeners: []\n", []string{
			`t.yaml:3:14: smtp.listeners: at least one SMTP listener is needed`}},
		{"listener addr without port", "hostname: mx.example.test\nsmtp:\n  listeners: [{addr: \"25\"}]\n", []string{
			`t.yaml:3:22: smtp.listeners[0].addr: want host:port such as ":25" or "127.0.0.1:2525", got "25"`}},
		{"listener port zero", "hostname: mx.example.test\nsmtp:\n  listeners: [{addr: \":0\"}]\n", []string{
			`t.yaml:3:22: smtp.listeners[0].addr: port must be a number from 1 to 65535, got "0"`}},
		{"listener port too big", "hostname: mx.example.test\nsmtp:\n  listeners: [{addr: \":65536\"}]\n", []string{
			`t.yaml:3:22: smtp.listeners[0].addr: port must be a number from 1 to 65535, got "65536"`}},
		{"listener port name", "hostname: mx.example.test\nsmtp:\n  listeners: [{addr: \":smtp\"}]\n", []string{
			`t.yaml:3:22: smtp.listeners[0].addr: port must be a number from 1 to 65535, got "smtp"`}},
		{"listener bad host", "hostname: mx.example.test\nsmtp:\n  listeners: [{addr: \"no host:25\"}]\n", []string{
			`t.yaml:3:22: smtp.listeners[0].addr: "no host" is not an IP address or host name`}},
		{"listener mode", "hostname: mx.example.test\nsmtp:\n  listeners:\n    - {addr: \":25\", mode: relay}\n", []string{
			`t.yaml:4:27: smtp.listeners[0].mode: want mx or submission, got "relay"`}},
		{"listener addr twice", "hostname: mx.example.test\nsmtp:\n  listeners:\n    - {addr: \"127.0.0.1:25\"}\n    - {addr: \"127.0.0.1:025\", mode: submission}\n", []string{
			`t.yaml:5:14: smtp.listeners[1].addr: "127.0.0.1:025" is already used by smtp.listeners[0]`}},

		// pop3, imap and auth
		{"imap on an smtp port", "hostname: mx.example.test\nsmtp:\n  listeners: [{addr: \":25\"}]\nimap:\n  listeners: [{addr: \":025\"}]\n", []string{
			`t.yaml:5:22: imap.listeners[0].addr: ":025" is already used by smtp.listeners[0]`}},
		{"pop3 bad addr", "hostname: mx.example.test\npop3: {listeners: [{addr: \"110\"}]}\n", []string{
			`t.yaml:2:27: pop3.listeners[0].addr: want host:port such as ":25" or "127.0.0.1:2525", got "110"`}},
		{"pop3 proxy mode", "hostname: mx.example.test\npop3: {upstream: \"exchange.corp:995\", upstream_tls: none}\n", []string{
			`t.yaml:2:53: warning: pop3.upstream_tls: users' passwords cross to the upstream unencrypted`}},
		{"syslog values", "hostname: mx.example.test\nlog:\n  syslog: {network: udp, tls: true, addr: siem, facility: local9, queue_size: -1, cert_file: c.pem}\n", []string{
			`t.yaml:3:31: log.syslog.tls: TLS needs network tcp (RFC 5425), not udp`,
			`t.yaml:3:43: log.syslog.addr: want host:port such as "siem.corp.internal:6514", got "siem"`,
			`t.yaml:3:59: log.syslog.facility: want one of local0..local7, mail, daemon, auth, authpriv, user, syslog; got "local9"`,
			`t.yaml:3:79: log.syslog.queue_size: must be from 1 to 10000000, got -1`,
			`t.yaml:3:94: log.syslog.cert_file: cert_file and key_file must be set together; key_file is missing`}},
		{"admin addr", "hostname: mx.example.test\nadmin: {addr: 9025}\n", []string{
			`t.yaml:2:15: admin.addr: want host:port such as ":25" or "127.0.0.1:2525", got "9025"`}},
		{"imap ca_file missing", "hostname: mx.example.test\nimap: {upstream: \"exchange:993\", ca_file: /nonexistent/ca.pem}\n", []string{
			`t.yaml:2:43: imap.ca_file: cannot read: open /nonexistent/ca.pem: no such file or directory`}},
		{"imap upstreams with local", "hostname: mx.example.test\nimap:\n  upstream: local\n  upstreams: {example.org: \"domino:993\"}\n", []string{
			`t.yaml:4:3: imap.upstreams: per-domain upstreams need proxy mode (upstream host:port), not local`}},
		{"imap upstreams", "hostname: mx.example.test\nimap:\n  upstream: \"exchange:993\"\n  upstreams: {\"bad domain\": \"domino:993\", example.org: \"domino\"}\n", []string{
			`t.yaml:4:15: imap.upstreams: "bad domain" is not a valid domain name`,
			`t.yaml:4:56: imap.upstreams.example.org: want host:port such as "mail.corp.internal:993", got "domino"`}},
		{"imap upstream_tls", "hostname: mx.example.test\nimap: {upstream: local, upstream_tls: maybe}\n", []string{
			`t.yaml:2:39: imap.upstream_tls: want implicit, starttls or none, got "maybe"`}},
		{"auth values", "hostname: mx.example.test\nauth: {failure_delays: [2s, 2m], max_failures_per_ip: 0, max_failures_per_user: -1, lockout: 0s}\n", []string{
			`t.yaml:2:29: auth.failure_delays[1]: must be from 0s to 1m, got 2m0s`,
			`t.yaml:2:55: auth.max_failures_per_ip: must be 1 or more, got 0`,
			`t.yaml:2:81: auth.max_failures_per_user: must be 1 or more, got -1`,
			`t.yaml:2:94: auth.lockout: must be more than 0, got 0s`}},
		{"auth no delays", "hostname: mx.example.test\nauth: {failure_delays: []}\n", []string{
			`t.yaml:2:24: auth.failure_delays: needs at least one delay (0s for none)`}},

		// limits of the session
		{"max_message_size zero", "hostname: mx.example.test\nsmtp: {max_message_size: 0}\n", []string{
			`t.yaml:2:26: smtp.max_message_size: must be more than 0 and at most 2GiB, got 0`}},
		{"max_message_size too big", "hostname: mx.example.test\nsmtp: {max_message_size: 3GiB}\n", []string{
			`t.yaml:2:26: smtp.max_message_size: must be more than 0 and at most 2GiB, got 3GiB`}},
		{"max_recipients zero", "hostname: mx.example.test\nsmtp: {max_recipients: 0}\n", []string{
			`t.yaml:2:24: smtp.max_recipients: must be from 1 to 100000, got 0`}},
		{"max_recipients too many", "hostname: mx.example.test\nsmtp: {max_recipients: 100001}\n", []string{
			`t.yaml:2:24: smtp.max_recipients: must be from 1 to 100000, got 100001`}},
		{"max_header_size small", "hostname: mx.example.test\nsmtp: {max_header_size: 512}\n", []string{
			`t.yaml:2:25: smtp.max_header_size: must be at least 1KiB, got 512`}},
		{"max_line_length small", "hostname: mx.example.test\nsmtp: {max_line_length: 511}\n", []string{
			`t.yaml:2:25: smtp.max_line_length: must be from 512 to 65536, got 511`}},
		{"max_line_length big", "hostname: mx.example.test\nsmtp: {max_line_length: 65537}\n", []string{
			`t.yaml:2:25: smtp.max_line_length: must be from 512 to 65536, got 65537`}},
		{"bare_newline", "hostname: mx.example.test\nsmtp: {bare_newline: allow}\n", []string{
			`t.yaml:2:22: smtp.bare_newline: want reject or normalize, got "allow"`}},
		{"timeouts zero", "hostname: mx.example.test\nsmtp:\n  timeouts:\n    command: 0s\n    data: 0\n    upstream_connect: 0s\n    upstream_command: 0s\n    upstream_data: 0s\n", []string{
			`t.yaml:4:14: smtp.timeouts.command: must be more than 0, got 0s`,
			`t.yaml:5:11: smtp.timeouts.data: must be more than 0, got 0s`,
			`t.yaml:6:23: smtp.timeouts.upstream_connect: must be more than 0, got 0s`,
			`t.yaml:7:23: smtp.timeouts.upstream_command: must be more than 0, got 0s`,
			`t.yaml:8:20: smtp.timeouts.upstream_data: must be more than 0, got 0s`}},
		{"upstream_pool", "hostname: mx.example.test\nsmtp:\n  upstream_pool: {max_idle: -1, idle_timeout: 0s, max_age: 0s}\n", []string{
			`t.yaml:3:29: smtp.upstream_pool.max_idle: must be 0 or more (0 keeps no idle connection), got -1`,
			`t.yaml:3:47: smtp.upstream_pool.idle_timeout: must be more than 0, got 0s`,
			`t.yaml:3:60: smtp.upstream_pool.max_age: must be more than 0, got 0s`}},
		{"limits", "hostname: mx.example.test\nsmtp:\n  limits: {connections: -1, connection_rate_per_ip: 120}\n", []string{
			`t.yaml:3:25: smtp.limits.connections: must be 0 or more (0 turns the limit off), got -1`,
			`t.yaml:3:53: smtp.limits.connection_rate_per_ip: want COUNT/DURATION such as 120/1m, got "120"`}},
		{"limits per ip", "hostname: mx.example.test\nsmtp:\n  limits: {connections_per_ip: -2, connection_rate_per_ip: 10/0s}\n", []string{
			`t.yaml:3:32: smtp.limits.connections_per_ip: must be 0 or more (0 turns the limit off), got -2`,
			`t.yaml:3:60: smtp.limits.connection_rate_per_ip: want COUNT/DURATION such as 120/1m, got "10/0s"`}},
		{"mail rates", "hostname: mx.example.test\nsmtp:\n  limits: {messages_per_network: 10, recipients_per_network: x/1m, messages_per_sender: 5/0s}\n", []string{
			`t.yaml:3:34: smtp.limits.messages_per_network: want COUNT/DURATION such as 1000/1h, got "10"`,
			`t.yaml:3:62: smtp.limits.recipients_per_network: want COUNT/DURATION such as 5000/1h, got "x/1m"`,
			`t.yaml:3:89: smtp.limits.messages_per_sender: want COUNT/DURATION such as 500/1h, got "5/0s"`}},
		{"tarpit", "hostname: mx.example.test\nsmtp:\n  limits: {tarpit: {delay: 2m, dnsbl_score: -1, networks: [192.0.2.0/24]}}\n", []string{
			`t.yaml:3:28: smtp.limits.tarpit.delay: must be from 0s (off) to 1m, got 2m0s`,
			`t.yaml:3:45: smtp.limits.tarpit.dnsbl_score: must be 0 or more (0 turns it off), got -1`}},
		{"tarpit network", "hostname: mx.example.test\nsmtp:\n  limits: {tarpit: {delay: 1s, networks: [192.0.2.300/24]}}\n", []string{
			`t.yaml:3:43: smtp.limits.tarpit.networks[0]: want a network such as 192.0.2.0/24 or 2001:db8::/32, got "192.0.2.300/24"`}},
		{"pregreet_wait", "hostname: mx.example.test\nsmtp:\n  limits: {pregreet_wait: 2m}\n", []string{
			`t.yaml:3:27: smtp.limits.pregreet_wait: must be from 0s (off) to 1m, got 2m0s`}},
		{"pregreet_wait negative", "hostname: mx.example.test\nsmtp:\n  limits: {pregreet_wait: -1s}\n", []string{
			`t.yaml:3:27: smtp.limits.pregreet_wait: want a duration that is 0 or more, got "-1s"`}},
		{"proxy_protocol without trusted_proxies", "hostname: mx.example.test\nsmtp:\n  listeners:\n    - {addr: \":25\"}\n    - {addr: \":26\", proxy_protocol: true}\n", []string{
			`t.yaml:5:37: smtp.listeners[1].proxy_protocol: needs smtp.trusted_proxies: a PROXY header is taken only from them, so every connection would be refused`}},

		// routes
		{"route key not a domain", "hostname: mx.example.test\nroutes:\n  exa mple.com: {upstream: local}\n", []string{
			`t.yaml:3:3: routes: "exa mple.com" is not a valid domain name`}},
		{"route key wildcard", "hostname: mx.example.test\nroutes:\n  \"*.example.com\": {upstream: local}\n", []string{
			`t.yaml:3:3: routes: "*.example.com" is not a valid domain name`}},
		{"route key IP address", "hostname: mx.example.test\nroutes:\n  192.0.2.1: {upstream: local}\n", []string{
			`t.yaml:3:3: routes: "192.0.2.1" is not a valid domain name`}},
		{"route keys differ in case", "hostname: mx.example.test\nroutes:\n  example.com: {upstream: local}\n  Example.COM: {upstream: local}\n", []string{
			`t.yaml:4:3: routes: "Example.COM" is the same domain as "example.com"`}},
		{"route keys differ in trailing dot", "hostname: mx.example.test\nroutes:\n  example.com.: {upstream: local}\n  example.com: {upstream: local}\n", []string{
			`t.yaml:4:3: routes: "example.com" is the same domain as "example.com."`}},
		{"route keys U-label and A-label", "hostname: mx.example.test\nroutes:\n  xn--bcher-kva.example: {upstream: local}\n  Bücher.example: {upstream: local}\n", []string{
			`t.yaml:4:3: routes: "Bücher.example" is the same domain as "xn--bcher-kva.example"`}},
		{"route without upstream", "hostname: mx.example.test\nroutes:\n  example.com: {verify_recipients: false}\n  example.org:\n", []string{
			`t.yaml:3:3: routes.example.com.upstream: must be set: local or host:port`,
			`t.yaml:4:3: routes.example.org.upstream: must be set: local or host:port`}},
		{"route upstream not host:port", "hostname: mx.example.test\nroutes:\n  example.com: {upstream: exchange}\n", []string{
			`t.yaml:3:27: routes.example.com.upstream: want local or host:port such as "mail.corp.internal:25", got "exchange"`}},
		{"route upstream without host", "hostname: mx.example.test\nroutes:\n  example.com: {upstream: \":25\"}\n", []string{
			`t.yaml:3:27: routes.example.com.upstream: want local or host:port such as "mail.corp.internal:25", got ":25" (no host)`}},
		{"route upstream port", "hostname: mx.example.test\nroutes:\n  example.com: {upstream: \"mx.corp:0\"}\n", []string{
			`t.yaml:3:27: routes.example.com.upstream: port must be a number from 1 to 65535, got "0"`}},
		{"verify_recipients with local", "hostname: mx.example.test\nroutes:\n  example.com:\n    upstream: local\n    verify_recipients: true\n", []string{
			`t.yaml:5:5: routes.example.com: verify_recipients needs an upstream host:port`}},

		// tls, policies, dns, greylist, log
		{"tls cert without key", "hostname: mx.example.test\ntls:\n  cert_file: /etc/moat/cert.pem\n", []string{
			`t.yaml:3:3: tls: cert_file and key_file must be set together; key_file is missing`}},
		{"tls key without cert", "hostname: mx.example.test\ntls: {key_file: /etc/moat/key.pem}\n", []string{
			`t.yaml:2:7: tls: cert_file and key_file must be set together; cert_file is missing`}},
		{"policies bad glob", "hostname: mx.example.test\npolicies: [\"/etc/moat/[a.yaml\"]\n", []string{
			`t.yaml:2:12: policies[0]: bad pattern "/etc/moat/[a.yaml": syntax error in pattern`}},
		{"dns server name", "hostname: mx.example.test\ndns: {servers: [192.0.2.53, resolver.example, \"192.0.2.53:0\"]}\n", []string{
			`t.yaml:2:29: dns.servers[1]: want an IP address with an optional port, such as 192.0.2.53, 192.0.2.53:53 or [2001:db8::53]:53, got "resolver.example"`,
			`t.yaml:2:47: dns.servers[2]: want an IP address with an optional port, such as 192.0.2.53, 192.0.2.53:53 or [2001:db8::53]:53, got "192.0.2.53:0"`}},
		{"dns timeout", "hostname: mx.example.test\ndns:\n  timeout: 0s\n", []string{
			`t.yaml:3:12: dns.timeout: must be more than 0, got 0s`}},
		{"greylist store", "hostname: mx.example.test\ngreylist: {store: sqlite}\n", []string{
			`t.yaml:2:19: greylist.store: want bolt, memory or redis, got "sqlite"`}},
		{"quarantine lifetime zero", "hostname: mx.example.test\nquarantine: {lifetime: 0s}\n", []string{
			`t.yaml:2:24: quarantine.lifetime: must be more than 0, got 0s`}},
		{"greylist redis without addr", "hostname: mx.example.test\ngreylist: {store: redis}\n", []string{
			`t.yaml:2:19: greylist.store: redis needs redis.addr`}},
		{"log format", "hostname: mx.example.test\nlog: {format: logfmt}\n", []string{
			`t.yaml:2:15: log.format: want json or text, got "logfmt"`}},
		{"log level", "hostname: mx.example.test\nlog: {level: warn}\n", []string{
			`t.yaml:2:14: log.level: want info or debug, got "warn"`}},
		{"log output", "hostname: mx.example.test\nlog: {output: \"\"}\n", []string{
			`t.yaml:2:15: log.output: must not be empty: want stdout, stderr or a file path`}},

		// positions through anchors and merge keys
		{"value from an anchor", "hostname: mx.example.test\nx-base: &base {upstream: \"mx\"}\nroutes:\n  example.com: *base\n", []string{
			`t.yaml:2:1: unknown key "x-base" in document`,
			`t.yaml:2:26: routes.example.com.upstream: want local or host:port such as "mail.corp.internal:25", got "mx"`}},
		{"value from a merge", "hostname: mx.example.test\nsmtp:\n  listeners:\n    - &l {addr: \":25\", mode: bogus}\n    - {<<: *l, addr: \":26\"}\n", []string{
			// The merged anchor's value is wrong for both listeners.
			`t.yaml:4:30: smtp.listeners[0].mode: want mx or submission, got "bogus"`,
			`t.yaml:4:30: smtp.listeners[1].mode: want mx or submission, got "bogus"`}},
		{"route keys with dots found in the tree", "hostname: mx.example.test\nroutes:\n  example: {upstream: local}\n  example.com: {upstream: \"bad\"}\n  example.com.au: {upstream: local}\n", []string{
			`t.yaml:4:27: routes.example.com.upstream: want local or host:port such as "mail.corp.internal:25", got "bad"`}},

		// everything at once, sorted by position
		{"several problems", "hostname: mx.example.test\nsmtp:\n  max_recipients: 0\n  bare_newline: x\nlog: {format: y}\n", []string{
			`t.yaml:3:19: smtp.max_recipients: must be from 1 to 100000, got 0`,
			`t.yaml:4:17: smtp.bare_newline: want reject or normalize, got "x"`,
			`t.yaml:5:15: log.format: want json or text, got "y"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, errs := Parse("t.yaml", []byte(tt.src))
			checkMessages(t, errs, tt.want)
			if (c == nil) != (errs.Err() != nil) {
				t.Errorf("Parse returned config %v with errors %v; want a config exactly when there is no error", c != nil, errs.Err())
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"nothing unimplemented", "hostname: mx.example.test\nsmtp:\n  trusted_proxies: []\n  listeners: [{addr: \":25\", proxy_protocol: false}]\n", nil},
		{"trusted_proxies", "hostname: mx.example.test\nsmtp:\n  trusted_proxies: [192.0.2.0/24]\n", nil},
		{"proxy_protocol", "hostname: mx.example.test\nsmtp:\n  trusted_proxies: [192.0.2.10/32]\n  listeners:\n    - {addr: \":25\"}\n    - {addr: \":26\", proxy_protocol: true}\n", nil},
		{"limits", "hostname: mx.example.test\nsmtp:\n  limits: {connections: 10, connections_per_ip: 2, connection_rate_per_ip: 0, pregreet_wait: 6s}\n", nil},
		{"mail rates and tarpit", "hostname: mx.example.test\nsmtp:\n  limits: {messages_per_network: 1000/1h, recipients_per_network: 0, messages_per_sender: \"\", tarpit: {delay: 5s, networks: [192.0.2.0/24, \"2001:db8::/32\"]}}\n", nil},
		{"tarpit unimplemented and idle", "hostname: mx.example.test\nsmtp:\n  limits: {tarpit: {dnsbl_score: 5, networks: [192.0.2.0/24]}}\n", []string{
			`t.yaml:3:34: warning: smtp.limits.tarpit.dnsbl_score: not implemented yet: only smtp.limits.tarpit.networks are tarpitted`,
			`t.yaml:3:47: warning: smtp.limits.tarpit.networks: has no effect while smtp.limits.tarpit.delay is 0s`}},
		{"trusted_proxies everyone", "hostname: mx.example.test\nsmtp: {trusted_proxies: [\"::/0\"]}\n", []string{
			`t.yaml:2:26: warning: smtp.trusted_proxies[0]: ::/0 lets every client choose the address moat sees (PROXY header, XCLIENT)`}},
		{"services", "hostname: mx.example.test\npop3: {upstream: local}\nimap: {upstream: local}\nadmin: {addr: \"127.0.0.1:9025\"}\nredis: {addr: \"127.0.0.1:6379\"}\nlog: {syslog: {addr: \"siem:6514\"}}\n", nil},
		{"trusting everyone", "hostname: mx.example.test\nsmtp: {trusted_networks: [\"::/0\", 0.0.0.0/0]}\n", []string{
			`t.yaml:2:27: warning: smtp.trusted_networks[0]: ::/0 trusts every client: moat relays for anyone (an open relay)`,
			`t.yaml:2:35: warning: smtp.trusted_networks[1]: 0.0.0.0/0 trusts every client: moat relays for anyone (an open relay)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, errs := Parse("t.yaml", []byte(tt.src))
			checkMessages(t, errs, tt.want)
			if c == nil {
				t.Error("warnings alone made the config invalid")
			}
		})
	}
}

// TestValidateWithoutPositions covers a Config built or changed in code.
func TestValidateWithoutPositions(t *testing.T) {
	c := Default()
	c.node = nil
	c.SMTP.MaxRecipients = 0
	c.Routes["Bad Domain"] = &Route{Upstream: "local"}
	checkMessages(t, c.Validate(), []string{
		`<embedded default>:1:1: smtp.max_recipients: must be from 1 to 100000, got 0`,
		`<embedded default>:1:1: routes: "Bad Domain" is not a valid domain name`,
	})

	// The embedded default keeps its positions.
	d := Default()
	d.SMTP.MaxRecipients = 0
	checkMessages(t, d.Validate(), []string{
		`<embedded default>:25:19: smtp.max_recipients: must be from 1 to 100000, got 0`,
	})
}

func TestLoadErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.yaml")
	c, errs := Load(path)
	if c != nil {
		t.Error("Load of a missing file returned a config")
	}
	checkMessages(t, errs, []string{path + ":1:1: cannot read config: no such file or directory"})
}

func TestRelativePaths(t *testing.T) {
	dir := t.TempDir()
	src := `hostname: mx.example.test
data_dir: data
tls: {cert_file: certs/cert.pem, key_file: /etc/moat/key.pem}
policies: ["policies/*.yaml", "/etc/moat/policies/*.yaml", "../shared/*.yaml"]
log: {output: logs/moat.log}
`
	path := filepath.Join(dir, "moat.yaml")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	c, errs := Load(path)
	checkMessages(t, errs, nil)
	if c == nil {
		t.FailNow()
	}
	checks := []struct{ key, got, want string }{
		{"data_dir", c.DataDir, filepath.Join(dir, "data")},
		{"tls.cert_file", c.TLS.CertFile, filepath.Join(dir, "certs/cert.pem")},
		{"tls.key_file", c.TLS.KeyFile, "/etc/moat/key.pem"},
		{"policies[0]", c.Policies[0], filepath.Join(dir, "policies/*.yaml")},
		{"policies[1]", c.Policies[1], "/etc/moat/policies/*.yaml"},
		{"policies[2]", c.Policies[2], filepath.Join(filepath.Dir(dir), "shared/*.yaml")},
		{"log.output", c.Log.Output, filepath.Join(dir, "logs/moat.log")},
		{"File", c.File, path},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %q, want %q", ch.key, ch.got, ch.want)
		}
	}

	// A relative config path still yields absolute paths.
	t.Chdir(dir)
	c, errs = Load("moat.yaml")
	checkMessages(t, errs, nil)
	if c != nil && c.DataDir != filepath.Join(dir, "data") {
		t.Errorf("data_dir via a relative config path = %q, want %q", c.DataDir, filepath.Join(dir, "data"))
	}
	if c != nil && c.Log.Output != filepath.Join(dir, "logs/moat.log") {
		t.Errorf("log.output = %q", c.Log.Output)
	}
}

func TestNormalize(t *testing.T) {
	src := `hostname: mx.example.test.
smtp:
  listeners: [{addr: ":25"}]
dns: {servers: [192.0.2.53, "2001:db8::53", "[2001:db8::54]", "192.0.2.55:5353", "[2001:db8::56]:53"]}
routes:
  Example.COM.: {upstream: "mx.corp.internal:25"}
`
	c, errs := Parse("t.yaml", []byte(src))
	if errs.Err() != nil {
		t.Fatal(errs)
	}
	if c.Hostname != "mx.example.test" {
		t.Errorf("hostname = %q", c.Hostname)
	}
	if c.SMTP.Listeners[0].Mode != "mx" {
		t.Errorf("an empty mode is %q, want mx", c.SMTP.Listeners[0].Mode)
	}
	wantDNS := []string{"192.0.2.53:53", "[2001:db8::53]:53", "[2001:db8::54]:53", "192.0.2.55:5353", "[2001:db8::56]:53"}
	if !slices.Equal(c.DNS.Servers, wantDNS) {
		t.Errorf("dns.servers = %q, want %q", c.DNS.Servers, wantDNS)
	}
	if _, ok := c.Routes["example.com"]; !ok || len(c.Routes) != 1 {
		t.Errorf("routes = %v, want the key lower-cased without its dot", c.Routes)
	}
}

func TestRoute(t *testing.T) {
	src := `hostname: mx.example.test
routes:
  example.com: {upstream: "exchange.corp.internal:25"}
  Example.ORG: {upstream: local}
  xn--bcher-kva.example: {upstream: "books.corp.internal:25"}
  münchen.example: {upstream: "muc.corp.internal:25"}
`
	c, errs := Parse("t.yaml", []byte(src))
	if errs.Err() != nil {
		t.Fatal(errs)
	}
	tests := []struct {
		domain string
		want   string // upstream; "" for no route
	}{
		{"example.com", "exchange.corp.internal:25"},
		{"EXAMPLE.com", "exchange.corp.internal:25"},
		{"example.com.", "exchange.corp.internal:25"},
		{"example.org", "local"},
		{"bücher.example", "books.corp.internal:25"},
		{"BÜCHER.example", "books.corp.internal:25"},
		{"xn--bcher-kva.example", "books.corp.internal:25"},
		{"XN--BCHER-KVA.EXAMPLE.", "books.corp.internal:25"},
		{"münchen.example", "muc.corp.internal:25"},
		{"xn--mnchen-3ya.example", "muc.corp.internal:25"},
		{"sub.example.com", ""},
		{"example.net", ""},
		{"com", ""},
		{"", ""},
		{".", ""},
		{"xn--zz-.example", ""},
		{"\xff.example", ""},
	}
	for _, tt := range tests {
		r, ok := c.Route(tt.domain)
		got := ""
		if ok {
			got = r.Upstream
		}
		if got != tt.want {
			t.Errorf("Route(%q) = %q, want %q", tt.domain, got, tt.want)
		}
	}
}

func TestTrusted(t *testing.T) {
	c, errs := Parse("t.yaml", []byte("hostname: mx.example.test\nsmtp: {trusted_networks: [192.0.2.0/24, \"2001:db8::/32\", 198.51.100.7]}\n"))
	if errs.Err() != nil {
		t.Fatal(errs)
	}
	tests := []struct {
		ip   string
		want bool
	}{
		{"192.0.2.1", true},
		{"::ffff:192.0.2.1", true},
		{"198.51.100.7", true},
		{"198.51.100.8", false},
		{"2001:db8::1", true},
		{"2001:db8::1%eth0", true},
		{"2001:db9::1", false},
		{"127.0.0.1", false}, // the file's list replaces the default
		{"10.0.0.1", false},
	}
	for _, tt := range tests {
		if got := c.Trusted(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("Trusted(%s) = %v, want %v", tt.ip, got, tt.want)
		}
	}
	if c.Trusted(netip.Addr{}) {
		t.Error("Trusted(zero Addr) = true")
	}

	d := Default()
	for _, ip := range []string{"127.0.0.1", "::1", "::ffff:127.0.0.1"} {
		if !d.Trusted(netip.MustParseAddr(ip)) {
			t.Errorf("default: Trusted(%s) = false", ip)
		}
	}
	if d.Trusted(netip.MustParseAddr("127.0.0.2")) {
		t.Error("default trusts more than 127.0.0.1/32")
	}
}

func TestFind(t *testing.T) {
	src := `routes:
  example: {upstream: a}
  example.com: {upstream: b}
  example.com.au:
    upstream: c
smtp:
  listeners:
    - {addr: ":25"}
    - &l {addr: ":26", mode: mx}
  other: {<<: *l, addr: ":27"}
t:
  a.b: {x: 1}
  a: {b: {c: 2}}
`
	c, errs := Parse("t.yaml", []byte(src))
	_ = c
	if errs == nil {
		t.Fatal("want errors for smtp.other")
	}
	docs, _ := yamlx.Parse("t.yaml", []byte(src))
	root := docs[0]
	tests := []struct {
		path      string
		ok        bool
		line, col int // of the value, or of the deepest step found
	}{
		{"routes.example.upstream", true, 2, 23},
		{"routes.example.com.upstream", true, 3, 27},
		{"routes.example.com.au.upstream", true, 5, 15},
		{"routes.example.com", true, 3, 16},
		{"smtp.listeners[1].mode", true, 9, 30},
		{"smtp.listeners[1]", true, 9, 7}, // the anchor
		{"smtp.other.mode", true, 9, 30},  // through the merge key
		{"smtp.other.addr", true, 10, 25}, // its own key wins
		{"smtp.listeners[2].addr", false, 7, 3},
		{"routes.example.org.upstream", false, 2, 3}, // "example" is the longest key that fits
		{"routes.example.com.verify", false, 3, 3},
		{"nothing", false, 0, 0},
		{"smtp.listeners.addr", false, 7, 3},
		{"t.a.b.c", true, 13, 14}, // "a.b" has no c, so "a" is tried
		{"t.a.b.x", true, 12, 12},
	}
	for _, tt := range tests {
		key, val, ok := find(root, tt.path)
		n := val
		if !ok {
			n = key
		}
		line, col := 0, 0
		if n != nil {
			line, col = n.Line, n.Column
		}
		if ok != tt.ok || line != tt.line || col != tt.col {
			t.Errorf("find(%q) = %d:%d, %v; want %d:%d, %v", tt.path, line, col, ok, tt.line, tt.col, tt.ok)
		}
	}
	if _, _, ok := find(nil, "hostname"); ok {
		t.Error("find(nil) found something")
	}
}

func TestIDN(t *testing.T) {
	if a, ok := toASCII("Bücher.Example."); !ok || a != "xn--bcher-kva.example." {
		t.Errorf("toASCII = %q, %v", a, ok)
	}
	if u, ok := toUnicode("XN--BCHER-KVA.example"); !ok || u != "bücher.example" {
		t.Errorf("toUnicode = %q, %v", u, ok)
	}
	if _, ok := toUnicode("xn--zz.example"); ok {
		t.Error("toUnicode accepted a broken A-label")
	}
}

func TestMailboxUpstreams(t *testing.T) {
	c, errs := Parse("t.yaml", []byte("hostname: mx.example.test\nimap:\n  upstream: \"exchange.corp:993\"\n  upstreams: {Example.ORG: \"domino.corp:143\", bücher.example: \"b.corp:993\"}\npop3: {upstream: \"exchange.corp:1110\", upstream_tls: implicit}\n"))
	if errs.Err() != nil {
		t.Fatal(errs)
	}
	for _, tc := range []struct{ user, upstream, tls string }{
		{"a@example.com", "exchange.corp:993", "implicit"},
		{"b@example.org", "domino.corp:143", "starttls"},
		{"c@EXAMPLE.org.", "domino.corp:143", "starttls"},
		{"d@xn--bcher-kva.example", "b.corp:993", "implicit"},
		{"no-domain", "exchange.corp:993", "implicit"},
	} {
		u := c.IMAP.UpstreamFor(tc.user)
		if u != tc.upstream || c.IMAP.TLSFor(u) != tc.tls {
			t.Errorf("%s: upstream %s (%s), want %s (%s)", tc.user, u, c.IMAP.TLSFor(u), tc.upstream, tc.tls)
		}
	}
	if !c.IMAP.Proxy() || c.POP3.TLSFor(c.POP3.UpstreamFor("x@y.z")) != "implicit" {
		t.Errorf("pop3 = %+v", c.POP3)
	}
}
