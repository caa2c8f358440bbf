package mailproxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"moat/auth"
)

// imapAfterLogin are commands of the authenticated and selected states:
// known, but not valid before login (NO rather than BAD).
var imapAfterLogin = map[string]bool{
	"SELECT": true, "EXAMINE": true, "CREATE": true, "DELETE": true, "RENAME": true, "SUBSCRIBE": true,
	"UNSUBSCRIBE": true, "LIST": true, "LSUB": true, "STATUS": true, "APPEND": true, "CHECK": true,
	"CLOSE": true, "EXPUNGE": true, "SEARCH": true, "FETCH": true, "STORE": true, "COPY": true, "UID": true,
	"IDLE": true, "ENABLE": true, "NAMESPACE": true, "UNSELECT": true, "MOVE": true, "GETQUOTA": true,
	"GETQUOTAROOT": true, "GETACL": true, "MYRIGHTS": true, "COMPRESS": true,
}

// imapKnown reports whether a line is a command the proxy knows, which
// foreignProtocol must not take for HTTP (a password may hold " HTTP/1.").
func imapKnown(line []byte) bool {
	f := strings.Fields(string(line[:min(len(line), 100)]))
	if len(f) < 2 {
		return false
	}
	switch name := strings.ToUpper(f[1]); name {
	case "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "ID", "LOGIN", "AUTHENTICATE":
		return true
	default:
		return imapAfterLogin[name]
	}
}

// imap runs the not-authenticated state until the client logs out or logs
// in.
func (c *session) imap() {
	c.reply("* OK [CAPABILITY " + c.imapCaps() + "] " + c.srv.o.Hostname + " IMAP4rev1 proxy ready")
	for !c.quit && c.up == nil {
		raw, tag, err := c.readIMAPCommand()
		if err != nil {
			c.imapReadFailed(tag, err)
			continue
		}
		c.imapHandle(raw)
	}
}

// imapCaps lists what the proxy itself handles before login.
func (c *session) imapCaps() string {
	caps := []string{"IMAP4rev1", "SASL-IR", "ID"}
	if c.tlsOffered() {
		caps = append(caps, "STARTTLS")
	}
	if c.plaintextOK() {
		caps = append(caps, "AUTH=PLAIN")
	} else {
		caps = append(caps, "LOGINDISABLED")
	}
	return strings.Join(caps, " ")
}

// errLiteralRefused: a literal the proxy will not take (too large, too
// many, or in a command other than LOGIN); the client gets a tagged BAD
// and does not send it.
var errLiteralRefused = errors.New("literal refused")

