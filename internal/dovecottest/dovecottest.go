// Package dovecottest runs throwaway Dovecot IMAP/POP3 servers for tests:
// each from a generated dovecot.conf in the test's temporary directory,
// listening on free 127.0.0.1 ports, with its users in a passwd-file and
// their mail in Maildirs under that directory, and stopped by PID when the
// test ends. The machine's Dovecot service and /etc/dovecot are never used.
//
// A missing dovecot skips the test on a developer machine and fails it
// under CI=true (see smtptest.RequireTool): scripts/test installs the
// Debian packages dovecot-imapd and dovecot-pop3d.
//
// As root (CI) the instance runs like a packaged one: login processes as
// dovenull, auth as dovecot (both made by dovecot-core's install), and the
// mail as nobody, because Dovecot refuses mail access as UID 0; the test's
// temporary directory is made traversable for them. As a normal user every
// process runs as that user (Dovecot's unprivileged mode): no system user is
// needed, only the dovecot binaries.
package dovecottest

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"moat/internal/smtptest"
	"moat/internal/syncbuf"
	"moat/internal/tlsutil"
)

const (
	// startTimeout bounds how long Dovecot may take to greet on every
	// port (it starts in well under a second; -race and a loaded CI
	// machine slow the test, not Dovecot, but be generous).
	startTimeout = 20 * time.Second
	// waitDelay bounds how long the instance gets to exit after SIGTERM,
	// and how long Wait waits for the output pipes after the master
	// exited.
	waitDelay = 5 * time.Second
	// Host is the address every listener binds and the name in the
	// TLS certificate (an IP SAN).
	Host = "127.0.0.1"
)

// Options configure a Dovecot instance.
type Options struct {
	// Users maps a login ("user@domain") to its password. A password
	// that starts with a Dovecot scheme ("{SHA512-CRYPT}$6$...",
	// "{PLAIN}x") is used as is; any other is plain text. Dovecot
	// lower-cases logins (auth_username_format %Lu), so the keys are
	// lower-cased too. Neither may contain ':' or a line break.
	Users map[string]string
	// TLS also serves imaps and pop3s (IMAPSAddr, POP3SAddr), and
	// STARTTLS and STLS on the plain ports, with a self-signed
	// certificate for 127.0.0.1 (CertPEM).
	TLS bool
	// TrustedNetworks is login_trusted_networks: clients from there may
	// pass the original client's address (IMAP ID x-originating-ip,
	// XCLIENT), as a proxy does. Empty means 127.0.0.0/8.
	TrustedNetworks []string
}

// Server is a running Dovecot instance.
type Server struct {
	// The "127.0.0.1:port" of each listener; IMAPSAddr and POP3SAddr are
	// empty without Options.TLS.
	IMAPAddr, IMAPSAddr, POP3Addr, POP3SAddr string
	// CertPEM is the server's self-signed certificate, the one root a
	// client needs to verify it (see ClientTLS); nil without Options.TLS.
	CertPEM []byte
	// Dir holds dovecot.conf, passwd, dovecot.log, the runtime
	// directories and the mail (Dir/mail/<domain>/<user>, one Maildir
	// each).
	Dir string

	bin      string
	users    map[string]bool
	uid, gid int
	out      syncbuf.Buffer // the master's stdout and stderr
	cmd      *exec.Cmd
	exited   chan struct{} // closed once Wait returned
	waitErr  error         // read after exited is closed
}

// Start starts a Dovecot instance for t and returns once every listener
// greets. It is stopped at t's cleanup, and its log is added to the test
// output when t failed. It returns nil only when t's Skipf/Fatalf return,
// which the real testing.T never does.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := smtptest.RequireTool(t, "dovecot")
	if bin == "" {
		return nil
	}
	// Not t.TempDir: Dovecot's UNIX sockets live under Dir, and a long
	// test name would overflow sun_path's 108 bytes.
	dir, err := os.MkdirTemp("", "dovecottest-")
	if err != nil {
		t.Fatalf("dovecottest: %v", err)
		return nil
	}
	t.Cleanup(func() { os.RemoveAll(dir) }) // after the stop below (LIFO)
	s := &Server{Dir: dir, bin: bin, users: map[string]bool{}}
	if err := s.prepare(o); err != nil {
		t.Fatalf("dovecottest: %v", err)
		return nil
	}
	const attempts = 3
	for i := 1; ; i++ {
		err := s.start(o)
		if err == nil {
			break
		}
		if i == attempts || !errors.Is(err, errPortTaken) {
			t.Fatalf("dovecottest: %v\n%s", err, s.logFile())
			return nil
		}
	}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("dovecot %s log:\n%s", s.IMAPAddr, s.Log())
		}
	})
	return s
}

