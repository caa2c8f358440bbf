// Command consistency checks that two gateways sharing one Redis keep
// greylisting and rate-limit state consistent under concurrent load
// (issue 10, part 4; bench/scale.sh runs it). Two modes:
//
//	consistency greylist -a 127.0.0.1:2525 -b 127.0.0.1:2526 -n 300 -c 40 -delay 2s -events a.log,b.log
//
// sends the first attempt of N new triplets (distinct recipients) to both
// gateways at the same moment (both sessions reach RCPT, then both send it
// at once), -c sessions at a time: every answer must be 4xx. Once the delay
// has passed it retries every triplet at one gateway and then the other:
// every retry must be accepted (250 at RCPT and at the end of data). With
// -events it then reads both gateways' JSON event logs and requires, per
// triplet, one greylist result "new" across both gateways, "early" for the
// other first attempt, "passed" for both retries and nothing greylisted
// after the first pass.
//
//	consistency rate -addrs 127.0.0.1:2525,127.0.0.1:2526 -n 1000 -c 20 -limit 200/1h [-distinct-senders]
//
// sends N messages from one sender (or one client network, with
// -distinct-senders) split across the gateways, -c sessions at a time, and
// requires the accepted count to lie between the limit and the limit plus
// what the bucket refilled during the run (plus -slack).
//
// Each prints key=value lines and a last line "<mode>: PASS" or
// "<mode>: FAIL (why)"; the exit status is 1 on FAIL, 2 on a usage error.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var (
		out string
		ok  bool
		err error
	)
	switch os.Args[1] {
	case "greylist":
		out, ok, err = greylistMain(os.Args[2:])
	case "rate":
		out, ok, err = rateMain(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "consistency %s: %v\n", os.Args[1], err)
		os.Exit(2)
	}
	fmt.Print(out)
	if !ok {
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: consistency greylist|rate [flags] (-h for the flags of each)")
	os.Exit(2)
}

func greylistMain(args []string) (string, bool, error) {
	fs := flag.NewFlagSet("greylist", flag.ContinueOnError)
	var c greylistConfig
	fs.StringVar(&c.Addrs[0], "a", "", "first gateway (host:port)")
	fs.StringVar(&c.Addrs[1], "b", "", "second gateway (host:port)")
	fs.IntVar(&c.N, "n", 300, "distinct new triplets")
	fs.IntVar(&c.Sessions, "c", 40, "concurrent sessions (two per triplet in flight)")
	fs.DurationVar(&c.Delay, "delay", 2*time.Second, "the policy's greylist delay")
	fs.StringVar(&c.From, "from", "sender@bench.example", "envelope sender of every triplet")
	fs.StringVar(&c.RcptDomain, "rcpt-domain", "example.com", "domain of the distinct recipients")
	fs.StringVar(&c.Run, "run", "", "tag in the recipients, distinct per run (default: from the clock)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "deadline of one session")
	events := fs.String("events", "", "the two gateways' JSON event logs, comma-separated (empty: no event check)")
	fs.DurationVar(&c.EventWait, "event-wait", 10*time.Second, "how long to wait for the events to be written")
	if err := fs.Parse(args); err != nil {
		return "", false, err
	}
	if c.Addrs[0] == "" || c.Addrs[1] == "" || c.N <= 0 || c.Sessions < 2 || c.Delay <= 0 {
		return "", false, errors.New("need -a, -b, -n > 0, -c >= 2 and -delay > 0")
	}
	if *events != "" {
		a, b, ok := strings.Cut(*events, ",")
		if !ok {
			return "", false, errors.New("-events: want two files, comma-separated")
		}
		c.Events = [2]string{a, b}
	}
	if c.Run == "" {
		c.Run = fmt.Sprintf("%x", time.Now().UnixNano()&0xffffffffff)
	}
	// The whole run is bounded: both phases, the delay and the event wait.
	ctx, cancel := context.WithTimeout(context.Background(), 2*c.Timeout*time.Duration(c.N)+c.Delay+c.EventWait+time.Minute)
	defer cancel()
	r, err := runGreylist(ctx, c)
	if err != nil {
		return "", false, err
	}
	return r.String(), r.OK(), nil
}

func rateMain(args []string) (string, bool, error) {
	fs := flag.NewFlagSet("rate", flag.ContinueOnError)
	var c rateConfig
	addrs := fs.String("addrs", "", "the gateways (host:port), comma-separated; message i goes to gateway i mod count")
	fs.IntVar(&c.N, "n", 1000, "messages to send in all")
	fs.IntVar(&c.Sessions, "c", 20, "concurrent sessions in all")
	fs.StringVar(&c.From, "from", "sender@bench.example", "envelope sender")
	fs.BoolVar(&c.DistinctSenders, "distinct-senders", false, "a distinct sender per message (tests a per-network limit)")
	fs.StringVar(&c.Rcpt, "to", "rcpt@example.com", "recipient")
	limit := fs.String("limit", "", "the gateways' limit, COUNT/DURATION (200/1h)")
	fs.StringVar(&c.Name, "name", "rate", "the limit's name in the output (messages_per_sender)")
	fs.IntVar(&c.Slack, "slack", 0, "accepted messages allowed beyond the limit and the refill")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "deadline of one session")
	if err := fs.Parse(args); err != nil {
		return "", false, err
	}
	c.Addrs = strings.Split(*addrs, ",")
	if *addrs == "" || c.N <= 0 || c.Sessions <= 0 || c.Slack < 0 {
		return "", false, errors.New("need -addrs, -n > 0, -c > 0 and -slack >= 0")
	}
	var err error
	if c.Limit, c.Per, err = parseRate(*limit); err != nil {
		return "", false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout*time.Duration(c.N)+time.Minute)
	defer cancel()
	r, err := runRate(ctx, c)
	if err != nil {
		return "", false, err
	}
	return r.String(), r.OK(), nil
}

