package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"moat/config"
	"moat/metrics"
)

// health is what /readyz reports on: the state the serve loop keeps.
type health struct {
	cfg      func() *config.Config
	stopping atomic.Bool // SIGTERM received: not ready for new work

	mu         sync.Mutex
	reloadErr  string    // the last reload's problems; "" when it went well
	reloadAt   time.Time // when
	upstreams  []probe   // the last upstream probe
	upstreamAt time.Time
}

// probe is one line of /readyz.
type probe struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// reloaded records a reload's outcome.
func (h *health) reloaded(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	metrics.Reloaded(err == nil)
	h.reloadAt = time.Now()
	h.reloadErr = ""
	if err != nil {
		h.reloadErr = err.Error()
	}
}

// upstreamProbeTTL spares the internal servers a connection per probe: a
// load balancer asks every few seconds.
const upstreamProbeTTL = 10 * time.Second

// ready runs every check; the result is ready when all pass.
func (h *health) ready(ctx context.Context) (bool, []probe) {
	cfg := h.cfg()
	var checks []probe
	add := func(name string, err error) {
		c := probe{Name: name, OK: err == nil}
		if err != nil {
			c.Error = err.Error()
		}
		checks = append(checks, c)
	}
	if h.stopping.Load() {
		add("listeners", errors.New("shutting down"))
	} else {
		add("listeners", nil)
	}
	add("data_dir", writable(cfg.DataDir))
	h.mu.Lock()
	var rerr error
	if h.reloadErr != "" {
		rerr = fmt.Errorf("last reload at %s failed (the previous configuration runs): %s",
			h.reloadAt.UTC().Format(time.RFC3339), h.reloadErr)
	}
	fresh := time.Since(h.upstreamAt) < upstreamProbeTTL
	ups := h.upstreams
	h.mu.Unlock()
	add("reload", rerr)
	if !fresh {
		ups = probeUpstreams(ctx, cfg)
		h.mu.Lock()
		h.upstreams, h.upstreamAt = ups, time.Now()
		h.mu.Unlock()
	}
	checks = append(checks, ups...)
	ok := true
	for _, c := range checks {
		ok = ok && c.OK
	}
	return ok, checks
}

// writable checks that a file can be created in dir (the store, the
// quarantine and the spool live there).
func writable(dir string) error {
	f, err := os.CreateTemp(dir, ".readyz-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// probeUpstreams connects to every distinct internal server the config
// names (SMTP routes, POP3/IMAP proxy upstreams), at once, each within
// its connect timeout (at most 5 s).
func probeUpstreams(ctx context.Context, cfg *config.Config) []probe {
	var addrs []string
	for _, r := range cfg.Routes {
		if !r.Local() {
			addrs = append(addrs, r.Upstream)
		}
	}
	for _, m := range []config.Mailbox{cfg.POP3, cfg.IMAP} {
		if m.Proxy() && len(m.Listeners) > 0 {
			addrs = append(addrs, m.Upstream)
			for _, u := range m.Upstreams {
				addrs = append(addrs, u)
			}
		}
	}
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	timeout := min(cfg.SMTP.Timeouts.UpstreamConnect.D(), 5*time.Second)
	checks := make([]probe, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Go(func() {
			dctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			var d net.Dialer
			c, err := d.DialContext(dctx, "tcp", a)
			if err == nil {
				c.Close()
			}
			checks[i] = probe{Name: "upstream " + a, OK: err == nil}
			if err != nil {
				checks[i].Error = err.Error()
			}
		})
	}
	wg.Wait()
	return checks
}

// adminHandlers are /healthz (the process answers) and /readyz (it can do
// its work: 200 or 503, with a JSON body saying what is wrong); /metrics
// is added by the caller.
func adminHandlers(mux *http.ServeMux, h *health) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, checks := h.ready(r.Context())
		status, code := "ready", http.StatusOK
		if !ok {
			status, code = "not ready", http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]any{"status": status, "checks": checks})
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// adminServer serves the admin endpoints on admin.addr.
type adminServer struct {
	srv *http.Server
	ln  net.Listener
}

func listenAdmin(addr string, handler http.Handler) (*adminServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen %s: %w", addr, err)
	}
	return &adminServer{ln: ln, srv: &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
	}}, nil
}

func (a *adminServer) serve() {
	if a != nil {
		go a.srv.Serve(a.ln)
	}
}

func (a *adminServer) shutdown(ctx context.Context) {
	if a != nil {
		a.srv.Shutdown(ctx)
	}
}
