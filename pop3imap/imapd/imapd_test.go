package imapd

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
)

func TestLogin(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name     string
		mode     string // plain, starttls, tls
		clearOK  bool   // the client may send passwords in clear
		user     string
		pass     string
		sasl     bool
		wantCode imap.ResponseCode // "" = success
	}{
		{"tls", "tls", false, alice, password, false, ""},
		{"tls upper-case user", "tls", false, "Alice@Example.Test", password, false, ""},
		{"tls plain", "tls", false, alice, password, true, ""},
		{"starttls", "starttls", false, alice, password, false, ""},
		{"starttls plain", "starttls", false, bob, password, true, ""},
		{"wrong password", "tls", false, alice, "nope", false, imap.ResponseCodeAuthenticationFailed},
		{"wrong password plain", "tls", false, alice, "nope", true, imap.ResponseCodeAuthenticationFailed},
		{"unknown user", "tls", false, "eve@example.test", password, false, imap.ResponseCodeAuthenticationFailed},
		{"locked out", "tls", false, "locked@example.test", password, false, imap.ResponseCodeUnavailable},
		{"cleartext untrusted", "plain", false, alice, password, false, imap.ResponseCodePrivacyRequired},
		{"cleartext untrusted plain", "plain", false, alice, password, true, imap.ResponseCodePrivacyRequired},
		{"cleartext trusted", "plain", true, alice, password, false, ""},
		{"cleartext trusted plain", "plain", true, alice, password, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.auth.clearOK.Store(tc.clearOK)
			c := h.dial(tc.mode, nil)
			var err error
			if tc.sasl {
				err = c.Authenticate(sasl.NewPlainClient("", tc.user, tc.pass))
			} else {
				err = c.Login(tc.user, tc.pass).Wait()
			}
			if code(err) != tc.wantCode || (tc.wantCode == "" && err != nil) {
				t.Fatalf("login: %v, want code %q", err, tc.wantCode)
			}
			if tc.wantCode == imap.ResponseCodePrivacyRequired {
				return // refused by imapserver before the authenticator
			}
			r := h.auth.last()
			mech := "LOGIN"
			if tc.sasl {
				mech = "PLAIN"
			}
			listener := map[string]string{"tls": "imaps", "plain": "imap", "starttls": "imap"}[tc.mode]
			if r.Protocol != "imap" || r.Mechanism != mech || r.TLS != (tc.mode != "plain") || r.Listener != listener ||
				!r.Remote.Addr().IsLoopback() || r.User != tc.user {
				t.Errorf("auth request %+v", r)
			}
			if err == nil {
				if _, err := c.Select("INBOX", nil).Wait(); err != nil {
					t.Errorf("select after login: %v", err)
				}
			}
		})
	}
}

// LOGINDISABLED is advertised exactly to the clients that may not send a
// password in clear, and STARTTLS lifts it.
func TestLoginDisabledPerClient(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		clearOK bool
		want    []string
		notWant []string
	}{
		{false, []string{"LOGINDISABLED", "STARTTLS"}, []string{"AUTH=PLAIN"}},
		{true, []string{"AUTH=PLAIN", "STARTTLS"}, []string{"LOGINDISABLED"}},
	} {
		h.auth.clearOK.Store(tc.clearOK)
		r := h.raw("plain")
		untagged, tagged := r.cmd("CAPABILITY")
		caps := strings.Join(untagged, " ")
		for _, w := range tc.want {
			if !strings.Contains(caps, w) {
				t.Errorf("clearOK=%v: %q lacks %s", tc.clearOK, caps, w)
			}
		}
		for _, w := range tc.notWant {
			if strings.Contains(caps, w) {
				t.Errorf("clearOK=%v: %q has %s", tc.clearOK, caps, w)
			}
		}
		if !strings.HasPrefix(tagged, "OK") {
			t.Errorf("CAPABILITY: %s", tagged)
		}
	}
	h.auth.clearOK.Store(false)
	c := h.dial("starttls", nil)
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if caps.Has(imap.CapLoginDisabled) || !caps.Has(imap.Cap("AUTH=PLAIN")) || caps.Has(imap.CapStartTLS) {
		t.Errorf("caps after STARTTLS: %v", caps)
	}
}

func TestImplicitTLSWithoutCertificate(t *testing.T) {
	h := newHarness(t)
	h.srv.SetTLSConfig(nil)
	r := h.raw("plain")
	untagged, _ := r.cmd("CAPABILITY")
	if strings.Contains(strings.Join(untagged, " "), "STARTTLS") {
		t.Errorf("STARTTLS offered without a certificate: %q", untagged)
	}
	if _, err := imapclient.DialTLS(h.tls, h.options(nil)); err == nil {
		t.Error("implicit TLS worked without a certificate")
	}
}

