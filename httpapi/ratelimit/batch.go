package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
)

// Concurrent requests of one budget share one script call, as concurrent appends share
// one commit: the first request of a budget calls Redis at once, alone; the requests
// that arrive while its call is out wait for it and then go together, in one call that
// spends up to one request each (AllowAtMost), and so on while more arrive. Nothing
// waits on a timer, so a lone request is as fast as before, and a principal sending 64
// requests at once costs a few round trips instead of 64. Every request still spends
// exactly one request of the budget in Redis, so instances share budgets exactly as
// before; only the Remaining of requests served together is computed here (the
// script's Remaining after the call, plus the requests served after each one).

// batcher queues one budget's requests while its call is out.
type batcher struct {
	mu      sync.Mutex
	busy    bool                 // a call for this budget is out
	waiting []chan batchedAnswer // requests for the next call
}

type batchedAnswer struct {
	res *redis_rate.Result
	err error
}

// spend spends one request of the budget key, in a call of its own or shared with the
// budget's other requests (see above). It returns within the timeout.
func (l *Limiter) spend(ctx context.Context, key string, r Rate) (*redis_rate.Result, error) {
	v, _ := l.batches.LoadOrStore(key, &batcher{})
	b := v.(*batcher)
	b.mu.Lock()
	if b.busy {
		ch := make(chan batchedAnswer, 1)
		b.waiting = append(b.waiting, ch)
		b.mu.Unlock()
		t := time.NewTimer(l.limits.Timeout)
		defer t.Stop()
		select {
		case a := <-ch:
			return a.res, a.err
		case <-t.C:
			return nil, fmt.Errorf("redis rate limit (waiting for the budget's call): %w", context.DeadlineExceeded)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	b.busy = true
	b.mu.Unlock()
	res, err := l.call(ctx, key, r, 1)
	b.mu.Lock()
	if len(b.waiting) == 0 {
		b.busy = false
		b.mu.Unlock()
		l.batches.CompareAndDelete(key, b) // idle: the map keeps only busy budgets
		return res, err
	}
	b.mu.Unlock()
	go l.serveWaiting(b, key, r) // this request goes on; the waiting ones go together
	return res, err
}

// serveWaiting calls Redis for b's waiting requests, together, until none wait.
func (l *Limiter) serveWaiting(b *batcher, key string, r Rate) {
	for {
		b.mu.Lock()
		w := b.waiting
		b.waiting = nil
		if len(w) == 0 {
			b.busy = false
			b.mu.Unlock()
			l.batches.CompareAndDelete(key, b)
			return
		}
		b.mu.Unlock()
		res, err := l.call(context.Background(), key, r, len(w))
		for i, ch := range w {
			if err != nil {
				ch <- batchedAnswer{err: err}
				continue
			}
			ch <- batchedAnswer{res: share(res, i, r)}
		}
	}
}

// share is the i-th (0-based) request's part of a shared call's result: the first
// res.Allowed requests are allowed, each seeing the requests allowed after it as
// remaining; the rest are refused until the budget's next request is due.
func share(res *redis_rate.Result, i int, r Rate) *redis_rate.Result {
	out := &redis_rate.Result{Limit: res.Limit, ResetAfter: res.ResetAfter}
	if i < res.Allowed {
		out.Allowed = 1
		out.Remaining = res.Remaining + res.Allowed - 1 - i
		out.RetryAfter = -1
		return out
	}
	out.RetryAfter = res.RetryAfter
	if out.RetryAfter <= 0 {
		// AllowAtMost gives no RetryAfter when it allowed some: the next request is due
		// one emission interval after the budget ran dry
		out.RetryAfter = r.Period / time.Duration(r.Rate)
	}
	return out
}
