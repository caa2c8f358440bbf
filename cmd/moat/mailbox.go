package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"moat/audit"
	"moat/auth"
	"moat/config"
	"moat/internal/yamlx"
	"moat/pop3imap/imapd"
	"moat/pop3imap/pop3"
	"moat/pop3imap/storeadapter"
	"moat/proxy"
)

// authSettings maps the config's auth section (and the trusted networks,
// which may send passwords in clear) onto the login authority's settings.
func authSettings(c *config.Config) auth.Settings {
	prefixes := func(ps []yamlx.Prefix) []netip.Prefix {
		out := make([]netip.Prefix, len(ps))
		for i, p := range ps {
			out[i] = p.P()
		}
		return out
	}
	delays := make([]time.Duration, len(c.Auth.FailureDelays))
	for i, d := range c.Auth.FailureDelays {
		delays[i] = d.D()
	}
	return auth.Settings{
		AllowPlaintext:  c.Auth.AllowPlaintextAuth,
		Trusted:         prefixes(c.SMTP.TrustedNetworks),
		Allow:           prefixes(c.Auth.AllowNetworks),
		Delays:          delays,
		MaxFailures:     c.Auth.MaxFailuresPerIP,
		MaxUserFailures: c.Auth.MaxFailuresPerUser,
		Window:          c.Auth.FailureWindow.D(),
		Lockout:         c.Auth.Lockout.D(),
	}
}

// mailServices are the POP3 and IMAP4 listeners over the built-in store.
type mailServices struct {
	pop3 *pop3.Server
	imap *imapd.Server
	lns  []mailListener
	wg   sync.WaitGroup
}

type mailListener struct {
	ln    net.Listener
	proto string // pop3 | imap
	l     config.MailboxListener
	name  string // pop3, pop3s, imap, imaps: moat.listener in events
}

// listenMail binds every POP3 and IMAP listener of the config (none when
// the config has none). TLS certificates come from srv's runtime, so a
// reloaded certificate serves new connections at once.
func listenMail(srv *proxy.Server, log *audit.Logger) (*mailServices, error) {
	rt := srv.Runtime()
	cfg := rt.Cfg
	m := &mailServices{}
	lcfg := net.ListenConfig{KeepAlive: -1} // every stage has its own deadline
	for _, svc := range []struct {
		proto string
		conf  config.Mailbox
	}{{"pop3", cfg.POP3}, {"imap", cfg.IMAP}} {
		for _, l := range svc.conf.Listeners {
			ln, err := lcfg.Listen(context.Background(), "tcp", l.Addr)
			if err != nil {
				m.closeListeners()
				return nil, fmt.Errorf("%s: listen %s: %w", svc.proto, l.Addr, err)
			}
			name := svc.proto
			if l.ImplicitTLS {
				name += "s"
			}
			m.lns = append(m.lns, mailListener{ln: ln, proto: svc.proto, l: l, name: name})
		}
	}
	if len(m.lns) == 0 {
		return m, nil
	}
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return srv.Runtime().Cert, nil
		},
	}
	m.pop3 = pop3.New(pop3.Options{Backend: storeadapter.Backend{Store: rt.Mailboxes}, Auth: rt.Auth,
		TLSConfig: tlsConf, Hostname: cfg.Hostname, Log: log})
	m.imap = imapd.New(imapd.Options{Store: rt.Mailboxes, Auth: rt.Auth, TLSConfig: tlsConf,
		Hostname: cfg.Hostname, Log: log})
	return m, nil
}

// addrs lists the bound addresses of one protocol, for moat.started.
func (m *mailServices) addrs(proto string) []string {
	var out []string
	for _, l := range m.lns {
		if l.proto == proto {
			out = append(out, l.ln.Addr().String())
		}
	}
	return out
}

// serve accepts on every listener in the background.
func (m *mailServices) serve(log *audit.Logger) {
	for _, l := range m.lns {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			var err error
			if l.proto == "pop3" {
				err = m.pop3.Serve(l.ln, pop3.Listener{Name: l.name, ImplicitTLS: l.l.ImplicitTLS})
			} else {
				err = m.imap.Serve(l.ln, imapd.Listener{Name: l.name, ImplicitTLS: l.l.ImplicitTLS})
			}
			if err != nil && !errors.Is(err, pop3.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				log.Error(l.proto+".error", zap.String("moat.listener", l.name), zap.String("error.message", err.Error()))
			}
		}()
	}
}

func (m *mailServices) closeListeners() {
	for _, l := range m.lns {
		l.ln.Close()
	}
}

// shutdown stops both services: POP3 sessions may finish (and reach their
// UPDATE state) until ctx ends; IMAP sessions are cut at once (go-imap has
// no graceful stop, and IMAP keeps no uncommitted state to lose).
func (m *mailServices) shutdown(ctx context.Context) error {
	var err error
	if m.pop3 != nil {
		err = m.pop3.Shutdown(ctx)
	}
	if m.imap != nil {
		if cerr := m.imap.Close(); err == nil {
			err = cerr
		}
	}
	m.closeListeners()
	m.wg.Wait()
	return err
}