// Every capability advertised after login works with a client.
func TestAdvertisedCapabilitiesWork(t *testing.T) {
	h := newHarness(t)
	h.deliver(alice, message(1, "one"))
	c := h.login(alice, nil)
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for cp := range caps {
		got = append(got, string(cp))
	}
	slices.Sort(got)
	want := []string{"CHILDREN", "ENABLE", "IDLE", "IMAP4rev1", "LITERAL-", "MOVE", "NAMESPACE", "SASL-IR", "UIDPLUS", "UNSELECT", "UTF8=ACCEPT"}
	if !slices.Equal(got, want) {
		t.Fatalf("caps %v\nwant %v", got, want)
	}
	for _, cp := range got {
		var err error
		switch cp {
		case "CHILDREN":
			c.Create("Parent/Child", nil).Wait()
			var l []*imap.ListData
			l, err = c.List("", "Parent", nil).Collect()
			if err == nil && (len(l) != 1 || !slices.Contains(l[0].Attrs, imap.MailboxAttrHasChildren)) {
				err = fmt.Errorf("LIST Parent: %+v", l)
			}
		case "ENABLE", "UTF8=ACCEPT":
			_, err = c.Enable(imap.CapUTF8Accept).Wait()
		case "IDLE":
			var idle *imapclient.IdleCommand
			if idle, err = c.Idle(); err == nil {
				err = idle.Close()
			}
		case "LITERAL-", "IMAP4rev1":
			// LITERAL- is used by APPEND of small messages below.
			a := c.Append("INBOX", int64(len(message(2, "two"))), nil)
			a.Write([]byte(message(2, "two")))
			a.Close()
			_, err = a.Wait()
		case "MOVE":
			c.Create("Moved", nil).Wait()
			c.Select("INBOX", nil).Wait()
			_, err = c.Move(imap.SeqSetNum(1), "Moved").Wait()
		case "NAMESPACE":
			var ns *imap.NamespaceData
			ns, err = c.Namespace().Wait()
			if err == nil && (len(ns.Personal) != 1 || ns.Personal[0].Delim != '/') {
				err = fmt.Errorf("namespace %+v", ns)
			}
		case "SASL-IR":
			c2 := h.dial("tls", nil)
			err = c2.Authenticate(sasl.NewPlainClient("", alice, password))
		case "UIDPLUS":
			c.Select("INBOX", nil).Wait()
			c.Store(imap.UIDSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close()
			_, err = c.UIDExpunge(imap.UIDSetNum(2)).Collect()
		case "UNSELECT":
			c.Select("INBOX", nil).Wait()
			err = c.Unselect().Wait()
		}
		if err != nil {
			t.Errorf("%s: %v", cp, err)
		}
	}
}

func TestFetchReturnsDeliveredBytes(t *testing.T) {
	h := newHarness(t)
	raw := message(1, "=?utf-8?q?Gr=C3=BC=C3=9Fe?=") + "Second line.\r\n"
	h.deliver(alice, raw)
	c := h.login(alice, nil)
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 1 || sel.UIDNext != 2 || sel.UIDValidity == 0 {
		t.Errorf("select %+v", sel)
	}
	whole := &imap.FetchItemBodySection{Peek: true}
	part := &imap.FetchItemBodySection{Peek: true, Partial: &imap.SectionPartial{Offset: 6, Size: 6}}
	text := &imap.FetchItemBodySection{Peek: true, Specifier: imap.PartSpecifierText}
	subject := &imap.FetchItemBodySection{Peek: true, Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Subject"}}
	msgs := fetchAll(t, c, imap.UIDSetNum(1), &imap.FetchOptions{
		UID: true, Flags: true, Envelope: true, RFC822Size: true, InternalDate: true,
		BodyStructure: &imap.FetchItemBodyStructure{Extended: true},
		BodySection:   []*imap.FetchItemBodySection{whole, part, text, subject},
	})
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if got := m.FindBodySection(whole); !bytes.Equal(got, []byte(raw)) {
		t.Errorf("BODY[] = %q\nwant %q", got, raw)
	}
	if got := string(m.FindBodySection(part)); got != raw[6:12] {
		t.Errorf("BODY[]<6.6> = %q", got)
	}
	if got := string(m.FindBodySection(text)); got != "Hello number 1.\r\nSecond line.\r\n" {
		t.Errorf("BODY[TEXT] = %q", got)
	}
	if got := string(m.FindBodySection(subject)); !strings.HasPrefix(got, "Subject: =?utf-8?q?Gr") {
		t.Errorf("BODY[HEADER.FIELDS (Subject)] = %q", got)
	}
	if m.RFC822Size != int64(len(raw)) || m.UID != 1 || !slices.Equal(m.Flags, []imap.Flag{flagRecent}) {
		t.Errorf("size %d uid %d flags %v", m.RFC822Size, m.UID, m.Flags)
	}
	if m.Envelope == nil || m.Envelope.Subject != "Grüße" || m.Envelope.MessageID != "m1@example.net" ||
		len(m.Envelope.From) != 1 || m.Envelope.From[0].Addr() != "sender@example.net" {
		t.Errorf("envelope %+v", m.Envelope)
	}
	if bs, ok := m.BodyStructure.(*imap.BodyStructureSinglePart); !ok || bs.Type != "text" || bs.Subtype != "plain" {
		t.Errorf("body structure %#v", m.BodyStructure)
	}
	if time.Since(m.InternalDate) > time.Minute || time.Since(m.InternalDate) < -time.Minute {
		t.Errorf("internal date %v", m.InternalDate)
	}
}

// Flags and keywords set in one session are there in the next; FETCH
// BODY[] sets \Seen.
func TestFlagsPersist(t *testing.T) {
	h := newHarness(t)
	h.deliver(alice, message(1, "a"))
	h.deliver(alice, message(2, "b"))
	c := h.login(alice, nil)
	c.Select("INBOX", nil).Wait()
	res := fetchAll(t, c, imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}})
	if len(res) != 1 || !flagIn(res[0].Flags, imap.FlagSeen) {
		t.Errorf("FETCH BODY[] answered %+v, want FLAGS with \\Seen", res)
	}
	st, err := c.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged, imap.FlagAnswered, "$Custom"}}, nil).Collect()
	if err != nil || len(st) != 1 || !flagIn(st[0].Flags, imap.FlagFlagged) || !flagIn(st[0].Flags, imap.FlagAnswered) || !flagIn(st[0].Flags, "$Custom") {
		t.Fatalf("STORE: %+v, %v", st, err)
	}
	c.Logout().Wait()

	h.restart()
	c2 := h.login(alice, nil)
	c2.Select("INBOX", nil).Wait()
	msgs := fetchAll(t, c2, imap.SeqSetNum(1, 2), &imap.FetchOptions{Flags: true, UID: true})
	if len(msgs) != 2 || !slices.Equal(msgs[0].Flags, []imap.Flag{imap.FlagSeen}) ||
		!slices.Equal(msgs[1].Flags, []imap.Flag{imap.FlagAnswered, imap.FlagFlagged, "$Custom"}) {
		t.Errorf("flags after restart: %v / %v", msgs[0].Flags, msgs[1].Flags)
	}
}

