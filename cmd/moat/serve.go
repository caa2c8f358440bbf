package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"moat/audit"
	"moat/auth"
	"moat/config"
	"moat/internal/control"
	"moat/internal/tlsutil"
	"moat/internal/yamlx"
	"moat/metrics"
	"moat/policies"
	"moat/proxy"
	"moat/resolver"
	"moat/store/mailbox"
	"moat/store/users"
)

// load reads the configuration and the policy files it names. problems
// holds every error and warning, positioned; rt is nil when any is an
// error.
func load(path string) (rt *proxy.Runtime, problems yamlx.Errors) {
	cfg, problems := loadConfig(path)
	if cfg == nil {
		return nil, problems
	}
	set, errs := policies.Load(cfg.Policies)
	problems = append(problems, errs...)
	if problems.Err() != nil {
		return nil, problems
	}
	return &proxy.Runtime{Cfg: cfg, Policies: set}, problems
}

// loadConfig reads the config file, or the embedded default for "".
// The config is nil when problems hold an error.
func loadConfig(path string) (*config.Config, yamlx.Errors) {
	if path == "" {
		return config.Default(), nil
	}
	cfg, errs := config.Load(path)
	if errs.Err() != nil {
		return nil, errs
	}
	return cfg, errs
}

// loadCert fills rt.Cert from the configured files, or with the
// self-signed certificate kept in data_dir.
func loadCert(rt *proxy.Runtime, log *audit.Logger) error {
	c := rt.Cfg
	if c.TLS.CertFile != "" {
		cert, err := tlsutil.Load(c.TLS.CertFile, c.TLS.KeyFile)
		if err != nil {
			return err
		}
		rt.Cert = cert
		return nil
	}
	dir := filepath.Join(c.DataDir, "tls")
	cert, made, err := tlsutil.SelfSigned(dir, c.Hostname)
	if err != nil {
		return err
	}
	rt.Cert = cert
	log.Warn("tls.self_signed", zap.String("message",
		"no tls.cert_file configured: serving a self-signed certificate; configure a real one for production"),
		zap.String("file.path", filepath.Join(dir, "selfsigned.crt")), zap.Bool("moat.created", made))
	return nil
}

func printProblems(w io.Writer, errs yamlx.Errors) {
	errs.Sort()
	for _, e := range errs {
		fmt.Fprintln(w, e)
	}
}

