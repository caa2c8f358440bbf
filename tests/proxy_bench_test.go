package tests

import (
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// BenchmarkProxyDovecot measures moat's IMAP proxy against a real
// Dovecot, in the same run: logins per second (TLS connect, LOGIN,
// LOGOUT) and the bytes per second of one UID FETCH 1:* BODY[] of 1,000
// messages of 10 KB, directly and through moat, with their ratios.
//
//	go test -run XXX -bench BenchmarkProxyDovecot -benchtime 3x ./tests/
func BenchmarkProxyDovecot(b *testing.B) {
	dc, m, _ := startDovecotProxy(b, map[string]any{"allow_networks": []string{"127.0.0.0/8"}})
	const n = 1000
	body := strings.Repeat(strings.Repeat("x", 78)+"\r\n", 10240/80)
	for i := range n {
		dc.Deliver(b, dovecotUser, []byte(fmt.Sprintf("From: a@example.net\r\nSubject: bench %d\r\n\r\n%s", i, body)))
	}
	direct, proxied := dc.ClientTLS(), &tls.Config{InsecureSkipVerify: true}
	fetchAll(b, dc.IMAPSAddr, direct) // warm Dovecot's index and the page cache
	var dBytes, pBytes int64
	var dTime, pTime time.Duration
	var dLogins, pLogins float64
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		dBytes += fetchAll(b, dc.IMAPSAddr, direct)
		dTime += time.Since(start)
		start = time.Now()
		pBytes += fetchAll(b, m.IMAPSAddr, proxied)
		pTime += time.Since(start)
		dLogins += logins(b, dc.IMAPSAddr, direct, 100)
		pLogins += logins(b, m.IMAPSAddr, proxied, 100)
	}
	dRate, pRate := float64(dBytes)/dTime.Seconds()/1e6, float64(pBytes)/pTime.Seconds()/1e6
	b.ReportMetric(dRate, "direct_MB/s")
	b.ReportMetric(pRate, "proxied_MB/s")
	b.ReportMetric(pRate/dRate, "fetch_ratio")
	b.ReportMetric(dLogins/float64(b.N), "direct_logins/s")
	b.ReportMetric(pLogins/float64(b.N), "proxied_logins/s")
}

// fetchAll fetches BODY[] of every message in INBOX over one connection
// and returns the bytes received.
func fetchAll(b *testing.B, addr string, tc *tls.Config) int64 {
	c, err := imapclient.DialTLS(addr, &imapclient.Options{TLSConfig: tc})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(dovecotUser, dovecotPassword).Wait(); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		b.Fatal(err)
	}
	cmd := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
	var n int64
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		for item := msg.Next(); item != nil; item = msg.Next() {
			if bs, ok := item.(imapclient.FetchItemDataBodySection); ok {
				k, _ := io.Copy(io.Discard, bs.Literal)
				n += k
			}
		}
	}
	if err := cmd.Close(); err != nil {
		b.Fatal(err)
	}
	c.Logout().Wait()
	return n
}

// logins runs n sequential logins and returns their rate per second.
func logins(b *testing.B, addr string, tc *tls.Config, n int) float64 {
	start := time.Now()
	for range n {
		c, err := imapclient.DialTLS(addr, &imapclient.Options{TLSConfig: tc})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Login(dovecotUser, dovecotPassword).Wait(); err != nil {
			b.Fatal(err)
		}
		c.Logout().Wait()
		c.Close()
	}
	return float64(n) / time.Since(start).Seconds()
}