// ClientTLS returns a TLS client configuration that trusts only the
// server's certificate; nil without Options.TLS.
func (s *Server) ClientTLS() *tls.Config {
	if s.CertPEM == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CertPEM)
	return &tls.Config{RootCAs: pool, ServerName: Host}
}

// Log returns Dovecot's log (dovecot.log) and anything the master wrote
// to stdout or stderr (fatal start-up errors), for failure messages.
func (s *Server) Log() string { return s.logFile() + s.out.String() }

func (s *Server) logFile() string {
	b, err := os.ReadFile(filepath.Join(s.Dir, "dovecot.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err.Error() + "\n"
	}
	return string(b)
}

// PID returns the process ID of the Dovecot master.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// deliverSeq makes Maildir names unique within this process.
var deliverSeq atomic.Int64

// Deliver puts msg into user's INBOX as a new message, the way a local
// delivery agent does: it writes the Maildir's tmp/ then renames the file
// into new/, where Dovecot finds it at its next sync (the next IMAP
// command that syncs, or the next POP3 login). msg is stored as given;
// Dovecot serves LF line ends as CRLF and CRLF as is.
func (s *Server) Deliver(t testing.TB, user string, msg []byte) {
	t.Helper()
	user = strings.ToLower(user)
	if !s.users[user] {
		t.Fatalf("dovecottest: Deliver to %q: no such user in Options.Users", user)
		return
	}
	if err := s.deliver(user, msg); err != nil {
		t.Fatalf("dovecottest: Deliver to %s: %v", user, err)
	}
}

func (s *Server) deliver(user string, msg []byte) error {
	box := s.maildir(user)
	for _, d := range []string{filepath.Dir(box), box, filepath.Join(box, "tmp"), filepath.Join(box, "new"), filepath.Join(box, "cur")} {
		if err := s.mkdir(d); err != nil {
			return err
		}
	}
	// The usual Maildir name: time, a unique part, host; ",S=" is the
	// file size, which Dovecot then need not stat.
	now := time.Now()
	host, _ := os.Hostname()
	host = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(host)
	name := fmt.Sprintf("%d.M%dP%dQ%d.%s,S=%d", now.Unix(), now.Nanosecond()/1000, os.Getpid(),
		deliverSeq.Add(1), host, len(msg))
	tmp := filepath.Join(box, "tmp", name)
	if err := os.WriteFile(tmp, msg, 0o600); err != nil {
		return err
	}
	if err := s.chown(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(box, "new", name))
}

// maildir is where Dovecot keeps user's mail: mail_location
// maildir:Dir/mail/%d/%n.
func (s *Server) maildir(user string) string {
	local, domain, _ := strings.Cut(user, "@")
	return filepath.Join(s.Dir, "mail", domain, local)
}

// mkdir makes dir, owned by the mail user, unless it exists.
func (s *Server) mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return err
	}
	return s.chown(dir)
}

// chown gives path to the mail user when running as root (the files are
// the current user's already otherwise).
func (s *Server) chown(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return os.Chown(path, s.uid, s.gid)
}

