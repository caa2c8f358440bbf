package tests

import (
	"encoding/json"
	"strings"
	"testing"

	"moat/internal/smtptest"
)

// readyz is /readyz's body.
type readyz struct {
	Status string `json:"status"`
	Checks []struct {
		Name  string `json:"name"`
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	} `json:"checks"`
}

// getJSON fetches an admin URL with curl and returns the HTTP code and
// the decoded body.
func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	r := runTool(t, "curl", "-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}", url)
	if r.code != 0 {
		t.Fatalf("curl %s", r)
	}
	out := string(r.stdout)
	i := strings.LastIndexByte(out, '\n')
	if err := json.Unmarshal([]byte(out[:i]), v); err != nil {
		t.Fatalf("%s: not JSON: %v\n%s", url, err, out)
	}
	var code int
	for _, c := range out[i+1:] {
		code = code*10 + int(c-'0')
	}
	return code
}

// TestHealthEndpoints: /healthz says the process answers; /readyz says
// 200 while every upstream answers and the data_dir is writable, and 503
// with the failing check named when an upstream is down.
func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	sink := smtptest.NewSink(t)
	m := StartMoat(t, Config{Routes: map[string]Route{"example.com": {Upstream: sink.Addr()}, "local.test": {Upstream: "local"}}})
	var h map[string]any
	if code := getJSON(t, "http://"+m.AdminAddr+"/healthz", &h); code != 200 || h["status"] != "ok" {
		t.Errorf("/healthz: %d %v", code, h)
	}
	var r readyz
	if code := getJSON(t, "http://"+m.AdminAddr+"/readyz", &r); code != 200 || r.Status != "ready" {
		t.Errorf("/readyz: %d %+v", code, r)
	}
	names := map[string]bool{}
	for _, c := range r.Checks {
		names[c.Name] = c.OK
	}
	for _, want := range []string{"listeners", "data_dir", "reload", "upstream " + sink.Addr()} {
		if ok, seen := names[want]; !seen || !ok {
			t.Errorf("/readyz check %q: seen %v ok %v (%+v)", want, seen, ok, r.Checks)
		}
	}

	dead := closedAddr(t)
	m2 := StartMoat(t, Config{Routes: map[string]Route{"example.com": {Upstream: dead}}})
	r = readyz{}
	if code := getJSON(t, "http://"+m2.AdminAddr+"/readyz", &r); code != 503 || r.Status != "not ready" {
		t.Errorf("/readyz with a dead upstream: %d %+v", code, r)
	}
	for _, c := range r.Checks {
		if c.Name == "upstream "+dead && (c.OK || c.Error == "") {
			t.Errorf("dead upstream check: %+v", c)
		}
	}
}

// TestPprofOnlyWhenAsked: the profiler is on the admin endpoint only with
// admin.pprof: true.
func TestPprofOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	code := func(m *Moat) string {
		r := runTool(t, "curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}", "http://"+m.AdminAddr+"/debug/pprof/heap")
		return string(r.stdout)
	}
	off := StartMoat(t, Config{})
	if c := code(off); c != "404" {
		t.Errorf("/debug/pprof/heap without admin.pprof: HTTP %s, want 404", c)
	}
	on := StartMoat(t, Config{Extra: map[string]any{"admin": map[string]any{"pprof": true}}})
	if c := code(on); c != "200" {
		t.Errorf("/debug/pprof/heap with admin.pprof: HTTP %s, want 200", c)
	}
}
