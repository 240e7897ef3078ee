package httpapi

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

type valueKey struct{}

func newTestRequestCtx(d time.Duration) *requestCtx {
	return newRequestCtx(context.WithValue(context.Background(), valueKey{}, "v"), time.Now().Add(d))
}

func started(r *requestCtx) bool {
	done := true
	r.once.Do(func() { done = false; r.timed, r.cancel = context.WithCancel(context.Background()) })
	return done
}

// What the hot GET does with the request's context makes no timer: reading its
// deadline and values, and deriving the Redis call's own bound from it without its
// cancellation (as redismodel.Docs.Get does).
func TestRequestCtxHotPathMakesNoTimer(t *testing.T) {
	r := newTestRequestCtx(5 * time.Second)
	if dl, ok := r.Deadline(); !ok || time.Until(dl) < 4*time.Second {
		t.Fatalf("deadline %v %v, want about 5 s ahead", dl, ok)
	}
	if r.Value(valueKey{}) != "v" {
		t.Fatal("the request's values are lost")
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(r), 150*time.Millisecond)
	<-cctx.Done()
	cancel()
	if !errors.Is(cctx.Err(), context.DeadlineExceeded) || cctx.Value(valueKey{}) != "v" {
		t.Fatalf("the call's own bound: err %v, value %v", cctx.Err(), cctx.Value(valueKey{}))
	}
	if started(r) {
		t.Fatal("the request's timer was made on the hot path")
	}
}

// Once something waits on it, it is a deadline like WithTimeout's: done when the time
// is up, with DeadlineExceeded, and so are the contexts derived from it.
func TestRequestCtxDeadline(t *testing.T) {
	r := newTestRequestCtx(30 * time.Millisecond)
	defer r.end()
	child, cancel := context.WithTimeout(r, time.Minute) // the parent's deadline is sooner
	defer cancel()
	if dl, _ := child.Deadline(); !dl.Equal(r.deadline) {
		t.Fatalf("child deadline %v, want the request's %v", dl, r.deadline)
	}
	waitErr(t, r, context.DeadlineExceeded, "the request's context at its deadline")
	waitErr(t, child, context.DeadlineExceeded, "a context derived from the request's")
}

// waitErr waits (a while) for ctx to be done and checks its error.
func waitErr(t *testing.T, ctx context.Context, want error, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not done", what)
	}
	if !errors.Is(ctx.Err(), want) {
		t.Fatalf("%s: err %v, want %v", what, ctx.Err(), want)
	}
}

// The end of a request cancels it, started or not, and everything derived from it;
// derived contexts register with it rather than each start a goroutine.
func TestRequestCtxEnd(t *testing.T) {
	idle := newTestRequestCtx(time.Minute)
	idle.end()
	if !errors.Is(idle.Err(), context.Canceled) {
		t.Fatalf("an unstarted request after its end: err %v, want Canceled", idle.Err())
	}

	r := newTestRequestCtx(time.Minute)
	before := runtime.NumGoroutine()
	var children []context.Context
	for range 100 {
		c, cancel := context.WithCancel(r)
		defer cancel()
		children = append(children, c)
	}
	if n := runtime.NumGoroutine() - before; n > 10 {
		t.Fatalf("100 derived contexts started %d goroutines", n)
	}
	r.end()
	for _, c := range children {
		waitErr(t, c, context.Canceled, "a context derived from an ended request's")
	}
}
