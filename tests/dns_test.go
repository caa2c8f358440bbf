package tests

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// startFakeDNS serves DNS on one 127.0.0.1 port over UDP and TCP until the
// test ends, so that nothing moat resolves leaves the machine. Every query
// gets NXDOMAIN: no DNSBL lists the loopback client, no SPF/DKIM/DMARC
// record exists, the .test names the tests use do not exist.
func startFakeDNS(t testing.TB) string {
	t.Helper()
	for range 5 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			pc.Close()
			continue // the TCP port is taken; try another pair
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); serveDNSUDP(pc) }()
		go func() { defer wg.Done(); serveDNSTCP(ln) }()
		t.Cleanup(func() {
			pc.Close()
			ln.Close()
			wg.Wait()
		})
		return pc.LocalAddr().String()
	}
	t.Fatal("fake DNS: no free UDP+TCP port pair on 127.0.0.1")
	return ""
}

func serveDNSUDP(pc net.PacketConn) {
	buf := make([]byte, 4096)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := dnsAnswer(buf[:n]); resp != nil {
			pc.WriteTo(resp, addr)
		}
	}
}

func serveDNSTCP(ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			for {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				resp := dnsAnswer(q)
				if resp == nil {
					return
				}
				out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
				if _, err := c.Write(append(out, resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// dnsAnswer builds an authoritative NXDOMAIN reply echoing the question,
// or nil for a message it cannot parse.
func dnsAnswer(q []byte) []byte {
	qEnd, err := dnsQuestionEnd(q)
	if err != nil {
		return nil
	}
	resp := make([]byte, 0, qEnd)
	resp = append(resp, q[0], q[1]) // ID
	opcode := q[2] & 0x78
	rd := q[2] & 0x01
	resp = append(resp, 0x80|opcode|0x04|rd, 0x80|0x03) // QR, opcode, AA, RD; RA, NXDOMAIN
	resp = append(resp, 0, 1, 0, 0, 0, 0, 0, 0)         // QD=1, AN=NS=AR=0
	return append(resp, q[12:qEnd]...)
}

// dnsQuestionEnd returns the offset after the first question of q.
func dnsQuestionEnd(q []byte) (int, error) {
	if len(q) < 12 || q[2]&0x80 != 0 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return 0, errors.New("not a one-question query")
	}
	i := 12
	for {
		if i >= len(q) {
			return 0, errors.New("short name")
		}
		l := int(q[i])
		if l == 0 {
			i++
			break
		}
		if l&0xc0 != 0 {
			return 0, errors.New("compressed name in a question")
		}
		i += 1 + l
	}
	if i+4 > len(q) {
		return 0, errors.New("short question")
	}
	return i + 4, nil
}