// prepare writes everything but dovecot.conf: passwd, the certificate, the
// mail directory; as root it makes Dir reachable for Dovecot's users.
func (s *Server) prepare(o Options) error {
	if strings.ContainsAny(s.Dir, " \t\r\n\"'\\#") {
		return fmt.Errorf("directory %q has characters dovecot.conf would need quoted", s.Dir)
	}
	s.uid, s.gid = os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		// Dovecot refuses mail access as UID 0 ("invalid UID"), so the
		// mail belongs to nobody, and the unprivileged processes (auth
		// reads passwd, the mail processes run as nobody) must be able
		// to enter Dir (MkdirTemp made it 0700).
		u, err := user.Lookup("nobody")
		if err != nil {
			return fmt.Errorf("as root the mail user is nobody: %w", err)
		}
		s.uid, _ = strconv.Atoi(u.Uid)
		s.gid, _ = strconv.Atoi(u.Gid)
		if err := os.Chmod(s.Dir, 0o711); err != nil {
			return err
		}
	}
	if err := s.mkdir(filepath.Join(s.Dir, "mail")); err != nil {
		return err
	}

	names := make([]string, 0, len(o.Users))
	for name := range o.Users {
		names = append(names, name)
	}
	sort.Strings(names)
	var pw strings.Builder
	for _, name := range names {
		pass := o.Users[name]
		if strings.ContainsAny(name+pass, ":\r\n") {
			return fmt.Errorf("user %q: a login or password with ':' or a line break cannot go into a passwd-file", name)
		}
		name = strings.ToLower(name)
		s.users[name] = true
		if !hasScheme(pass) {
			pass = "{PLAIN}" + pass
		}
		// user:password:uid:gid:(gecos):home; home is the Maildir.
		fmt.Fprintf(&pw, "%s:%s:%d:%d::%s\n", name, pass, s.uid, s.gid, s.maildir(name))
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "passwd"), []byte(pw.String()), 0o644); err != nil {
		return err
	}

	if o.TLS {
		tlsDir := filepath.Join(s.Dir, "tls")
		if _, _, err := tlsutil.SelfSigned(tlsDir, Host); err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(tlsDir, "selfsigned.crt"))
		if err != nil {
			return err
		}
		s.CertPEM = b
	}
	return nil
}

// hasScheme tells whether a password starts with a Dovecot password
// scheme such as {PLAIN} or {SHA512-CRYPT}.
func hasScheme(pass string) bool {
	scheme, _, ok := strings.Cut(pass, "}")
	if !ok || !strings.HasPrefix(scheme, "{") || len(scheme) < 2 {
		return false
	}
	for _, r := range scheme[1:] {
		if !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

var errPortTaken = errors.New("port taken")

// start picks free ports, writes dovecot.conf, starts the master in the
// foreground and waits until every listener greets.
func (s *Server) start(o Options) error {
	addrs := []*string{&s.IMAPAddr, &s.POP3Addr}
	if o.TLS {
		addrs = append(addrs, &s.IMAPSAddr, &s.POP3SAddr)
	}
	for _, a := range addrs {
		port, err := smtptest.FreePort()
		if err != nil {
			return fmt.Errorf("free port: %w", err)
		}
		*a = net.JoinHostPort(Host, strconv.Itoa(port))
	}
	conf := filepath.Join(s.Dir, "dovecot.conf")
	text, err := s.config(o)
	if err != nil {
		return err
	}
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return err
	}

	mark := s.out.Len()
	cmd := exec.Command(s.bin, "-F", "-c", conf)
	cmd.Stdout, cmd.Stderr = &s.out, &s.out
	cmd.SysProcAttr = childAttr()
	cmd.WaitDelay = waitDelay
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()

	checks := []struct {
		addr, greeting string
		tls            bool
	}{
		{s.IMAPAddr, "* OK ", false},
		{s.POP3Addr, "+OK", false},
		{s.IMAPSAddr, "* OK ", true},
		{s.POP3SAddr, "+OK", true},
	}
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for _, c := range checks {
		if c.addr == "" {
			continue
		}
		for {
			lastErr := s.greets(c.addr, c.greeting, c.tls)
			if lastErr == nil {
				break
			}
			select {
			case <-s.exited:
				msg := s.out.Since(mark)
				if strings.Contains(msg, "in use") {
					return fmt.Errorf("%w: dovecot: %s", errPortTaken, msg)
				}
				return fmt.Errorf("dovecot -F -c %s exited early (%v): %s", conf, s.waitErr, msg)
			case <-tick.C:
			}
			if time.Now().After(deadline) {
				s.stop()
				return fmt.Errorf("dovecot did not greet on %s within %v (last: %v)", c.addr, startTimeout, lastErr)
			}
		}
	}
	return nil
}

// greets connects to addr (over TLS when tlsOn) and wants a greeting line
// starting with want.
func (s *Server) greets(addr, want string, tlsOn bool) error {
	const timeout = 2 * time.Second
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if tlsOn {
		tc := tls.Client(c, s.ClientTLS())
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		c = tc
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, want) {
		return fmt.Errorf("greeting %q, want %q", strings.TrimSpace(line), want)
	}
	return nil
}

// stop ends the instance and waits for its master to exit. SIGTERM goes
// to the process group that Start made for the master (its PID), which all
// of its children are in: a master signalled alone stops its children and
// then polls them once a second, so a stop takes a second; with the
// children already exiting it usually takes a few milliseconds. The master
// still reaps its children, so no zombies are left to an init that may not
// reap them (a container's). A hung instance gets SIGKILL.
func (s *Server) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(waitDelay):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
	}
}

