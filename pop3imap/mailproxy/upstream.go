package mailproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// upConn is a connection to an upstream during its login, and the
// upstream side of the splice after.
type upConn struct {
	addr string
	conn net.Conn // TCP, or TLS over it
	raw  net.Conn // TCP
	br   *bufio.Reader
	bw   *bufio.Writer
	// stop unties the connection from the login's context: until then
	// the context's end closes it, which unblocks any read or write.
	stop func() bool
}

// maxUpstreamLine bounds a response line of an upstream during login.
const maxUpstreamLine = 16 << 10

// dialUpstream connects to u, with TLS from the start when u says so. The
// connection is closed when ctx ends before release.
func dialUpstream(ctx context.Context, u Upstream, dialTimeout time.Duration) (*upConn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	raw, err := d.DialContext(ctx, "tcp", u.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s: %w", u.Addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	uc := &upConn{addr: u.Addr, conn: raw, raw: raw}
	uc.stop = context.AfterFunc(ctx, func() { raw.Close() })
	uc.setConn(raw)
	switch u.TLS {
	case TLSImplicit:
		if err := uc.startTLS(ctx, u); err != nil {
			uc.close()
			return nil, err
		}
	case TLSStartTLS, TLSNone, "":
	default:
		uc.close()
		return nil, fmt.Errorf("upstream %s: unknown TLS mode %q", u.Addr, u.TLS)
	}
	return uc, nil
}

func (u *upConn) setConn(c net.Conn) {
	u.conn = c
	u.br = bufio.NewReaderSize(c, maxUpstreamLine)
	u.bw = bufio.NewWriterSize(c, 4<<10)
}

// startTLS runs the client side of the handshake, verifying the
// upstream's certificate. Anything the upstream sent before it is an error:
// it could have been injected to look like the upstream's answers inside
// TLS.
func (u *upConn) startTLS(ctx context.Context, up Upstream) error {
	if u.br.Buffered() > 0 {
		return fmt.Errorf("upstream %s: data pipelined before TLS", u.addr)
	}
	name := up.ServerName
	if name == "" {
		host, _, err := net.SplitHostPort(up.Addr)
		if err != nil {
			return fmt.Errorf("upstream %s: %w", up.Addr, err)
		}
		name = host
	}
	tc := tls.Client(u.raw, &tls.Config{RootCAs: up.RootCAs, ServerName: name, MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS with upstream %s: %w", u.addr, err)
	}
	u.setConn(tc)
	return nil
}

// release unties a logged-in connection from the login's context and
// deadline, for the splice.
func (u *upConn) release() error {
	if !u.stop() {
		return fmt.Errorf("upstream %s: login timed out", u.addr)
	}
	return u.raw.SetDeadline(time.Time{})
}

func (u *upConn) close() {
	u.stop()
	u.conn.Close()
}

var errUpstreamLine = errors.New("upstream response line too long")

// readLine reads one response line without its line ending.
func (u *upConn) readLine() (string, error) {
	line, err := u.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", fmt.Errorf("upstream %s: %w", u.addr, errUpstreamLine)
	}
	if err != nil {
		return "", fmt.Errorf("read from upstream %s: %w", u.addr, err)
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return string(line), nil
}

// send writes s and CRLF and flushes.
func (u *upConn) send(s string) error {
	u.bw.WriteString(s)
	u.bw.WriteString("\r\n")
	if err := u.bw.Flush(); err != nil {
		return fmt.Errorf("write to upstream %s: %w", u.addr, err)
	}
	return nil
}
