package mailproxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"moat/auth"
	"moat/pop3imap/pop3"
)

// pop3Known lists the keywords of RFC 1939, 2449, 2595 and 5034: those of
// the TRANSACTION state are refused before login rather than unknown.
var pop3Known = map[string]bool{
	"CAPA": true, "QUIT": true, "USER": true, "PASS": true, "AUTH": true, "STLS": true, "APOP": true,
	"STAT": true, "LIST": true, "UIDL": true, "RETR": true, "TOP": true, "DELE": true, "RSET": true, "NOOP": true,
}

// pop3State is what the AUTHORIZATION state remembers between commands.
type pop3State struct{ user string } // from USER, waiting for PASS

// pop3 runs the AUTHORIZATION state until the client quits or logs in.
func (c *session) pop3() {
	var st pop3State
	c.reply("+OK " + c.srv.o.Hostname + " POP3 proxy ready")
	for !c.quit && c.up == nil {
		line, err := c.readLine(pop3.MaxAuthLine)
		if err != nil {
			c.pop3ReadFailed(err)
			return
		}
		c.pop3Handle(&st, line)
	}
}

func (c *session) pop3ReadFailed(err error) {
	c.quit = true
	switch {
	case errors.Is(err, errLineTooLong):
		c.reply("-ERR line too long")
	case errors.Is(err, errForeign):
		c.reply("-ERR not a POP3 client")
	case errors.Is(err, os.ErrDeadlineExceeded) && c.ctx.Err() == nil:
		c.reply("-ERR autologout")
	}
}

func (c *session) pop3Handle(st *pop3State, line []byte) {
	cmd, err := pop3.ParseCommand(line)
	if (err != nil || !pop3Known[cmd.Name]) && foreignProtocol(line) {
		c.reply("-ERR not a POP3 client")
		c.quit = true
		return
	}
	if len(line)+2 > pop3.MaxCommandLine && (err != nil || cmd.Name != "AUTH") {
		c.reply("-ERR line too long")
		c.quit = true
		return
	}
	switch {
	case err != nil:
		c.pop3Fail("-ERR " + err.Error())
		return
	case !pop3Known[cmd.Name]:
		c.pop3Fail("-ERR unknown command")
		return
	}
	switch cmd.Name {
	case "CAPA":
		c.pop3Capa()
	case "USER":
		c.pop3User(st, cmd)
	case "PASS":
		c.pop3Pass(st, cmd)
	case "AUTH":
		c.pop3Auth(cmd)
	case "STLS":
		c.pop3STLS(st, cmd)
	case "QUIT":
		c.reply("+OK " + c.srv.o.Hostname + " POP3 proxy signing off")
		c.quit = true
	case "APOP":
		c.pop3Fail("-ERR APOP not supported")
	default:
		c.pop3Fail("-ERR command not valid before login")
	}
}

// pop3Capa answers CAPA with only what the proxy itself handles; after
// login CAPA goes to the upstream.
func (c *session) pop3Capa() {
	lines := []string{"+OK Capability list follows"}
	if c.plaintextOK() {
		lines = append(lines, "USER", "SASL PLAIN")
	}
	if c.tlsOffered() {
		lines = append(lines, "STLS")
	}
	lines = append(lines, "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION moat", ".")
	c.reply(strings.Join(lines, "\r\n"))
}

// pop3Fail answers a bad command, or ends the session once there were too
// many.
func (c *session) pop3Fail(s string) {
	c.bad++
	if c.bad >= c.srv.o.MaxBadCommands {
		c.reply("-ERR too many bad commands")
		c.quit = true
		return
	}
	c.reply(s)
}

func (c *session) pop3RefusePlaintext() {
	if c.tlsOffered() {
		c.pop3Fail("-ERR [AUTH] Cleartext authentication not allowed, use STLS first")
	} else {
		c.pop3Fail("-ERR [AUTH] Cleartext authentication not allowed")
	}
}

func (c *session) pop3User(st *pop3State, cmd pop3.Command) {
	name := strings.TrimSpace(cmd.Rest)
	if !c.plaintextOK() {
		if name != "" {
			// Through the authority with no password, so that the
			// refused attempt is a pop3.login event; it answers
			// ErrPlaintext without looking further.
			c.pop3Login("USER", name, "")
			return
		}
		c.pop3RefusePlaintext()
		return
	}
	if name == "" {
		c.pop3Fail("-ERR missing user name")
		return
	}
	st.user = name
	c.reply("+OK send PASS")
}

func (c *session) pop3Pass(st *pop3State, cmd pop3.Command) {
	user := st.user
	st.user = ""
	if user == "" {
		c.pop3Fail("-ERR USER first")
		return
	}
	if !c.plaintextOK() {
		c.pop3RefusePlaintext()
		return
	}
	// RFC 1939: PASS has one argument, so spaces belong to the password.
	c.pop3Login("USER", user, cmd.Rest)
}

// pop3Auth runs AUTH PLAIN (RFC 5034).
func (c *session) pop3Auth(cmd pop3.Command) {
	if len(cmd.Args) == 0 {
		lines := []string{"+OK SASL mechanisms follow"}
		if c.plaintextOK() {
			lines = append(lines, "PLAIN")
		}
		c.reply(strings.Join(append(lines, "."), "\r\n"))
		return
	}
	if !strings.EqualFold(cmd.Args[0], "PLAIN") {
		c.pop3Fail("-ERR unsupported authentication mechanism")
		return
	}
	if len(cmd.Args) > 2 {
		c.pop3Fail("-ERR too many arguments")
		return
	}
	if !c.plaintextOK() {
		c.pop3RefusePlaintext()
		return
	}
	var resp string
	if len(cmd.Args) == 2 {
		resp = cmd.Args[1]
	} else {
		c.reply("+ ")
		line, err := c.readLine(pop3.MaxAuthLine)
		if err != nil {
			c.pop3ReadFailed(err)
			return
		}
		resp = string(line)
	}
	user, password, problem := pop3.DecodePlain(resp)
	if problem != "" {
		c.pop3Fail(problem)
		return
	}
	c.pop3Login("PLAIN", user, password)
}

