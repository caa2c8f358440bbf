package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"go.uber.org/zap"

	"moat/audit"
	"moat/config"
	"moat/internal/control"
	"moat/internal/yamlx"
	"moat/proxy"
	"moat/store/quarantine"
)

// quarantineDir is where the quarantine lives in data_dir.
func quarantineDir(c *config.Config) string { return filepath.Join(c.DataDir, "quarantine") }

// openQuarantine opens the store moat serve keeps the quarantined messages
// in, with a sweeper that removes expired entries every hour.
func openQuarantine(c *config.Config, log *audit.Logger) (*quarantine.Store, error) {
	s, err := quarantine.Open(quarantineDir(c), c.Quarantine.Lifetime.D(), quarantine.WithSweeper(time.Hour, func(n int, err error) {
		if err != nil {
			log.Error("quarantine.expire", zap.String("event.outcome", "failure"), zap.Int("moat.expired", n),
				zap.String("error.message", err.Error()))
			return
		}
		log.Event("quarantine.expire", zap.String("event.outcome", "success"), zap.Int("moat.expired", n))
	}))
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	return s, nil
}

// quarantineRequest is what `moat quarantine …` sends on the control socket.
type quarantineRequest struct {
	ID     string    `json:"id,omitempty"`
	Rcpt   string    `json:"rcpt,omitempty"`
	Sender string    `json:"sender,omitempty"`
	Since  time.Time `json:"since,omitzero"`
	Force  bool      `json:"force,omitempty"` // release an entry an interrupted release left behind
}

// quarantineEntry is what show returns: the metadata and the header.
type quarantineEntry struct {
	Meta   quarantine.Meta `json:"meta"`
	Header string          `json:"header"`
}

// quarantineResult is what release and delete return.
type quarantineResult struct {
	ID    string `json:"id"`
	Reply string `json:"reply,omitempty"` // the next hop's reply to a release
}

// maxShowHeader bounds the header show returns.
const maxShowHeader = 4 << 20

// quarantineAdmin runs the admin operations on the store; the running
// gateway and the command (when no gateway runs) share it.
type quarantineAdmin struct {
	store *quarantine.Store
	srv   *proxy.Server // delivers releases; nil in the command
	log   *audit.Logger // nil in the command
}

func (a *quarantineAdmin) list(r quarantineRequest) ([]quarantine.Meta, error) {
	ms, err := a.store.List(quarantine.Filter{Rcpt: r.Rcpt, Sender: r.Sender, Since: r.Since})
	if ms == nil {
		ms = []quarantine.Meta{}
	}
	return ms, err
}

func (a *quarantineAdmin) show(r quarantineRequest) (quarantineEntry, error) {
	m, err := a.store.Get(r.ID)
	if err != nil {
		return quarantineEntry{}, err
	}
	h, err := a.store.Header(m.ID, maxShowHeader)
	if err != nil {
		return quarantineEntry{}, err
	}
	return quarantineEntry{Meta: m, Header: string(h)}, nil
}

// release delivers an entry on its normal route through the running
// gateway and returns the next hop's reply. A reply that is not 2xx keeps
// the entry and is the error.
func (a *quarantineAdmin) release(ctx context.Context, r quarantineRequest) (quarantineResult, error) {
	res := quarantineResult{ID: canonicalID(r.ID)}
	if a.srv == nil {
		return res, errors.New("moat serve must run to release: it owns the routes and the upstream connections")
	}
	var meta quarantine.Meta
	deliver := func(m quarantine.Meta, open func() (io.ReadCloser, error), size int64) error {
		meta = m
		rep, err := a.srv.Deliver(ctx, m.Envelope.From, m.Envelope.Rcpts, open, size)
		if err != nil {
			return err
		}
		res.Reply = rep.String()
		if rep.Code < 200 || rep.Code > 299 {
			return fmt.Errorf("the next hop replied %s; the message stays in the quarantine", res.Reply)
		}
		return nil
	}
	release := a.store.Release
	if r.Force {
		release = a.store.ForceRelease
	}
	err := release(ctx, r.ID, deliver)
	if errors.Is(err, quarantine.ErrInterrupted) {
		err = fmt.Errorf("%w (moat quarantine delete %s, or moat quarantine release --force %s)", err, r.ID, r.ID)
	}
	if !errors.Is(err, quarantine.ErrBadID) {
		a.audit("release", r.ID, meta, res.Reply, err)
	}
	return res, err
}

