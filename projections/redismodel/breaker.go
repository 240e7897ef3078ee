package redismodel

import (
	"sync"
	"sync/atomic"
	"time"
)

// Breaker is a small circuit breaker for calls to Redis, shared by this read model and
// the rate limiter (httpapi/ratelimit): after BreakerThreshold consecutive failures
// (errors, timeouts, or answers slower than the caller allows) it opens for a cooldown,
// doubling up to breakerMaxCooldown while failures go on, during which Allow is false
// and no call is made; after the cooldown one call at a time is let through as a
// probe, and its Success closes it. The zero Breaker is closed; it is safe for
// concurrent use.
type Breaker struct {
	fails     atomic.Int32
	openUntil atomic.Int64 // unix nanoseconds
	mu        sync.Mutex
	cooldown  time.Duration
}

// The breaker's bounds.
const (
	BreakerThreshold   = 3
	breakerMinCooldown = 200 * time.Millisecond
	breakerMaxCooldown = 2 * time.Second
)

// Up reports whether the breaker is closed.
func (b *Breaker) Up() bool { return b.fails.Load() < BreakerThreshold }

// Allow reports whether a call may go to Redis now.
func (b *Breaker) Allow() bool {
	if b.Up() {
		return true
	}
	until := b.openUntil.Load()
	now := time.Now().UnixNano()
	if now < until {
		return false
	}
	// Half open: the caller that wins this swap is the probe; the others are refused
	// until it reports.
	return b.openUntil.CompareAndSwap(until, now+int64(breakerMinCooldown))
}

// Success reports a call that answered in time: the breaker closes.
func (b *Breaker) Success() {
	if b.fails.Load() != 0 {
		b.fails.Store(0)
		b.mu.Lock()
		b.cooldown = 0
		b.mu.Unlock()
	}
}

// Failure reports a call that failed or answered too slowly.
func (b *Breaker) Failure() {
	if b.fails.Add(1) < BreakerThreshold {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cooldown = min(max(b.cooldown*2, breakerMinCooldown), breakerMaxCooldown)
	b.openUntil.Store(time.Now().Add(b.cooldown).UnixNano())
}
