package dovecottest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"moat/internal/smtptest"
)

const (
	alice    = "alice@example.org"
	alicePW  = "alice-secret"
	bob      = "Bob@Example.ORG" // Dovecot lower-cases logins
	bobPW    = "bob-secret"
	carol    = "carol@example.net"
	carolPW  = "carol-secret"
	testMail = "From: bob@example.org\r\nTo: alice@example.org\r\nSubject: hello\r\n" +
		"Message-ID: <1@example.org>\r\n\r\nHello, Alice.\r\n"
)

// users has a plain password, a mixed-case login and a password given with
// a Dovecot scheme ({SHA256} is base64 of the SHA-256 digest).
func users() map[string]string {
	sum := sha256.Sum256([]byte(carolPW))
	return map[string]string{
		alice: alicePW,
		bob:   bobPW,
		carol: "{SHA256}" + base64.StdEncoding.EncodeToString(sum[:]),
	}
}

func startTLS(t *testing.T) *Server {
	t.Helper()
	begin := time.Now()
	s := Start(t, Options{Users: users(), TLS: true})
	t.Logf("dovecot started in %v", time.Since(begin).Round(time.Millisecond))
	return s
}

func TestStartAddrs(t *testing.T) {
	s := startTLS(t)
	for name, addr := range map[string]string{"IMAPAddr": s.IMAPAddr, "IMAPSAddr": s.IMAPSAddr, "POP3Addr": s.POP3Addr, "POP3SAddr": s.POP3SAddr} {
		if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
			t.Errorf("%s = %q, want 127.0.0.1:port", name, addr)
		}
	}
	if s.CertPEM == nil || s.ClientTLS() == nil {
		t.Error("no CertPEM with TLS")
	}
	if s.PID() == 0 {
		t.Error("PID() = 0")
	}

	plain := Start(t, Options{Users: users()})
	if plain.IMAPSAddr != "" || plain.POP3SAddr != "" || plain.CertPEM != nil || plain.ClientTLS() != nil {
		t.Errorf("without TLS: IMAPSAddr %q, POP3SAddr %q, CertPEM %d bytes", plain.IMAPSAddr, plain.POP3SAddr, len(plain.CertPEM))
	}
	if plain.IMAPAddr == s.IMAPAddr || plain.Dir == s.Dir {
		t.Errorf("two instances share %s / %s", plain.IMAPAddr, plain.Dir)
	}
	if !strings.Contains(plain.Log(), "starting up for imap, pop3") {
		t.Errorf("Log() lacks the start-up line:\n%s", plain.Log())
	}
}

func TestIMAPLogin(t *testing.T) {
	s := startTLS(t)
	dials := []struct {
		name string
		dial func() (*imapclient.Client, error)
	}{
		{"plain", func() (*imapclient.Client, error) { return imapclient.DialInsecure(s.IMAPAddr, nil) }},
		{"STARTTLS", func() (*imapclient.Client, error) {
			return imapclient.DialStartTLS(s.IMAPAddr, &imapclient.Options{TLSConfig: s.ClientTLS()})
		}},
		{"imaps", func() (*imapclient.Client, error) {
			return imapclient.DialTLS(s.IMAPSAddr, &imapclient.Options{TLSConfig: s.ClientTLS()})
		}},
	}
	logins := []struct {
		user, password string
		ok             bool
	}{
		{alice, alicePW, true},
		{bob, bobPW, true},
		{strings.ToLower(bob), bobPW, true},
		{carol, carolPW, true},
		{alice, "wrong", false},
		{"nobody@example.org", alicePW, false},
	}
	for _, d := range dials {
		for _, l := range logins {
			t.Run(fmt.Sprintf("%s/%s/%s", d.name, l.user, l.password), func(t *testing.T) {
				c, err := d.dial()
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer c.Close()
				err = c.Login(l.user, l.password).Wait()
				if !l.ok {
					var ie *imap.Error
					if !errors.As(err, &ie) || ie.Code != imap.ResponseCodeAuthenticationFailed {
						t.Fatalf("LOGIN with a wrong password: %v, want NO [AUTHENTICATIONFAILED]", err)
					}
					return
				}
				if err != nil {
					t.Fatalf("LOGIN: %v", err)
				}
				if _, err := c.Select("INBOX", nil).Wait(); err != nil {
					t.Fatalf("SELECT INBOX: %v", err)
				}
				if err := c.Logout().Wait(); err != nil {
					t.Errorf("LOGOUT: %v", err)
				}
			})
		}
	}
}

