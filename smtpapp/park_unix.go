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
	return rc.Read(func(fd uintptr) bool {
		_, err := peek(fd)
		return err != syscall.EAGAIN // input, its end or an error: the reader sees it
	})
}

// peek looks at the socket's next byte without taking it or waiting:
// n is 1 with input, 0 at its end; EAGAIN when there is nothing yet.
func peek(fd uintptr) (n int, err error) {
	var b [1]byte
	for {
		n, _, err = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err != syscall.EINTR {
			return n, err
		}
	}
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
		n, err := peek(fd)
		pending = err == nil && n > 0
	})
	return pending
}
