package proxy

import (
	"crypto/tls"
	"strings"
	"time"

	"go.uber.org/zap"

	"moat/metrics"
)

// txnEvent is the smtp.transaction event (SPEC.md "The transaction
// event"): one per transaction, accepted or refused.
type txnEvent struct {
	s         *session
	t         *txn
	outcome   string
	action    string
	would     string
	reply     string
	reason    string
	size      int64
	messageID string
	checks    map[string]map[string]any
	score     float64
	policy    string
	upstream  string
}

func (s *session) newEvent(t *txn) *txnEvent {
	ev := &txnEvent{s: s, t: t, checks: map[string]map[string]any{}}
	if t.policy != nil {
		ev.policy = t.policy.Name()
	} else if s.trusted {
		ev.policy = "trusted"
	} else if s.user != "" {
		ev.policy = "authenticated"
	}
	return ev
}

func (ev *txnEvent) fields() []zap.Field {
	s, t := ev.s, ev.t
	to := make([]string, len(t.rcpts))
	for i, r := range t.rcpts {
		to[i] = r.String()
	}
	// Room for the optional fields below: no second allocation.
	fs := make([]zap.Field, 0, 25)
	fs = append(fs,
		zap.String("event.outcome", ev.outcome),
		zap.Int64("event.duration", int64(time.Since(t.start))),
		zap.String("moat.session_id", s.id),
		zap.Int("moat.transaction", t.n),
		zap.String("moat.listener", s.l.name),
		zap.String("source.ip", s.remote.Addr().Unmap().String()),
		zap.Uint16("source.port", s.remote.Port()),
		zap.String("source.domain", s.clientName()),
		zap.String("moat.helo", s.helo),
		zap.String("tls.version", tlsVersion(s.tlsState)),
		zap.String("user.name", s.user),
		zap.String("email.from.address", t.from.String()),
		zap.Strings("email.to.address", to),
		zap.String("email.message_id", ev.messageID),
		zap.Int64("moat.size", ev.size),
		zap.Object("moat.checks", checksObject(ev.checks)),
		zap.Float64("moat.score", ev.score),
		zap.String("moat.policy", ev.policy),
		zap.String("moat.action", ev.action),
		zap.String("moat.reply", ev.reply),
		zap.String("moat.upstream", ev.upstream),
	)
	if len(t.refused) > 0 {
		fs = append(fs, zap.Any("moat.refused_recipients", t.refused))
	}
	if ev.would != "" {
		fs = append(fs, zap.String("moat.would_action", ev.would))
	}
	if ev.reason != "" {
		fs = append(fs, zap.String("moat.reason", ev.reason))
	}
	if s.tarpit > 0 {
		fs = append(fs, zap.Bool("moat.tarpit", true))
	}
	return fs
}

func (srv *Server) logTransaction(ev *txnEvent) {
	metrics.Transaction(ev.action, ev.policy)
	srv.log.Event("smtp.transaction", ev.fields()...)
}

// logConnection writes the smtp.connection event of a session that has
// ended: the one trace of a client refused before any transaction (early
// talkers, HTTP probes, relay scans).
func (srv *Server) logConnection(s *session) {
	outcome := "failure"
	if s.reason == "quit" {
		outcome = "success"
	}
	fs := []zap.Field{
		zap.String("event.outcome", outcome),
		zap.Int64("event.duration", int64(time.Since(s.start))),
		zap.String("moat.session_id", s.id),
		zap.String("moat.listener", s.l.name),
		zap.String("source.ip", s.remote.Addr().Unmap().String()),
		zap.Uint16("source.port", s.remote.Port()),
		zap.String("source.domain", s.clientName()),
		zap.String("moat.helo", s.helo),
		zap.String("tls.version", tlsVersion(s.tlsState)),
		zap.String("user.name", s.user),
		zap.Int("moat.transactions", s.ntx),
		zap.Int("moat.accepted", s.accepted),
		zap.Int("moat.errors", s.errs),
		zap.String("moat.reason", s.reason),
	}
	if s.proxy.IsValid() {
		// The PROXY header or XCLIENT named the client; this is who sent it.
		fs = append(fs, zap.String("moat.proxy_ip", s.proxy.Addr().Unmap().String()))
	}
	if s.tarpit > 0 {
		fs = append(fs, zap.Bool("moat.tarpit", true))
	}
	srv.log.Event("smtp.connection", fs...)
}

// sessionFields are the fields of a session-level event (warnings, errors).
func sessionFields(s *session, msg string) []zap.Field {
	return []zap.Field{
		zap.String("moat.session_id", s.id),
		zap.String("moat.listener", s.l.name),
		zap.String("source.ip", s.remote.Addr().Unmap().String()),
		zap.String("message", msg),
	}
}

// tlsVersion gives "1.3" for TLS 1.3, as ECS's tls.version wants.
func tlsVersion(st *tls.ConnectionState) string {
	if st == nil {
		return ""
	}
	return strings.TrimPrefix(tls.VersionName(st.Version), "TLS ")
}

func tlsVersionName(v uint16) string {
	return strings.ReplaceAll(tls.VersionName(v), " ", "v")
}

func cipherName(c uint16) string { return tls.CipherSuiteName(c) }
