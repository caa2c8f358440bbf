// Package rsyslogtest runs throwaway rsyslogd processes for tests: a SIEM
// collector stand-in that takes RFC 5424 messages over TCP (octet-counted
// or LF-framed), optionally TLS (RFC 5425), on a free 127.0.0.1 port, and
// writes each message's MSG as one line to OutputFile. Each runs in the
// foreground from a generated rsyslog.conf in the test's temporary
// directory, with its own work directory and PID file, and is stopped by
// PID when the test ends. The machine's rsyslog service and /etc/rsyslog*
// are never used.
//
// A missing rsyslogd skips the test on a developer machine and fails it
// under CI=true (see smtptest.RequireTool): scripts/test installs the
// Debian packages rsyslog and rsyslog-gnutls (the TLS driver).
//
// Traps met with rsyslog 8.2302 (Debian bookworm), which the generated
// configuration handles:
//   - maxMessageSize defaults to 8k and longer messages are cut: it is
//     64k here, set in global() before imtcp is loaded.
//   - %msg% of an RFC 5424 message has no leading space (RFC 3164 ones
//     keep one), but keeps a UTF-8 BOM when the sender put one there.
//   - rsyslogd's own messages go to the default ruleset; the input is
//     bound to its own ruleset so that only received messages reach
//     OutputFile.
//   - Control characters in a message arrive escaped (#011 for a tab):
//     escapeControlCharactersOnReceive is on by default; JSON lines have
//     none.
package rsyslogtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
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

	"moat/internal/smtptest"
	"moat/internal/syncbuf"
)

const (
	// Host is the address the input binds and the name (an IP SAN) in
	// the TLS certificate.
	Host = "127.0.0.1"
	// startTimeout bounds how long rsyslogd may take to accept
	// connections (and, with TLS, to complete a handshake).
	startTimeout = 10 * time.Second
	// stopTimeout is how long rsyslogd gets after SIGTERM before
	// SIGKILL.
	stopTimeout = 5 * time.Second
)

// Options configure an rsyslogd.
type Options struct {
	// TLS makes the input take TLS only (gtls driver, anonymous client
	// authentication: no client certificate needed), with a server
	// certificate for 127.0.0.1 from a throwaway CA (CAPEM).
	TLS bool
}

// Server is one rsyslogd started by Start. Its methods that take a
// testing.TB call its Fatalf on failure; call them from the test's
// goroutine.
type Server struct {
	// Addr is the input's "127.0.0.1:port"; it stays the same across
	// Stop and Restart.
	Addr string
	// CAPEM is the CA certificate that signed the server's certificate,
	// the one root a client needs to verify it; nil without TLS.
	CAPEM []byte
	// OutputFile gets each received message's MSG, one per line.
	OutputFile string
	// Dir holds rsyslog.conf, the work directory, the PID file, the TLS
	// files and OutputFile.
	Dir string

	t   testing.TB
	bin string
	out syncbuf.Buffer // rsyslogd's stdout and stderr, every run

	mu   sync.Mutex
	proc *process // nil while stopped
}

// process is one run of rsyslogd.
type process struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed once Wait returned
	waitErr error         // read after exited is closed
}

// Start starts an rsyslogd for t and returns once its input accepts
// connections. It is stopped at t's cleanup, and its output is logged when
// t failed. It returns nil only when t's Skipf/Fatalf return, which the
// real testing.T never does.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := smtptest.RequireTool(t, "rsyslogd")
	if bin == "" {
		return nil
	}
	dir := t.TempDir()
	s := &Server{t: t, bin: bin, Dir: dir, OutputFile: filepath.Join(dir, "messages.log")}
	if err := os.Mkdir(filepath.Join(dir, "work"), 0o700); err != nil {
		t.Fatalf("rsyslogtest: %v", err)
		return nil
	}
	if strings.ContainsAny(dir, "\"\\\n") {
		t.Fatalf("rsyslogtest: directory %q has characters rsyslog.conf would need escaped", dir)
		return nil
	}
	if o.TLS {
		ca, err := writeCerts(dir)
		if err != nil {
			t.Fatalf("rsyslogtest: TLS certificates: %v", err)
			return nil
		}
		s.CAPEM = ca
	}
	const attempts = 3
	for i := 1; ; i++ {
		port, err := smtptest.FreePort()
		if err != nil {
			t.Fatalf("rsyslogtest: free port: %v", err)
			return nil
		}
		s.Addr = net.JoinHostPort(Host, strconv.Itoa(port))
		if err := os.WriteFile(s.confFile(), []byte(s.config(port, o)), 0o600); err != nil {
			t.Fatalf("rsyslogtest: %v", err)
			return nil
		}
		p, err := s.spawn()
		if err == nil {
			s.proc = p
			break
		}
		if i == attempts || !errors.Is(err, errPortTaken) {
			t.Fatalf("rsyslogtest: %v", err)
			return nil
		}
	}
	t.Cleanup(func() {
		s.mu.Lock()
		p := s.proc
		s.proc = nil
		s.mu.Unlock()
		if p != nil {
			p.stop()
		}
		if t.Failed() {
			t.Logf("rsyslogd %s output:\n%s", s.Addr, s.Log())
		}
	})
	return s
}

func (s *Server) confFile() string { return filepath.Join(s.Dir, "rsyslog.conf") }

