// Package imaptest runs Dovecot ImapTest scripted tests (the "imaptest
// test=DIR" format) against an IMAP server over raw TCP connections.
//
// A script (see testdata/dovecot-imaptest/scripted_test.md) names the
// capabilities it needs, how many connections it uses and the state to
// start in, then lists command groups with the tagged and untagged
// responses they must produce. Parse reads that format, LoadMbox reads the
// messages scripts append, and Run drives one script against a Target: it
// sets up the start-up state (LOGIN, delete $mailbox*, CREATE, APPEND,
// SELECT), sends every command with its own tag and byte for byte
// (literals as synchronising literals), and compares the responses the way
// ImapTest does (unordered untagged responses, $variables, $!directives).
// The result is Pass, Fail with the first mismatch, or Skip when the
// server lacks a required capability.
//
// Tests call RunDir (or Load and Run) with ScriptsDir; running the same
// scripts against a backend directly and through a proxy must give the
// same results.
//
// Differences from ImapTest: APPEND sends no INTERNALDATE from the mbox
// From_ line, literals are never converted to LITERAL+, a script stops at
// its first mismatch, every connection logs in as the same user (scripts
// with "user N:" headers are skipped), and TLS is implicit only (no
// STARTTLS).
package imaptest
