package imaptest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// ScriptsDir returns the absolute path of the ImapTest scripts copied into
// this package (testdata/dovecot-imaptest).
func ScriptsDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("imaptest: runtime.Caller failed")
	}
	return filepath.Join(filepath.Dir(file), "testdata", "dovecot-imaptest")
}

// ScriptNames lists the scripts in dir: every regular file except *.mbox
// and documentation (upper-case names, *.md), sorted.
func ScriptNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".mbox") ||
			strings.HasSuffix(n, ".md") || n == strings.ToUpper(n) {
			continue
		}
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// Load reads and parses the script at path, and its messages: path.mbox, or
// default.mbox beside it.
func Load(path string) (*Script, [][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	s, err := Parse(filepath.Base(path), b)
	if err != nil {
		return nil, nil, err
	}
	mbox, err := os.ReadFile(path + ".mbox")
	if os.IsNotExist(err) {
		mbox, err = os.ReadFile(filepath.Join(filepath.Dir(path), "default.mbox"))
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: messages: %w", s.Name, err)
	}
	msgs, err := LoadMbox(mbox)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: messages: %w", s.Name, err)
	}
	return s, msgs, nil
}

var mailboxSeq atomic.Int64

// RunDir runs every script of dir as a subtest, against the Target that
// target returns for it (called once per script, so it may start a fresh
// server). Empty Target.Messages are filled from the script's mbox and an
// empty Target.Mailbox with a unique name. A failing script fails the
// test unless expectFail names it (script → reason); a listed script that
// passes fails the test too, so the list stays current. A reason of the
// form "line N: ..." also pins where the script must fail, so that a new
// mismatch earlier in the script is caught. Skipped scripts are reported
// with t.Skip. It returns every result by script name, for
// comparing two targets (e.g. a backend directly and through a proxy).
func RunDir(t *testing.T, dir string, target func(t *testing.T) Target, expectFail map[string]string) map[string]*Result {
	t.Helper()
	names, err := ScriptNames(dir)
	if err != nil {
		t.Fatalf("imaptest: %v", err)
	}
	if len(names) == 0 {
		t.Fatalf("imaptest: no scripts in %s", dir)
	}
	for name := range expectFail {
		if i := sort.SearchStrings(names, name); i == len(names) || names[i] != name {
			t.Errorf("imaptest: expected failure for unknown script %q", name)
		}
	}
	results := map[string]*Result{}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			s, msgs, err := Load(filepath.Join(dir, name))
			if err != nil {
				t.Fatalf("imaptest: %v", err)
			}
			tg := target(t)
			if tg.Messages == nil {
				tg.Messages = msgs
			}
			if tg.Mailbox == "" {
				tg.Mailbox = fmt.Sprintf("imaptest-%dx", mailboxSeq.Add(1))
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			res, err := Run(ctx, s, tg)
			if err != nil {
				t.Fatalf("imaptest: %v", err)
			}
			results[name] = res
			reason, expected := expectFail[name]
			switch {
			case res.Status == Skip:
				t.Skip(res.String())
			case res.Status == Fail && expected:
				if line, ok := pinnedLine(reason); ok && line != res.Line {
					t.Errorf("expected failure at line %d (%s), got:\n%s", line, reason, res)
					break
				}
				t.Logf("expected failure (%s):\n%s", reason, res.brief())
			case res.Status == Fail:
				t.Errorf("%s", res)
			case expected:
				t.Errorf("%s passes but is listed as an expected failure (%s); remove it from the list", name, reason)
			}
		})
	}
	return results
}

// pinnedLine reads the "line N:" prefix of an expected-failure reason.
func pinnedLine(reason string) (int, bool) {
	rest, ok := strings.CutPrefix(reason, "line ")
	if !ok {
		return 0, false
	}
	n, _, ok := strings.Cut(rest, ":")
	if !ok {
		return 0, false
	}
	line, err := strconv.Atoi(n)
	return line, err == nil
}

// Summary renders RunDir's results for a test log: the counts, then one
// line per script in name order with the reason of each that did not
// pass.
func Summary(results map[string]*Result) string {
	names := make([]string, 0, len(results))
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	var table strings.Builder
	count := map[Status]int{}
	for _, n := range names {
		r := results[n]
		count[r.Status]++
		fmt.Fprintf(&table, "\n  %-32s %s", n, r.Status)
		if r.Status != Pass {
			fmt.Fprintf(&table, " (%s)", r.Reason)
		}
	}
	return fmt.Sprintf("%d pass, %d fail, %d skip%s", count[Pass], count[Fail], count[Skip], table.String())
}
