package proxy

import (
	"bufio"
	"bytes"
	"net/netip"
	"testing"

	"github.com/pires/go-proxyproto"
)

// FuzzProxyHeader feeds arbitrary bytes where a trusted proxy's PROXY
// header (v1 or v2) is expected, through the same calls a session makes:
// never a panic, and whatever is accepted names a usable client address
// (or none, for LOCAL/UNKNOWN), never the unspecified address.
func FuzzProxyHeader(f *testing.F) {
	for _, seed := range []string{
		"PROXY TCP4 192.0.2.7 198.51.100.1 40001 25\r\nEHLO x\r\n",
		"PROXY TCP6 2001:db8::7 2001:db8::1 40001 25\r\n",
		"PROXY UNKNOWN\r\n",
		"PROXY TCP4 0.0.0.0 198.51.100.1 1 25\r\n",
		"PROXY TCP4 192.0.2.999 198.51.100.1 1 25\r\n",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x08\xc6\x33\x64\x01\x9c\x42\x00\x19",
		"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24" + string(make([]byte, 36)),
		"EHLO not-a-proxy\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			return
		}
		src, ok, err := proxySource(h)
		if err != nil || !ok {
			if src != (netip.AddrPort{}) {
				t.Fatalf("refused or LOCAL header still gave %v", src)
			}
			return
		}
		if !src.Addr().IsValid() || src.Addr().IsUnspecified() || src.Addr().Is4In6() {
			t.Fatalf("accepted source %v", src)
		}
	})
}
