package storeadapter

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"moat/auth"
	"moat/pop3imap/pop3"
	"moat/store/mailbox"
)

// openAuth lets one user in, in clear: the benchmark measures retrieval.
type openAuth struct{}

func (openAuth) Login(_ context.Context, r auth.Request) (string, error) {
	if r.User == "alice@example.test" && r.Password == "secret" {
		return r.User, nil
	}
	return "", auth.ErrFailed
}

func (openAuth) PlaintextAllowed(netip.Addr, bool) bool { return true }

// BenchmarkRETRFromStore retrieves 1,000 messages of 10 KB each, one RETR
// at a time over loopback, from the built-in store (Maildir files on disk,
// through this adapter): the same load as imapd's BenchmarkFetchBody.
func BenchmarkRETRFromStore(b *testing.B) {
	const n = 1000
	store := mailbox.Open(b.TempDir())
	body := strings.Repeat(strings.Repeat("x", 78)+"\r\n", 10240/80)
	for i := range n {
		if _, err := store.Deliver("alice@example.test", strings.NewReader(fmt.Sprintf("Subject: bench %d\r\n\r\n%s", i, body))); err != nil {
			b.Fatal(err)
		}
	}
	srv := pop3.New(pop3.Options{Backend: Backend{Store: store}, Auth: openAuth{}, Hostname: "pop.test"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln, pop3.Listener{Name: "pop3"})
	b.Cleanup(func() { srv.Shutdown(context.Background()) })

	var total int64
	b.ResetTimer()
	for b.Loop() {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		r, w := bufio.NewReader(conn), bufio.NewWriter(conn)
		line := func() []byte {
			l, err := r.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			return l
		}
		line()
		fmt.Fprintf(w, "USER alice@example.test\r\nPASS secret\r\n")
		w.Flush()
		line()
		if l := line(); !bytes.HasPrefix(l, []byte("+OK")) {
			b.Fatalf("login: %q", l)
		}
		for i := 1; i <= n; i++ {
			fmt.Fprintf(w, "RETR %d\r\n", i)
			w.Flush()
			if l := line(); !bytes.HasPrefix(l, []byte("+OK")) {
				b.Fatalf("RETR %d: %q", i, l)
			}
			for l := line(); !bytes.Equal(l, []byte(".\r\n")); l = line() {
				total += int64(len(l))
			}
		}
		fmt.Fprintf(w, "QUIT\r\n")
		w.Flush()
		line()
		conn.Close()
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.SetBytes(total / int64(b.N))
}
