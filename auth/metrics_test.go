package auth

import (
	"context"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"moat/metrics"
)

// TestLoginMetrics: every attempt counts once, by protocol, outcome and
// the event's reason word; the series exist before any attempt.
func TestLoginMetrics(t *testing.T) {
	h := newHarness(t, Settings{}, nil)
	tests := []struct {
		protocol, user, password string
		tls                      bool
		outcome, reason          string
	}{
		{"smtp", "alice@example.com", secret, true, "success", reasonOK},
		{"pop3", "alice@example.com", "wrong", true, "failure", reasonBadCredentials},
		{"imap", "no name", secret, true, "failure", reasonBadUserName},
		{"imap", "bob@example.com", secret, false, "failure", reasonPlaintext},
	}
	if n := testutil.CollectAndCount(metrics.LoginAttempts); n < 21 {
		t.Errorf("%d login series before any attempt, want 3 protocols x 7 reasons", n)
	}
	for _, tt := range tests {
		t.Run(tt.protocol+"/"+tt.reason, func(t *testing.T) {
			c := metrics.LoginAttempts.WithLabelValues(tt.protocol, tt.outcome, tt.reason)
			before := testutil.ToFloat64(c)
			h.svc.Login(context.Background(), Request{Protocol: tt.protocol, Remote: netip.MustParseAddrPort("192.0.2.7:1000"),
				TLS: tt.tls, User: tt.user, Password: tt.password})
			if got := testutil.ToFloat64(c) - before; got != 1 {
				t.Errorf("counter went up by %v, want 1", got)
			}
		})
	}
}