func TestExamineIsReadOnly(t *testing.T) {
	h := newHarness(t)
	h.deliver(alice, message(1, "a"))
	h.deliver(alice, message(2, "b"))
	c := h.login(alice, nil)
	c.Select("INBOX", nil).Wait()
	c.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close()
	c.Create("Other", nil).Wait()

	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil || len(sel.PermanentFlags) != 0 {
		t.Fatalf("EXAMINE: %+v %v", sel, err)
	}
	msgs := fetchAll(t, c, imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}, Flags: true})
	if len(msgs) != 1 || flagIn(msgs[0].Flags, imap.FlagSeen) {
		t.Errorf("FETCH BODY[] in EXAMINE: %+v", msgs)
	}
	for name, err := range map[string]error{
		"STORE":   c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(),
		"EXPUNGE": c.Expunge().Close(),
		"MOVE":    func() error { _, err := c.Move(imap.SeqSetNum(1), "Other").Wait(); return err }(),
	} {
		if code(err) != "READ-ONLY" {
			t.Errorf("%s in EXAMINE: %v, want NO [READ-ONLY]", name, err)
		}
	}
	if _, err := c.Copy(imap.SeqSetNum(1), "Other").Wait(); err != nil {
		t.Errorf("COPY from EXAMINE: %v", err)
	}
	if err := c.UnselectAndExpunge().Wait(); err != nil { // CLOSE
		t.Errorf("CLOSE: %v", err)
	}
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true, NumUnseen: true, NumDeleted: true}).Wait()
	if err != nil || *st.NumMessages != 2 || *st.NumUnseen != 2 || *st.NumDeleted != 1 {
		t.Errorf("after EXAMINE and CLOSE: %+v %v (want 2 messages, 2 unseen, 1 deleted)", st, err)
	}
	// CLOSE on a read-write selection does expunge.
	c.Select("INBOX", nil).Wait()
	c.UnselectAndExpunge().Wait()
	st, _ = c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if *st.NumMessages != 1 {
		t.Errorf("CLOSE after SELECT left %d messages, want 1", *st.NumMessages)
	}
}

// updates collects unilateral responses for a client.
type updates struct {
	mu       sync.Mutex
	exists   []uint32
	expunged []uint32
	flags    []string
	ch       chan struct{}
}

func newUpdates() *updates { return &updates{ch: make(chan struct{}, 100)} }

func (u *updates) handler() *imapclient.UnilateralDataHandler {
	poke := func() {
		select {
		case u.ch <- struct{}{}:
		default:
		}
	}
	return &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) { u.mu.Lock(); u.expunged = append(u.expunged, seq); u.mu.Unlock(); poke() },
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				u.mu.Lock()
				u.exists = append(u.exists, *d.NumMessages)
				u.mu.Unlock()
				poke()
			}
		},
		Fetch: func(m *imapclient.FetchMessageData) {
			b, _ := m.Collect()
			if b != nil {
				u.mu.Lock()
				u.flags = append(u.flags, fmt.Sprintf("%d %v", b.SeqNum, b.Flags))
				u.mu.Unlock()
				poke()
			}
		},
	}
}

// wait polls the collected updates until cond holds or the deadline.
func (u *updates) wait(t *testing.T, what string, cond func(u *updates) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		u.mu.Lock()
		ok := cond(u)
		u.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-u.ch:
		case <-deadline:
			u.mu.Lock()
			defer u.mu.Unlock()
			t.Fatalf("no %s: exists %v expunged %v flags %v", what, u.exists, u.expunged, u.flags)
		}
	}
}

