// Package pop3imap gathers POP3 and IMAP4: pop3 (a hand-written POP3
// server), imapd (go-imap v2's imapserver over the built-in store) and
// storeadapter (the store as a POP3 backend). The login-guarding proxy to
// internal servers (config pop3.upstream / imap.upstream set to a
// host:port) comes later; until then such a config is refused.
package pop3imap
