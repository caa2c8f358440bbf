package rsyslogtest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// send writes msgs as octet-counted RFC 5424 frames on one connection.
func send(t *testing.T, s *Server, msgs ...string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s.CAPEM != nil {
		tc := tls.Client(c, s.ClientTLS())
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c = tc
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	for _, m := range msgs {
		frame := "<134>1 2024-05-06T07:08:09.123Z host moat 42 test.event - " + m
		fmt.Fprintf(&b, "%d %s", len(frame), frame)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
}

func TestReceive(t *testing.T) {
	big := `{"big":"` + strings.Repeat("x", 40000) + `"}`
	for _, tc := range []struct {
		name string
		tls  bool
	}{
		{"plain", false},
		{"tls", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Start(t, Options{TLS: tc.tls})
			if (s.CAPEM != nil) != tc.tls {
				t.Fatalf("CAPEM = %d bytes with TLS %v", len(s.CAPEM), tc.tls)
			}
			if got := s.Lines(t); len(got) != 0 {
				t.Fatalf("Lines before sending = %q, want none (the readiness probe sends nothing)", got)
			}
			msgs := []string{`{"a":1}`, `{"b":"x y"}`, big, `{"c":"é"}`}
			send(t, s, msgs...)
			got := s.WaitLines(t, len(msgs), 10*time.Second)
			if len(got) != len(msgs) {
				t.Fatalf("got %d lines, want %d", len(got), len(msgs))
			}
			for i := range msgs {
				if got[i] != msgs[i] {
					t.Errorf("line %d = %.80q (%d bytes), want %.80q (%d bytes)", i, got[i], len(got[i]), msgs[i], len(msgs[i]))
				}
			}
		})
	}
}

func TestStopRestart(t *testing.T) {
	s := Start(t, Options{TLS: true})
	addr, pid := s.Addr, s.PID()
	send(t, s, `{"n":1}`)
	s.WaitLines(t, 1, 10*time.Second)

	s.Stop()
	if s.PID() != 0 {
		t.Errorf("PID() = %d after Stop", s.PID())
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s accepts connections after Stop", addr)
	}
	s.Stop() // harmless

	s.Restart()
	if s.Addr != addr || s.PID() == 0 || s.PID() == pid {
		t.Fatalf("after Restart: Addr %s PID %d, was %s %d", s.Addr, s.PID(), addr, pid)
	}
	send(t, s, `{"n":2}`)
	got := s.WaitLines(t, 2, 10*time.Second)
	if strings.Join(got, ",") != `{"n":1},{"n":2}` {
		t.Errorf("lines = %q", got)
	}
}

func TestCertificate(t *testing.T) {
	s := Start(t, Options{TLS: true})
	// The CA verifies the server for 127.0.0.1; another CA does not.
	c, err := tls.Dial("tcp", s.Addr, s.ClientTLS())
	if err != nil {
		t.Fatalf("TLS with the server's CA: %v", err)
	}
	c.Close()
	other := Start(t, Options{TLS: true})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(other.CAPEM)
	if c, err := tls.Dial("tcp", s.Addr, &tls.Config{RootCAs: pool, ServerName: Host}); err == nil {
		c.Close()
		t.Fatal("TLS with another CA succeeded")
	}
}