func TestIdleHearsNewMail(t *testing.T) {
	h := newHarness(t)
	h.deliver(alice, message(1, "a"))
	u := newUpdates()
	c := h.login(alice, u.handler())
	c.Select("INBOX", nil).Wait()
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	h.deliver(alice, message(2, "b"))
	u.wait(t, "EXISTS 2 during IDLE", func(u *updates) bool { return slices.Contains(u.exists, 2) })
	h.deliver(bob, message(3, "for bob")) // another user: nothing
	h.deliver(alice, message(4, "c"))
	u.wait(t, "EXISTS 3 during IDLE", func(u *updates) bool { return slices.Contains(u.exists, 3) })
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	msgs := fetchAll(t, c, imap.SeqSetNum(3), &imap.FetchOptions{UID: true, Envelope: true})
	if len(msgs) != 1 || msgs[0].UID != 3 || msgs[0].Envelope.Subject != "c" {
		t.Errorf("message 3: %+v", msgs)
	}
}

// Two sessions on one INBOX see each other's expunges and flag changes,
// and so does one that is idling; POP3 deletions reach them too.
func TestSessionsSeeEachOther(t *testing.T) {
	h := newHarness(t)
	for i := 1; i <= 4; i++ {
		h.deliver(alice, message(i, fmt.Sprint(i)))
	}
	a := h.login(alice, nil)
	a.Select("INBOX", nil).Wait()
	ub := newUpdates()
	b := h.login(alice, ub.handler())
	b.Select("INBOX", nil).Wait()
	ui := newUpdates()
	idler := h.login(alice, ui.handler())
	idler.Select("INBOX", nil).Wait()
	idle, err := idler.Idle()
	if err != nil {
		t.Fatal(err)
	}

	a.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close()
	if got, err := a.Expunge().Collect(); err != nil || !slices.Equal(got, []uint32{2}) {
		t.Fatalf("A's EXPUNGE: %v %v", got, err)
	}
	a.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}, Silent: true}, nil).Close()

	ui.wait(t, "EXPUNGE in IDLE", func(u *updates) bool { return slices.Contains(u.expunged, 2) })
	// B is told at its next command; until then its numbers stand.
	msgs := fetchAll(t, b, imap.SeqSetNum(1), &imap.FetchOptions{UID: true})
	if len(msgs) != 1 || msgs[0].UID != 1 {
		t.Errorf("B FETCH 1: %+v", msgs)
	}
	if err := b.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	ub.wait(t, "EXPUNGE and FLAGS in B", func(u *updates) bool {
		return slices.Equal(u.expunged, []uint32{2}) && slices.Equal(u.flags, []string{`2 [\Deleted]`, `1 [\Flagged]`})
	})
	if got := uidList(fetchAll(t, b, imap.SeqSetNum(1, 2, 3), &imap.FetchOptions{UID: true})); !slices.Equal(got, []imap.UID{1, 3, 4}) {
		t.Errorf("B sees UIDs %v, want 1 3 4", got)
	}

	// A POP3 session deletes the first message: the IMAP sessions hear it.
	md, err := h.store.OpenMaildrop(alice)
	if err != nil {
		t.Fatal(err)
	}
	if err := md.Commit([]int{0}); err != nil {
		t.Fatal(err)
	}
	md.Close()
	ui.wait(t, "POP3's deletion in IDLE", func(u *updates) bool { return len(u.expunged) == 2 && u.expunged[1] == 1 })
	idle.Close()
	idle.Wait()
	if got := uidList(fetchAll(t, idler, imap.SeqSetNum(1, 2), &imap.FetchOptions{UID: true})); !slices.Equal(got, []imap.UID{3, 4}) {
		t.Errorf("idler sees UIDs %v, want 3 4", got)
	}
}

func TestUIDsStableAcrossReconnect(t *testing.T) {
	h := newHarness(t)
	for i := 1; i <= 3; i++ {
		h.deliver(alice, message(i, fmt.Sprint(i)))
	}
	c := h.login(alice, nil)
	sel1, _ := c.Select("INBOX", nil).Wait()
	c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close()
	c.Expunge().Close()
	before := fetchAll(t, c, imap.SeqSetNum(1, 2), &imap.FetchOptions{UID: true, Envelope: true})
	c.Logout().Wait()
	h.restart()
	h.deliver(alice, message(4, "4"))
	c2 := h.login(alice, nil)
	sel2, _ := c2.Select("INBOX", nil).Wait()
	after := fetchAll(t, c2, imap.SeqSetNum(1, 2, 3), &imap.FetchOptions{UID: true, Envelope: true})
	if sel2.UIDValidity != sel1.UIDValidity || sel2.UIDNext != 5 {
		t.Errorf("UIDVALIDITY %d→%d, UIDNEXT %d", sel1.UIDValidity, sel2.UIDValidity, sel2.UIDNext)
	}
	if len(after) != 3 || after[0].UID != before[0].UID || after[1].UID != before[1].UID || after[2].UID != 4 ||
		after[0].Envelope.Subject != "2" || after[1].Envelope.Subject != "3" {
		t.Errorf("before %v after %v", uidList(before), uidList(after))
	}
}

