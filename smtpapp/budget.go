package smtpapp

import (
	"context"
	"time"

	"golang.org/x/sync/semaphore"
)

// memoryBudget caps the message bytes that all sessions of the app hold
// in memory together. A body that does not fit goes to a spool file at
// once; a header section that must be parsed waits for room.
type memoryBudget struct {
	sem  *semaphore.Weighted
	size int64
}

func newMemoryBudget(size int64) *memoryBudget {
	return &memoryBudget{sem: semaphore.NewWeighted(size), size: size}
}

// tryReserve takes n bytes if they are free now.
func (b *memoryBudget) tryReserve(n int64) bool { return b.sem.TryAcquire(n) }

func (b *memoryBudget) release(n int64) {
	if n > 0 {
		b.sem.Release(n)
	}
}

// headerWait is how long a message waits for room to parse its header.
const headerWait = 30 * time.Second

// reserveWait takes n bytes, waiting for them up to headerWait.
func (b *memoryBudget) reserveWait(ctx context.Context, n int64) (release func(), ok bool) {
	n = min(n, b.size)
	if n <= 0 {
		return func() {}, true
	}
	ctx, cancel := context.WithTimeout(ctx, headerWait)
	defer cancel()
	if err := b.sem.Acquire(ctx, n); err != nil {
		return nil, false
	}
	return func() { b.sem.Release(n) }, true
}
