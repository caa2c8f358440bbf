package storeadapter

import (
	"errors"
	"io"
	"strings"
	"testing"

	"moat/pop3imap/pop3"
	"moat/store/mailbox"
)

func TestBackend(t *testing.T) {
	s := mailbox.Open(t.TempDir())
	const user = "u@example.test"
	msgs := []string{"Subject: 1\r\n\r\none\r\n", "Subject: 2\r\n\r\ntwo\r\n"}
	for _, m := range msgs {
		if _, err := s.Deliver(user, strings.NewReader(m)); err != nil {
			t.Fatal(err)
		}
	}
	var b pop3.Backend = Backend{Store: s}
	md, err := b.OpenMaildrop(user)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.OpenMaildrop(user); !errors.Is(err, pop3.ErrInUse) || !errors.Is(err, mailbox.ErrInUse) {
		t.Fatalf("second open: %v, want pop3.ErrInUse", err)
	}
	list, err := md.Messages()
	if err != nil || len(list) != 2 || list[0].Size != int64(len(msgs[0])) || list[0].UID == list[1].UID {
		t.Fatalf("Messages = %+v, %v", list, err)
	}
	r, err := md.Open(1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if string(got) != msgs[1] {
		t.Errorf("message 2 reads %q", got)
	}
	if err := md.Commit([]int{0}); err != nil {
		t.Fatal(err)
	}
	if err := md.Close(); err != nil {
		t.Fatal(err)
	}
	md, err = b.OpenMaildrop(user)
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	if list2, _ := md.Messages(); len(list2) != 1 || list2[0].UID != list[1].UID {
		t.Errorf("after commit: %+v", list2)
	}
}