func TestAppendCopyMoveExpunge(t *testing.T) {
	h := newHarness(t)
	h.deliver(alice, message(1, "a"))
	c := h.login(alice, nil)
	if err := c.Create("Archive", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	raw := "Subject: appended\n\nbare LF kept as sent\n"
	date := time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)
	a := c.Append("Archive", int64(len(raw)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen, imap.FlagDraft}, Time: date})
	a.Write([]byte(raw))
	a.Close()
	ad, err := a.Wait()
	if err != nil || ad.UID != 1 || ad.UIDValidity == 0 {
		t.Fatalf("APPEND: %+v %v", ad, err)
	}
	a = c.Append("Nope", 1, nil)
	a.Write([]byte("x"))
	a.Close()
	if _, err := a.Wait(); code(err) != imap.ResponseCodeTryCreate {
		t.Errorf("APPEND to a missing folder: %v", err)
	}

	c.Select("Archive", nil).Wait()
	whole := &imap.FetchItemBodySection{Peek: true}
	m := fetchAll(t, c, imap.UIDSetNum(1), &imap.FetchOptions{Flags: true, InternalDate: true, BodySection: []*imap.FetchItemBodySection{whole}})
	if len(m) != 1 || string(m[0].FindBodySection(whole)) != raw || !m[0].InternalDate.Equal(date) ||
		!slices.Equal(m[0].Flags, []imap.Flag{imap.FlagSeen, imap.FlagDraft, flagRecent}) {
		t.Fatalf("appended message: %+v", m)
	}

	c.Select("INBOX", nil).Wait()
	cd, err := c.Copy(imap.SeqSetNum(1), "Archive").Wait()
	if err != nil || cd.UIDValidity != ad.UIDValidity || cd.SourceUIDs.String() != "1" || cd.DestUIDs.String() != "2" {
		t.Fatalf("COPY: %+v %v", cd, err)
	}
	if _, err := c.Copy(imap.SeqSetNum(1), "Nope").Wait(); code(err) != imap.ResponseCodeTryCreate {
		t.Errorf("COPY to a missing folder: %v", err)
	}
	md, err := c.Move(imap.SeqSetNum(1), "Archive").Wait()
	if err != nil || md.DestUIDs.String() != "3" || md.SourceUIDs.String() != "1" {
		t.Fatalf("MOVE: %+v %v", md, err)
	}
	if mb := c.Mailbox(); mb.NumMessages != 0 {
		t.Errorf("INBOX holds %d after MOVE", mb.NumMessages)
	}

	c.Select("Archive", nil).Wait()
	c.Store(imap.UIDSetNum(1, 2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close()
	if got, err := c.UIDExpunge(imap.UIDSetNum(2)).Collect(); err != nil || !slices.Equal(got, []uint32{2}) {
		t.Errorf("UID EXPUNGE 2: %v %v", got, err)
	}
	if got := uidList(fetchAll(t, c, imap.SeqSetNum(1, 2), &imap.FetchOptions{UID: true})); !slices.Equal(got, []imap.UID{1, 3}) {
		t.Errorf("Archive UIDs %v, want 1 3 (UID 1 is \\Deleted but was not in the set)", got)
	}
}

func TestFolderCommands(t *testing.T) {
	h := newHarness(t)
	c := h.login(alice, nil)
	for _, tc := range []struct {
		name string
		run  func() error
		code imap.ResponseCode
	}{
		{"create Sent", func() error { return c.Create("Sent", nil).Wait() }, ""},
		{"create Sent again", func() error { return c.Create("Sent", nil).Wait() }, imap.ResponseCodeAlreadyExists},
		{"create nested", func() error { return c.Create("Work/2026/", nil).Wait() }, ""},
		{"create dotted", func() error { return c.Create("a.b", nil).Wait() }, ""},
		{"create Entwürfe", func() error { return c.Create("Entwürfe", nil).Wait() }, ""},
		{"create empty level", func() error { return c.Create("x//y", nil).Wait() }, imap.ResponseCodeCannot},
		{"delete parent", func() error { return c.Delete("Work").Wait() }, imap.ResponseCodeHasChildren},
		{"delete INBOX", func() error { return c.Delete("INBOX").Wait() }, imap.ResponseCodeCannot},
		{"delete missing", func() error { return c.Delete("Missing").Wait() }, imap.ResponseCodeNonExistent},
		{"rename INBOX", func() error { return c.Rename("INBOX", "Old", nil).Wait() }, imap.ResponseCodeCannot},
		{"rename Work", func() error { return c.Rename("Work", "Job", nil).Wait() }, ""},
		{"rename onto Sent", func() error { return c.Rename("Job", "Sent", nil).Wait() }, imap.ResponseCodeAlreadyExists},
		{"delete a.b", func() error { return c.Delete("a.b").Wait() }, ""},
		{"select missing", func() error { _, err := c.Select("Work", nil).Wait(); return err }, imap.ResponseCodeNonExistent},
		{"status missing", func() error {
			_, err := c.Status("Work", &imap.StatusOptions{NumMessages: true}).Wait()
			return err
		}, imap.ResponseCodeNonExistent},
		{"subscribe", func() error { return c.Subscribe("Sent").Wait() }, ""},
		{"subscribe gone", func() error { return c.Subscribe("Gone").Wait() }, ""},
	} {
		if err := tc.run(); code(err) != tc.code || (tc.code == "" && err != nil) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.code)
		}
	}
	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range list {
		got = append(got, fmt.Sprintf("%s%v", l.Mailbox, l.Attrs))
	}
	want := []string{`Entwürfe[\HasNoChildren]`, `INBOX[\HasNoChildren]`, `Job[\HasChildren]`, `Job/2026[\HasNoChildren]`, `Sent[\HasNoChildren]`}
	if !slices.Equal(got, want) {
		t.Errorf("LIST * = %q\nwant %q", got, want)
	}
	for pattern, want := range map[string][]string{"%": {"Entwürfe", "INBOX", "Job", "Sent"}, "Job/%": {"Job/2026"}, "inbox": {"INBOX"}, "J*": {"Job", "Job/2026"}} {
		l, _ := c.List("", pattern, nil).Collect()
		var names []string
		for _, d := range l {
			names = append(names, d.Mailbox)
		}
		if !slices.Equal(names, want) {
			t.Errorf("LIST %q = %v, want %v", pattern, names, want)
		}
	}
	if l, _ := c.List("", "", nil).Collect(); len(l) != 1 || l[0].Delim != '/' {
		t.Errorf(`LIST "" "": %+v`, l)
	}
	r := h.raw("tls")
	r.cmd("LOGIN " + alice + " " + password)
	// LSUB "%" stops above a subscribed folder: the level it stops at
	// is listed \Noselect (RFC 3501 6.3.9).
	c.Subscribe("Deep/Er/Est").Wait()
	untagged, _ := r.cmd(`LSUB "" "Deep/%"`)
	if len(untagged) != 1 || untagged[0] != `* LSUB (\Noselect \HasChildren) "/" "Deep/Er"` {
		t.Errorf(`LSUB "" "Deep/%%": %q`, untagged)
	}
	c.Unsubscribe("Deep/Er/Est").Wait()
	untagged, tagged := r.cmd(`LSUB "" "*"`)
	if !strings.HasPrefix(tagged, "OK") || len(untagged) != 2 || !strings.Contains(untagged[0], `\Noselect`) ||
		!strings.HasSuffix(untagged[0], `"Gone"`) || !strings.HasSuffix(untagged[1], `"Sent"`) {
		t.Errorf("LSUB: %q %s", untagged, tagged)
	}

	h.deliver(alice, message(1, "a"))
	h.deliver(alice, message(2, "b"))
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true, UIDNext: true, UIDValidity: true, NumUnseen: true}).Wait()
	if err != nil || *st.NumMessages != 2 || st.UIDNext != 3 || st.UIDValidity == 0 || *st.NumUnseen != 2 {
		t.Errorf("STATUS INBOX: %+v %v", st, err)
	}
	untagged, tagged = r.cmd("SELECT INBOX")
	sel := strings.Join(untagged, "\n")
	for _, want := range []string{"* 2 EXISTS", "* 2 RECENT", "[UNSEEN 1]", "[UIDNEXT 3]", `[PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)]`} {
		if !strings.Contains(sel, want) {
			t.Errorf("SELECT lacks %s: %s", want, sel)
		}
	}
	if tagged != "OK [READ-WRITE] SELECT completed" {
		t.Errorf("SELECT: %s", tagged)
	}
}