// ClientTLS returns a TLS client configuration that trusts only the
// server's CA; nil without Options.TLS.
func (s *Server) ClientTLS() *tls.Config {
	if s.CAPEM == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CAPEM)
	return &tls.Config{RootCAs: pool, ServerName: Host}
}

// Log returns what rsyslogd wrote to stdout and stderr (its own errors and
// notices), for failure messages.
func (s *Server) Log() string { return s.out.String() }

// PID returns the process ID of the running rsyslogd, or 0 when stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Lines returns the messages received so far, one per complete line of
// OutputFile.
func (s *Server) Lines(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile(s.OutputFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil // nothing received yet: omfile creates it on first write
	}
	if err != nil {
		t.Fatalf("rsyslogtest: %v", err)
		return nil
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	} else {
		return nil
	}
	return strings.Split(string(b), "\n")
}

// WaitLines polls OutputFile until it holds at least n messages and
// returns them all; it fails t when timeout passes first.
func (s *Server) WaitLines(t testing.TB, n int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		lines := s.Lines(t)
		if len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("rsyslogtest: %d messages after %v, want %d", len(lines), timeout, n)
			return lines
		}
		<-tick.C
	}
}

// Stop stops rsyslogd by PID (SIGTERM, SIGKILL after 5s) and waits until
// it has exited: its port then refuses connections. What it had received
// stays in OutputFile. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

// Restart stops rsyslogd if it runs and starts it again on the same
// address (imtcp listens with SO_REUSEADDR, so connections of the old one
// in TIME_WAIT do not hold the port), appending to the same OutputFile.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	p, err := s.spawn()
	if err != nil {
		s.t.Fatalf("rsyslogtest: restart: %v", err)
		return
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
}

var errPortTaken = errors.New("port taken")

// spawn starts rsyslogd in the foreground and waits until its input
// accepts a connection (with TLS: completes a handshake).
func (s *Server) spawn() (*process, error) {
	mark := s.out.Len()
	pidFile := filepath.Join(s.Dir, "rsyslogd.pid")
	os.Remove(pidFile) // rsyslogd refuses to start over a live-looking one
	cmd := exec.Command(s.bin, "-n", "-f", s.confFile(), "-i", pidFile)
	cmd.Stdout, cmd.Stderr = &s.out, &s.out
	cmd.SysProcAttr = childAttr()
	cmd.WaitDelay = stopTimeout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()

	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		lastErr := s.accepts()
		if lastErr == nil {
			return p, nil
		}
		select {
		case <-p.exited:
			msg := s.out.Since(mark)
			if strings.Contains(msg, "in use") {
				return nil, fmt.Errorf("%w: rsyslogd on %s: %s", errPortTaken, s.Addr, msg)
			}
			return nil, fmt.Errorf("rsyslogd -n -f %s exited early (%v): %s", s.confFile(), p.waitErr, msg)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("rsyslogd did not accept on %s within %v (last: %v): %s", s.Addr, startTimeout, lastErr, s.out.Since(mark))
		}
	}
}

// accepts connects to the input and, with TLS, completes a handshake; it
// sends nothing, so nothing reaches OutputFile.
func (s *Server) accepts() error {
	const timeout = time.Second
	c, err := net.DialTimeout("tcp", s.Addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	if s.CAPEM == nil {
		return nil
	}
	c.SetDeadline(time.Now().Add(timeout))
	tc := tls.Client(c, s.ClientTLS())
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS: %w", err)
	}
	return tc.Close()
}

// stop ends the process (its group: rsyslogd has no children here, but a
// module could start some) by PID and waits for it.
func (p *process) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// config returns rsyslog.conf for the input on port.
func (s *Server) config(port int, o Options) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# Generated by moat/internal/rsyslogtest for one test.")
	// maxMessageSize must come before any input module is loaded.
	global := fmt.Sprintf("workDirectory=%q maxMessageSize=\"64k\"", filepath.Join(s.Dir, "work"))
	if o.TLS {
		global += fmt.Sprintf(" defaultNetstreamDriverCAFile=%q defaultNetstreamDriverCertFile=%q defaultNetstreamDriverKeyFile=%q",
			filepath.Join(s.Dir, "ca.pem"), filepath.Join(s.Dir, "server.pem"), filepath.Join(s.Dir, "server.key"))
	}
	w("global(%s)", global)
	if o.TLS {
		w(`module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")`)
	} else {
		w(`module(load="imtcp")`)
	}
	// MSG alone: for RFC 5424 input %%msg%% has no leading space.
	w(`template(name="moatMsg" type="string" string="%%msg%%\n")`)
	w(`ruleset(name="moat") {`)
	w(`  action(type="omfile" file=%q template="moatMsg")`, s.OutputFile)
	w(`}`)
	w(`input(type="imtcp" address=%q port="%d" ruleset="moat" supportOctetCountedFraming="on")`, Host, port)
	return b.String()
}

// writeCerts makes a CA and a server certificate for Host signed by it,
// writes ca.pem, server.pem and server.key into dir, and returns the CA's
// PEM. ECDSA P-256, valid for a day around now.
func writeCerts(dir string) ([]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "rsyslogtest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: Host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP(Host)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files := []struct {
		name string
		data []byte
	}{
		{"ca.pem", caPEM},
		{"server.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})},
		{"server.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return nil, err
		}
	}
	return caPEM, nil
}
