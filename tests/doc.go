// Package tests holds moat's end-to-end tests. They build the real binary
// once (TestMain: go build ./cmd/moat, with -race when the tests run with
// -race), start it as a child process per test with a generated YAML config
// on free loopback ports, talk to it with real clients (go-smtp's client,
// raw SMTP dialogues over net/textproto, swaks) and put real peers behind it
// (Postfix's smtp-sink, and the recording sink from internal/smtptest where
// exact replies or raw bytes matter). Every byte stays on 127.0.0.1.
//
// MOAT_BIN=/path/to/moat skips the build and tests that binary. Tools that
// are missing (swaks, smtp-sink) skip their tests on a developer machine and
// fail them under CI=true; scripts/test installs them.
package tests
