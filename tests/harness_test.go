package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"moat/internal/syncbuf"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"moat/internal/dnstest"
	"moat/internal/smtptest"
)

// Time bounds of the harness. They are generous because moat may be built
// with -race; a healthy run finishes each step in milliseconds.
const (
	startTimeout = 30 * time.Second // until the SMTP port greets
	stopTimeout  = 30 * time.Second // SIGTERM until exit
	waitTimeout  = 20 * time.Second // an event, a transaction, a reply
)

// Hostname is the hostname of every generated config.
const Hostname = "mx.test"

// Route is one entry of the config's routes map.
type Route struct {
	Upstream         string // "host:port" or "local"
	VerifyRecipients bool
}

// Config is what a test chooses about moat's config file; StartMoat fills
// in the rest (ports, data_dir, log to stdout as JSON, a local DNS server).
type Config struct {
	TrustedNetworks []string // default [192.0.2.0/24]: loopback clients are the internet
	MaxMessageSize  int64    // bytes; 0 leaves moat's default
	MaxRecipients   int      // 0 leaves moat's default
	BareNewline     string   // "" leaves moat's default (reject)
	// Timeouts are merged over defaultTimeouts (keys as in smtp.timeouts).
	Timeouts        map[string]string
	ShutdownTimeout string           // default 10s
	Routes          map[string]Route // domain -> route
	// Extra is merged into the generated document last, maps merged key by
	// key ("smtp": {"limits": {...}}); it may add keys the fields above lack.
	Extra map[string]any
	// DNS, when set, is the zone server moat asks (else a server that
	// answers NXDOMAIN to everything).
	DNS *dnstest.Server
	// Policy, when set, is written to policy.yaml and named in `policies`.
	Policy string
	// Mailboxes adds POP3 and IMAP listeners over the built-in store, each
	// in clear (STLS/STARTTLS) and with implicit TLS, and a submission
	// listener (SMTP AUTH). Failure delays are cut to 10ms unless Extra
	// sets auth.failure_delays.
	Mailboxes bool
}

var defaultTimeouts = map[string]string{
	"command":          "60s",
	"data":             "60s",
	"upstream_connect": "5s",
	"upstream_command": "10s",
	"upstream_data":    "20s",
}

// ports are the loopback addresses one moat instance listens on.
type ports struct {
	smtp, admin, dns                     string
	submission, pop3, pop3s, imap, imaps string // with Config.Mailboxes
}

// document renders c as the YAML config file of one instance.
func (c Config) document(dir string, p ports) ([]byte, error) {
	trusted := c.TrustedNetworks
	if trusted == nil {
		trusted = []string{"192.0.2.0/24"}
	}
	timeouts := maps.Clone(defaultTimeouts)
	maps.Copy(timeouts, c.Timeouts)
	smtp := map[string]any{
		"listeners":        []map[string]any{{"addr": p.smtp, "mode": "mx"}},
		"trusted_networks": trusted,
		"timeouts":         timeouts,
		// Every test client is 127.0.0.1 and not trusted: the per-IP
		// limits (SPEC defaults 20 and 120/1m) would throttle the suite.
		// Tests of the limits set them through Extra.
		"limits": map[string]any{"connections_per_ip": 0, "connection_rate_per_ip": "0"},
	}
	if c.MaxMessageSize > 0 {
		smtp["max_message_size"] = c.MaxMessageSize
	}
	if c.MaxRecipients > 0 {
		smtp["max_recipients"] = c.MaxRecipients
	}
	if c.BareNewline != "" {
		smtp["bare_newline"] = c.BareNewline
	}
	routes := map[string]any{}
	for domain, r := range c.Routes {
		route := map[string]any{"upstream": r.Upstream}
		if r.VerifyRecipients {
			route["verify_recipients"] = true
		}
		routes[domain] = route
	}
	shutdown := c.ShutdownTimeout
	if shutdown == "" {
		shutdown = "10s"
	}
	doc := map[string]any{
		"hostname":         Hostname,
		"data_dir":         filepath.Join(dir, "data"),
		"shutdown_timeout": shutdown,
		"smtp":             smtp,
		"routes":           routes,
		"dns":              map[string]any{"servers": []string{p.dns}, "timeout": "2s"},
		"admin":            map[string]any{"addr": p.admin},
		"log":              map[string]any{"format": "json", "output": "stdout"},
	}
	if c.Policy != "" {
		path := filepath.Join(dir, "policy.yaml")
		if err := os.WriteFile(path, []byte(c.Policy), 0o644); err != nil {
			return nil, err
		}
		doc["policies"] = []string{path}
	}
	if c.Mailboxes {
		smtp["listeners"] = []map[string]any{{"addr": p.smtp, "mode": "mx"}, {"addr": p.submission, "mode": "submission"}}
		doc["pop3"] = map[string]any{"upstream": "local", "listeners": []map[string]any{
			{"addr": p.pop3}, {"addr": p.pop3s, "implicit_tls": true}}}
		doc["imap"] = map[string]any{"upstream": "local", "listeners": []map[string]any{
			{"addr": p.imap}, {"addr": p.imaps, "implicit_tls": true}}}
		doc["auth"] = map[string]any{"failure_delays": []string{"10ms"}}
	}
	merge(doc, c.Extra)
	return yaml.Marshal(doc)
}

