//go:build !linux

package smtpapp

import "time"

type poller interface {
	add(w *wire, deadline time.Time) error
	remove(w *wire) bool
}

// Elsewhere each parked connection waits in a goroutine (waitReadable).
func parkPoller() poller { return nil }
