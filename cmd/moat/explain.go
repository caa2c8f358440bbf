package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"moat/proxy"
)

const explainUsage = `usage: moat explain [--config FILE] --ip IP [--helo NAME] --from ADDR --to ADDR[,ADDR...] [--message FILE] [--json]

Runs one transaction through the real pipeline (routes, policies, every
check with real DNS) and prints what each check found, which policy
applied and why, the final action and the reply the client would get.
Nothing is recorded: no greylist entry, no delivery, no quarantine.
`

func explain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("moat explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, explainUsage) }
	path := fs.String("config", "", "configuration file (default: the embedded default)")
	ipText := fs.String("ip", "", "the client's IP address")
	helo := fs.String("helo", "", "the HELO/EHLO name")
	from := fs.String("from", "", "the envelope sender (empty: the null sender)")
	to := fs.String("to", "", "recipients, comma-separated")
	msgFile := fs.String("message", "", "a message file to run the end-of-data checks on")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return usageError(fs, err)
	}
	ip, err := netip.ParseAddr(*ipText)
	if err != nil || *to == "" {
		fmt.Fprint(stderr, explainUsage)
		return exitUsage
	}
	in := proxy.ExplainInput{IP: ip, Helo: *helo, From: *from}
	for _, r := range strings.Split(*to, ",") {
		if r = strings.TrimSpace(r); r != "" {
			in.To = append(in.To, r)
		}
	}
	if *helo == "" {
		in.Helo = "[" + ip.String() + "]"
	}
	if *msgFile != "" {
		data, err := os.ReadFile(*msgFile)
		if err != nil {
			fmt.Fprintf(stderr, "moat: %v\n", err)
			return exitFail
		}
		// A file saved on a Unix system has LF line ends; on the wire they
		// would be CRLF.
		if !bytes.Contains(data, []byte("\r")) {
			data = bytes.ReplaceAll(data, []byte("\n"), []byte("\r\n"))
		}
		in.Message = data
	}
	rt, problems := load(*path)
	if rt == nil {
		printProblems(stderr, problems)
		return exitFail
	}
	if rt.DNS, err = newResolver(rt.Cfg.DNS); err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitFail
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res, err := proxy.Explain(ctx, rt, in)
	if err != nil {
		fmt.Fprintf(stderr, "moat: %v\n", err)
		return exitUsage
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
		return exitOK
	}
	printExplain(stdout, in, res)
	return exitOK
}

func printExplain(w io.Writer, in proxy.ExplainInput, res *proxy.ExplainResult) {
	trusted := "not trusted"
	if res.Trusted {
		trusted = "trusted: no checks"
	}
	fmt.Fprintf(w, "client %s (%s), HELO %s, MAIL FROM:<%s>\n", in.IP, trusted, in.Helo, in.From)
	for _, r := range res.Recipients {
		fmt.Fprintf(w, "\nRCPT TO:<%s>\n", r.Address)
		if r.Route != "" {
			fmt.Fprintf(w, "  route     %s\n", r.Route)
		}
		if r.Policy != "" {
			fmt.Fprintf(w, "  policy    %s (%s)\n", r.Policy, r.Why)
		}
		printChecks(w, r.Checks)
		if r.Decision != "" {
			fmt.Fprintf(w, "  decision  %s\n", r.Decision)
		}
		if r.Greylist != "" {
			fmt.Fprintf(w, "  greylist  %s\n", r.Greylist)
		}
		fmt.Fprintf(w, "  reply     %s\n", r.Reply)
	}
	if d := res.Data; d != nil {
		fmt.Fprintf(w, "\nend of data (policy %s)\n", d.Policy)
		printChecks(w, d.Checks)
		fmt.Fprintf(w, "  score     %g\n", d.Score)
		if d.Decision != "" {
			fmt.Fprintf(w, "  decision  %s\n", d.Decision)
		}
		fmt.Fprintf(w, "  action    %s\n", d.Action)
		if d.Would != "" {
			fmt.Fprintf(w, "  would     %s (observe mode)\n", d.Would)
		}
		fmt.Fprintf(w, "  reply     %s\n", d.Reply)
		if d.AuthRes != "" {
			fmt.Fprintf(w, "\n%s", strings.ReplaceAll(d.AuthRes, "\r\n", "\n"))
		}
	}
}

func printChecks(w io.Writer, checks map[string]map[string]any) {
	if len(checks) == 0 {
		return
	}
	names := make([]string, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	slices.Sort(names)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, n := range names {
		c := checks[n]
		extra := ""
		if a, ok := c["action"]; ok {
			extra += fmt.Sprintf(" -> %v", a)
		}
		if m, ok := c["mode"]; ok {
			extra += fmt.Sprintf(" (%v)", m)
		}
		fmt.Fprintf(tw, "  check\t%s\t%v\tscore %v%s\t%v\n", n, c["result"], c["score"], extra, c["reason"])
	}
	tw.Flush()
}
