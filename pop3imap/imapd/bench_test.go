package imapd

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// BenchmarkFetchBody fetches BODY[] of 1,000 messages of 10 KB each over
// loopback IMAPS through imapclient, as one UID FETCH 1:*, and reports
// messages per second.
func BenchmarkFetchBody(b *testing.B) {
	h := newHarness(b)
	const n = 1000
	body := strings.Repeat(strings.Repeat("x", 78)+"\r\n", 10240/80)
	for i := range n {
		h.deliver(alice, fmt.Sprintf("Subject: bench %d\r\n\r\n%s", i, body))
	}
	c := h.login(alice, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	opts := &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}
	b.ResetTimer()
	var bytes int64
	for b.Loop() {
		cmd := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, opts)
		got := 0
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			for item := msg.Next(); item != nil; item = msg.Next() {
				if bs, ok := item.(imapclient.FetchItemDataBodySection); ok {
					k, _ := io.Copy(io.Discard, bs.Literal)
					bytes += k
				}
			}
			got++
		}
		if err := cmd.Close(); err != nil || got != n {
			b.Fatalf("fetched %d messages: %v", got, err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.SetBytes(bytes / int64(b.N) / 1)
}