func TestTLSNeedsCert(t *testing.T) {
	s := startTLS(t)
	_, err := tls.Dial("tcp", s.IMAPSAddr, &tls.Config{ServerName: Host})
	if err == nil {
		t.Fatal("a TLS client without CertPEM verified the self-signed certificate")
	}
}

func TestDeliverFetch(t *testing.T) {
	s := startTLS(t)
	lf := []byte(strings.ReplaceAll(testMail, "\r\n", "\n"))
	c, err := imapclient.DialInsecure(s.IMAPAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(bob, bobPW).Wait(); err != nil {
		t.Fatal(err)
	}
	// Delivered to a selected mailbox: found at the next sync (NOOP).
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	s.Deliver(t, alice, []byte(testMail)) // not bob's
	s.Deliver(t, bob, []byte(testMail))
	s.Deliver(t, strings.ToLower(bob), lf)
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	sec := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.SeqSetNum(1, 2), &imap.FetchOptions{RFC822Size: true, BodySection: []*imap.FetchItemBodySection{sec}}).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	if len(msgs) != 2 {
		t.Fatalf("FETCH 1:2 returned %d messages, want 2", len(msgs))
	}
	for i, m := range msgs {
		// Dovecot serves LF line ends as CRLF.
		if got := m.FindBodySection(sec); string(got) != testMail || m.RFC822Size != int64(len(testMail)) {
			t.Errorf("message %d: BODY[] = %q (RFC822.SIZE %d), want %q", i+1, got, m.RFC822Size, testMail)
		}
	}

	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if *st.NumMessages != 2 {
		t.Errorf("bob's INBOX has %d messages, want 2", *st.NumMessages)
	}
}

func TestDeliverUnknownUser(t *testing.T) {
	s := Start(t, Options{Users: users()})
	ft := &fatalRecorder{TB: t}
	func() {
		defer func() { recover() }() // fatalRecorder panics to stop like FailNow
		s.Deliver(ft, "mallory@example.org", []byte(testMail))
	}()
	if !strings.Contains(ft.msg, "no such user") {
		t.Errorf("Deliver to an unknown user: %q, want a fatal error", ft.msg)
	}
}

