//go:build unix

package smtpapp

import (
	"net"
	"syscall"
	"time"
)

// canWaitReadable: the connection is a socket whose readiness can be
// waited for without reading from it.
func canWaitReadable(c net.Conn) bool {
	_, ok := c.(syscall.Conn)
	return ok
}

// waitReadable blocks until c has input (or its end, or an error), until
// deadline, or until it is woken by a deadline in the past and stop says
// so. It reads nothing and holds no buffer: the runtime's poller does the
// waiting, as for any blocked read.
func waitReadable(c net.Conn, deadline time.Time, stop func() bool) error {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	// The deadline first, then the check: a stop that comes after the
	// check sets its own deadline after this one, and so wakes the wait.
	c.SetReadDeadline(deadline)
	if stop() {
		return nil
	}
	var peek [1]byte
	return rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch err {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // nothing yet: the poller waits
			}
			return true // input, end of stream or an error: the reader sees it
		}
	})
}

// inputPending reports whether c has unread input in the kernel (false at
// its end, or when that cannot be known).
func inputPending(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	pending := true
	rc.Control(func(fd uintptr) {
		var peek [1]byte
		n, _, err := syscall.Recvfrom(int(fd), peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		pending = err == nil && n > 0
	})
	return pending
}
