// Command loadgen is the benchmark's SMTP load generator. smtp-source
// cannot send a prepared file, and case (c) needs DKIM-signed messages, so
// this sends pre-built, signed messages the way smtp-source does by
// default: one connection per message (EHLO, MAIL, RCPT, DATA, QUIT) over
// -c concurrent sessions, until -n messages are sent. It prints one line:
//
//	sent=2000 ok=2000 failed=0 secs=1.234 rate=1621.0 p50_ms=11.2 p90_ms=15.0 p99_ms=20.1 max_ms=31.0
//
// The latency of a message is from connect to the reply to its data.
//
// With -rate R it runs open-loop instead: message i is due at i/R seconds
// from the start (-poisson: Poisson arrivals of mean rate R, from -seed),
// each still on a connection of its own, at most -c in flight; a message
// that finds -c in flight waits, and its latency counts from its due time
// to the reply to its data, so the waiting is in the figures. The line
// adds p999_ms and late (messages that started more than 1 ms after their
// due time):
//
//	sent=5000 ok=5000 failed=0 secs=10.004 rate=499.8 p50_ms=2.1 p90_ms=2.9 p99_ms=4.8 p999_ms=9.7 max_ms=12.0 late=3
//
// With -idle N it opens N connections, -c at a time, reads each greeting
// (-idle-ehlo: and the reply to an EHLO), prints "idle open=N failed=0 ehlo=false
// secs=…", holds them until its stdin ends (or -hold passes), prints
// "idle held=… still_open=N" (those the server did not close) and exits.
//
// With -genkey DIR it instead writes a DKIM key pair (DIR/dkim.pem and the
// DNS record text DIR/dkim.txt, for benchdns) and exits.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:25", "SMTP server to send to")
	n := flag.Int("n", 1000, "messages to send in all")
	c := flag.Int("c", 20, "concurrent sessions")
	size := flag.Int("size", 10240, "message size in bytes, headers and signature included")
	from := flag.String("from", "sender@bench.example", "envelope and header sender")
	to := flag.String("to", "rcpt@example.com", "recipient")
	helo := flag.String("helo", "client.bench.example", "EHLO name")
	keyFile := flag.String("key", "", "DKIM private key (PEM, PKCS#8); empty: messages are not signed")
	selector := flag.String("selector", "bench", "DKIM selector")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of one message, connect to QUIT")
	genkey := flag.String("genkey", "", "write a DKIM key pair into this directory and exit")
	rate := flag.Float64("rate", 0, "open loop: messages per second, each due at its own time (0: closed loop, -c sessions as fast as they go)")
	poisson := flag.Bool("poisson", false, "open loop: Poisson arrivals (exponential gaps from -seed) instead of even spacing")
	seed := flag.Uint64("seed", 1, "open loop: seed of the -poisson arrivals")
	idle := flag.Int("idle", 0, "open this many idle connections, hold them until stdin ends, and exit")
	idleEHLO := flag.Bool("idle-ehlo", false, "with -idle: send EHLO on each connection before leaving it idle")
	hold := flag.Duration("hold", 10*time.Minute, "with -idle: the longest the connections are held")
	flag.Parse()
	if *genkey != "" {
		if err := genKey(*genkey); err != nil {
			log.Fatalf("loadgen: %v", err)
		}
		return
	}
	if *c <= 0 {
		log.Fatal("loadgen: -c must be positive")
	}
	if *idle > 0 {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := runIdle(ctx, *addr, *idle, *c, *idleEHLO, *helo, *timeout, *hold); err != nil {
			log.Fatalf("loadgen: %v", err)
		}
		return
	}
	if *n <= 0 {
		log.Fatal("loadgen: -n must be positive")
	}
	if *rate < 0 || math.IsInf(*rate, 0) || math.IsNaN(*rate) {
		log.Fatal("loadgen: -rate must be 0 (closed loop) or a positive number of messages per second")
	}
	var signer crypto.Signer
	if *keyFile != "" {
		k, err := readKey(*keyFile)
		if err != nil {
			log.Fatalf("loadgen: %v", err)
		}
		signer = k
	}
	_, domain, _ := strings.Cut(*from, "@")
	// A few distinct messages (Message-ID, Subject) are enough: each is
	// verified afresh by the receiver on every send.
	msgs := make([][]byte, min(*n, 64))
	for i := range msgs {
		m, err := build(i, *size, *from, *to, domain, *selector, signer)
		if err != nil {
			log.Fatalf("loadgen: %v", err)
		}
		msgs[i] = m
	}

	msg := func(i int) []byte { return msgs[i%len(msgs)] }
	if *rate > 0 {
		out, took := openLoop(schedule(*n, *rate, *poisson, *seed), *c, func(i int) error {
			return send(*addr, *helo, *from, *to, msg(i), *timeout)
		})
		s := summarize(out)
		printErrors(out)
		ms := func(q float64) float64 { return float64(quantile(s.lat, q).Microseconds()) / 1000 }
		secs := took.Seconds()
		fmt.Printf("sent=%d ok=%d failed=%d secs=%.3f rate=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f p999_ms=%.2f max_ms=%.2f late=%d\n",
			*n, s.ok, s.failed, secs, float64(s.ok)/secs, ms(0.50), ms(0.90), ms(0.99), ms(0.999), ms(1), s.late)
		return
	}

	var next atomic.Int64
	lat := make([][]time.Duration, *c)
	var failed atomic.Int64
	var errMu sync.Mutex
	errSeen := map[string]int{}
	var wg sync.WaitGroup
	start := time.Now()
	for w := range *c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(*n) {
					return
				}
				t0 := time.Now()
				err := send(*addr, *helo, *from, *to, msg(int(i)), *timeout)
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					errSeen[err.Error()]++
					errMu.Unlock()
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	all := slices.Concat(lat...)
	slices.Sort(all)
	for e, k := range errSeen {
		fmt.Fprintf(os.Stderr, "loadgen: %d× %s\n", k, e)
	}
	ms := func(q float64) float64 { return float64(quantile(all, q).Microseconds()) / 1000 }
	fmt.Printf("sent=%d ok=%d failed=%d secs=%.3f rate=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
		*n, len(all), failed.Load(), secs, float64(len(all))/secs, ms(0.50), ms(0.90), ms(0.99), ms(1))
}

