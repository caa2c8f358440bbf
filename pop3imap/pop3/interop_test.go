package pop3

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// poplibScript logs in with Python's poplib (cleartext, or after STLS when
// argv[3] names a CA file), reads every message and deletes the first.
const poplibScript = `
import poplib, ssl, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=20)
print(p.getwelcome().decode())
if len(sys.argv) > 2:
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    ctx.check_hostname = False  # the certificate names pop.test; the chain is still verified
    p.stls(ctx)
print(sorted(p.capa()))
p.user("alice")
print(p.pass_("secret").decode())
count, size = p.stat()
print(count, size)
print(p.uidl()[1])
for i in range(1, count + 1):
    print(p.retr(i)[1])
print(p.top(1, 0)[1])
p.dele(1)
print(p.quit().decode())
`

func TestPoplib(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is required under CI")
		}
		t.Skip("python3 not installed")
	}
	box := []string{msg1, msg2, msg3, "Subject: edges\r\n\r\na\n.\nb\r.\rc\r\n..\r\n.", ""}
	for _, mode := range []string{"cleartext", "stls"} {
		t.Run(mode, func(t *testing.T) {
			env := startServer(t, envOptions{plaintext: mode == "cleartext", boxes: map[string][]string{"alice@example.test": box}})
			_, port, _ := net.SplitHostPort(env.addr)
			args := []string{"-c", poplibScript, port}
			if mode == "stls" {
				args = append(args, filepath.Join(env.dir, "tls", "selfsigned.crt"))
			}
			out, err := exec.Command(python, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("poplib: %v\n%s", err, out)
			}
			capa := "'AUTH-RESP-CODE', 'EXPIRE', 'IMPLEMENTATION', 'PIPELINING', 'RESP-CODES', 'SASL', 'STLS', 'TOP', 'UIDL', 'USER'"
			if mode == "stls" {
				capa = strings.Replace(capa, "'STLS', ", "", 1)
			}
			total := 0
			for _, m := range box {
				total += len(m)
			}
			want := []string{
				"+OK pop.test POP3 ready",
				"[" + capa + "]",
				fmt.Sprintf("+OK maildrop has 5 messages (%d octets)", total),
				fmt.Sprintf("5 %d", total),
				"[b'1 uid1', b'2 uid2', b'3 uid3', b'4 uid4', b'5 uid5']",
				"[b'From: bob@example.test', b'Subject: first', b'', b'line one', b'line two']",
				"[b'Subject: dots', b'', b'.', b'..x', b'.end']",
				"[b'Subject: no final newline', b'', b'last line']",
				"[b'Subject: edges', b'', b'a', b'.', b'b', b'.', b'c', b'..', b'.']",
				"[]",
				"[b'From: bob@example.test', b'Subject: first', b'']",
				"+OK pop.test POP3 server signing off (4 messages left)",
			}
			got := strings.Split(strings.TrimSpace(string(out)), "\n")
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("poplib printed:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
			}
			env.back.waitClosed(t)
			if got := env.back.commitsOf("alice@example.test"); len(got) != 1 || fmt.Sprint(got[0]) != "[0]" {
				t.Errorf("commits %v", got)
			}
		})
	}
}

// BenchmarkRETR retrieves 1,000 messages of 10 KB each over loopback, one
// command at a time, per iteration.
func BenchmarkRETR(b *testing.B) {
	const count, size = 1000, 10 << 10
	var m strings.Builder
	m.WriteString("From: bob@example.test\r\nSubject: bench\r\n\r\n")
	for i := 0; m.Len() < size-80; i++ {
		if i%10 == 0 {
			m.WriteString(".")
		}
		m.WriteString(strings.Repeat("x", 70) + "\r\n")
	}
	box := make([]string, count)
	for i := range box {
		box[i] = m.String()
	}
	env := startServer(b, envOptions{plaintext: true, boxes: map[string][]string{"alice@example.test": box}})
	b.SetBytes(int64(count * len(box[0])))
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		conn, err := net.Dial("tcp", env.addr)
		if err != nil {
			b.Fatal(err)
		}
		r := bufio.NewReader(conn)
		w := bufio.NewWriter(conn)
		readLine := func() []byte {
			l, err := r.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			return l
		}
		readLine()
		fmt.Fprintf(w, "USER alice\r\nPASS secret\r\n")
		w.Flush()
		readLine()
		readLine()
		for i := 1; i <= count; i++ {
			fmt.Fprintf(w, "RETR %d\r\n", i)
			w.Flush()
			if l := readLine(); !bytes.HasPrefix(l, []byte("+OK")) {
				b.Fatalf("RETR: %q", l)
			}
			for !bytes.Equal(readLine(), []byte(".\r\n")) {
			}
		}
		fmt.Fprintf(w, "QUIT\r\n")
		w.Flush()
		readLine()
		conn.Close()
		env.back.waitClosed(b)
	}
	b.ReportMetric(float64(count*b.N)/time.Since(start).Seconds(), "msgs/s")
}
