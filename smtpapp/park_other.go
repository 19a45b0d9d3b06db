//go:build !unix

package smtpapp

import (
	"net"
	"time"
)

// Elsewhere sessions do not park (see park.go).
func canWaitReadable(net.Conn) bool { return false }

func waitReadable(net.Conn, time.Time, func() bool) error { return nil }

func inputPending(net.Conn) bool { return true }
