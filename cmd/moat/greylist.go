package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"moat/audit"
	"moat/config"
	"moat/greylist"
	"moat/internal/control"
	"moat/internal/yamlx"
	"moat/metrics"
)

// openGreylistStore opens the store the config names: bolt (a file in
// data_dir, the default), memory, or redis (shared between gateways).
func openGreylistStore(c *config.Config) (greylist.Store, error) {
	switch c.Greylist.Store {
	case "memory":
		return greylist.NewMemory(1 << 20), nil
	case "redis":
		s, err := greylist.NewRedis(c.Redis.Addr, greylist.WithRedisHook(metrics.RedisHook("greylist")))
		if err != nil {
			return nil, fmt.Errorf("greylist: %w", err)
		}
		return s, nil
	default:
		s, err := greylist.OpenBolt(filepath.Join(c.DataDir, "greylist.db"))
		if err != nil {
			return nil, fmt.Errorf("greylist: %w", err)
		}
		return s, nil
	}
}

// greylistRequest is what `moat greylist allow|delete` sends.
type greylistRequest struct {
	Client  string   `json:"client,omitempty"`  // a network (CIDR) or an address
	Sender  string   `json:"sender,omitempty"`  // an envelope sender
	Triplet []string `json:"triplet,omitempty"` // client IP, sender, recipient
	For     string   `json:"for,omitempty"`     // how long an allow lasts (Go duration or days)
}

func (r greylistRequest) filter() (greylist.Filter, error) {
	var f greylist.Filter
	if r.Client != "" {
		p, err := yamlx.ParsePrefix(r.Client)
		if err != nil {
			return f, fmt.Errorf("--client: %w", err)
		}
		f.Client = p
	}
	f.Sender = r.Sender
	return f, nil
}

// greylistAdmin runs the admin operations on a store; the running
// gateway and the command (when no gateway runs) share it.
type greylistAdmin struct {
	g   *greylist.Greylister
	log *audit.Logger // nil in the command
}

func newGreylistAdmin(s greylist.Store, log *audit.Logger) *greylistAdmin {
	return &greylistAdmin{g: &greylist.Greylister{Store: s, Params: greylist.DefaultParams(), Now: time.Now}, log: log}
}

func (a *greylistAdmin) list(ctx context.Context, r greylistRequest) ([]greylist.Entry, error) {
	f, err := r.filter()
	if err != nil {
		return nil, err
	}
	return a.g.List(ctx, f)
}

func (a *greylistAdmin) allow(ctx context.Context, r greylistRequest) (string, error) {
	until := time.Now().Add(a.g.Params.Lifetime)
	if r.For != "" {
		d, err := yamlx.ParseDuration(r.For)
		if err != nil {
			return "", fmt.Errorf("--for: %w", err)
		}
		until = time.Now().Add(d)
	}
	var what string
	var err error
	switch {
	case len(r.Triplet) == 3:
		ip, perr := netip.ParseAddr(r.Triplet[0])
		if perr != nil {
			return "", fmt.Errorf("--triplet: client %q is not an IP address", r.Triplet[0])
		}
		what = "triplet " + strings.Join(r.Triplet, " ")
		err = a.g.AllowTriplet(ctx, ip, r.Triplet[1], r.Triplet[2])
	case r.Client != "":
		p, perr := yamlx.ParsePrefix(r.Client)
		if perr != nil {
			return "", fmt.Errorf("--client: %w", perr)
		}
		what = "client " + p.String()
		err = a.g.AllowNetwork(ctx, p, until)
	case r.Sender != "":
		what = "sender " + r.Sender
		err = a.g.AllowSender(ctx, r.Sender, until)
	default:
		return "", errors.New("say what to allow: --client CIDR, --sender ADDR or --triplet IP,SENDER,RCPT")
	}
	if err != nil {
		return "", err
	}
	a.audit("allow", what)
	return what, nil
}

func (a *greylistAdmin) delete(ctx context.Context, r greylistRequest) (int, error) {
	if r.Client == "" && r.Sender == "" {
		return 0, errors.New("say what to delete: --client CIDR and/or --sender ADDR")
	}
	f, err := r.filter()
	if err != nil {
		return 0, err
	}
	n, err := a.g.Delete(ctx, f)
	if err == nil {
		a.audit("delete", fmt.Sprintf("client %q sender %q: %d entries", r.Client, r.Sender, n))
	}
	return n, err
}

// audit logs an admin action in the gateway's event stream.
func (a *greylistAdmin) audit(op, what string) {
	if a.log != nil {
		a.log.Event("greylist.admin", zap.String("event.outcome", "success"), zap.String("moat.operation", op),
			zap.String("moat.target", what))
	}
}