// pop3 is a minimal POP3 client over a raw connection: the tests check the
// server's replies line by line.
type pop3 struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialPOP3(t *testing.T, addr string, tlsConf *tls.Config) *pop3 {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if tlsConf != nil {
		c = tls.Client(c, tlsConf)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	p := &pop3{t: t, c: c, r: bufio.NewReader(c)}
	if line := p.line(); !strings.HasPrefix(line, "+OK") {
		t.Fatalf("POP3 greeting %q", line)
	}
	return p
}

func (p *pop3) line() string {
	p.t.Helper()
	l, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("POP3 read: %v", err)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// cmd sends a command and returns its status line.
func (p *pop3) cmd(format string, args ...any) string {
	p.t.Helper()
	if _, err := fmt.Fprintf(p.c, format+"\r\n", args...); err != nil {
		p.t.Fatalf("POP3 write: %v", err)
	}
	return p.line()
}

// multiline reads a multi-line response's body up to the "." line, with
// the dot-stuffing removed and CRLF line ends.
func (p *pop3) multiline() string {
	p.t.Helper()
	var b strings.Builder
	for range 10000 {
		l := p.line()
		if l == "." {
			return b.String()
		}
		b.WriteString(strings.TrimPrefix(l, "."))
		b.WriteString("\r\n")
	}
	p.t.Fatal("POP3 multi-line response without an end")
	return ""
}

func TestPOP3(t *testing.T) {
	s := startTLS(t)
	s.Deliver(t, alice, []byte(testMail))
	s.Deliver(t, alice, []byte(strings.ReplaceAll(testMail, "\r\n", "\n")+".dot\n"))
	stuffed := testMail + ".dot\r\n"
	for _, tc := range []struct {
		name string
		addr string
		tls  *tls.Config
	}{
		{"plain", s.POP3Addr, nil},
		{"pop3s", s.POP3SAddr, s.ClientTLS()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := dialPOP3(t, tc.addr, tc.tls)
			if got := p.cmd("USER %s", alice); !strings.HasPrefix(got, "+OK") {
				t.Fatalf("USER: %q", got)
			}
			if got := p.cmd("PASS %s", alicePW); !strings.HasPrefix(got, "+OK") {
				t.Fatalf("PASS: %q\n%s", got, s.Log())
			}
			want := fmt.Sprintf("+OK 2 %d", len(testMail)+len(stuffed))
			if got := p.cmd("STAT"); got != want {
				t.Errorf("STAT = %q, want %q", got, want)
			}
			for i, msg := range []string{testMail, stuffed} {
				if got := p.cmd("RETR %d", i+1); !strings.HasPrefix(got, "+OK") {
					t.Fatalf("RETR %d: %q", i+1, got)
				}
				if got := p.multiline(); got != msg {
					t.Errorf("RETR %d = %q, want %q", i+1, got, msg)
				}
			}
			if got := p.cmd("UIDL 1"); !strings.HasPrefix(got, "+OK 1 ") || len(got) != len("+OK 1 ")+16 {
				t.Errorf("UIDL 1 = %q, want %%08Xu%%08Xv (16 hex digits)", got)
			}
			if got := p.cmd("QUIT"); !strings.HasPrefix(got, "+OK") {
				t.Errorf("QUIT: %q", got)
			}
		})
	}
	// As root or not, the configuration must need no fallbacks.
	for _, l := range strings.Split(s.Log(), "\n") {
		if strings.Contains(l, " Error: ") || strings.Contains(l, " Fatal: ") || strings.Contains(l, " Warning: ") {
			t.Errorf("dovecot logged %q", l)
		}
	}
}

func TestPOP3WrongPassword(t *testing.T) {
	s := startTLS(t)
	p := dialPOP3(t, s.POP3Addr, nil)
	p.cmd("USER %s", alice)
	if got := p.cmd("PASS wrong"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("PASS with a wrong password: %q, want -ERR", got)
	}
}

func TestPOP3STLS(t *testing.T) {
	s := startTLS(t)
	p := dialPOP3(t, s.POP3Addr, nil)
	if got := p.cmd("STLS"); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("STLS: %q", got)
	}
	tc := tls.Client(p.c, s.ClientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatalf("STLS handshake: %v", err)
	}
	p.c, p.r = tc, bufio.NewReader(tc)
	p.cmd("USER %s", carol)
	if got := p.cmd("PASS %s", carolPW); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("PASS after STLS: %q", got)
	}
}

// TestTrustedNetworks logs in as a proxy would, passing the client's
// address with IMAP ID from a trusted network: Dovecot logs that address.
func TestTrustedNetworks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trusted []string
		want    string
	}{
		{"default", nil, "rip=192.0.2.7"},
		{"untrusted", []string{"10.0.0.0/8"}, "rip=127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Start(t, Options{Users: users(), TrustedNetworks: tc.trusted})
			c, err := net.DialTimeout("tcp", s.IMAPAddr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			r := bufio.NewReader(c)
			fmt.Fprintf(c, "a ID (\"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"40000\")\r\nb LOGIN %s %s\r\nc LOGOUT\r\n", alice, alicePW)
			for range 100 {
				l, err := r.ReadString('\n')
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if strings.HasPrefix(l, "b ") && !strings.HasPrefix(l, "b OK") {
					t.Fatalf("LOGIN: %q", l)
				}
				if strings.HasPrefix(l, "c ") {
					break
				}
			}
			// The login line is written when LOGIN succeeds; poll for it.
			deadline := time.After(10 * time.Second)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for !strings.Contains(s.Log(), "Login: user=<"+alice+">") {
				select {
				case <-deadline:
					t.Fatalf("no login line in the log:\n%s", s.Log())
				case <-tick.C:
				}
			}
			for _, l := range strings.Split(s.Log(), "\n") {
				if strings.Contains(l, "Login: user=<"+alice+">") && !strings.Contains(l, tc.want) {
					t.Errorf("login line %q lacks %q", l, tc.want)
				}
			}
		})
	}
}

