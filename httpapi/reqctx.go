package httpapi

import (
	"context"
	"sync"
	"time"
)

// requestCtx is a request's context: the request's values and its deadline
// (REQUEST_TIMEOUT from its start), whose timer is made only when something waits on
// it: Done, Err, or a context derived from it that can be cancelled. A GET answered
// from Redis never does (the Redis call bounds itself by REDIS_TIMEOUT), so it pays for
// one deadline, that call's, instead of two; anything that reaches Postgres, waits, or
// derives a context gets the deadline as before. Deadline answers without a timer.
type requestCtx struct {
	context.Context // the values; never done itself
	deadline        time.Time
	once            sync.Once
	timed           context.Context // made by the first start (or ended by end)
	cancel          context.CancelFunc
}

func newRequestCtx(values context.Context, deadline time.Time) *requestCtx {
	return &requestCtx{Context: values, deadline: deadline}
}

// start makes the deadline's context, once.
func (r *requestCtx) start() context.Context {
	r.once.Do(func() { r.timed, r.cancel = context.WithDeadline(r.Context, r.deadline) })
	return r.timed
}

// end cancels the request's context when the request is over, as the deferred cancel
// of a WithTimeout did: started or not, it is done from now on (Canceled, unless its
// deadline passed first).
func (r *requestCtx) end() {
	r.once.Do(func() { r.timed, r.cancel = ended, func() {} })
	r.cancel()
}

// ended is the context of every request that ended without its timer made: done.
var ended = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

func (r *requestCtx) Deadline() (time.Time, bool) { return r.deadline, true }
func (r *requestCtx) Done() <-chan struct{}       { return r.start().Done() }
func (r *requestCtx) Err() error                  { return r.start().Err() }

// AfterFunc makes the contexts derived from r register with its deadline's context
// rather than each start a goroutine that waits for r to be done (the context package
// looks for this method on a parent it does not know).
func (r *requestCtx) AfterFunc(f func()) (stop func() bool) {
	return context.AfterFunc(r.start(), f)
}
