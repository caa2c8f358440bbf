// Command moat is the spam-firewall gateway: `moat serve` runs it, `moat
// check` validates its configuration and policy files.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// Exit codes: 0 success, 1 invalid input or failed check, 2 usage error.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: moat <command> [flags]

commands:
  serve [--config FILE]   run the gateway (the embedded default without --config)
  check [--config FILE]   validate the configuration and every policy file
  user add|passwd|del|list [--config FILE] [ADDRESS]
                          manage the built-in store's users (password on standard input)
  explain --ip IP --from ADDR --to ADDR[,ADDR...] [--config FILE] [--helo NAME] [--message FILE] [--json]
                          dry-run one transaction through the real pipeline; changes nothing
  greylist list|allow|delete [--config FILE] ...
                          inspect and release greylist entries (moat greylist for help)
  quarantine list|show|release|delete [--config FILE] ...
                          review kept messages; release delivers one as if accepted
  version                 print version and build information
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "serve":
		fs, path := configFlags("serve", stderr)
		if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
			return usageError(fs, err)
		}
		return serve(ctx, *path, stdout, stderr)
	case "check":
		fs, path := configFlags("check", stderr)
		if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
			return usageError(fs, err)
		}
		return check(*path, stdout, stderr)
	case "user":
		return userCmd(ctx, args, os.Stdin, stdout, stderr)
	case "explain":
		return explain(ctx, args, stdout, stderr)
	case "greylist":
		return greylistCmd(ctx, args, stdout, stderr)
	case "quarantine":
		return quarantineCmd(ctx, args, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, versionString())
		return exitOK
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "moat: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

func configFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("moat "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded default)")
	return fs, path
}

func usageError(fs *flag.FlagSet, err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err == nil {
		fmt.Fprintf(fs.Output(), "moat: unexpected arguments %q\n", fs.Args())
	}
	return exitUsage
}

func versionString() string {
	v, rev, mod := "devel", "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					mod = "+dirty"
				}
			}
		}
		v += " " + bi.GoVersion
	}
	if rev != "" {
		v += " " + rev + mod
	}
	return "moat " + v
}
