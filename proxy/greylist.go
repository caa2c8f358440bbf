package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"time"

	"moat/filters"
	"moat/greylist"
	"moat/metrics"
	"moat/policies"
)

var replyGreylisted = reply(451, "4.7.1", "Greylisted, try again later")

// greylisterKey picks the shared Greylister of one store and parameters.
type greylisterKey struct {
	store  greylist.Store
	params greylist.Params
}

// greylister returns the Greylister for a store and a policy's
// parameters, shared by every session so that its cache of manual allows
// is shared too.
func (srv *Server) greylister(st greylist.Store, p greylist.Params) *greylist.Greylister {
	k := greylisterKey{st, p}
	if g, ok := srv.greylisters.Load(k); ok {
		return g.(*greylist.Greylister)
	}
	g, _ := srv.greylisters.LoadOrStore(k, &greylist.Greylister{Store: st, Params: p, Now: time.Now})
	return g.(*greylist.Greylister)
}

// greylistSkip says why a transaction is not greylisted, or "" when it is.
func (s *session) greylistSkip(t *txn, g *policies.GreylistSettings, d policies.Decision) string {
	if s.rt.Greylist == nil {
		return "no greylist store"
	}
	return greylistExempt(g, d, t.results, s.user != "")
}

// greylistExempt is the policy's side of greylistSkip, shared with
// Explain: authenticated users, DNSWL-listed clients and scores under
// min_score are not greylisted.
func greylistExempt(g *policies.GreylistSettings, d policies.Decision, results []filters.Result, authenticated bool) string {
	switch {
	case authenticated:
		return "authenticated"
	case d.Score < g.MinScore:
		return "score below min_score"
	}
	for _, r := range results {
		if r.Check == "dnsbl" && r.Value == filters.Pass {
			return "DNSWL-listed client"
		}
	}
	return ""
}

// greylistRcpt greylists one recipient at RCPT when the policy says so,
// and returns the refusal, or nil to go on. The outcome is recorded as the
// transaction's "greylist" check result for the event.
func (s *session) greylistRcpt(ctx context.Context, t *txn, pol *policies.Policy, addr Address, d policies.Decision) *Reply {
	g := pol.Greylist()
	if g == nil || g.AtData {
		return nil
	}
	r, refuse := s.greylist(ctx, t, g, d, addr.String(), "")
	t.results = append(t.results, r)
	if refuse {
		gd := pol.Decide(t.results, false)
		gd.Action, gd.Reason = policies.Tempfail, r.Reason
		t.refusedBy = &gd
		return replyGreylisted
	}
	return nil
}

// greylistData greylists a whole message after DATA (checks.greylist.at:
// data), with the body's hash in every recipient's triplet; any recipient
// not yet passed delays the message.
func (s *session) greylistData(ctx context.Context, t *txn, body io.Reader, headerLen int64, d policies.Decision) (filters.Result, bool) {
	g := t.policy.Greylist()
	if g == nil || !g.AtData {
		return filters.Result{}, false
	}
	h := sha256.New()
	if _, err := io.CopyN(io.Discard, body, headerLen); err == nil {
		io.Copy(h, body)
	}
	sum := hex.EncodeToString(h.Sum(nil)[:12])
	var last filters.Result
	refuse := false
	for _, rc := range t.rcpts {
		r, ref := s.greylist(ctx, t, g, d, rc.String(), sum)
		last, refuse = r, refuse || ref
	}
	return last, refuse
}

// greylist asks the store about one triplet.
func (s *session) greylist(ctx context.Context, t *txn, g *policies.GreylistSettings, d policies.Decision, rcpt, bodyHash string) (filters.Result, bool) {
	res := filters.Result{Check: "greylist", Fields: map[string]any{}}
	if why := s.greylistSkip(t, g, d); why != "" {
		res.Value, res.Reason = "skipped", why
		res.Fields["reason"] = why
		metrics.Greylist(res.Value)
		return res, false
	}
	gl := s.srv.greylister(s.rt.Greylist, g.Params)
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := gl.Check(gctx, s.remote.Addr(), t.from.String(), rcpt, bodyHash)
	if err != nil {
		// Greylisting fails open: a store that cannot answer must not
		// hold mail back.
		res.Value, res.Reason = filters.TempError, "greylist store unavailable; failing open: "+err.Error()
		res.Fields["reason"] = res.Reason
		if !errors.Is(err, greylist.ErrUnavailable) {
			s.srv.log.Warn("greylist.error", sessionFields(s, err.Error())...)
		}
		metrics.Greylist(res.Value)
		return res, false
	}
	res.Value = string(v.Verdict)
	metrics.Greylist(res.Value)
	res.Fields["key"] = v.Key
	if g.Observe {
		res.Fields["mode"] = "observe"
	}
	switch v.Verdict {
	case greylist.New, greylist.Early:
		res.Reason = "greylisted until " + v.RetryAfter.UTC().Format(time.RFC3339)
		res.Fields["retry_after"] = v.RetryAfter.UTC().Format(time.RFC3339)
		return res, !g.Observe
	}
	return res, false
}
