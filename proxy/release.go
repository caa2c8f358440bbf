package proxy

import (
	"context"
	"fmt"
	"io"
	"strings"

	"go.uber.org/zap"

	"moat/store/mailbox"
)

// Deliver sends a message that moat accepted earlier and kept (a
// quarantine entry being released) on the normal route of its recipients,
// without running the checks again, and returns the next hop's reply
// (2xx: delivered). open returns a fresh reader of the whole message, as
// it is to go out (headers moat added included); size is its length.
// Every recipient must share one destination, as in the transaction that
// produced the message.
func (srv *Server) Deliver(ctx context.Context, from string, rcpts []string, open func() (io.ReadCloser, error), size int64) (*Reply, error) {
	c := srv.rt.Load().Cfg
	if len(rcpts) == 0 {
		return nil, fmt.Errorf("deliver: no recipients")
	}
	addrs := make([]Address, len(rcpts))
	dest := ""
	utf8 := false
	for i, r := range rcpts {
		a, _, err := parseArg("TO:<"+r+">", "TO:", false)
		if err != nil {
			return nil, fmt.Errorf("deliver: recipient %q: %w", r, err)
		}
		route, ok := c.Route(a.ASCIIDomain())
		if !ok {
			return nil, fmt.Errorf("deliver: no route for %s (routes changed since the message was kept?)", r)
		}
		if dest != "" && route.Upstream != dest {
			return nil, fmt.Errorf("deliver: recipients go to %s and %s; release them one by one", dest, route.Upstream)
		}
		dest, addrs[i] = route.Upstream, a
		utf8 = utf8 || a.NonASCII
	}
	if f, _, err := parseArg("FROM:<"+from+">", "FROM:", true); err == nil && f.NonASCII {
		utf8 = true
	}
	if dest == "local" {
		mb := srv.Runtime().Mailboxes
		if mb == nil {
			mb = mailbox.Open(c.DataDir)
		}
		var done []string
		for _, a := range addrs {
			if _, err := localDir(c.DataDir, a); err != nil {
				return nil, fmt.Errorf("deliver: %s: %w", a, err)
			}
			r, err := open()
			if err != nil {
				return nil, err
			}
			// Through the store, so that IMAP sessions idling on the
			// mailbox hear of it at once.
			path, err := mb.Deliver(localUser(a), r)
			r.Close()
			if err != nil {
				for _, p := range done {
					mb.Remove(p)
				}
				return replyNoStorage, nil
			}
			done = append(done, path)
		}
		return reply(250, "2.0.0", "Ok: delivered to %d local mailbox(es)", len(done)), nil
	}
	r, err := open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	warn := func(err error) {
		srv.log.Warn("smtp.upstream_error", zap.String("message", err.Error()), zap.String("moat.upstream", dest))
	}
	p := mailParams{from: from, size: size, utf8: utf8, eightBit: true}
	return srv.sendUpstream(ctx, c, dest, p, strings.Fields(strings.Join(rcpts, " ")), r, warn), nil
}
