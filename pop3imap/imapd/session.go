package imapd

import (
	"context"
	"crypto/tls"
	"errors"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-sasl"

	"moat/auth"
	"moat/store/mailbox"
	"moat/store/maildir"
)

// session is one IMAP connection. imapserver runs its commands one at a
// time, IDLE included, so its fields need no lock.
type session struct {
	srv      *Server
	conn     *imapserver.Conn
	listener Listener
	remote   netip.AddrPort
	user     string    // canonical user@domain after login
	sel      *selected // the selected folder, if any
	closed   sync.Once
}

func (s *Server) newSession(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, &imap.Error{Type: imap.StatusResponseTypeBye, Text: "Server shutting down"}
	}
	s.sessions.Add(1)
	s.mu.Unlock()
	nc := c.NetConn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sess := &session{srv: s, conn: c, remote: remoteAddr(nc)}
	if tg, ok := nc.(*taggedConn); ok {
		sess.listener = tg.listener
	}
	return sess, nil, nil
}

var _ interface {
	imapserver.SessionNamespace
	imapserver.SessionMove
	imapserver.SessionSASL
} = (*session)(nil)

// Close ends the session (imapserver calls it once the connection ends).
func (s *session) Close() error {
	s.closed.Do(func() {
		if s.sel != nil {
			s.Unselect()
		}
		s.srv.sessions.Done()
	})
	return nil
}

// Login serves LOGIN; imapserver has already refused it on a cleartext
// connection where this server variant does not allow passwords.
func (s *session) Login(username, password string) error {
	return s.login("LOGIN", username, password)
}

// AuthenticateMechanisms lists the SASL mechanisms (AUTH=...).
func (s *session) AuthenticateMechanisms() []string { return []string{sasl.Plain} }

// Authenticate serves AUTHENTICATE PLAIN, with or without SASL-IR.
func (s *session) Authenticate(mech string) (sasl.Server, error) {
	if !strings.EqualFold(mech, sasl.Plain) {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "Unsupported SASL mechanism"}
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if identity != "" && identity != username {
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthorizationFailed,
				Text: "Logging in as another user is not supported"}
		}
		return s.login("PLAIN", username, password)
	}), nil
}

// login asks the authenticator, which writes the imap.login event, and
// maps its verdict to IMAP response codes (RFC 5530).
func (s *session) login(mech, username, password string) error {
	a := s.srv.o.Auth
	if a == nil {
		return errUnavailable
	}
	_, isTLS := s.conn.NetConn().(*tls.Conn)
	ctx, cancel := context.WithTimeout(s.srv.ctx, time.Minute)
	defer cancel()
	user, err := a.Login(ctx, auth.Request{
		Protocol: "imap", Mechanism: mech, Listener: s.listener.Name, Remote: s.remote,
		TLS: isTLS, User: username, Password: password,
	})
	switch {
	case err == nil:
		s.user = user
		return nil
	case errors.Is(err, auth.ErrFailed):
		return imapserver.ErrAuthFailed
	case errors.Is(err, auth.ErrPlaintext):
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodePrivacyRequired,
			Text: "Cleartext login refused, use STARTTLS first"}
	default: // locked out, user list unreadable, shutting down
		return errUnavailable
	}
}

var (
	errUnavailable = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable,
		Text: "Login temporarily unavailable, try again later"}
	errReadOnly = &imap.Error{Type: imap.StatusResponseTypeNo, Code: "READ-ONLY",
		Text: "Mailbox is read-only (EXAMINE)"}
	errTryCreate = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate,
		Text: "No such mailbox"}
)

// storeError turns the store's errors into IMAP replies; others become
// NO [SERVERBUG] and are logged by imapserver.
func storeError(err error) error {
	no := func(code imap.ResponseCode, text string) error {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: code, Text: text}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mailbox.ErrNoFolder):
		return no(imap.ResponseCodeNonExistent, "No such mailbox")
	case errors.Is(err, mailbox.ErrFolderExists):
		return no(imap.ResponseCodeAlreadyExists, "Mailbox already exists")
	case errors.Is(err, mailbox.ErrHasChildren):
		return no(imap.ResponseCodeHasChildren, "Mailbox has children, delete them first")
	case errors.Is(err, mailbox.ErrInbox):
		return no(imap.ResponseCodeCannot, "INBOX cannot be deleted or renamed")
	case errors.Is(err, mailbox.ErrBadFolderName), errors.Is(err, maildir.ErrBadName):
		return no(imap.ResponseCodeCannot, "Mailbox name not allowed")
	case errors.Is(err, mailbox.ErrNoMessage):
		return no(imap.ResponseCodeNonExistent, "Message expunged")
	}
	return err
}

func (s *session) store() *mailbox.Store { return s.srv.o.Store }

// Create makes a folder; a trailing "/" only says the client means to
// put folders under it (RFC 3501 6.3.3).
func (s *session) Create(name string, _ *imap.CreateOptions) error {
	return storeError(s.store().CreateFolder(s.user, strings.TrimRight(name, string(mailbox.Delim))))
}

func (s *session) Delete(name string) error { return storeError(s.store().DeleteFolder(s.user, name)) }

func (s *session) Rename(name, newName string, _ *imap.RenameOptions) error {
	return storeError(s.store().RenameFolder(s.user, name, strings.TrimRight(newName, string(mailbox.Delim))))
}

func (s *session) Subscribe(name string) error {
	return storeError(s.store().Subscribe(s.user, name, true))
}

func (s *session) Unsubscribe(name string) error {
	return storeError(s.store().Subscribe(s.user, name, false))
}

// Namespace: one personal namespace, no prefix, "/" between levels.
func (s *session) Namespace() (*imap.NamespaceData, error) {
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: "", Delim: mailbox.Delim}}}, nil
}

