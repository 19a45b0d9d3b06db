//go:build !linux

package smtpapp

// Elsewhere each parked connection waits in a goroutine (waitReadable).
func parkPoller() poller { return nil }