func serve(ctx context.Context, path string, stdout, stderr io.Writer) int {
	gogc, memLimit := tuneGC()
	rt, problems := load(path)
	printProblems(stderr, problems)
	if rt == nil {
		return exitFail
	}
	cfg := rt.Cfg
	log, err := audit.New(cfg.Log)
	if err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	defer log.Close()
	for _, w := range problems {
		log.Warn("config.warning", zap.String("message", w.Error()))
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		fmt.Fprintf(stderr, "moat: data_dir: %v\n", err)
		return exitFail
	}
	if err := loadCert(rt, log); err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	if rt.DNS, err = newResolver(cfg.DNS); err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	redis.SetLogger(redisLog{log})
	rt.Users = users.Open(usersPath(cfg))
	authSvc, rdb := newAuth(rt, log)
	if rdb != nil {
		defer rdb.Close()
		// The SMTP rate limits shared across gateways, on a client of
		// their own so that their round trips are counted apart.
		rt.Redis = newRedisClient(cfg.Redis.Addr, "rate")
		defer rt.Redis.Close()
	}
	rt.Auth = authSvc
	rt.Mailboxes = mailbox.Open(cfg.DataDir)
	if rt.Greylist, err = openGreylistStore(cfg); err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	defer rt.Greylist.Close()
	if rt.Quarantine, err = openQuarantine(cfg, log); err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	defer rt.Quarantine.Close()
	srv, err := proxy.New(rt, log)
	if err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	mux := http.NewServeMux()
	newGreylistAdmin(rt.Greylist, log).handlers(mux)
	(&quarantineAdmin{store: rt.Quarantine, srv: srv, log: log}).handlers(mux)
	ctl, err := control.Listen(control.Path(cfg.DataDir), mux)
	if err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	defer ctl.Close()
	if err := srv.Listen(); err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	mail, err := listenMail(srv, log)
	if err != nil {
		srv.Shutdown(context.Background())
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	hl := &health{cfg: func() *config.Config { return srv.Runtime().Cfg }}
	adminMux := http.NewServeMux()
	adminHandlers(adminMux, hl)
	adminMux.Handle("GET /metrics", metrics.Handler())
	if cfg.Admin.Pprof {
		adminMux.HandleFunc("/debug/pprof/", pprof.Index)
		adminMux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		adminMux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		adminMux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		adminMux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	metrics.RegisterQuarantine(rt.Quarantine.Count)
	if _, ok := log.SyslogStats(); ok {
		metrics.RegisterSyslog(func() (queued, sent, dropped uint64) {
			st, _ := log.SyslogStats()
			return st.Queued, st.Sent, st.Dropped
		})
	}
	admin, err := listenAdmin(cfg.Admin.Addr, adminMux)
	if err != nil {
		mail.shutdown(context.Background())
		srv.Shutdown(context.Background())
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	var addrs []string
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.String())
	}
	log.Event("moat.started", zap.String("service.version", versionString()), zap.Strings("moat.smtp_listeners", addrs),
		zap.Strings("moat.pop3_listeners", mail.addrs("pop3")), zap.Strings("moat.imap_listeners", mail.addrs("imap")),
		zap.String("moat.admin", cfg.Admin.Addr),
		zap.String("moat.config", configName(path)), zap.String("moat.data_dir", cfg.DataDir),
		zap.String("moat.gogc", gogc), zap.String("moat.memory_limit", memLimit))

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv.Serve(sctx)
	mail.serve(log)
	admin.serve()
	defer admin.shutdown(context.Background())
	watch, err := newWatcher()
	if err != nil {
		log.Warn("config.watch", zap.String("message", "not watching policy files (reload with SIGHUP): "+err.Error()))
	} else {
		defer watch.close()
		watch.set(watchDirs(path, cfg.Policies))
	}
	var changed <-chan struct{}
	if watch != nil {
		changed = watch.C
	}
	for {
		var sig os.Signal
		select {
		case sig = <-sigs:
		case <-changed:
			hl.reloaded(reload(srv, mail, path, log, "file change"))
			watch.set(watchDirs(path, srv.Runtime().Cfg.Policies))
			continue
		}
		if sig == syscall.SIGUSR1 {
			// logrotate moved log.output away: write to a new file.
			if err := log.Reopen(); err != nil {
				log.Error("log.reopen", zap.String("event.outcome", "failure"), zap.String("error.message", err.Error()))
			} else {
				log.Event("log.reopen", zap.String("event.outcome", "success"))
			}
			continue
		}
		if sig == syscall.SIGHUP {
			hl.reloaded(reload(srv, mail, path, log, "SIGHUP"))
			if watch != nil {
				watch.set(watchDirs(path, srv.Runtime().Cfg.Policies))
			}
			continue
		}
		hl.stopping.Store(true)
		log.Event("moat.stopping", zap.String("message", "signal "+sig.String()+": finishing transactions in progress"),
			zap.Duration("moat.shutdown_timeout", srv.Runtime().Cfg.ShutdownTimeout.D()))
		tctx, tcancel := context.WithTimeout(ctx, srv.Runtime().Cfg.ShutdownTimeout.D())
		// Both at once: each waits for its own sessions within the
		// same deadline.
		mailErr := make(chan error, 1)
		go func() { mailErr <- mail.shutdown(tctx) }()
		err := srv.Shutdown(tctx)
		if merr := <-mailErr; err == nil {
			err = merr
		}
		tcancel()
		outcome := "success"
		if err != nil {
			outcome = "failure"
		}
		log.Event("moat.stopped", zap.String("event.outcome", outcome))
		return exitOK
	}
}

func configName(path string) string {
	if path == "" {
		return "<embedded default>"
	}
	return path
}

// newResolver builds the one caching resolver every check shares.
func newResolver(c config.DNS) (*resolver.Resolver, error) {
	r, err := resolver.New(resolver.Config{Servers: c.Servers, Timeout: c.Timeout.D()})
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	return r, nil
}

// reload re-reads everything; on any error the running configuration
// stays and the problems are logged.
func reload(srv *proxy.Server, mail *mailServices, path string, log *audit.Logger, why string) error {
	rt, problems := load(path)
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.Error())
	}
	if rt == nil {
		log.Error("config.reload", zap.String("event.outcome", "failure"), zap.Strings("error.message", msgs),
			zap.String("event.reason", why), zap.String("message", "configuration not reloaded; the previous one keeps running"))
		return errors.New(strings.Join(msgs, "; "))
	}
	var err error
	if err = loadCert(rt, log); err != nil {
		log.Error("config.reload", zap.String("event.outcome", "failure"), zap.Strings("error.message", []string{err.Error()}),
			zap.String("message", "configuration not reloaded; the previous one keeps running"))
		return err
	}
	old := srv.Runtime().Cfg
	rt.Greylist = srv.Runtime().Greylist
	rt.Quarantine = srv.Runtime().Quarantine
	rt.Users = srv.Runtime().Users
	rt.Mailboxes = srv.Runtime().Mailboxes
	rt.Redis = srv.Runtime().Redis
	// One login authority for the process: its failure counters outlive
	// reloads; only the settings change.
	rt.Auth = srv.Runtime().Auth
	rt.Quarantine.SetLifetime(rt.Cfg.Quarantine.Lifetime.D())
	if old.Greylist != rt.Cfg.Greylist || old.Redis != rt.Cfg.Redis {
		msgs = append(msgs, "greylist.store or redis changed: they take effect at the next restart")
	}
	if slices.Equal(old.DNS.Servers, rt.Cfg.DNS.Servers) && old.DNS.Timeout == rt.Cfg.DNS.Timeout {
		rt.DNS = srv.Runtime().DNS // keep the cache
	} else if rt.DNS, err = newResolver(rt.Cfg.DNS); err != nil {
		log.Error("config.reload", zap.String("event.outcome", "failure"), zap.Strings("error.message", []string{err.Error()}),
			zap.String("message", "configuration not reloaded; the previous one keeps running"))
		return err
	}
	if !slices.Equal(old.SMTP.Listeners, rt.Cfg.SMTP.Listeners) {
		msgs = append(msgs, "smtp.listeners changed: the new listeners take effect at the next restart")
	}
	if !slices.Equal(old.POP3.Listeners, rt.Cfg.POP3.Listeners) || !slices.Equal(old.IMAP.Listeners, rt.Cfg.IMAP.Listeners) {
		msgs = append(msgs, "pop3 or imap listeners changed: they take effect at the next restart")
	}
	if o, n := old.Log, rt.Cfg.Log; o.Format != n.Format || o.Output != n.Output || o.Level != n.Level ||
		!reflect.DeepEqual(o.Syslog, n.Syslog) || old.Admin != rt.Cfg.Admin {
		msgs = append(msgs, "log, syslog or admin settings changed: they take effect at the next restart")
	}
	if old.DataDir != rt.Cfg.DataDir {
		msgs = append(msgs, "data_dir changed: it takes effect at the next restart")
		rt.Cfg.DataDir = old.DataDir
	}
	if old.POP3.Proxy() != rt.Cfg.POP3.Proxy() || old.IMAP.Proxy() != rt.Cfg.IMAP.Proxy() {
		msgs = append(msgs, "pop3 or imap switched between local and proxy mode: that takes effect at the next restart")
	}
	if err := mail.reload(rt.Cfg); err != nil {
		log.Error("config.reload", zap.String("event.outcome", "failure"), zap.Strings("error.message", []string{err.Error()}),
			zap.String("message", "configuration not reloaded; the previous one keeps running"))
		return err
	}
	if a, ok := rt.Auth.(*auth.Service); ok {
		a.SetSettings(authSettings(rt.Cfg))
	}
	srv.Reload(rt)
	files, digest := policyDigest(rt.Cfg.Policies)
	log.Event("config.reload", zap.String("event.outcome", "success"), zap.String("event.reason", why),
		zap.Strings("moat.policy_files", files), zap.String("moat.policy_hash", digest), zap.Strings("moat.warnings", msgs))
	return nil
}

func check(path string, stdout, stderr io.Writer) int {
	rt, problems := load(path)
	printProblems(stderr, problems)
	if rt == nil {
		return exitFail
	}
	fmt.Fprintf(stdout, "%s: ok (%d warnings)\n", configName(path), len(problems))
	return exitOK
}