// pop3Login checks the credentials by logging in upstream.
func (c *session) pop3Login(mechanism, user, password string) {
	err := c.login(mechanism, user, password, c.pop3Upstream)
	switch {
	case err == nil:
		c.reply("+OK Logged in")
	case c.ctx.Err() != nil: // shutting down
		c.quit = true
	case errors.Is(err, auth.ErrFailed):
		c.pop3Fail("-ERR [AUTH] Authentication failed")
	case errors.Is(err, auth.ErrLocked):
		c.reply("-ERR [SYS/TEMP] Too many failed logins, try again later")
		c.quit = true
	case errors.Is(err, auth.ErrPlaintext):
		c.pop3RefusePlaintext()
	default:
		if !errors.Is(err, auth.ErrUnavailable) {
			c.logError("login", err)
		}
		c.pop3Fail("-ERR [SYS/TEMP] Authentication temporarily unavailable")
	}
}

func (c *session) pop3STLS(st *pop3State, cmd pop3.Command) {
	cfg := c.srv.tls.Load()
	if c.tls || cfg == nil {
		c.pop3Fail("-ERR STLS not available")
		return
	}
	if len(cmd.Args) != 0 {
		c.pop3Fail("-ERR wrong number of arguments")
		return
	}
	c.reply("+OK Begin TLS negotiation")
	if c.bw.Flush() != nil || !c.startTLS(cfg) {
		c.quit = true
		return
	}
	st.user = "" // RFC 2595: back to the start of AUTHORIZATION
}

// pop3Upstream logs in at a POP3 upstream: greeting, STLS if configured,
// CAPA, then USER/PASS, or AUTH PLAIN when the upstream offers SASL PLAIN
// and not USER.
func (c *session) pop3Upstream(ctx context.Context, u Upstream, user, password string) (*upConn, error) {
	if strings.ContainsAny(user, "\r\n\x00") || strings.ContainsAny(password, "\x00") {
		return nil, errRefused // not a credential POP3 can carry
	}
	uc, err := dialUpstream(ctx, u, c.srv.o.DialTimeout)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			uc.close()
		}
	}()
	greeting, err := uc.readLine()
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(greeting, "+OK") {
		return nil, fmt.Errorf("upstream %s greeting: %q", u.Addr, truncate(greeting))
	}
	if u.TLS == TLSStartTLS {
		if _, err := uc.pop3Command("STLS"); err != nil {
			return nil, err
		}
		if err := uc.startTLS(ctx, u); err != nil {
			return nil, err
		}
	}
	useUser, plain, err := uc.pop3Capa()
	if err != nil {
		return nil, err
	}
	if useUser || !plain {
		if strings.ContainsAny(password, "\r\n") {
			return nil, errRefused
		}
		if _, err := uc.pop3Command("USER " + user); err != nil {
			return nil, err
		}
		if _, err := uc.pop3Command("PASS " + password); err != nil {
			return nil, err
		}
	} else {
		ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
		if _, err := uc.pop3Command("AUTH PLAIN " + ir); err != nil {
			return nil, err
		}
	}
	if err := uc.release(); err != nil {
		return nil, err
	}
	ok = true
	return uc, nil
}

// pop3Command sends one command and reads its status line: nil for +OK,
// errRefused for a -ERR about the credentials, another error otherwise
// (a -ERR [SYS/TEMP] or [IN-USE] is the upstream's trouble, not the
// client's).
func (u *upConn) pop3Command(cmd string) (string, error) {
	if err := u.send(cmd); err != nil {
		return "", err
	}
	line, err := u.readLine()
	if err != nil {
		return "", err
	}
	verb, _, _ := strings.Cut(cmd, " ")
	switch {
	case strings.HasPrefix(line, "+OK"):
		return line, nil
	case !strings.HasPrefix(line, "-ERR"):
		return "", fmt.Errorf("upstream %s: %s: unexpected reply %q", u.addr, verb, truncate(line))
	case verb != "USER" && verb != "PASS" && verb != "AUTH",
		strings.Contains(line, "[SYS/"), strings.Contains(line, "[IN-USE]"):
		return "", fmt.Errorf("upstream %s: %s: %q", u.addr, verb, truncate(line))
	}
	return "", errRefused
}

// pop3Capa asks the upstream's capabilities: whether it takes USER and
// SASL PLAIN. An upstream without CAPA takes USER.
func (u *upConn) pop3Capa() (user, plain bool, err error) {
	if err := u.send("CAPA"); err != nil {
		return false, false, err
	}
	line, err := u.readLine()
	if err != nil {
		return false, false, err
	}
	if !strings.HasPrefix(line, "+OK") {
		return true, false, nil
	}
	for range 1000 {
		line, err := u.readLine()
		if err != nil {
			return false, false, err
		}
		if line == "." {
			return user, plain, nil
		}
		f := strings.Fields(strings.ToUpper(line))
		switch {
		case len(f) == 0:
		case f[0] == "USER":
			user = true
		case f[0] == "SASL":
			for _, m := range f[1:] {
				plain = plain || m == "PLAIN"
			}
		}
	}
	return false, false, fmt.Errorf("upstream %s: CAPA list too long", u.addr)
}

// truncate shortens an upstream's line for an error message.
func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
