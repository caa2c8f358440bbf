package resolver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"moat/metrics"
)

// exchange asks the servers for name and qtype until one gives an answer
// (NOERROR or NXDOMAIN): in order, each failure moving on to the next
// server, the whole list Attempts times, while ctx lasts. Otherwise it
// returns the last failure and the server that gave it.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, string, *failure) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.SetEdns0(ednsSize, false)
	var fail *failure
	server := r.servers[0]
	for range r.attempts {
		for _, s := range r.servers {
			if ctx.Err() != nil {
				return nil, server, &failure{text: "i/o timeout", temporary: true, timeout: true}
			}
			server = s
			q.Id = dns.Id()
			reply, err := r.attempt(ctx, q, server)
			if err != nil {
				fail = classify(err)
				if fail.timeout {
					metrics.DNS.Timeout.Inc()
				} else {
					metrics.DNS.Error.Inc()
				}
				continue
			}
			switch reply.Rcode {
			case dns.RcodeSuccess:
				metrics.DNS.Success.Inc()
				return reply, server, nil
			case dns.RcodeNameError:
				metrics.DNS.NXDomain.Inc()
				return reply, server, nil
			case dns.RcodeServerFailure:
				metrics.DNS.ServFail.Inc()
				fail = &failure{text: "server misbehaving (SERVFAIL)", temporary: true}
			case dns.RcodeRefused:
				metrics.DNS.Refused.Inc()
				fail = &failure{text: "query refused (REFUSED)", temporary: true}
			case dns.RcodeFormatError:
				metrics.DNS.Error.Inc()
				fail = &failure{text: "server could not parse the query (FORMERR)"}
			default:
				metrics.DNS.Error.Inc()
				fail = &failure{text: "unexpected reply code " + rcodeName(reply.Rcode), temporary: true}
			}
		}
	}
	return nil, server, fail
}

// attempt is one query to one server, over UDP, then over TCP if the UDP
// reply is truncated, all within Timeout.
func (r *Resolver) attempt(ctx context.Context, q *dns.Msg, server string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	reply, err := r.roundTrip(ctx, r.udp, q, server)
	if err == nil && reply.Truncated {
		reply, err = r.roundTrip(ctx, r.tcp, q, server)
	}
	return reply, err
}

// errMismatch is a reply, over TCP, to some other question.
var errMismatch = errors.New("reply does not match the question")

// malformedError is a reply to our question that cannot be parsed.
type malformedError struct{ err error }

func (e *malformedError) Error() string { return "malformed reply: " + e.err.Error() }

// buffers holds read buffers big enough for any DNS message.
var buffers = sync.Pool{New: func() any { return new([dns.MaxMsgSize]byte) }}

// roundTrip sends q to server and reads the reply until ctx's deadline.
// Over UDP, datagrams that do not answer q (wrong ID, not a response,
// another question, unparseable header) are dropped and the wait goes on,
// as RFC 5452 asks; over TCP they end the attempt. A reply that answers q
// but whose records cannot be parsed is a *malformedError.
func (r *Resolver) roundTrip(ctx context.Context, c *dns.Client, q *dns.Msg, server string) (*dns.Msg, error) {
	co, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer co.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := co.SetDeadline(deadline); err != nil {
			return nil, err
		}
	}
	r.queries.Add(1)
	if err := co.WriteMsg(q); err != nil {
		return nil, err
	}
	buf := buffers.Get().(*[dns.MaxMsgSize]byte)
	defer buffers.Put(buf)
	udp := c.Net == "udp"
	for {
		n, err := co.Read(buf[:])
		if err != nil {
			return nil, err
		}
		reply := new(dns.Msg)
		uerr := reply.Unpack(bytes.Clone(buf[:n])) // the reply must not share the pooled buffer
		if !answers(q, reply) {
			if udp {
				continue
			}
			return nil, errMismatch
		}
		if uerr != nil {
			return nil, &malformedError{uerr}
		}
		return reply, nil
	}
}

// answers reports whether reply, parsed as far as it could be, is the
// reply to q: same ID, a response, and the same question, which only an
// error reply may leave out.
func answers(q, reply *dns.Msg) bool {
	if reply.Id != q.Id || !reply.Response || reply.Opcode != q.Opcode {
		return false
	}
	if len(reply.Question) == 0 {
		return reply.Rcode != dns.RcodeSuccess && reply.Rcode != dns.RcodeNameError
	}
	a, b := q.Question[0], reply.Question[0]
	return len(reply.Question) == 1 && a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// classify turns the error of an attempt into a failure: timeouts and
// network errors are temporary, replies that answer something else or
// cannot be parsed are permanent.
func classify(err error) *failure {
	var ne net.Error
	var me *malformedError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return &failure{text: "i/o timeout", temporary: true, timeout: true}
	case errors.As(err, &me):
		return &failure{text: me.Error()}
	case errors.Is(err, errMismatch):
		return &failure{text: "malformed reply: " + err.Error()}
	}
	return &failure{text: err.Error(), temporary: true}
}

func rcodeName(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return fmt.Sprint(rcode)
}

// serverAddr checks a server address, "ip:port" or a bare IP (port 53).
func serverAddr(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return "", fmt.Errorf("%q: port 0", s)
		}
		return ap.String(), nil
	}
	if ip, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return netip.AddrPortFrom(ip, 53).String(), nil
	}
	return "", fmt.Errorf("want an IP address with an optional port, such as 192.0.2.53:53 or [2001:db8::53]:53, got %q", s)
}

// systemServers returns the nameservers of a resolv.conf file, or
// 127.0.0.1:53 if it cannot be read or lists none.
func systemServers(path string) []string {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil || len(cc.Servers) == 0 {
		return []string{fallbackDNS}
	}
	servers := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		servers = append(servers, net.JoinHostPort(s, cc.Port))
	}
	return servers
}
