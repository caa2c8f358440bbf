package smtptest

import (
	"bytes"
	"errors"
	"fmt"
	"moat/internal/syncbuf"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// PostfixSinkHostname is the name smtp-sink uses in its greeting, its
// EHLO reply and its dump files' Received header.
const PostfixSinkHostname = "smtp-sink.test"

// postfixDumpPrefix starts the name of every dump file; smtp-sink expands
// it with strftime(3) and appends a random hexadecimal number.
const postfixDumpPrefix = "msg-%Y%m%d%H%M%S."

// StartPostfixSink starts Postfix's smtp-sink(1) on a free 127.0.0.1 port,
// dumping each mail transaction into its own file in dumpDir (-d; read them
// with PostfixDumps or WaitPostfixDumps), and returns its "127.0.0.1:port".
// extraArgs go before the address (e.g. "-Q", "MAIL" or "-W", "DATA:5").
// At t.Cleanup the process is stopped by PID (SIGTERM, then SIGKILL).
//
// It replies "250 2.0.0 Ok" at end of data. As root, smtp-sink must drop
// privileges (-u): it then runs as nobody, chrooted (-R) into dumpDir,
// which is made world-writable so nobody can create the dumps.
func StartPostfixSink(t testing.TB, dumpDir string, extraArgs ...string) string {
	t.Helper()
	bin := RequireTool(t, "smtp-sink")
	if bin == "" {
		return ""
	}
	dumpDir, err := filepath.Abs(dumpDir)
	if err != nil {
		t.Fatalf("smtptest: smtp-sink dump dir: %v", err)
	}
	if err := os.MkdirAll(dumpDir, 0o755); err != nil {
		t.Fatalf("smtptest: smtp-sink dump dir: %v", err)
	}
	var args []string
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("nobody"); err != nil {
			t.Fatalf("smtptest: smtp-sink as root needs the user nobody: %v", err)
		}
		if err := os.Chmod(dumpDir, 0o777); err != nil {
			t.Fatalf("smtptest: smtp-sink dump dir: %v", err)
		}
		args = append(args, "-u", "nobody", "-R", dumpDir, "-d", "/"+postfixDumpPrefix)
	} else {
		args = append(args, "-d", filepath.Join(dumpDir, postfixDumpPrefix))
	}
	args = append(args, "-4", "-h", PostfixSinkHostname, "-t", "60")
	args = append(args, extraArgs...)

	const attempts = 3
	for i := 1; ; i++ {
		addr, err := startPostfixSink(t, bin, args)
		if err == nil {
			return addr
		}
		if i == attempts || !errors.Is(err, errPortTaken) {
			t.Fatalf("smtptest: start smtp-sink: %v", err)
		}
	}
}

var errPortTaken = errors.New("port taken")

func startPostfixSink(t testing.TB, bin string, args []string) (string, error) {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var out syncbuf.Buffer
	cmd := exec.Command(bin, append(append([]string(nil), args...), "inet:"+addr, "64")...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = childAttr()
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		select {
		case <-exited:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			msg := out.String()
			if strings.Contains(msg, "in use") {
				return "", fmt.Errorf("%w: %s", errPortTaken, msg)
			}
			return "", fmt.Errorf("smtp-sink %v exited early (%v): %s", args, waitErr, msg)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("smtp-sink did not accept on %s within 10s: %s", addr, out.String())
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("smtp-sink %s output:\n%s", addr, out.String())
		}
	})
	return addr, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago
// and that it has not returned before in this process: the kernel may
// offer a port it just gave out again (nothing listens on it yet), and two
// listeners of one config (a Dovecot's, a moat's) would then collide.
func FreePort() (int, error) {
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		handedOut.Lock()
		seen := handedOut.ports[port]
		handedOut.ports[port] = true
		handedOut.Unlock()
		if !seen {
			return port, nil
		}
	}
	return 0, errors.New("smtptest: no fresh loopback port in 100 tries")
}