// merge copies src into dst, merging nested maps key by key.
func merge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

// Moat is one running `moat serve` child process.
type Moat struct {
	t         testing.TB
	Addr      string // the SMTP (mx) listener, "127.0.0.1:port"
	AdminAddr string
	// With Config.Mailboxes: the submission, POP3 and IMAP listeners
	// (POP3S and IMAPS with implicit TLS).
	SubmissionAddr, POP3Addr, POP3SAddr, IMAPAddr, IMAPSAddr string
	DNSAddr                                                  string // the fake DNS server moat's config points at
	Dir                                                      string // the test's directory: config file, data_dir
	DataDir                                                  string
	ConfigPath                                               string
	Config                                                   Config

	proc      *process
	mu        sync.Mutex
	forbidden []string
}

// StartMoat writes cfg into a new config file in t.TempDir() and runs
// `moat serve --config FILE` until the test ends, when it is stopped with
// SIGTERM and must exit 0. It returns once the SMTP port greets with 220.
func StartMoat(t testing.TB, cfg Config) *Moat {
	t.Helper()
	bin := requireMoat(t)
	dir := t.TempDir()
	m := &Moat{
		t:          t,
		Dir:        dir,
		DataDir:    filepath.Join(dir, "data"),
		ConfigPath: filepath.Join(dir, "moat.yaml"),
		Config:     cfg,
	}
	if cfg.DNS != nil {
		m.DNSAddr = cfg.DNS.Addr
	} else {
		m.DNSAddr = startFakeDNS(t)
	}
	const attempts = 3
	for i := 1; ; i++ {
		p := ports{smtp: freeAddr(t), admin: freeAddr(t), dns: m.DNSAddr}
		if cfg.Mailboxes {
			p.submission, p.pop3, p.pop3s, p.imap, p.imaps = freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
		}
		m.Addr, m.AdminAddr = p.smtp, p.admin
		m.SubmissionAddr, m.POP3Addr, m.POP3SAddr, m.IMAPAddr, m.IMAPSAddr = p.submission, p.pop3, p.pop3s, p.imap, p.imaps
		doc, err := cfg.document(dir, p)
		if err != nil {
			t.Fatalf("config: %v", err)
		}
		if err := os.WriteFile(m.ConfigPath, doc, 0o644); err != nil {
			t.Fatal(err)
		}
		proc, err := startProcess(t, bin, []string{"serve", "--config", m.ConfigPath}, dir, m.Addr)
		if err == nil {
			m.proc = proc
			break
		}
		if i == attempts || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("starting moat with config %s:\n%s\n%v", m.ConfigPath, doc, err)
		}
		t.Logf("port taken, retrying: %v", err)
	}
	t.Cleanup(m.cleanup)
	return m
}

