package mailproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// BenchmarkIMAPLogin: logins per second through the proxy (connect,
// LOGIN, LOGOUT), the upstream being moat's own IMAP server.
func BenchmarkIMAPLogin(b *testing.B) {
	up := startUpstreams(b, nil)
	p := startProxy(b, proxyOptions{protocol: "imap", upstream: Upstream{Addr: up.imap}, clearOK: true})
	start := time.Now()
	for b.Loop() {
		c := dialLine(b, p.plain, nil)
		c.expect("* OK")
		c.send("a LOGIN " + alice + " " + password + "\r\nb LOGOUT\r\n")
		c.expect("a OK")
		c.until("b OK")
		c.c.Close()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "logins/s")
}

// BenchmarkIMAPFetch: one UID FETCH 1:* BODY[] of 1,000 messages of 10 KB,
// through the proxy and directly, alternately; reports both rates and
// their ratio.
func BenchmarkIMAPFetch(b *testing.B) {
	body := strings.Repeat(strings.Repeat("x", 78)+"\r\n", 10<<10/80)
	msgs := make([]string, 1000)
	for i := range msgs {
		msgs[i] = fmt.Sprintf("Subject: %d\r\n\r\n%s", i, body)
	}
	up := startUpstreams(b, msgs)
	p := startProxy(b, proxyOptions{protocol: "imap", upstream: Upstream{Addr: up.imap}, clearOK: true})
	open := func(addr string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReaderSize(c, 64<<10)
		io.WriteString(c, "a LOGIN "+alice+" "+password+"\r\nb SELECT INBOX\r\n")
		readUntil(b, br, "b ")
		return c, br
	}
	dc, dbr := open(up.imap)
	defer dc.Close()
	pc, pbr := open(p.plain)
	defer pc.Close()
	fetch := func(c net.Conn, br *bufio.Reader) (int64, time.Duration) {
		start := time.Now()
		io.WriteString(c, "f UID FETCH 1:* BODY[]\r\n")
		return readUntil(b, br, "f OK"), time.Since(start)
	}
	var dBytes, pBytes int64
	var dTime, pTime time.Duration
	for b.Loop() {
		n, d := fetch(dc, dbr)
		dBytes, dTime = dBytes+n, dTime+d
		n, d = fetch(pc, pbr)
		pBytes, pTime = pBytes+n, pTime+d
	}
	// The first FETCH sets \Seen, which the other session hears of:
	// the counts differ by those updates only.
	if d := dBytes - pBytes; d > dBytes/100 || -d > dBytes/100 {
		b.Fatalf("direct %d bytes, through the proxy %d", dBytes, pBytes)
	}
	direct, proxied := float64(dBytes)/dTime.Seconds()/1e6, float64(pBytes)/pTime.Seconds()/1e6
	b.ReportMetric(direct, "direct-MB/s")
	b.ReportMetric(proxied, "proxy-MB/s")
	b.ReportMetric(proxied/direct, "ratio")
}

// readUntil reads response lines, literals included, up to one starting
// with prefix, and returns the bytes read.
func readUntil(b *testing.B, br *bufio.Reader, prefix string) int64 {
	var n int64
	for {
		line, err := br.ReadSlice('\n')
		n += int64(len(line))
		if err != nil {
			b.Fatalf("read: %v", err)
		}
		if strings.HasPrefix(string(line), prefix) {
			return n
		}
		if k, ok := literalAtEnd(line[:len(line)-2]); ok {
			m, err := br.Discard(k)
			n += int64(m)
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}
