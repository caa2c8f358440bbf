package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"

	"moat/audit"
	"moat/auth"
	"moat/config"
	"moat/internal/yamlx"
	"moat/metrics"
	"moat/pop3imap/imapd"
	"moat/pop3imap/mailproxy"
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

// newAuth builds the process's login authority: failure counters shared
// through Redis when redis.addr is set (a cluster of gateways locks out
// together; while Redis is unreachable each node counts on its own), else
// in memory. The Redis client (nil without redis.addr) is the caller's to
// close.
func newAuth(rt *proxy.Runtime, log *audit.Logger) (*auth.Service, *redis.Client) {
	cfg := rt.Cfg
	if cfg.Redis.Addr == "" {
		return auth.New(rt.Users, authSettings(cfg), log), nil
	}
	rdb := newRedisClient(cfg.Redis.Addr, "auth")
	return auth.New(rt.Users, authSettings(cfg), log, auth.WithRedis(rdb)), rdb
}

// newRedisClient is a client of the shared Redis for one user of it
// (auth, rate), its round trips counted under that name. Each call is
// one attempt bounded at 500 ms: a login or an SMTP command must not wait
// on retries, and each user falls back to this process's memory while
// Redis is away.
func newRedisClient(addr, name string) *redis.Client {
	const timeout = 500 * time.Millisecond
	rdb := redis.NewClient(&redis.Options{
		Addr:        addr,
		DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout, PoolTimeout: timeout,
		DialerRetries: 1, MaxRetries: -1,
		ContextTimeoutEnabled:    true,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	rdb.AddHook(metrics.RedisHook(name))
	return rdb
}

// mailServices are the POP3 and IMAP4 listeners: over the built-in store,
// or proxying logins to internal servers (proxy mode).
type mailServices struct {
	pop3      *pop3.Server
	imap      *imapd.Server
	pop3Proxy *mailproxy.Server
	imapProxy *mailproxy.Server
	lns       []mailListener
	wg        sync.WaitGroup
}

type mailListener struct {
	ln    net.Listener
	proto string // pop3 | imap
	l     config.MailboxListener
	name  string // pop3, pop3s, imap, imaps: moat.listener in events
}

// upstreamCAs is the pool that verifies upstream certificates: the
// system's roots plus the CA in ca_file, if any.
func upstreamCAs(key, file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if file == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: %s holds no PEM certificate", key, file)
	}
	return pool, nil
}

// proxyRoute maps a login to its upstream from one service's config.
func proxyRoute(name string, m config.Mailbox) (func(string) (mailproxy.Upstream, bool), error) {
	pool, err := upstreamCAs(name+".ca_file", m.CAFile)
	if err != nil {
		return nil, err
	}
	return func(user string) (mailproxy.Upstream, bool) {
		addr := m.UpstreamFor(user)
		return mailproxy.Upstream{Addr: addr, TLS: m.TLSFor(addr), RootCAs: pool}, addr != ""
	}, nil
}

// listenMail binds every POP3 and IMAP listener of the config (none when
// the config has none). TLS certificates come from srv's runtime, so a
// reloaded certificate serves new connections at once.
func listenMail(srv *proxy.Server, log *audit.Logger) (*mailServices, error) {
	rt := srv.Runtime()
	cfg := rt.Cfg
	m := &mailServices{}
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return srv.Runtime().Cert, nil
		},
	}
	for _, svc := range []struct {
		proto string
		conf  config.Mailbox
	}{{"pop3", cfg.POP3}, {"imap", cfg.IMAP}} {
		if len(svc.conf.Listeners) == 0 {
			continue
		}
		switch {
		case svc.conf.Proxy():
			route, err := proxyRoute(svc.proto, svc.conf)
			if err != nil {
				return nil, err
			}
			p := mailproxy.New(mailproxy.Options{Protocol: svc.proto, Auth: rt.Auth, Route: route,
				TLSConfig: tlsConf, Hostname: cfg.Hostname, Log: log})
			if svc.proto == "pop3" {
				m.pop3Proxy = p
			} else {
				m.imapProxy = p
			}
		case svc.proto == "pop3":
			m.pop3 = pop3.New(pop3.Options{Backend: storeadapter.Backend{Store: rt.Mailboxes}, Auth: rt.Auth,
				TLSConfig: tlsConf, Hostname: cfg.Hostname, Log: log})
		default:
			m.imap = imapd.New(imapd.Options{Store: rt.Mailboxes, Auth: rt.Auth, TLSConfig: tlsConf,
				Hostname: cfg.Hostname, Log: log})
		}
	}
	lcfg := net.ListenConfig{KeepAlive: -1} // every stage has its own deadline
	for _, svc := range []struct {
		proto string
		conf  config.Mailbox
	}{{"pop3", cfg.POP3}, {"imap", cfg.IMAP}} {
		for _, l := range svc.conf.Listeners {
			ln, err := lcfg.Listen(context.Background(), "tcp", l.Addr)
			if err != nil {
				m.shutdown(context.Background())
				return nil, fmt.Errorf("%s: listen %s: %w", svc.proto, l.Addr, err)
			}
			name := svc.proto
			if l.ImplicitTLS {
				name += "s"
			}
			m.lns = append(m.lns, mailListener{ln: ln, proto: svc.proto, l: l, name: name})
		}
	}
	return m, nil
}

// reload hands a new configuration's upstreams to the proxies (listeners
// and modes change only at a restart).
func (m *mailServices) reload(cfg *config.Config) error {
	for _, p := range []struct {
		srv  *mailproxy.Server
		name string
		conf config.Mailbox
	}{{m.pop3Proxy, "pop3", cfg.POP3}, {m.imapProxy, "imap", cfg.IMAP}} {
		if p.srv == nil || !p.conf.Proxy() {
			continue
		}
		route, err := proxyRoute(p.name, p.conf)
		if err != nil {
			return err
		}
		p.srv.SetRoute(route)
	}
	return nil
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
			switch {
			case l.proto == "pop3" && m.pop3Proxy != nil:
				err = m.pop3Proxy.Serve(l.ln, mailproxy.Listener{Name: l.name, ImplicitTLS: l.l.ImplicitTLS})
			case l.proto == "imap" && m.imapProxy != nil:
				err = m.imapProxy.Serve(l.ln, mailproxy.Listener{Name: l.name, ImplicitTLS: l.l.ImplicitTLS})
			case l.proto == "pop3":
				err = m.pop3.Serve(l.ln, pop3.Listener{Name: l.name, ImplicitTLS: l.l.ImplicitTLS})
			default:
				err = m.imap.Serve(l.ln, imapd.Listener{Name: l.name, ImplicitTLS: l.l.ImplicitTLS})
			}
			if err != nil && !errors.Is(err, pop3.ErrServerClosed) && !errors.Is(err, mailproxy.ErrServerClosed) &&
				!errors.Is(err, net.ErrClosed) {
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

// shutdown stops every service: POP3 sessions and proxied sessions may
// finish until ctx ends; IMAP sessions over the store are cut at once
// (go-imap has no graceful stop, and the store holds no uncommitted
// state).
func (m *mailServices) shutdown(ctx context.Context) error {
	var errs []error
	if m.pop3 != nil {
		errs = append(errs, m.pop3.Shutdown(ctx))
	}
	for _, p := range []*mailproxy.Server{m.pop3Proxy, m.imapProxy} {
		if p != nil {
			errs = append(errs, p.Shutdown(ctx))
		}
	}
	if m.imap != nil {
		errs = append(errs, m.imap.Close())
	}
	m.closeListeners()
	m.wg.Wait()
	return errors.Join(errs...)
}