func (a *quarantineAdmin) delete(r quarantineRequest) (quarantineResult, error) {
	m, _ := a.store.Get(r.ID) // for the event; Delete says what is wrong
	err := a.store.Delete(r.ID)
	if !errors.Is(err, quarantine.ErrBadID) {
		a.audit("delete", r.ID, m, "", err)
	}
	return quarantineResult{ID: canonicalID(r.ID)}, err
}

// canonicalID returns id as the store spells it, or as given when it is
// not an id at all.
func canonicalID(id string) string {
	if c, err := quarantine.CheckID(id); err == nil {
		return c
	}
	return id
}

// audit logs an admin action in the gateway's event stream.
func (a *quarantineAdmin) audit(op, id string, m quarantine.Meta, reply string, err error) {
	if a.log == nil {
		return
	}
	fields := []zap.Field{zap.String("moat.operation", op), zap.String("moat.quarantine_id", canonicalID(id))}
	if m.ID != "" {
		fields = append(fields, zap.String("email.from.address", m.Envelope.From), zap.Strings("email.to.address", m.Envelope.Rcpts))
	}
	if op == "release" {
		fields = append(fields, zap.String("moat.reply", reply))
	}
	if err != nil {
		fields = append(fields, zap.String("event.outcome", "failure"), zap.String("error.message", err.Error()))
	} else {
		fields = append(fields, zap.String("event.outcome", "success"))
	}
	a.log.Event("quarantine.admin", fields...)
}

// handlers serves the admin operations on the control socket.
func (a *quarantineAdmin) handlers(mux *http.ServeMux) {
	handle := func(op string, f func(ctx context.Context, r quarantineRequest) (any, error)) {
		mux.HandleFunc("POST /v1/quarantine/"+op, func(w http.ResponseWriter, r *http.Request) {
			var req quarantineRequest
			if err := control.Decode(r, &req); err != nil {
				control.Reply(w, nil, err, http.StatusBadRequest)
				return
			}
			out, err := f(r.Context(), req)
			control.Reply(w, out, err, http.StatusUnprocessableEntity)
		})
	}
	handle("list", func(_ context.Context, r quarantineRequest) (any, error) { return a.list(r) })
	handle("show", func(_ context.Context, r quarantineRequest) (any, error) { return a.show(r) })
	handle("release", func(ctx context.Context, r quarantineRequest) (any, error) {
		// The delivery finishes even when the command gives up waiting:
		// cutting it halfway could leave the next hop with the message
		// and the entry quarantined.
		return a.release(context.WithoutCancel(ctx), r)
	})
	handle("delete", func(_ context.Context, r quarantineRequest) (any, error) { return a.delete(r) })
}

const quarantineUsage = `usage: moat quarantine <list|show|release|delete> [--config FILE] [flags] [ID...]

  list    [--rcpt S] [--sender S] [--since 24h|2006-01-02T15:04:05Z] [--json]
                              the kept messages, newest first (substrings match)
  show    [--raw] [--json] ID the envelope, verdict and header of one message;
                              --raw prints the whole message
  release [--force] ID...     deliver on the normal route, as if accepted; the
                              entry goes once the next hop says 2xx
  delete  ID...               remove for good

The command talks to the running moat serve through data_dir/moat.sock.
Without it, list, show and delete work on data_dir/quarantine directly;
release needs moat serve (it owns the routes and upstream connections).
--force releases an entry left "releasing" by a release that moat serve
could not finish: check first that its recipients did not get it.
`

func quarantineCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, quarantineUsage)
		return exitUsage
	}
	op := args[0]
	switch op {
	case "list", "show", "release", "delete":
	case "help", "--help", "-h":
		fmt.Fprint(stdout, quarantineUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "moat: unknown quarantine command %q\n\n%s", op, quarantineUsage)
		return exitUsage
	}
	fs := flag.NewFlagSet("moat quarantine "+op, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded default)")
	var req quarantineRequest
	var since string
	var asJSON, raw *bool
	switch op {
	case "list":
		fs.StringVar(&req.Rcpt, "rcpt", "", "recipient substring")
		fs.StringVar(&req.Sender, "sender", "", "sender substring")
		fs.StringVar(&since, "since", "", "received within this duration (24h, 7d) or since this time (RFC 3339)")
		asJSON = fs.Bool("json", false, "print JSON")
	case "show":
		raw = fs.Bool("raw", false, "print the whole message, as it would go out")
		asJSON = fs.Bool("json", false, "print JSON")
	case "release":
		fs.BoolVar(&req.Force, "force", false, "release an entry left in the releasing state")
	}
	ids, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return usageError(fs, err)
	}
	switch {
	case op == "list" && len(ids) > 0:
		return usageError(fs, nil)
	case op == "show" && len(ids) != 1:
		fmt.Fprintln(stderr, "moat: quarantine show wants one ID")
		return exitUsage
	case (op == "release" || op == "delete") && len(ids) == 0:
		fmt.Fprintf(stderr, "moat: quarantine %s wants at least one ID\n", op)
		return exitUsage
	}
	if since != "" {
		if req.Since, err = parseSince(since, time.Now()); err != nil {
			fmt.Fprintf(stderr, "moat: --since: %v\n", err)
			return exitUsage
		}
	}
	cfg, errs := loadConfig(*path)
	if cfg == nil {
		printProblems(stderr, errs)
		return exitFail
	}
	q := &quarantineClient{cfg: cfg, c: control.NewClient(control.Path(cfg.DataDir))}
	defer q.close()

	switch op {
	case "list":
		var ms []quarantine.Meta
		if err := q.call(ctx, op, req, &ms); err != nil {
			fmt.Fprintf(stderr, "moat: quarantine list: %v\n", err)
			return exitFail
		}
		if *asJSON {
			printJSON(stdout, ms)
		} else {
			printQuarantine(stdout, ms)
		}
		return exitOK
	case "show":
		req.ID = ids[0]
		if *raw {
			// The message file never changes once kept, so it is read
			// from data_dir even beside a running moat serve, rather than
			// sent through the socket as JSON.
			return q.printRaw(ids[0], stdout, stderr)
		}
		var e quarantineEntry
		if err := q.call(ctx, op, req, &e); err != nil {
			fmt.Fprintf(stderr, "moat: quarantine show %s: %v\n", ids[0], err)
			return exitFail
		}
		if *asJSON {
			printJSON(stdout, e)
		} else {
			printQuarantineEntry(stdout, e)
		}
		return exitOK
	}
	code := exitOK
	for _, id := range ids {
		req.ID = id
		var res quarantineResult
		err := q.call(ctx, op, req, &res)
		if errors.Is(err, control.ErrNotRunning) {
			fmt.Fprintf(stderr, "moat: quarantine release: moat serve must run to release (it owns the routes and the upstream connections): %v\n", err)
			return exitFail
		}
		if err != nil {
			fmt.Fprintf(stderr, "moat: quarantine %s %s: %v\n", op, id, err)
			code = exitFail
			continue
		}
		if op == "release" {
			fmt.Fprintf(stdout, "%s: released: %s\n", res.ID, res.Reply)
		} else {
			fmt.Fprintf(stdout, "%s: deleted\n", res.ID)
		}
	}
	return code
}

// parseInterleaved parses flags that may come before, between or after
// the positional arguments (`show ID --raw`), and returns the latter.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if i := len(args) - len(rest); i > 0 && args[i-1] == "--" {
			return append(pos, rest...), nil // after "--" everything is an argument
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parseSince reads --since: a duration back from now, or a time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := yamlx.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("want a duration such as 24h or 7d, or a time such as 2006-01-02T15:04:05Z, got %q", s)
}

// quarantineClient runs an operation on the running moat serve, or on
// the directory when none runs (release excepted).
type quarantineClient struct {
	cfg   *config.Config
	c     *control.Client
	store *quarantine.Store // opened on first direct use
}

func (q *quarantineClient) close() {
	if q.store != nil {
		q.store.Close()
	}
}

func (q *quarantineClient) call(ctx context.Context, op string, req quarantineRequest, out any) error {
	err := q.c.Call(ctx, "POST", "/v1/quarantine/"+op, req, out)
	if !errors.Is(err, control.ErrNotRunning) || op == "release" {
		return err
	}
	a, err := q.direct()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && op == "list" {
			return nil // nothing was ever quarantined
		}
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("quarantine %s: %w", req.ID, quarantine.ErrNotFound)
		}
		return err
	}
	var v any
	switch op {
	case "list":
		v, err = a.list(req)
	case "show":
		v, err = a.show(req)
	case "delete":
		v, err = a.delete(req)
	}
	if err != nil {
		return err
	}
	b, _ := json.Marshal(v)
	return json.Unmarshal(b, out)
}

