package ratelimit

import (
	"sync"
	"sync/atomic"
	"time"
)

// breaker is a small circuit breaker, as in projections/redismodel: after
// breakerThreshold consecutive failures (errors, timeouts, or answers slower than half
// the timeout) it opens for a cooldown, doubling up to breakerMaxCooldown while failures
// go on, during which no call is made and requests pass unlimited at no cost; after the
// cooldown one call at a time is let through as a probe, and its success closes it.
type breaker struct {
	fails     atomic.Int32
	openUntil atomic.Int64 // unix nanoseconds
	mu        sync.Mutex
	cooldown  time.Duration
}

const (
	breakerThreshold   = 3
	breakerMinCooldown = 200 * time.Millisecond
	breakerMaxCooldown = 2 * time.Second
)

// allow reports whether a call may go to Redis now.
func (b *breaker) allow() bool {
	if b.fails.Load() < breakerThreshold {
		return true
	}
	until := b.openUntil.Load()
	now := time.Now().UnixNano()
	if now < until {
		return false
	}
	// Half open: the caller that wins this swap is the probe; the others keep passing
	// without a call until it reports.
	return b.openUntil.CompareAndSwap(until, now+int64(breakerMinCooldown))
}

func (b *breaker) success() {
	if b.fails.Load() != 0 {
		b.fails.Store(0)
		b.mu.Lock()
		b.cooldown = 0
		b.mu.Unlock()
	}
}

func (b *breaker) failure() {
	if b.fails.Add(1) < breakerThreshold {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cooldown = min(max(b.cooldown*2, breakerMinCooldown), breakerMaxCooldown)
	b.openUntil.Store(time.Now().Add(b.cooldown).UnixNano())
}
