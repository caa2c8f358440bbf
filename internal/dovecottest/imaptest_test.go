package dovecottest

import (
	"testing"

	"moat/internal/imaptest"
)

// imaptestFailures are the ImapTest scripts that Dovecot, the server they
// were written for, fails through moat's runner (internal/imaptest), each
// pinned to its line. Each is a question for the runner (or its copy of a
// script), not a Dovecot bug.
var imaptestFailures = map[string]string{
	"append-binary": "line 36: the runner keeps the LF line ends of the ~{{{ }}} literal8 and wants 6 bytes " +
		"(\\0-\\xe4 LF CR LF); Dovecot sends the 7 bytes it stored with CRLF, matching the BINARY.SIZE 7 the " +
		"same line expects (imapmemserver fails the same line the same way)",
}

// TestImapTestScripts checks moat's ImapTest runner against the reference
// server: every script against a fresh Dovecot.
func TestImapTestScripts(t *testing.T) {
	results := imaptest.RunDir(t, imaptest.ScriptsDir(), func(t *testing.T) imaptest.Target {
		s := Start(t, Options{Users: map[string]string{alice: alicePW}})
		return imaptest.Target{Addr: s.IMAPAddr, User: alice, Password: alicePW}
	}, imaptestFailures)
	t.Logf("dovecot: %s", imaptest.Summary(results))
}