// handlers serves the admin operations on the control socket.
func (a *greylistAdmin) handlers(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/greylist/list", func(w http.ResponseWriter, r *http.Request) {
		var req greylistRequest
		if err := control.Decode(r, &req); err != nil {
			control.Reply(w, nil, err, http.StatusBadRequest)
			return
		}
		es, err := a.list(r.Context(), req)
		control.Reply(w, es, err, http.StatusUnprocessableEntity)
	})
	mux.HandleFunc("POST /v1/greylist/allow", func(w http.ResponseWriter, r *http.Request) {
		var req greylistRequest
		if err := control.Decode(r, &req); err != nil {
			control.Reply(w, nil, err, http.StatusBadRequest)
			return
		}
		what, err := a.allow(r.Context(), req)
		control.Reply(w, map[string]string{"allowed": what}, err, http.StatusUnprocessableEntity)
	})
	mux.HandleFunc("POST /v1/greylist/delete", func(w http.ResponseWriter, r *http.Request) {
		var req greylistRequest
		if err := control.Decode(r, &req); err != nil {
			control.Reply(w, nil, err, http.StatusBadRequest)
			return
		}
		n, err := a.delete(r.Context(), req)
		control.Reply(w, map[string]int{"deleted": n}, err, http.StatusUnprocessableEntity)
	})
}

const greylistUsage = `usage: moat greylist <list|allow|delete> [--config FILE] [flags]

  list   [--client CIDR] [--sender ADDR] [--json]     show triplets, networks and allows
  allow  --client CIDR | --sender ADDR | --triplet IP,SENDER,RCPT [--for 36d]
                                                       let mail through without delay
  delete [--client CIDR] [--sender ADDR]               forget matching entries

The command talks to the running moat serve through data_dir/moat.sock, or
opens the store itself when moat serve is not running.
`

func greylistCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, greylistUsage)
		return exitUsage
	}
	op := args[0]
	fs := flag.NewFlagSet("moat greylist "+op, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded default)")
	var req greylistRequest
	fs.StringVar(&req.Client, "client", "", "client network (CIDR) or address")
	fs.StringVar(&req.Sender, "sender", "", "envelope sender")
	triplet := fs.String("triplet", "", "IP,SENDER,RECIPIENT (allow only)")
	fs.StringVar(&req.For, "for", "", "how long an allow lasts (default: the greylist lifetime, 36d)")
	asJSON := fs.Bool("json", false, "print JSON (list only)")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		return usageError(fs, err)
	}
	if *triplet != "" {
		req.Triplet = strings.Split(*triplet, ",")
		if len(req.Triplet) != 3 {
			fmt.Fprintln(stderr, "moat: --triplet wants IP,SENDER,RECIPIENT")
			return exitUsage
		}
	}
	switch op {
	case "list", "allow", "delete":
	default:
		fmt.Fprintf(stderr, "moat: unknown greylist command %q\n\n%s", op, greylistUsage)
		return exitUsage
	}
	cfg, errs := loadConfig(*path)
	if cfg == nil {
		printProblems(stderr, errs)
		return exitFail
	}
	var out any
	err := control.NewClient(control.Path(cfg.DataDir)).Call(ctx, "POST", "/v1/greylist/"+op, req, &out)
	if errors.Is(err, control.ErrNotRunning) {
		out, err = greylistDirect(ctx, cfg, op, req)
	}
	if err != nil {
		fmt.Fprintf(stderr, "moat: greylist %s: %v\n", op, err)
		return exitFail
	}
	if op != "list" || *asJSON {
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Fprintln(stdout, string(b))
		return exitOK
	}
	// Decode the generic reply back into entries for the table.
	var es []greylist.Entry
	b, _ := json.Marshal(out)
	json.Unmarshal(b, &es)
	printEntries(stdout, es)
	return exitOK
}

// greylistDirect runs an operation on the store itself, when no moat serve
// holds it.
func greylistDirect(ctx context.Context, cfg *config.Config, op string, req greylistRequest) (any, error) {
	if cfg.Greylist.Store == "memory" {
		return nil, errors.New("the memory store lives inside moat serve, which is not running")
	}
	s, err := openGreylistStore(cfg)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	a := newGreylistAdmin(s, nil)
	switch op {
	case "list":
		return a.list(ctx, req)
	case "allow":
		what, err := a.allow(ctx, req)
		return map[string]string{"allowed": what}, err
	default:
		n, err := a.delete(ctx, req)
		return map[string]int{"deleted": n}, err
	}
}

func printEntries(w io.Writer, es []greylist.Entry) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tSTATE\tNETWORK\tSENDER\tRECIPIENT\tFIRST SEEN\tLAST SEEN\tATTEMPTS\tUNTIL")
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05")
	}
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, e := range es {
		network := ""
		if e.Network.IsValid() {
			network = e.Network.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", e.Kind, dash(e.State), dash(network), dash(e.Sender), dash(e.Rcpt),
			ts(e.FirstSeen), ts(e.LastSeen), e.Attempts, ts(e.Until))
	}
	tw.Flush()
	if len(es) == 1 {
		fmt.Fprintln(w, "1 entry")
	} else {
		fmt.Fprintf(w, "%d entries\n", len(es))
	}
}

// redisLog sends go-redis's own messages (failed dials and the like) to
// the debug level of moat's log instead of stderr: the greylist check
// already reports an unreachable Redis in each transaction's event.
type redisLog struct{ log *audit.Logger }

func (r redisLog) Printf(_ context.Context, format string, v ...any) {
	r.log.Debug("redis.client", zap.String("message", fmt.Sprintf(format, v...)))
}
