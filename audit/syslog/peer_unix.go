//go:build unix

package syslog

import (
	"errors"
	"net"
	"syscall"
)

// peerClosed peeks at the socket of c without waiting and without taking
// the read side from the reader goroutine (RawConn.Control holds no read
// lock): true when the peer has closed it (a read would see EOF) or it
// failed (reset). Data waiting (a TLS session ticket) is not a close.
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	gone := false
	var b [1]byte
	cerr := rc.Control(func(fd uintptr) {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == nil:
			gone = n == 0
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
		default:
			gone = true
		}
	})
	return cerr == nil && gone
}