// printErrors writes to stderr how often each error of an open-loop run
// happened.
func printErrors(out []outcome) {
	seen := map[string]int{}
	for _, o := range out {
		if o.err != nil {
			seen[o.err.Error()]++
		}
	}
	for e, k := range seen {
		fmt.Fprintf(os.Stderr, "loadgen: %d× %s\n", k, e)
	}
}

// send delivers one message on a connection of its own.
func send(addr, helo, from, to string, msg []byte, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	conn.SetDeadline(time.Now().Add(timeout))
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello(helo); err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	if err := c.Mail(from, nil); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	if err := c.Rcpt(to, nil); err != nil {
		return fmt.Errorf("RCPT: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("data: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of data: %w", err)
	}
	if err := c.Quit(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("QUIT: %w", err)
	}
	return nil
}

// build makes message i of about size bytes, signed when signer is set.
func build(i, size int, from, to, domain, selector string, signer crypto.Signer) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Bench <%s>\r\nTo: <%s>\r\nSubject: benchmark message %d\r\n", from, to, i)
	fmt.Fprintf(&b, "Date: %s\r\nMessage-ID: <%d.%d@%s>\r\nMIME-Version: 1.0\r\n", time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), i, domain)
	b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n\r\n")
	const sigRoom = 500 // an RSA-2048 DKIM-Signature header is about 450 bytes
	line := "The quick brown fox jumps over the lazy dog, and the benchmark goes on. 0123\r\n"
	target := size
	if signer != nil {
		target -= sigRoom
	}
	for b.Len()+len(line) <= target {
		b.WriteString(line)
	}
	for b.Len() < target-2 {
		b.WriteByte('x')
	}
	b.WriteString("\r\n")
	if signer == nil {
		return b.Bytes(), nil
	}
	var out bytes.Buffer
	err := dkim.Sign(&out, bytes.NewReader(b.Bytes()), &dkim.SignOptions{
		Domain: domain, Selector: selector, Signer: signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"},
	})
	if err != nil {
		return nil, fmt.Errorf("DKIM sign: %w", err)
	}
	return out.Bytes(), nil
}

func genKey(dir string) error {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return fmt.Errorf("marshal public key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dkim.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	txt := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pub) + "\n"
	return os.WriteFile(filepath.Join(dir, "dkim.txt"), []byte(txt), 0o644)
}

func readKey(file string) (crypto.Signer, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", file)
	}
	return s, nil
}
