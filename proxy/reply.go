package proxy

import (
	"fmt"
	"strconv"
	"strings"

	"moat/filters"
)

// Reply is an SMTP reply as moat sends it. Lines, when set, are sent
// verbatim (each without its CRLF): that is how an upstream's own reply is
// relayed exactly, enhanced codes and continuation lines included.
type Reply struct {
	Code     int
	Enhanced string // "5.7.1"; empty for none
	Text     string // may hold '\n' for several lines
	Lines    []string
}

func reply(code int, enhanced, format string, args ...any) *Reply {
	return &Reply{Code: code, Enhanced: enhanced, Text: fmt.Sprintf(format, args...)}
}

func fromFilter(r *filters.Reply) *Reply {
	return &Reply{Code: r.Code, Enhanced: r.Enhanced, Text: r.Text}
}

// Positive reports a 2xx or 3xx reply.
func (r *Reply) Positive() bool { return r.Code < 400 }

// Temporary reports a 4xx reply.
func (r *Reply) Temporary() bool { return r.Code >= 400 && r.Code < 500 }

// Wire renders the reply as it goes on the wire, CRLF after every line.
func (r *Reply) Wire() string {
	var b strings.Builder
	if r.Lines != nil {
		for _, l := range r.Lines {
			b.WriteString(l)
			b.WriteString("\r\n")
		}
		return b.String()
	}
	// Sent for every command: built without fmt or a split of the text.
	b.Grow(len(r.Text) + len(r.Enhanced) + 8)
	text := r.Text
	for {
		l, rest, more := strings.Cut(text, "\n")
		var code [8]byte
		b.Write(strconv.AppendInt(code[:0], int64(r.Code), 10))
		if more {
			b.WriteByte('-')
		} else {
			b.WriteByte(' ')
		}
		if r.Enhanced != "" {
			b.WriteString(r.Enhanced)
			b.WriteByte(' ')
		}
		b.WriteString(strings.TrimRight(l, "\r"))
		b.WriteString("\r\n")
		if !more {
			return b.String()
		}
		text = rest
	}
}

// String renders the reply on one line for logs: lines joined with " / ".
func (r *Reply) String() string {
	w := strings.TrimSuffix(r.Wire(), "\r\n")
	return strings.ReplaceAll(w, "\r\n", " / ")
}

// Replies moat sends in more than one place.
var (
	replyRelayDenied   = reply(554, "5.7.1", "Relay access denied")
	replyRoutedAddress = reply(554, "5.7.1", "Relay access denied: no address routing (%%, ! or @) in the local part")
	replyTooBig        = reply(552, "5.3.4", "Message size exceeds fixed limit")
	replyHeaderTooBig  = reply(552, "5.3.4", "Message header size exceeds limit")
	replyTooManyRcpts  = reply(452, "4.5.3", "Too many recipients")
	replyBareNewline   = reply(550, "5.6.0", "Message contains bare CR or bare LF; use CRLF line endings")
	replyNUL           = reply(550, "5.6.0", "Message contains NUL bytes")
	replyUpstreamDown  = reply(451, "4.4.1", "Upstream unavailable, try again later")
	replyNeedUTF8      = reply(553, "5.6.7", "Internationalised address requires SMTPUTF8")
	replyUpstreamNoUTF = reply(553, "5.6.7", "Internationalised address not supported by the next hop")
	replyShutdown      = reply(421, "4.3.2", "Service shutting down, try again later")
	replyTimeout       = reply(421, "4.4.2", "Timeout exceeded, closing connection")
	replyTooManyErrors = reply(421, "4.7.0", "Too many errors, closing connection")
	replyBadRcpt       = reply(501, "5.1.3", "Bad recipient address syntax")
	replyOtherDest     = reply(452, "4.5.3", "Recipient goes to another destination; send it in a separate transaction")
	replyOtherPolicy   = reply(452, "4.5.3", "Recipient has a different policy; send it in a separate transaction")
)