// List serves LIST and LSUB. Folders above existing ones that do not
// exist themselves are listed \Noselect, so that "%" walks the tree.
func (s *session) List(w *imapserver.ListWriter, ref string, patterns []string, o *imap.ListOptions) error {
	if len(patterns) == 0 {
		return w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: mailbox.Delim})
	}
	names, err := s.store().Folders(s.user)
	if err != nil {
		return err
	}
	subs, err := s.store().Subscriptions(s.user)
	if err != nil {
		return err
	}
	exists, subscribed, all := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, n := range names {
		exists[n], all[n] = true, true
		for _, p := range parents(n) {
			all[p] = true
		}
	}
	for _, n := range subs {
		subscribed[n] = true
	}
	candidates := all
	if o.SelectSubscribed {
		candidates = subscribed
	}
	matches := func(n string) bool {
		for _, p := range patterns {
			if matchList(n, ref, p) {
				return true
			}
		}
		return false
	}
	var list []string
	listed := map[string]bool{}
	for n := range candidates {
		if matches(n) {
			list = append(list, n)
			listed[n] = true
		}
	}
	// LSUB "%" lists the unsubscribed level above a subscribed folder
	// that "%" stops short of, as \Noselect (RFC 3501 6.3.9).
	noSelect := map[string]bool{}
	if o.SelectSubscribed {
		for n := range subscribed {
			if matches(n) {
				continue
			}
			for _, p := range parents(n) {
				if !subscribed[p] && !listed[p] && matches(p) {
					list = append(list, p)
					listed[p], noSelect[p] = true, true
				}
			}
		}
	}
	sort.Strings(list)
	for _, n := range list {
		d := &imap.ListData{Mailbox: n, Delim: mailbox.Delim}
		if !exists[n] || noSelect[n] {
			// A level above a folder, or (LSUB) a subscription to a
			// folder that is gone.
			d.Attrs = append(d.Attrs, imap.MailboxAttrNoSelect)
		}
		if hasChild(n, all) || noSelect[n] {
			d.Attrs = append(d.Attrs, imap.MailboxAttrHasChildren)
		} else {
			d.Attrs = append(d.Attrs, imap.MailboxAttrHasNoChildren)
		}
		if subscribed[n] && (o.SelectSubscribed || o.ReturnSubscribed) {
			d.Attrs = append(d.Attrs, imap.MailboxAttrSubscribed)
		}
		if err := w.WriteList(d); err != nil {
			return err
		}
	}
	return nil
}

func parents(name string) []string {
	var out []string
	for i := range len(name) {
		if name[i] == mailbox.Delim {
			out = append(out, name[:i])
		}
	}
	return out
}

func hasChild(name string, all map[string]bool) bool {
	for n := range all {
		if strings.HasPrefix(n, name+string(mailbox.Delim)) {
			return true
		}
	}
	return false
}

// matchList is imapserver.MatchList with INBOX matched in any case, as
// RFC 3501 wants for that one name.
func matchList(name, ref, pattern string) bool {
	if imapserver.MatchList(name, mailbox.Delim, ref, pattern) {
		return true
	}
	if name != "INBOX" && !strings.HasPrefix(name, "INBOX/") {
		return false
	}
	return imapserver.MatchList(name, mailbox.Delim, inboxUpper(ref), inboxUpper(pattern))
}

func inboxUpper(s string) string {
	if len(s) >= 5 && strings.EqualFold(s[:5], "INBOX") && (len(s) == 5 || s[5] == mailbox.Delim) {
		return "INBOX" + s[5:]
	}
	return s
}

// Status reports on a folder without selecting it.
func (s *session) Status(name string, o *imap.StatusOptions) (*imap.StatusData, error) {
	f, err := s.store().OpenFolder(s.user, name)
	if err != nil {
		return nil, storeError(err)
	}
	defer f.Close()
	data := &imap.StatusData{Mailbox: name}
	f.View(func(v mailbox.View) {
		var n, unseen, deleted, recent uint32
		var size, deletedSize int64
		for _, m := range v.Messages {
			n++
			size += m.Size
			if m.UID >= v.FirstRecent {
				recent++
			}
			if !m.Flags.Has(mailbox.Seen) {
				unseen++
			}
			if m.Flags.Has(mailbox.Deleted) {
				deleted++
				deletedSize += m.Size
			}
		}
		data.UIDNext, data.UIDValidity = imap.UID(v.UIDNext), v.UIDValidity
		if o.NumMessages {
			data.NumMessages = &n
		}
		if o.NumUnseen {
			data.NumUnseen = &unseen
		}
		if o.NumDeleted {
			data.NumDeleted = &deleted
		}
		if o.Size {
			data.Size = &size
		}
		if o.DeletedStorage {
			data.DeletedStorage = &deletedSize
		}
		if o.NumRecent {
			data.NumRecent = &recent
		}
	})
	return data, nil
}

// Append stores a message as the client sent it.
func (s *session) Append(name string, r imap.LiteralReader, o *imap.AppendOptions) (*imap.AppendData, error) {
	f, err := s.store().OpenFolder(s.user, name)
	if errors.Is(err, mailbox.ErrNoFolder) {
		return nil, errTryCreate
	}
	if err != nil {
		return nil, storeError(err)
	}
	defer f.Close()
	flags, err := storeFlags(f, o.Flags, true)
	if err != nil {
		return nil, storeError(err)
	}
	uid, err := f.Append(r, flags, o.Time)
	if err != nil {
		return nil, storeError(err)
	}
	data := &imap.AppendData{UID: imap.UID(uid)}
	f.View(func(v mailbox.View) { data.UIDValidity = v.UIDValidity })
	return data, nil
}