// TestCurl checks the instance with another client: curl's pop3:// and
// imap:// (and their TLS forms, verifying CertPEM).
func TestCurl(t *testing.T) {
	curl := smtptest.RequireTool(t, "curl")
	s := startTLS(t)
	s.Deliver(t, alice, []byte(testMail))
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, s.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"pop3 RETR", []string{"pop3://" + s.POP3Addr + "/1"}, testMail},
		{"pop3s RETR", []string{"--cacert", ca, "pop3s://" + s.POP3SAddr + "/1"}, testMail},
		{"pop3 STLS", []string{"--ssl-reqd", "--cacert", ca, "pop3://" + s.POP3Addr + "/1"}, testMail},
		{"imap FETCH", []string{"imap://" + s.IMAPAddr + "/INBOX;UID=1"}, testMail},
		{"imaps FETCH", []string{"--cacert", ca, "imaps://" + s.IMAPSAddr + "/INBOX;UID=1"}, testMail},
		{"imap STARTTLS", []string{"--ssl-reqd", "--cacert", ca, "imap://" + s.IMAPAddr + "/INBOX;UID=1"}, testMail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-sS", "--max-time", "20", "--user", alice + ":" + alicePW}, tc.args...)
			out, err := exec.Command(curl, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("curl %s: %v: %s", strings.Join(args, " "), err, out)
			}
			if !bytes.Equal(out, []byte(tc.want)) {
				t.Errorf("curl %s = %q, want %q", strings.Join(args, " "), out, tc.want)
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		out, err := exec.Command(curl, "-sS", "--max-time", "20", "--user", alice+":wrong", "imap://"+s.IMAPAddr+"/INBOX;UID=1").CombinedOutput()
		if err == nil {
			t.Fatalf("curl with a wrong password succeeded: %s", out)
		}
	})
}

func TestBadUser(t *testing.T) {
	ft := &fatalRecorder{TB: t}
	func() {
		defer func() { recover() }()
		Start(ft, Options{Users: map[string]string{"a:b@example.org": "x"}})
	}()
	if !strings.Contains(ft.msg, "passwd-file") {
		t.Errorf("Start with ':' in a login: %q, want a fatal error", ft.msg)
	}
}

func TestHasScheme(t *testing.T) {
	for _, tc := range []struct {
		pass string
		want bool
	}{
		{"{PLAIN}x", true},
		{"{SHA512-CRYPT}$6$abc", true},
		{"{SHA256.b64}x", false}, // lower case: not a scheme Dovecot names
		{"{}x", false},
		{"{plain", false},
		{"secret", false},
		{"x{PLAIN}y", false},
	} {
		if got := hasScheme(tc.pass); got != tc.want {
			t.Errorf("hasScheme(%q) = %v, want %v", tc.pass, got, tc.want)
		}
	}
}

// TestCIFailsWithoutDovecot runs this package's tests again in a child
// process with CI=true and no dovecot reachable (a private mount namespace
// hides /usr/sbin and /usr/local/sbin, and PATH lacks it): they must fail,
// not skip. It needs root and unshare(1); otherwise it skips.
func TestCIFailsWithoutDovecot(t *testing.T) {
	if os.Getenv("DOVECOTTEST_CHILD") != "" {
		t.Skip("in the child")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to hide dovecot in a mount namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare(1)")
	}
	empty := t.TempDir()
	script := `for d in /usr/sbin /usr/local/sbin /sbin; do [ -d "$d" ] && [ ! -L "$d" ] && mount --bind "$1" "$d"; done; shift; exec "$@"`
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", empty,
		os.Args[0], "-test.run", "^TestStartAddrs$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "CI=true", "DOVECOTTEST_CHILD=1", "PATH=/usr/bin:/bin")
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "mount") && strings.Contains(string(out), "ermission denied") {
		t.Skipf("cannot bind-mount here: %s", out)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), `required tool "dovecot" not found`) || !strings.Contains(string(out), "--- FAIL") {
		t.Fatalf("under CI=true without dovecot: %v, want a failing test:\n%s", err, out)
	}
}

type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(f)
}