// handedOut are the ports FreePort returned.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// PostfixDump is one mail transaction as smtp-sink dumped it. smtp-sink
// writes text lines ended by LF (it reads CRLF lines and unstuffs dots), so
// Message has LF line endings.
type PostfixDump struct {
	File        string
	ClientAddr  string   // X-Client-Addr
	ClientProto string   // X-Client-Proto: SMTP, ESMTP or LMTP
	Helo        string   // X-Helo-Args
	Mail        string   // X-Mail-Args: "<a@b> BODY=8BITMIME ..." (no "FROM:")
	Rcpts       []string // X-Rcpt-Args, one per RCPT: "<x@y> ..."
	Received    string   // smtp-sink's own three-line Received header, unfolded with "\n"
	// Message is the header and body as received, smtp-sink's lines
	// removed, without the empty line smtp-sink appends.
	Message []byte
}

// MessageCRLF returns Message with CRLF line endings, as it was on the wire
// (dot-unstuffed).
func (d PostfixDump) MessageCRLF() []byte {
	return bytes.ReplaceAll(d.Message, []byte("\n"), []byte("\r\n"))
}

// ParsePostfixDump parses one smtp-sink -d dump file.
func ParsePostfixDump(name string, b []byte) (PostfixDump, error) {
	d := PostfixDump{File: name}
	rest := b
	for {
		line, tail, ok := bytes.Cut(rest, []byte("\n"))
		if !ok {
			return d, fmt.Errorf("%s: no Received header from smtp-sink", name)
		}
		k, v, _ := strings.Cut(string(line), ": ")
		switch k {
		case "X-Client-Addr":
			d.ClientAddr = v
		case "X-Client-Proto":
			d.ClientProto = v
		case "X-Helo-Args":
			d.Helo = v
		case "X-Mail-Args":
			d.Mail = v
		case "X-Rcpt-Args":
			d.Rcpts = append(d.Rcpts, v)
		case "Received":
			recv := []string{string(line)}
			rest = tail
			for len(rest) > 0 && (rest[0] == '\t' || rest[0] == ' ') {
				line, tail, _ = bytes.Cut(rest, []byte("\n"))
				recv = append(recv, string(line))
				rest = tail
			}
			d.Received = strings.Join(recv, "\n")
			if !bytes.HasSuffix(rest, []byte("\n\n")) {
				return d, fmt.Errorf("%s: dump does not end with the empty line smtp-sink writes (still being written?)", name)
			}
			d.Message = bytes.Clone(rest[:len(rest)-1])
			return d, nil
		default:
			// The optional -S string, or an unknown record.
		}
		rest = tail
	}
}

// PostfixDumps reads every dump file in dumpDir, oldest first.
func PostfixDumps(dumpDir string) ([]PostfixDump, error) {
	entries, err := os.ReadDir(dumpDir)
	if err != nil {
		return nil, err
	}
	type file struct {
		name string
		mod  time.Time
	}
	var files []file
	for _, e := range entries {
		if e.IsDir() || !strings.HasPrefix(e.Name(), "msg-") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		files = append(files, file{e.Name(), info.ModTime()})
	}
	sort.Slice(files, func(i, j int) bool {
		if !files[i].mod.Equal(files[j].mod) {
			return files[i].mod.Before(files[j].mod)
		}
		return files[i].name < files[j].name
	})
	var out []PostfixDump
	for _, f := range files {
		p := filepath.Join(dumpDir, f.name)
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		d, err := ParsePostfixDump(p, b)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// WaitPostfixDumps polls dumpDir until it holds at least n complete dumps
// and returns them; after timeout it fails the test. Call it once the
// client has its end-of-data reply: smtp-sink keeps a dump file open while
// the transaction is in progress.
func WaitPostfixDumps(t testing.TB, dumpDir string, n int, timeout time.Duration) []PostfixDump {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ds, err := PostfixDumps(dumpDir)
		if err == nil && len(ds) >= n {
			return ds
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtptest: want %d smtp-sink dumps in %s within %v, have %d (last error: %v)", n, dumpDir, timeout, len(ds), err)
		}
		time.Sleep(20 * time.Millisecond) // polling a directory: no event to wait on
	}
}