// config returns dovecot.conf for o.
func (s *Server) config(o Options) (string, error) {
	internalUser, internalGroup, loginUser := "dovecot", "dovecot", "dovenull"
	if os.Geteuid() != 0 {
		// Unprivileged mode: Dovecot cannot switch users or give its
		// sockets to another group, so every process and socket is the
		// current user's.
		u, err := user.Current()
		if err != nil {
			return "", fmt.Errorf("current user: %w", err)
		}
		g, err := user.LookupGroupId(strconv.Itoa(os.Getegid()))
		if err != nil {
			return "", fmt.Errorf("current group: %w", err)
		}
		internalUser, internalGroup, loginUser = u.Username, g.Name, u.Username
	} else {
		for _, n := range []string{internalUser, loginUser} {
			if _, err := user.Lookup(n); err != nil {
				return "", fmt.Errorf("as root Dovecot needs the user %s (made by the dovecot-core package): %w", n, err)
			}
		}
	}
	trusted := o.TrustedNetworks
	if len(trusted) == 0 {
		trusted = []string{"127.0.0.0/8"}
	}
	port := func(addr string) string {
		if addr == "" {
			return "0" // no listener
		}
		_, p, _ := net.SplitHostPort(addr)
		return p
	}
	q := quote
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# Generated by moat/internal/dovecottest for one test.")
	w("instance_name = %s", q(filepath.Base(s.Dir)))
	w("base_dir = %s", q(filepath.Join(s.Dir, "run")))
	w("state_dir = %s", q(filepath.Join(s.Dir, "state")))
	w("log_path = %s", q(filepath.Join(s.Dir, "dovecot.log")))
	w("protocols = imap pop3")
	w("listen = %s", Host)
	w("default_internal_user = %s", q(internalUser))
	w("default_internal_group = %s", q(internalGroup))
	w("default_login_user = %s", q(loginUser))
	w("first_valid_uid = %d", s.uid)
	w("first_valid_gid = %d", s.gid)
	w("mail_location = %s", q("maildir:"+filepath.Join(s.Dir, "mail")+"/%d/%n"))
	w("pop3_uidl_format = %%08Xu%%08Xv")
	w("disable_plaintext_auth = no")
	w("auth_mechanisms = plain login")
	w("auth_verbose = yes")
	// Tests try wrong passwords on purpose: no 2 s wait after each.
	w("auth_failure_delay = 0")
	w("login_trusted_networks = %s", strings.Join(trusted, " "))
	// Scripts and proxies open many connections per user and address.
	w("mail_max_userip_connections = 1000")
	// Log what a proxy sends with IMAP ID (x-originating-ip, ...).
	w("imap_id_log = *")
	if o.TLS {
		w("ssl = yes")
		// "<path" cannot be quoted; prepare made sure Dir needs no quotes.
		w("ssl_cert = <%s", filepath.Join(s.Dir, "tls", "selfsigned.crt"))
		w("ssl_key = <%s", filepath.Join(s.Dir, "tls", "selfsigned.key"))
	} else {
		w("ssl = no")
	}
	w("passdb {\n  driver = passwd-file\n  args = %s\n}", q(filepath.Join(s.Dir, "passwd")))
	w("userdb {\n  driver = passwd-file\n  args = %s\n}", q(filepath.Join(s.Dir, "passwd")))
	// No chroot (here and for anvil below): an unprivileged master
	// cannot chroot, and a test gains nothing from it.
	w("service imap-login {\n  chroot =\n  inet_listener imap {\n    port = %s\n  }\n  inet_listener imaps {\n    port = %s\n    ssl = yes\n  }\n}",
		port(s.IMAPAddr), port(s.IMAPSAddr))
	w("service pop3-login {\n  chroot =\n  inet_listener pop3 {\n    port = %s\n  }\n  inet_listener pop3s {\n    port = %s\n    ssl = yes\n  }\n}",
		port(s.POP3Addr), port(s.POP3SAddr))
	// No auth penalty: a failed login from an address delays that
	// address's next logins by up to 15 s, and every test client (and a
	// proxy) comes from 127.0.0.1. Mode 0 disables the anvil listener.
	w("service anvil {\n  chroot =\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}")
	// No other listeners: submission, lmtp and doveadm are not wanted.
	return b.String(), nil
}

// quote makes v one dovecot.conf value: double-quoted, with '"' and '\'
// escaped.
func quote(v string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
}