func TestSearch(t *testing.T) {
	h := newHarness(t)
	h.deliver(alice, message(1, "Quarterly report"))
	h.deliver(alice, "From: boss@example.com\r\nSubject: Lunch\r\nDate: Tue, 01 Mar 2016 10:00:00 +0000\r\n"+
		"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n"+
		"Content-Transfer-Encoding: base64\r\n\r\n"+"U2VjcmV0IFBpenphIHBsYW4=\r\n--b--\r\n") // "Secret Pizza plan"
	h.deliver(alice, message(3, "Re: Quarterly report")+strings.Repeat("padding line\r\n", 100))
	c := h.login(alice, nil)
	c.Select("INBOX", nil).Wait()
	c.Store(imap.SeqSetNum(3), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen, imap.FlagFlagged}, Silent: true}, nil).Close()
	tomorrow := time.Now().AddDate(0, 0, 1)
	for _, tc := range []struct {
		name string
		c    imap.SearchCriteria
		want []imap.UID
	}{
		{"all", imap.SearchCriteria{}, []imap.UID{1, 2, 3}},
		{"subject", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "quarterly"}}}, []imap.UID{1, 3}},
		{"from", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "From", Value: "BOSS"}}}, []imap.UID{2}},
		{"header exists", imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-Id", Value: ""}}}, []imap.UID{1, 3}},
		{"seen", imap.SearchCriteria{Flag: []imap.Flag{imap.FlagSeen}}, []imap.UID{3}},
		{"unseen", imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}, []imap.UID{1, 2}},
		{"keyword", imap.SearchCriteria{Flag: []imap.Flag{"$Junk"}}, nil},
		{"sent before", imap.SearchCriteria{SentBefore: time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC)}, []imap.UID{1, 3}},
		{"sent since", imap.SearchCriteria{SentSince: time.Date(2016, 3, 1, 0, 0, 0, 0, time.UTC)}, []imap.UID{2}},
		{"since today", imap.SearchCriteria{Since: time.Now().AddDate(0, 0, -1)}, []imap.UID{1, 2, 3}},
		{"before tomorrow", imap.SearchCriteria{Before: time.Date(tomorrow.Year(), tomorrow.Month(), tomorrow.Day(), 0, 0, 0, 0, time.UTC).AddDate(0, 0, 1)}, []imap.UID{1, 2, 3}},
		{"since tomorrow", imap.SearchCriteria{Since: time.Now().AddDate(0, 0, 2)}, nil},
		{"body base64", imap.SearchCriteria{Body: []string{"pizza"}}, []imap.UID{2}},
		{"text header", imap.SearchCriteria{Text: []string{"boss@"}}, []imap.UID{2}},
		{"body not header", imap.SearchCriteria{Body: []string{"boss@"}}, nil},
		{"larger", imap.SearchCriteria{Larger: 1000}, []imap.UID{3}},
		{"smaller", imap.SearchCriteria{Smaller: 1000}, []imap.UID{1, 2}},
		{"not", imap.SearchCriteria{Not: []imap.SearchCriteria{{Body: []string{"hello"}}}}, []imap.UID{2}},
		{"or", imap.SearchCriteria{Or: [][2]imap.SearchCriteria{{{Flag: []imap.Flag{imap.FlagFlagged}}, {Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "lunch"}}}}}}, []imap.UID{2, 3}},
		{"uid set", imap.SearchCriteria{UID: []imap.UIDSet{imap.UIDSetNum(2, 3, 99)}}, []imap.UID{2, 3}},
		{"seq set", imap.SearchCriteria{SeqNum: []imap.SeqSet{{imap.SeqRange{Start: 2, Stop: 0}}}}, []imap.UID{2, 3}},
	} {
		res, err := c.UIDSearch(&tc.c, nil).Wait()
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := res.AllUIDs(); !slices.Equal(got, tc.want) {
			t.Errorf("%s: UIDs %v, want %v", tc.name, got, tc.want)
		}
	}
	res, err := c.Search(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "report"}}}, nil).Wait()
	if err != nil || !slices.Equal(res.AllSeqNums(), []uint32{1, 3}) {
		t.Errorf("SEARCH SUBJECT report: %v %v", res, err)
	}
}

