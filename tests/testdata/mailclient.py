#!/usr/bin/env python3
"""Python's own POP3 and IMAP4 clients (poplib, imaplib) against moat.

Used by tests/mailbox_test.go: each subcommand runs one scripted session and
prints what it saw, one "key: value" line per fact, so the Go test checks
the results. TLS certificates are not verified (moat's is self-signed in
the tests); everything else is the standard library's behaviour.

  mailclient.py pop3-retr   HOST PORT USER PASS          (POP3S) STAT, UIDL, RETR 1
  mailclient.py pop3-dele   HOST PORT USER PASS quit|drop (POP3S) DELE 1, then QUIT or drop
  mailclient.py pop3-stls   HOST PORT USER PASS          STLS, then STAT
  mailclient.py imap-flag   HOST PORT USER PASS          (IMAPS) fetch 1, STORE +FLAGS \\Flagged
  mailclient.py imap-flags  HOST PORT USER PASS          (IMAPS) FETCH 1 FLAGS
  mailclient.py imap-starttls HOST PORT USER PASS        STARTTLS, LOGIN, SELECT
  mailclient.py imap-plain  HOST PORT USER PASS          LOGIN in clear (expected to be refused)
"""
import hashlib
import imaplib
import poplib
import socket
import ssl
import sys


def ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def out(k, v):
    print(f"{k}: {v}", flush=True)


def digest(b):
    return hashlib.sha256(b).hexdigest()


def pop3_retr(host, port, user, pw):
    p = poplib.POP3_SSL(host, int(port), context=ctx(), timeout=20)
    p.user(user)
    p.pass_(pw)
    n, size = p.stat()
    out("stat", f"{n} {size}")
    out("uidl", p.uidl(1).decode().split()[-1])
    resp, lines, octets = p.retr(1)
    # poplib strips CRLF and dot-stuffing; rebuild the wire text.
    body = b"".join(l + b"\r\n" for l in lines)
    out("retr_octets", octets)
    out("retr_sha256", digest(body))
    p.quit()


def pop3_dele(host, port, user, pw, how):
    p = poplib.POP3_SSL(host, int(port), context=ctx(), timeout=20)
    p.user(user)
    p.pass_(pw)
    out("dele", p.dele(1).decode())
    if how == "quit":
        out("quit", p.quit().decode())
    else:
        p.sock.close()  # no QUIT: no UPDATE state
        out("dropped", "yes")


def pop3_stls(host, port, user, pw):
    p = poplib.POP3(host, int(port), timeout=20)
    caps = p.capa()
    out("capa_before", " ".join(sorted(caps)))
    p.stls(context=ctx())
    p.user(user)
    p.pass_(pw)
    n, size = p.stat()
    out("stat", f"{n} {size}")
    p.quit()


def imap_login_ssl(host, port, user, pw):
    m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx(), timeout=20)
    m.login(user, pw)
    return m


def imap_flag(host, port, user, pw):
    m = imap_login_ssl(host, port, user, pw)
    typ, data = m.select("INBOX")
    out("exists", data[0].decode())
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    out("fetch_sha256", digest(data[0][1]))
    typ, data = m.store("1", "+FLAGS", "(\\Flagged)")
    out("store", typ)
    m.logout()


def imap_flags(host, port, user, pw):
    m = imap_login_ssl(host, port, user, pw)
    m.select("INBOX", readonly=True)
    typ, data = m.fetch("1", "(FLAGS)")
    out("flags", data[0].decode())
    m.logout()


def imap_starttls(host, port, user, pw):
    m = imaplib.IMAP4(host, int(port), timeout=20)
    out("caps_before", " ".join(m.capabilities))
    m.starttls(ssl_context=ctx())
    out("caps_after", " ".join(m.capabilities))
    m.login(user, pw)
    typ, data = m.select("INBOX")
    out("exists", data[0].decode())
    m.logout()


def imap_plain(host, port, user, pw):
    m = imaplib.IMAP4(host, int(port), timeout=20)
    out("caps", " ".join(m.capabilities))
    try:
        m.login(user, pw)
        out("login", "accepted")
    except imaplib.IMAP4.error as e:
        out("login", "refused " + str(e))


def main():
    cmds = {
        "pop3-retr": pop3_retr, "pop3-dele": pop3_dele, "pop3-stls": pop3_stls,
        "imap-flag": imap_flag, "imap-flags": imap_flags,
        "imap-starttls": imap_starttls, "imap-plain": imap_plain,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    socket.setdefaulttimeout(20)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