// direct opens the store itself, without creating data_dir: a command
// that only looks must leave no trace.
func (q *quarantineClient) direct() (*quarantineAdmin, error) {
	if q.store == nil {
		dir := quarantineDir(q.cfg)
		if _, err := os.Stat(dir); err != nil {
			return nil, err
		}
		s, err := quarantine.Open(dir, q.cfg.Quarantine.Lifetime.D())
		if err != nil {
			return nil, err
		}
		q.store = s
	}
	return &quarantineAdmin{store: q.store}, nil
}

func (q *quarantineClient) printRaw(id string, stdout, stderr io.Writer) int {
	a, err := q.direct()
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("quarantine %s: %w", id, quarantine.ErrNotFound)
	}
	var r io.ReadCloser
	if err == nil {
		r, _, err = a.store.OpenMessage(id)
	}
	if err == nil {
		_, err = io.Copy(stdout, r)
		r.Close()
	}
	if err != nil {
		fmt.Fprintf(stderr, "moat: quarantine show %s: %v\n", id, err)
		return exitFail
	}
	return exitOK
}

func printJSON(w io.Writer, v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Fprintln(w, string(b))
}

// printQuarantine prints the list as a table.
func printQuarantine(w io.Writer, ms []quarantine.Meta) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRECEIVED\tFROM\tTO\tSCORE\tREASON\tSTATE")
	for _, m := range ms {
		to := "-"
		if n := len(m.Envelope.Rcpts); n > 0 {
			to = m.Envelope.Rcpts[0]
			if n > 1 {
				to += fmt.Sprintf(" (+%d)", n-1)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%g\t%s\t%s\n", m.ID, utcTime(m.Received), cell(sender(m.Envelope.From), 40), cell(to, 40),
			m.Verdict.Score, cell(m.Verdict.Reason, 50), m.State)
	}
	tw.Flush()
	if len(ms) == 1 {
		fmt.Fprintln(w, "1 entry")
	} else {
		fmt.Fprintf(w, "%d entries\n", len(ms))
	}
}

// printQuarantineEntry prints one entry for show: fields, then the header.
func printQuarantineEntry(w io.Writer, e quarantineEntry) {
	m := e.Meta
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, printable(v)) }
	row("ID", m.ID)
	row("State", m.State)
	row("Received", utcTime(m.Received)+" UTC")
	row("Expires", utcTime(m.Expires)+" UTC")
	row("Size", fmt.Sprintf("%d bytes", m.Size))
	row("From", "<"+m.Envelope.From+">")
	to := make([]string, len(m.Envelope.Rcpts))
	for i, r := range m.Envelope.Rcpts {
		to[i] = "<" + r + ">"
	}
	row("To", strings.Join(to, ", "))
	row("Client", m.Envelope.ClientIP+" (HELO "+m.Envelope.Helo+")")
	row("Session", m.Envelope.SessionID+", transaction "+m.Envelope.Transaction)
	if m.MessageID != "" {
		row("Message-ID", m.MessageID)
	}
	row("Policy", m.Verdict.Policy)
	row("Action", m.Verdict.Action)
	row("Score", fmt.Sprintf("%g", m.Verdict.Score))
	if m.Verdict.Reason != "" {
		row("Reason", m.Verdict.Reason)
	}
	tw.Flush()
	if len(m.Verdict.Checks) > 0 {
		fmt.Fprintln(w, "Checks:")
		names := make([]string, 0, len(m.Verdict.Checks))
		for n := range m.Verdict.Checks {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			b, _ := json.Marshal(m.Verdict.Checks[n])
			fmt.Fprintf(w, "  %s: %s\n", printable(n), printable(string(b)))
		}
	}
	fmt.Fprintln(w)
	fmt.Fprint(w, printable(strings.ReplaceAll(e.Header, "\r\n", "\n")))
}

func utcTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05")
}

func sender(s string) string {
	if s == "" {
		return "<>"
	}
	return s
}

// cell makes a table cell: printable, one line, at most n characters.
func cell(s string, n int) string {
	s = strings.ReplaceAll(printable(s), "\n", " ")
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// printable replaces control characters (a header is the sender's text
// and may hold terminal escapes) with '?', keeping newlines and tabs.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || !unicode.IsControl(r) {
			return r
		}
		return '?'
	}, s)
}