// readIMAPCommand reads one command: a line and, for LOGIN, up to two
// synchronising literals, each invited with "+ ". It returns the command's
// tag with an error when it could tell it.
func (c *session) readIMAPCommand() ([]byte, string, error) {
	var raw []byte
	for lits := 0; ; lits++ {
		line, err := c.readLine(maxIMAPLine)
		if err != nil {
			return nil, commandTag(raw), err
		}
		if lits == 0 && foreignProtocol(line) && !imapKnown(line) {
			return nil, "", errForeign
		}
		raw = append(raw, line...)
		n, ok := literalAtEnd(line)
		if !ok {
			return raw, "", nil
		}
		f := strings.Fields(string(raw[:min(len(raw), 100)]))
		if lits >= maxLiterals || n > maxLiteral || len(f) < 2 || !strings.EqualFold(f[1], "LOGIN") {
			return nil, commandTag(raw), errLiteralRefused
		}
		c.reply("+ Ready for literal data")
		if err := c.bw.Flush(); err != nil {
			return nil, "", err
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(c.br, lit); err != nil {
			return nil, "", err
		}
		raw = append(raw, "\r\n"...)
		raw = append(raw, lit...)
	}
}

func (c *session) imapReadFailed(tag string, err error) {
	switch {
	case errors.Is(err, errLiteralRefused):
		if tag == "" {
			tag = "*"
		}
		c.imapFail(tag + " BAD Literal not accepted here")
		return
	case errors.Is(err, errLineTooLong):
		c.reply("* BYE Line too long")
	case errors.Is(err, errForeign):
		c.reply("* BYE Not an IMAP client")
	case errors.Is(err, os.ErrDeadlineExceeded) && c.ctx.Err() == nil:
		c.reply("* BYE Autologout, idle for too long")
	}
	c.quit = true
}

// imapFail answers a bad command, or ends the session once there were too
// many.
func (c *session) imapFail(s string) {
	c.bad++
	if c.bad >= c.srv.o.MaxBadCommands {
		c.reply("* BYE Too many bad commands")
		c.quit = true
		return
	}
	c.reply(s)
}

func (c *session) imapHandle(raw []byte) {
	cmd, err := parseIMAPCommand(raw)
	if err != nil {
		if cmd.Tag == "" {
			c.imapFail("* BAD " + err.Error())
		} else {
			c.imapFail(cmd.Tag + " BAD " + err.Error())
		}
		return
	}
	tag := cmd.Tag
	noArgs := func() bool {
		if len(cmd.Args) > 0 {
			c.imapFail(tag + " BAD Unexpected arguments")
			return false
		}
		return true
	}
	switch cmd.Name {
	case "CAPABILITY":
		if noArgs() {
			c.reply("* CAPABILITY " + c.imapCaps())
			c.reply(tag + " OK CAPABILITY completed")
		}
	case "NOOP":
		if noArgs() {
			c.reply(tag + " OK NOOP completed")
		}
	case "LOGOUT":
		if noArgs() {
			c.reply("* BYE " + c.srv.o.Hostname + " IMAP4rev1 proxy logging out")
			c.reply(tag + " OK LOGOUT completed")
			c.quit = true
		}
	case "STARTTLS":
		if noArgs() {
			c.imapStartTLS(tag)
		}
	case "ID":
		c.imapID(cmd)
	case "LOGIN":
		c.imapLoginCommand(cmd)
	case "AUTHENTICATE":
		c.imapAuthenticate(cmd)
	default:
		if imapAfterLogin[cmd.Name] {
			c.imapFail(tag + " NO Log in first")
		} else {
			c.imapFail(tag + " BAD Unknown command")
		}
	}
}

func (c *session) imapStartTLS(tag string) {
	cfg := c.srv.tls.Load()
	if c.tls || cfg == nil {
		c.imapFail(tag + " BAD STARTTLS not available")
		return
	}
	c.reply(tag + " OK Begin TLS negotiation now")
	// startTLS drops whatever was pipelined after the command.
	if c.bw.Flush() != nil || !c.startTLS(cfg) {
		c.quit = true
	}
}

// Limits of RFC 2971 on the ID fields a client sends.
const (
	maxIDPairs = 30
	maxIDField = 30
	maxIDValue = 1024
)

// imapID answers ID (RFC 2971) and remembers the client's fields, to pass
// them on to the upstream.
func (c *session) imapID(cmd imapCommand) {
	a := cmd.Args
	var fields []string
	switch {
	case len(a) == 1 && a[0].Kind == tokAtom && strings.EqualFold(a[0].Value, "NIL"):
	case len(a) >= 2 && a[0].Kind == tokOpen && a[len(a)-1].Kind == tokClose && len(a)%2 == 0:
		for i := 1; i+1 < len(a)-1; i += 2 {
			k, v := a[i], a[i+1]
			if k.Kind != tokString || v.Kind != tokString && !(v.Kind == tokAtom && strings.EqualFold(v.Value, "NIL")) {
				c.imapFail(cmd.Tag + " BAD Invalid ID parameters")
				return
			}
			if v.Kind == tokString && len(fields) < 2*maxIDPairs && len(k.Value) <= maxIDField && len(v.Value) <= maxIDValue {
				fields = append(fields, k.Value, v.Value)
			}
		}
	default:
		c.imapFail(cmd.Tag + " BAD Invalid ID parameters")
		return
	}
	c.clientID = fields
	c.reply(`* ID ("name" "moat")`)
	c.reply(cmd.Tag + " OK ID completed")
}

func (c *session) imapLoginCommand(cmd imapCommand) {
	a := cmd.Args
	if len(a) != 2 || a[0].Kind > tokString || a[1].Kind > tokString {
		c.imapFail(cmd.Tag + " BAD LOGIN takes a user name and a password")
		return
	}
	if !c.plaintextOK() {
		// Through the authority with no password, so that the refused
		// attempt is an imap.login event.
		c.imapLogin(cmd.Tag, "LOGIN", a[0].Value, "")
		return
	}
	c.imapLogin(cmd.Tag, "LOGIN", a[0].Value, a[1].Value)
}

// imapAuthenticate runs AUTHENTICATE PLAIN (RFC 3501, 4959 SASL-IR).
func (c *session) imapAuthenticate(cmd imapCommand) {
	a := cmd.Args
	if len(a) < 1 || len(a) > 2 || a[0].Kind != tokAtom || len(a) == 2 && a[1].Kind != tokAtom {
		c.imapFail(cmd.Tag + " BAD AUTHENTICATE takes a mechanism and an optional initial response")
		return
	}
	if !strings.EqualFold(a[0].Value, "PLAIN") {
		c.imapFail(cmd.Tag + " NO Unsupported authentication mechanism")
		return
	}
	if !c.plaintextOK() {
		c.imapFail(cmd.Tag + " NO [PRIVACYREQUIRED] Cleartext authentication not allowed" + c.useStartTLS())
		return
	}
	var resp string
	if len(a) == 2 {
		resp = a[1].Value
	} else {
		c.reply("+ ")
		line, err := c.readLine(maxIMAPLine)
		if err != nil {
			c.imapReadFailed("", err)
			return
		}
		resp = string(line)
	}
	if resp == "*" {
		c.imapFail(cmd.Tag + " BAD Authentication cancelled")
		return
	}
	var data []byte
	if resp != "=" { // RFC 4959: "=" is an empty initial response
		var err error
		if data, err = base64.StdEncoding.DecodeString(resp); err != nil {
			c.imapFail(cmd.Tag + " BAD Invalid base64")
			return
		}
	}
	_, user, password, err := auth.ParsePlain(data)
	switch {
	case errors.Is(err, auth.ErrPlainAuthzid):
		c.imapFail(cmd.Tag + " NO [AUTHORIZATIONFAILED] Authorization identity not permitted")
		return
	case err != nil:
		c.imapFail(cmd.Tag + " BAD Malformed PLAIN response")
		return
	}
	c.imapLogin(cmd.Tag, "PLAIN", user, password)
}

func (c *session) useStartTLS() string {
	if c.tlsOffered() {
		return ", use STARTTLS first"
	}
	return ""
}

// imapLogin checks the credentials by logging in upstream and answers the
// client with its tag and the upstream's capabilities.
func (c *session) imapLogin(tag, mechanism, user, password string) {
	var caps string
	err := c.login(mechanism, user, password, func(ctx context.Context, u Upstream, user, password string) (*upConn, error) {
		uc, cs, err := c.imapUpstream(ctx, u, user, password)
		caps = cs
		return uc, err
	})
	switch {
	case err == nil:
		c.reply(tag + " OK [CAPABILITY " + caps + "] Logged in")
	case c.ctx.Err() != nil: // shutting down
		c.quit = true
	case errors.Is(err, auth.ErrFailed):
		c.imapFail(tag + " NO [AUTHENTICATIONFAILED] Authentication failed")
	case errors.Is(err, auth.ErrLocked):
		c.reply(tag + " NO [UNAVAILABLE] Too many failed logins, try again later")
		c.reply("* BYE Too many failed logins")
		c.quit = true
	case errors.Is(err, auth.ErrPlaintext):
		c.imapFail(tag + " NO [PRIVACYREQUIRED] Cleartext authentication not allowed" + c.useStartTLS())
	default:
		if !errors.Is(err, auth.ErrUnavailable) {
			c.logError("login", err)
		}
		c.imapFail(tag + " NO [UNAVAILABLE] Authentication temporarily unavailable")
	}
}

// imapResponse is an upstream's tagged status response.
type imapResponse struct {
	Status string // OK, NO or BAD
	Code   string // the response code without brackets, "" if none
	Text   string
}

// imapUpstream logs in at an IMAP upstream: greeting, STARTTLS if
// configured, CAPABILITY unless the greeting carried it, ID with the
// client's address (Dovecot honours x-originating-ip from its
// login_trusted_networks), then LOGIN or, when the upstream disables it,
// AUTHENTICATE PLAIN. It returns the upstream's capabilities after login.
func (c *session) imapUpstream(ctx context.Context, u Upstream, user, password string) (*upConn, string, error) {
	if strings.ContainsRune(user+password, 0) {
		return nil, "", errRefused // IMAP strings cannot carry NUL
	}
	uc, err := dialUpstream(ctx, u, c.srv.o.DialTimeout)
	if err != nil {
		return nil, "", err
	}
	ok := false
	defer func() {
		if !ok {
			uc.close()
		}
	}()
	ic := &imapUp{upConn: uc}
	greeting, err := uc.readLine()
	if err != nil {
		return nil, "", err
	}
	if !strings.HasPrefix(greeting, "* OK") {
		return nil, "", fmt.Errorf("upstream %s greeting: %q", u.Addr, truncate(greeting))
	}
	caps := capsOf(responseCode(greeting[4:]))
	if u.TLS == TLSStartTLS {
		r, err := ic.command("STARTTLS")
		if err != nil {
			return nil, "", err
		}
		if r.Status != "OK" {
			return nil, "", fmt.Errorf("upstream %s: STARTTLS: %s %s", u.Addr, r.Status, truncate(r.Text))
		}
		if err := uc.startTLS(ctx, u); err != nil {
			return nil, "", err
		}
		caps = nil // RFC 3501: capabilities may change under TLS
	}
	if caps == nil {
		if caps, err = ic.capability(); err != nil {
			return nil, "", err
		}
	}
	if caps.has("ID") {
		// The answer does not matter.
		if _, err := ic.command("ID " + c.idFields()); err != nil {
			return nil, "", err
		}
	}
	ic.caps = nil
	var r imapResponse
	if caps.has("LOGINDISABLED") && caps.has("AUTH=PLAIN") {
		r, err = ic.authenticatePlain(user, password, caps.has("SASL-IR"))
	} else {
		r, err = ic.login(user, password)
	}
	if err != nil {
		return nil, "", err
	}
	switch {
	case r.Status == "NO" && (strings.HasPrefix(r.Code, "UNAVAILABLE") || strings.HasPrefix(r.Code, "SERVERBUG")):
		return nil, "", fmt.Errorf("upstream %s: login: NO [%s] %s", u.Addr, r.Code, truncate(r.Text))
	case r.Status == "NO":
		return nil, "", errRefused
	case r.Status != "OK":
		return nil, "", fmt.Errorf("upstream %s: login: %s %s", u.Addr, r.Status, truncate(r.Text))
	}
	after := capsOf(r.Code)
	if after == nil {
		after = ic.caps // an untagged CAPABILITY during the login
	}
	if after == nil {
		if after, err = ic.capability(); err != nil {
			return nil, "", err
		}
	}
	if err := uc.release(); err != nil {
		return nil, "", err
	}
	ok = true
	return uc, capsString(after), nil
}

// idFields are the ID parameters for the upstream: where the client is,
// where it connected to, then what it said of itself.
func (c *session) idFields() string {
	local := addrPort(c.raw.LocalAddr())
	f := []string{
		"x-originating-ip", c.remote.Addr().String(),
		"x-originating-port", strconv.Itoa(int(c.remote.Port())),
		"x-connected-ip", local.Addr().String(),
		"x-connected-port", strconv.Itoa(int(local.Port())),
	}
	for i := 0; i+1 < len(c.clientID); i += 2 {
		if !strings.HasPrefix(strings.ToLower(c.clientID[i]), "x-") { // the x- fields are the proxy's to say
			f = append(f, c.clientID[i], c.clientID[i+1])
		}
	}
	q := make([]string, len(f))
	for i, s := range f {
		q[i] = imapStringArg(s)
	}
	return "(" + strings.Join(q, " ") + ")"
}

// imapUp is an upstream IMAP connection during login.
type imapUp struct {
	*upConn
	n    int    // commands sent, for tags
	caps capSet // from an untagged CAPABILITY response
}

func (ic *imapUp) tag() string {
	ic.n++
	return "M" + strconv.Itoa(ic.n)
}

// command sends a command and reads the responses up to its tagged one.
func (ic *imapUp) command(cmd string) (imapResponse, error) {
	tag := ic.tag()
	if err := ic.send(tag + " " + cmd); err != nil {
		return imapResponse{}, err
	}
	return ic.await(tag, false)
}

// capability asks the upstream's capabilities.
func (ic *imapUp) capability() (capSet, error) {
	ic.caps = nil
	r, err := ic.command("CAPABILITY")
	if err != nil {
		return nil, err
	}
	if r.Status != "OK" || ic.caps == nil {
		return nil, fmt.Errorf("upstream %s: CAPABILITY: %s %s", ic.addr, r.Status, truncate(r.Text))
	}
	return ic.caps, nil
}

// errContinue is what await returns on a continuation request it was told
// to expect.
var errContinue = errors.New("continuation")

// await reads responses until the tagged one of tag, or a continuation
// request when cont is set (then it returns errContinue). Untagged
// responses are skipped, but for CAPABILITY, which is kept; their literals
// are read and dropped.
func (ic *imapUp) await(tag string, cont bool) (imapResponse, error) {
	for range 10000 {
		line, err := ic.readLine()
		if err != nil {
			return imapResponse{}, err
		}
		switch {
		case strings.HasPrefix(line, "+"):
			if cont {
				return imapResponse{}, errContinue
			}
			return imapResponse{}, fmt.Errorf("upstream %s: unexpected continuation request", ic.addr)
		case strings.HasPrefix(line, "* "):
			if f := strings.Fields(line); len(f) >= 2 && strings.EqualFold(f[1], "CAPABILITY") {
				ic.caps = capsOf(strings.Join(f[1:], " "))
			}
			if err := ic.skipLiterals(line); err != nil {
				return imapResponse{}, err
			}
		case strings.HasPrefix(line, tag+" "):
			status, text, _ := strings.Cut(line[len(tag)+1:], " ")
			status = strings.ToUpper(status)
			if status != "OK" && status != "NO" && status != "BAD" {
				return imapResponse{}, fmt.Errorf("upstream %s: bad response %q", ic.addr, truncate(line))
			}
			code := responseCode(text)
			if code != "" {
				if i := strings.IndexByte(text, ']'); i >= 0 {
					text = strings.TrimSpace(text[i+1:])
				}
			}
			return imapResponse{Status: status, Code: code, Text: text}, nil
		default:
			return imapResponse{}, fmt.Errorf("upstream %s: unexpected response %q", ic.addr, truncate(line))
		}
	}
	return imapResponse{}, fmt.Errorf("upstream %s: too many responses", ic.addr)
}

// skipLiterals reads past the literals of an untagged response whose
// line announces one, and the rest of the response after each.
func (ic *imapUp) skipLiterals(line string) error {
	for range 100 {
		n, ok := literalAtEnd([]byte(line))
		if !ok {
			return nil
		}
		if n > 1<<20 {
			return fmt.Errorf("upstream %s: literal of %d octets during login", ic.addr, n)
		}
		if _, err := io.CopyN(io.Discard, ic.br, int64(n)); err != nil {
			return fmt.Errorf("read from upstream %s: %w", ic.addr, err)
		}
		var err error
		if line, err = ic.readLine(); err != nil {
			return err
		}
	}
	return fmt.Errorf("upstream %s: too many literals", ic.addr)
}

// login sends LOGIN, each argument quoted or, when it cannot be, as a
// synchronising literal.
func (ic *imapUp) login(user, password string) (imapResponse, error) {
	tag := ic.tag()
	line := tag + " LOGIN"
	for _, arg := range []string{user, password} {
		if q, ok := quoteIMAP(arg); ok {
			line += " " + q
			continue
		}
		if err := ic.send(line + " " + literalLen(len(arg))); err != nil {
			return imapResponse{}, err
		}
		r, err := ic.await(tag, true)
		if err != errContinue {
			if err == nil {
				err = fmt.Errorf("upstream %s: literal refused: %s %s", ic.addr, r.Status, truncate(r.Text))
			}
			return imapResponse{}, err
		}
		line = arg
	}
	if err := ic.send(line); err != nil {
		return imapResponse{}, err
	}
	return ic.await(tag, false)
}

// authenticatePlain sends AUTHENTICATE PLAIN, with an initial response
// when the upstream takes one.
func (ic *imapUp) authenticatePlain(user, password string, ir bool) (imapResponse, error) {
	tag := ic.tag()
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
	if ir {
		if err := ic.send(tag + " AUTHENTICATE PLAIN " + resp); err != nil {
			return imapResponse{}, err
		}
	} else {
		if err := ic.send(tag + " AUTHENTICATE PLAIN"); err != nil {
			return imapResponse{}, err
		}
		r, err := ic.await(tag, true)
		if err != errContinue {
			return r, err
		}
		if err := ic.send(resp); err != nil {
			return imapResponse{}, err
		}
	}
	r, err := ic.await(tag, true)
	if err == errContinue { // a server challenge PLAIN does not have
		ic.send("*")
		return ic.await(tag, false)
	}
	return r, err
}

// responseCode returns the code of a response text "[CODE ...] text",
// without brackets.
func responseCode(text string) string {
	text = strings.TrimSpace(text)
	if !strings.HasPrefix(text, "[") {
		return ""
	}
	end := strings.IndexByte(text, ']')
	if end < 0 {
		return ""
	}
	return text[1:end]
}

// capSet is an upstream's capabilities, as it spelled them.
type capSet []string

// has reports whether the set holds c (IMAP capabilities are
// case-insensitive).
func (cs capSet) has(c string) bool {
	for _, x := range cs {
		if strings.EqualFold(x, c) {
			return true
		}
	}
	return false
}

// capsOf returns the capabilities of a CAPABILITY response or response
// code, or nil when s is not one. Anything that is not an atom is left
// out: the list is passed on to the client.
func capsOf(s string) capSet {
	f := strings.Fields(s)
	if len(f) == 0 || !strings.EqualFold(f[0], "CAPABILITY") {
		return nil
	}
	caps := capSet{}
	for _, c := range f[1:] {
		if len(caps) >= 200 {
			break
		}
		valid := true
		for i := 0; i < len(c); i++ {
			valid = valid && isAtomChar(c[i], false)
		}
		if valid {
			caps = append(caps, c)
		}
	}
	return caps
}

// capsString lists capabilities for the client.
func capsString(caps capSet) string {
	if len(caps) == 0 {
		return "IMAP4rev1"
	}
	return strings.Join(caps, " ")
}