// session is one SMTP client connection bounded by a context: the
// connection's deadline is the context's, and cancelling the context
// closes it (go-smtp's client takes no context).
type session struct {
	*smtp.Client
	stop func() bool
}

// dial connects to addr and says EHLO, all within ctx.
func dial(ctx context.Context, addr string) (*session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	s := &session{Client: smtp.NewClient(conn), stop: context.AfterFunc(ctx, func() { conn.Close() })}
	if err := s.Hello("consistency.bench.example"); err != nil {
		s.close()
		return nil, fmt.Errorf("EHLO %s: %w", addr, err)
	}
	return s, nil
}

// close says QUIT (its answer does not matter) and closes the connection.
func (s *session) close() {
	s.stop()
	s.Quit()
	s.Close()
}

// send runs MAIL, RCPT and DATA with a small message and returns the reply
// code of the first refusal or 250.
func (s *session) send(from, to string) (int, error) {
	if err := s.Mail(from, nil); err != nil {
		return replyCode(err), fmt.Errorf("MAIL: %w", err)
	}
	if err := s.Rcpt(to, nil); err != nil {
		return replyCode(err), fmt.Errorf("RCPT: %w", err)
	}
	w, err := s.Data()
	if err != nil {
		return replyCode(err), fmt.Errorf("DATA: %w", err)
	}
	fmt.Fprintf(w, "From: <%s>\r\nTo: <%s>\r\nSubject: consistency\r\nDate: %s\r\nMessage-ID: <%d@consistency.bench.example>\r\n\r\n%s\r\n",
		from, to, time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), strings.Repeat("consistency check body line\r\n", 30))
	if err := w.Close(); err != nil {
		return replyCode(err), fmt.Errorf("end of data: %w", err)
	}
	return 250, nil
}

// replyCode is the SMTP reply code of err: 250 for nil, 0 for an error
// that is not a reply (a network failure).
func replyCode(err error) int {
	if err == nil {
		return 250
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// tally counts distinct error texts, to print the most frequent.
type tally map[string]int

func (t tally) add(err error) {
	if err != nil {
		t[err.Error()]++
	}
}

func (t tally) String() string {
	errs := slices.Collect(maps.Keys(t))
	slices.SortFunc(errs, func(a, b string) int { return cmp.Or(t[b]-t[a], strings.Compare(a, b)) })
	var b strings.Builder
	for i, e := range errs {
		if i == 3 {
			fmt.Fprintf(&b, "; ... (%d distinct)", len(errs))
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%d× %s", t[e], e)
	}
	return b.String()
}