func TestCloseEndsSessions(t *testing.T) {
	h := newHarness(t)
	c := h.login(alice, nil)
	c.Select("INBOX", nil).Wait()
	if err := h.srv.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("client still connected after Close")
	}
	if err := h.srv.Serve(nil, Listener{}); err == nil {
		t.Error("Serve after Close succeeded")
	}
}

// \Recent (RFC 3501 2.3.2): a message is \Recent in exactly one session,
// the first read-write one to see it; EXAMINE shows it without claiming
// it; mail arriving while a folder is selected is announced with EXISTS
// and RECENT to one session only; SEARCH RECENT/NEW and STATUS agree.
func TestRecent(t *testing.T) {
	h := newHarness(t)
	h.auth.clearOK.Store(true)
	h.deliver(alice, message(1, "a"))
	h.deliver(alice, message(2, "b"))
	has := func(lines []string, want string) bool { return slices.Contains(lines, want) }

	a, b := h.raw("plain"), h.raw("plain")
	a.cmd("LOGIN " + alice + " " + password)
	b.cmd("LOGIN " + alice + " " + password)
	if u, _ := a.cmd("EXAMINE INBOX"); !has(u, "* 2 RECENT") {
		t.Errorf("EXAMINE: %q, want 2 RECENT", u)
	}
	if u, _ := a.cmd("FETCH 1 FLAGS"); !has(u, `* 1 FETCH (UID 1 FLAGS (\Recent))`) {
		t.Errorf("FETCH FLAGS under EXAMINE: %q", u)
	}
	a.cmd("CLOSE")
	if u, _ := a.cmd("STATUS INBOX (RECENT)"); !has(u, `* STATUS INBOX (RECENT 2)`) {
		t.Errorf("STATUS after EXAMINE: %q, want RECENT 2", u)
	}
	if u, _ := a.cmd("SELECT INBOX"); !has(u, "* 2 RECENT") {
		t.Errorf("first SELECT: %q, want 2 RECENT", u)
	}
	if u, _ := b.cmd("SELECT INBOX"); !has(u, "* 0 RECENT") {
		t.Errorf("second SELECT: %q, want 0 RECENT", u)
	}
	if u, _ := a.cmd("SEARCH NEW"); !has(u, "* SEARCH 1 2") {
		t.Errorf("SEARCH NEW in the claiming session: %q", u)
	}
	if u, _ := b.cmd("SEARCH RECENT"); !has(u, "* SEARCH") {
		t.Errorf("SEARCH RECENT in the other session: %q", u)
	}

	h.deliver(alice, message(3, "c"))
	ua, _ := a.cmd("NOOP")
	ub, _ := b.cmd("NOOP")
	if !has(ua, "* 3 EXISTS") || !has(ub, "* 3 EXISTS") {
		t.Fatalf("new mail not announced: %q / %q", ua, ub)
	}
	if !has(ua, "* 3 RECENT") || !has(ub, "* 0 RECENT") {
		t.Errorf("new mail RECENT: %q / %q, want it in the first session only", ua, ub)
	}
	if u, _ := a.cmd("FETCH 3 FLAGS"); !has(u, `* 3 FETCH (UID 3 FLAGS (\Recent))`) {
		t.Errorf("FETCH FLAGS of new mail: %q", u)
	}
	if u, _ := b.cmd("FETCH 3 FLAGS"); !has(u, `* 3 FETCH (UID 3 FLAGS ())`) {
		t.Errorf("FETCH FLAGS in the other session: %q", u)
	}

	// Claims outlive the sessions and the server.
	a.cmd("LOGOUT")
	b.cmd("LOGOUT")
	h.restart()
	c := h.raw("plain")
	c.cmd("LOGIN " + alice + " " + password)
	if u, _ := c.cmd("SELECT INBOX"); !has(u, "* 0 RECENT") {
		t.Errorf("SELECT after restart: %q, want 0 RECENT", u)
	}
}

