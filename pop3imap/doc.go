// Package pop3imap will hold POP3 and IMAP4: the servers for the built-in
// store and the login-guarding proxy to internal servers. Config keys: pop3,
// imap. Until it lands, those keys get a "not implemented" warning from moat
// check.
package pop3imap
