package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"moat/config"
	"moat/store/users"
)

// usersPath is where the built-in store's users live: data_dir/users.
func usersPath(c *config.Config) string { return filepath.Join(c.DataDir, "users") }

const userUsage = `usage: moat user <add|passwd|del|list> [--config FILE] [ADDRESS]

  add ADDRESS      create a mailbox user; the password is read from standard input
  passwd ADDRESS   set a new password, read from standard input
  del ADDRESS      remove a user (the mailbox stays on disk)
  list             list the users

Passwords never go on the command line, where other users could read them:
  printf '%s\n' "$PASSWORD" | moat user add alice@example.test
A running moat serve sees a change from the next message on. Once a local domain has a
user, mail for unknown names of that domain is refused with 550 5.1.1; a
domain without users takes mail for any name.
`

func userCmd(_ context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		io.WriteString(stderr, userUsage)
		return exitUsage
	}
	op := args[0]
	fs := flag.NewFlagSet("moat user "+op, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded default)")
	// Flags may come before or after the address.
	var rest []string
	for a := args[1:]; ; {
		if err := fs.Parse(a); err != nil {
			return usageError(fs, err)
		}
		if fs.NArg() == 0 {
			break
		}
		rest = append(rest, fs.Arg(0))
		a = fs.Args()[1:]
	}
	want := 1
	if op == "list" {
		want = 0
	}
	switch op {
	case "add", "passwd", "del", "list":
	default:
		fmt.Fprintf(stderr, "moat: unknown user command %q\n\n%s", op, userUsage)
		return exitUsage
	}
	if len(rest) != want {
		io.WriteString(stderr, userUsage)
		return exitUsage
	}
	cfg, errs := loadConfig(*path)
	if cfg == nil {
		printProblems(stderr, errs)
		return exitFail
	}
	db := users.Open(usersPath(cfg))
	var err error
	switch op {
	case "list":
		var list []string
		if list, err = db.List(); err == nil {
			for _, u := range list {
				fmt.Fprintln(stdout, u)
			}
		}
	case "del":
		if err = db.Delete(rest[0]); err == nil {
			fmt.Fprintf(stdout, "%s: deleted\n", rest[0])
		}
	default:
		var pw string
		if pw, err = readPassword(stdin, stderr); err == nil {
			if op == "add" {
				err = db.Add(rest[0], pw)
			} else {
				err = db.Passwd(rest[0], pw)
			}
		}
		if err == nil {
			fmt.Fprintf(stdout, "%s: %s\n", rest[0], map[string]string{"add": "added", "passwd": "password changed"}[op])
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "moat: user %s: %v\n", op, err)
		return exitFail
	}
	return exitOK
}

// readPassword reads one line from standard input.
func readPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			fmt.Fprint(stderr, "Password (it is echoed; pipe it in to avoid that): ")
		}
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", errors.New("no password on standard input")
	}
	return strings.TrimRight(line, "\r\n"), nil
}