// Keywords are stored, listed in FLAGS and PERMANENTFLAGS (with \* while
// there is room), announced to selected sessions, searched
// case-insensitively, replaced by STORE FLAGS and carried by COPY.
func TestKeywords(t *testing.T) {
	h := newHarness(t)
	h.auth.clearOK.Store(true)
	h.deliver(alice, message(1, "a"))
	h.deliver(alice, message(2, "b"))
	has := func(lines []string, want string) bool { return slices.Contains(lines, want) }
	a, b := h.raw("plain"), h.raw("plain")
	a.cmd("LOGIN " + alice + " " + password)
	b.cmd("LOGIN " + alice + " " + password)
	a.cmd("CREATE Archive")
	if u, _ := a.cmd("SELECT INBOX"); !has(u, `* OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] Permanent flags`) {
		t.Errorf("SELECT: %q, want \\* in PERMANENTFLAGS", u)
	}
	b.cmd("SELECT INBOX")
	if u, tag := a.cmd("STORE 1 +FLAGS.SILENT ($Junk NonJunk)"); tag != "OK STORE completed" {
		t.Fatalf("STORE: %q %s", u, tag)
	}
	if u, _ := b.cmd("NOOP"); !has(u, `* FLAGS (\Answered \Flagged \Deleted \Seen \Draft $Junk NonJunk)`) ||
		!has(u, `* 1 FETCH (UID 1 FLAGS ($Junk NonJunk))`) {
		t.Errorf("other session: %q, want FLAGS and FETCH with the keywords", u)
	}
	if u, _ := b.cmd("SEARCH KEYWORD $junk"); !has(u, "* SEARCH 1") {
		t.Errorf("SEARCH KEYWORD: %q", u)
	}
	if u, _ := b.cmd("SEARCH UNKEYWORD nonjunk"); !has(u, "* SEARCH 2") {
		t.Errorf("SEARCH UNKEYWORD: %q", u)
	}
	if u, _ := a.cmd("COPY 1 Archive"); len(u) != 0 {
		t.Errorf("COPY: %q", u)
	}
	if u, _ := a.cmd("STORE 1 FLAGS (\\Seen $junk)"); !has(u, `* 1 FETCH (UID 1 FLAGS (\Seen $Junk \Recent))`) {
		t.Errorf("STORE FLAGS: %q, want NonJunk replaced", u)
	}
	if u, _ := a.cmd("STORE 1 +FLAGS (\\Recent)"); !has(u, `* 1 FETCH (UID 1 FLAGS (\Seen $Junk \Recent))`) {
		t.Errorf("STORE \\Recent: %q, want no change", u)
	}
	if u, _ := b.cmd("EXAMINE Archive"); !has(u, `* FLAGS (\Answered \Flagged \Deleted \Seen \Draft $Junk NonJunk)`) {
		t.Errorf("EXAMINE Archive: %q, want the copied keywords", u)
	}
	if u, _ := b.cmd("FETCH 1 FLAGS"); !has(u, `* 1 FETCH (UID 1 FLAGS ($Junk NonJunk \Recent))`) {
		t.Errorf("copied message: %q", u)
	}
}

// MOVE into the selected folder itself: the message gets a new UID, and
// the original's EXPUNGE comes before the copy's EXISTS.
func TestMoveIntoSelected(t *testing.T) {
	h := newHarness(t)
	h.auth.clearOK.Store(true)
	h.deliver(alice, message(1, "a"))
	h.deliver(alice, message(2, "b"))
	r := h.raw("plain")
	r.cmd("LOGIN " + alice + " " + password)
	r.cmd("SELECT INBOX")
	r.cmd("STORE 1 +FLAGS.SILENT (\\Flagged)")
	u, tagged := r.cmd("MOVE 1 INBOX")
	// Both messages are \Recent here: the SELECT claimed UID 2, the
	// poll after MOVE claims UID 3.
	want := []string{"* 1 EXPUNGE", "* 2 EXISTS", "* 2 RECENT"}
	if tagged != "OK MOVE completed" || len(u) != 4 || !strings.HasSuffix(u[0], " 1 3] COPY completed") ||
		!slices.Equal(u[1:], want) {
		t.Fatalf("MOVE: %q %s, want %q", u, tagged, want)
	}
	if u, _ := r.cmd("FETCH 1:* (UID FLAGS)"); !slices.Equal(u, []string{`* 1 FETCH (UID 2 FLAGS (\Recent))`, `* 2 FETCH (UID 3 FLAGS (\Flagged \Recent))`}) {
		t.Errorf("after MOVE: %q", u)
	}
}
