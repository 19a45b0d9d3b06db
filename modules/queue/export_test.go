package queue

import "time"

// SetStartDelay sets the wait before a new engine takes the spool lock
// (tests need no wait) and returns the old value.
func SetStartDelay(d time.Duration) time.Duration {
	old := startDelay
	startDelay = d
	return old
}
