// Package control is the local administration channel between `moat
// serve` and the moat command: HTTP with JSON bodies over a unix socket in
// data_dir, readable by the user moat runs as only. Admin commands
// (`moat greylist …`) talk to the running gateway through it, so they work
// on whichever store it holds, the in-memory one included, and never
// fight it for a file lock.
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// SocketName is the socket's file name in data_dir.
const SocketName = "moat.sock"

// Path returns the socket path for a data directory.
func Path(dataDir string) string { return filepath.Join(dataDir, SocketName) }

// Server serves handlers on the socket until Close.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds the socket (replacing a stale one left by a crash) and
// serves mux on it.
func Listen(path string, mux http.Handler) (*Server, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control: %s: another moat is running on this data_dir", path)
	}
	os.Remove(path)
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	s := &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go s.srv.Serve(ln)
	return s, nil
}

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	os.Remove(s.ln.Addr().String())
	return err
}

// ErrNotRunning means no moat serve answers on the socket.
var ErrNotRunning = errors.New("moat serve is not running on this data_dir")

// Client calls a running moat serve.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, hc: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Call sends in as JSON to the endpoint and decodes the reply into out.
// A reply with an error status becomes an error carrying its message.
func (c *Client) Call(ctx context.Context, method, endpoint string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://moat"+endpoint, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			return ErrNotRunning
		}
		return fmt.Errorf("control: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("control: %s", resp.Status)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Reply writes v as a JSON reply, or err as {"error": ...} with status.
func Reply(w http.ResponseWriter, v any, err error, status int) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	json.NewEncoder(w).Encode(v)
}

// Decode reads a JSON request body into v.
func Decode(r *http.Request, v any) error {
	return decode(r, v)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad request: %w", err)
	}
	return nil
}