// StartMoatDefault runs `moat serve` with no config in dir (the embedded
// default) and waits until readyAddr greets.
func StartMoatDefault(t testing.TB, dir, readyAddr string) *Moat {
	t.Helper()
	bin := requireMoat(t)
	proc, err := startProcess(t, bin, []string{"serve"}, dir, readyAddr)
	if err != nil {
		t.Fatalf("starting moat with the embedded default: %v", err)
	}
	m := &Moat{t: t, Addr: readyAddr, Dir: dir, DataDir: filepath.Join(dir, "moat-data"), proc: proc}
	t.Cleanup(m.cleanup)
	return m
}

func (m *Moat) cleanup() {
	t := m.t
	m.Stop()
	m.mu.Lock()
	forbidden := append([]string(nil), m.forbidden...)
	m.mu.Unlock()
	out, errOut := m.proc.stdout.Text(), m.proc.stderr.String()
	for _, s := range forbidden {
		if strings.Contains(out, s) || strings.Contains(errOut, s) {
			t.Errorf("moat's log contains %q, which must never be logged", s)
		}
	}
	if t.Failed() {
		t.Logf("moat config %s:\n%s", m.ConfigPath, readFileOr(m.ConfigPath))
		t.Logf("moat stdout (last 60 lines):\n%s", lastLines(out, 60))
		t.Logf("moat stderr (last 60 lines):\n%s", lastLines(errOut, 60))
	}
}

// Stop sends SIGTERM and waits: moat must exit 0 within stopTimeout.
// Calling it again does nothing.
func (m *Moat) Stop() {
	m.t.Helper()
	if m.proc.hasExited() {
		m.checkExit()
		return
	}
	m.Signal(syscall.SIGTERM)
	if !m.proc.wait(stopTimeout) {
		m.proc.cmd.Process.Kill()
		m.proc.wait(5 * time.Second)
		m.t.Errorf("moat (pid %d) did not exit within %v of SIGTERM; killed", m.proc.cmd.Process.Pid, stopTimeout)
		return
	}
	m.checkExit()
}

func (m *Moat) checkExit() {
	m.t.Helper()
	m.proc.mu.Lock()
	defer m.proc.mu.Unlock()
	if m.proc.reported {
		return
	}
	m.proc.reported = true
	if code := m.proc.exitCode; code != 0 {
		m.t.Errorf("moat exited with %d (%v), want 0", code, m.proc.exitErr)
	}
}

// Signal sends sig to moat by PID.
func (m *Moat) Signal(sig syscall.Signal) {
	m.t.Helper()
	if err := m.proc.cmd.Process.Signal(sig); err != nil && !m.proc.hasExited() {
		m.t.Fatalf("signal %v to moat: %v", sig, err)
	}
}

// WaitExit waits for moat to exit by itself and returns its exit code;
// it fails the test after timeout.
func (m *Moat) WaitExit(timeout time.Duration) int {
	m.t.Helper()
	if !m.proc.wait(timeout) {
		m.t.Fatalf("moat did not exit within %v", timeout)
	}
	m.proc.mu.Lock()
	defer m.proc.mu.Unlock()
	m.proc.reported = true
	return m.proc.exitCode
}

// Exited reports whether the process has ended.
func (m *Moat) Exited() bool { return m.proc.hasExited() }

// RewriteConfig writes cfg to the same file with the same ports (send
// SIGHUP to make moat read it).
func (m *Moat) RewriteConfig(cfg Config) {
	m.t.Helper()
	doc, err := cfg.document(m.Dir, ports{smtp: m.Addr, admin: m.AdminAddr, dns: m.DNSAddr})
	if err != nil {
		m.t.Fatal(err)
	}
	m.WriteConfigText(string(doc))
}

