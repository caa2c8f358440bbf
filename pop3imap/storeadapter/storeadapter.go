// Package storeadapter serves the POP3 server from the built-in store: it
// turns *mailbox.Store's maildrops into pop3.Backend, whose methods must
// return pop3's own interface types.
package storeadapter

import (
	"errors"
	"fmt"
	"io"

	"moat/pop3imap/pop3"
	"moat/store/mailbox"
)

// Backend is a pop3.Backend over the built-in store.
type Backend struct{ Store *mailbox.Store }

// OpenMaildrop locks and snapshots the user's INBOX.
func (b Backend) OpenMaildrop(user string) (pop3.Maildrop, error) {
	md, err := b.Store.OpenMaildrop(user)
	if errors.Is(err, mailbox.ErrInUse) {
		return nil, fmt.Errorf("%w: %w", pop3.ErrInUse, err)
	}
	if err != nil {
		return nil, err
	}
	return maildrop{md}, nil
}

type maildrop struct{ md *mailbox.Maildrop }

func (m maildrop) Messages() ([]pop3.Message, error) {
	msgs, err := m.md.Messages()
	if err != nil {
		return nil, err
	}
	out := make([]pop3.Message, len(msgs))
	for i, msg := range msgs {
		out[i] = pop3.Message{UID: msg.UID, Size: msg.Size}
	}
	return out, nil
}

func (m maildrop) Open(i int) (io.ReadCloser, error) { return m.md.Open(i) }
func (m maildrop) Commit(deleted []int) error        { return m.md.Commit(deleted) }
func (m maildrop) Close() error                      { return m.md.Close() }

var _ pop3.Backend = Backend{}