// WriteConfigText replaces the config file's content.
func (m *Moat) WriteConfigText(text string) {
	m.t.Helper()
	if err := os.WriteFile(m.ConfigPath, []byte(text), 0o644); err != nil {
		m.t.Fatal(err)
	}
}

// ForbidInLog registers a string (a body marker) that must appear in no
// line moat writes; checked at cleanup.
func (m *Moat) ForbidInLog(s string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forbidden = append(m.forbidden, s)
}

// Log returns the stdout event log.
func (m *Moat) Log() *EventLog { return m.proc.stdout }

// Stderr returns what moat wrote to stderr so far.
func (m *Moat) Stderr() string { return m.proc.stderr.String() }

// Events returns every event so far.
func (m *Moat) Events() []Event { return m.proc.stdout.Events() }

// TransactionEvents returns the smtp.transaction events so far.
func (m *Moat) TransactionEvents() []Event {
	return filterEvents(m.Events(), func(e Event) bool { return e.Action() == "smtp.transaction" })
}

// WaitEvent waits for the first event that matches and returns it; after
// waitTimeout it fails the test, naming what it waited for.
func (m *Moat) WaitEvent(what string, match func(Event) bool) Event {
	m.t.Helper()
	var found Event
	ok := m.proc.stdout.await(waitTimeout, func(evs []Event) bool {
		for _, e := range evs {
			if match(e) {
				found = e
				return true
			}
		}
		return false
	})
	if !ok {
		m.t.Fatalf("no event %s within %v; events:\n%s", what, waitTimeout, eventsText(m.Events()))
	}
	return found
}

// WaitTransactionEvents waits until at least n smtp.transaction events
// were written and returns them all.
func (m *Moat) WaitTransactionEvents(n int) []Event {
	m.t.Helper()
	var txs []Event
	ok := m.proc.stdout.await(waitTimeout, func(evs []Event) bool {
		txs = filterEvents(evs, func(e Event) bool { return e.Action() == "smtp.transaction" })
		return len(txs) >= n
	})
	if !ok {
		m.t.Fatalf("want %d smtp.transaction events within %v, have %d; events:\n%s", n, waitTimeout, len(txs), eventsText(m.Events()))
	}
	return txs
}

// WaitTransactionEvent waits for the nth (1-based) smtp.transaction event.
func (m *Moat) WaitTransactionEvent(n int) Event {
	m.t.Helper()
	return m.WaitTransactionEvents(n)[n-1]
}

// process is a child process whose stdout is parsed as JSON lines.
type process struct {
	cmd      *exec.Cmd
	stdout   *EventLog
	stderr   *syncbuf.Buffer
	exited   chan struct{}
	mu       sync.Mutex
	exitCode int
	exitErr  error
	reported bool
}

func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (p *process) wait(timeout time.Duration) bool {
	select {
	case <-p.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

// startProcess runs bin with args in dir and waits until readyAddr answers
// with a 220 greeting. On failure the process is gone.
func startProcess(t testing.TB, bin string, args []string, dir, readyAddr string) (*process, error) {
	t.Helper()
	p := &process{stdout: newEventLog(), stderr: &syncbuf.Buffer{}, exited: make(chan struct{})}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	cmd.SysProcAttr = childAttr()
	cmd.WaitDelay = 5 * time.Second
	p.cmd = cmd
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.exitCode = cmd.ProcessState.ExitCode()
		p.mu.Unlock()
		close(p.exited)
	}()
	deadline := time.Now().Add(startTimeout)
	for {
		greeting, err := probeGreeting(readyAddr)
		if err == nil {
			if !strings.HasPrefix(greeting, "220") {
				p.kill()
				return nil, fmt.Errorf("%s greets with %q, want 220", readyAddr, greeting)
			}
			return p, nil
		}
		if p.hasExited() {
			return nil, fmt.Errorf("moat %v exited before %s greeted (exit %d): stderr:\n%s\nstdout:\n%s",
				args, readyAddr, p.exitCode, p.stderr.String(), p.stdout.Text())
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("%s did not greet within %v (last: %v); stderr:\n%s", readyAddr, startTimeout, err, p.stderr.String())
		}
		select {
		case <-p.exited:
		case <-time.After(25 * time.Millisecond): // polling a port: nothing to wait on
		}
	}
}

func (p *process) kill() {
	p.cmd.Process.Kill()
	p.wait(5 * time.Second)
	p.mu.Lock()
	p.reported = true
	p.mu.Unlock()
}

// probeGreeting connects, reads the first reply line and says QUIT.
func probeGreeting(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	c.Write([]byte("QUIT\r\n"))
	return strings.TrimRight(line, "\r\n"), nil
}

// freeAddr returns a loopback TCP address that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	port, err := smtptest.FreePort() // never the same port twice
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t testing.TB) string { return freeAddr(t) }

// Event is one JSON object moat wrote on one stdout line. Keys are flat
// and dotted ("event.action").
type Event map[string]any

// Str returns a string field, or "".
func (e Event) Str(k string) string { s, _ := e[k].(string); return s }

// Num returns a numeric field and whether it is a number.
func (e Event) Num(k string) (float64, bool) { f, ok := e[k].(float64); return f, ok }

// Strings returns a field that is a list of strings.
func (e Event) Strings(k string) []string {
	l, _ := e[k].([]any)
	out := make([]string, 0, len(l))
	for _, v := range l {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// Action is event.action.
func (e Event) Action() string { return e.Str("event.action") }

// Outcome is event.outcome.
func (e Event) Outcome() string { return e.Str("event.outcome") }

func (e Event) String() string {
	b, _ := json.Marshal(map[string]any(e))
	return string(b)
}

func filterEvents(evs []Event, keep func(Event) bool) []Event {
	var out []Event
	for _, e := range evs {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

func eventsText(evs []Event) string {
	var b strings.Builder
	for _, e := range evs {
		b.WriteString(e.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// EventLog is an io.Writer for a child's stdout that splits it into lines
// and parses each as a JSON object.
type EventLog struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	events  []Event
	bad     []string // lines that are not one JSON object
	changed chan struct{}
}

func newEventLog() *EventLog { return &EventLog{changed: make(chan struct{})} }

func (l *EventLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		l.lines = append(l.lines, line)
		var e Event
		d := json.NewDecoder(strings.NewReader(line))
		if err := d.Decode(&e); err != nil || e == nil || d.More() {
			l.bad = append(l.bad, line)
			continue
		}
		l.events = append(l.events, e)
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

// Events returns the parsed events so far.
func (l *EventLog) Events() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.events...)
}

// Lines returns every complete stdout line so far.
func (l *EventLog) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// BadLines returns the lines that were not a single JSON object.
func (l *EventLog) BadLines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.bad...)
}

// Text returns all of stdout so far.
func (l *EventLog) Text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n") + "\n" + string(l.partial)
}

// await calls cond with the events at every new line until it returns
// true (then await returns true) or timeout passes.
func (l *EventLog) await(timeout time.Duration, cond func([]Event) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		ch := l.changed
		evs := append([]Event(nil), l.events...)
		l.mu.Unlock()
		if cond(evs) {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return cond(l.Events())
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func readFileOr(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// Addresses the tests use. sender.example.net is an outside sender;
// example.com is routed to the test's upstream, local.test to the
// built-in store, verify.test to the upstream with verify_recipients.
const (
	sender   = "alice@sender.example.net"
	rcptBob  = "bob@example.com"
	unrouted = "someone@unrouted.test"
)

// defaultRoutes is the routes map of most tests.
func defaultRoutes(upstream string) map[string]Route {
	return map[string]Route{
		"example.com": {Upstream: upstream},
		"local.test":  {Upstream: "local"},
		"verify.test": {Upstream: upstream, VerifyRecipients: true},
	}
}
