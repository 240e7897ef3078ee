package redismodel_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/projectionstest"
	"github.com/ticketd/ticketd/projections/redismodel"
	"github.com/ticketd/ticketd/ticket"
)

// slowGets makes every GET round trip (alone or pipelined) take delay, and counts them.
type slowGets struct {
	delay     time.Duration
	singles   atomic.Int32
	pipelines atomic.Int32
	pipedGets atomic.Int32
	hangFrom  atomic.Bool // from now on, GETs hang until their deadline
}

func (h *slowGets) wait(ctx context.Context) error {
	d := h.delay
	if h.hangFrom.Load() {
		d = time.Hour
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func (h *slowGets) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *slowGets) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.EqualFold(cmd.Name(), "get") {
			h.singles.Add(1)
			if err := h.wait(ctx); err != nil {
				cmd.SetErr(err)
				return err
			}
		}
		return next(ctx, cmd)
	}
}
func (h *slowGets) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && strings.EqualFold(cmds[0].Name(), "get") {
			h.pipelines.Add(1)
			h.pipedGets.Add(int32(len(cmds)))
			if err := h.wait(ctx); err != nil {
				for _, c := range cmds {
					c.SetErr(err)
				}
				return err
			}
		}
		return next(ctx, cmds)
	}
}

// TestConcurrentReadsShareRoundTrips: reads that meet while Redis is busy go together
// in pipelines, far fewer round trips than reads, and each still gets its own answer
// (a document, a miss, a tombstone); a read that arrives alone goes at once; when Redis
// hangs, every read, queued or not, returns by its deadline.
func TestConcurrentReadsShareRoundTrips(t *testing.T) {
	t.Parallel()
	rdb := projectionstest.Redis(t)
	hook := &slowGets{delay: 20 * time.Millisecond}
	rdb.AddHook(hook)
	prefix := projectionstest.Prefix(t)
	docs := redismodel.NewDocs(rdb, prefix, 2*time.Second)
	t.Cleanup(func() {
		_ = redismodel.NewDocs(projectionstest.Redis(t), prefix, 5*time.Second).Wipe(context.Background())
	})
	ctx := context.Background()

	// 40 documents at versions 1..40 (the title names the version), 5 tombstones, 5 never written
	var stored, deleted, missing []uuid.UUID
	var views []projections.View
	for i := range 50 {
		id := uuid.New()
		switch {
		case i < 40:
			v := view(id, i+1, ticket.StatusOpen)
			v.Title = fmt.Sprintf("v%d", i+1)
			views, stored = append(views, v), append(stored, id)
		case i < 45:
			v := view(id, 3, ticket.StatusOpen)
			v.Deleted = true
			views, deleted = append(views, v), append(deleted, id)
		default:
			missing = append(missing, id)
		}
	}
	if failed, err := docs.PutMany(ctx, views, false); err != nil || len(failed) > 0 {
		t.Fatalf("put: %v, %d failed", err, len(failed))
	}
	if _, _, _, err := docs.Get(ctx, stored[0]); err != nil { // the slot map, a lone read
		t.Fatal(err)
	}
	if n := hook.singles.Load(); n != 1 {
		t.Fatalf("a lone read: %d single GETs, want 1", n)
	}
	hook.singles.Store(0)

	const readers = 200
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch k := r % 10; {
			case k < 8:
				i := r % len(stored)
				body, version, found, err := docs.Get(ctx, stored[i])
				if err != nil || !found || version != i+1 || !strings.Contains(string(body), fmt.Sprintf(`"title":"v%d"`, i+1)) {
					errs <- fmt.Errorf("read %d of document v%d: version %d found %v err %v body %.60s", r, i+1, version, found, err, body)
				}
			case k == 8:
				if _, _, found, err := docs.Get(ctx, deleted[r%len(deleted)]); !found || !errors.Is(err, redismodel.ErrDeleted) {
					errs <- fmt.Errorf("read %d of a tombstone: found %v err %v", r, found, err)
				}
			default:
				if body, _, found, err := docs.Get(ctx, missing[r%len(missing)]); found || err != nil || body != nil {
					errs <- fmt.Errorf("read %d of a missing document: found %v err %v", r, found, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	trips := hook.singles.Load() + hook.pipelines.Load()
	t.Logf("%d reads: %d single GETs, %d pipelines carrying %d", readers, hook.singles.Load(), hook.pipelines.Load(), hook.pipedGets.Load())
	if got := hook.singles.Load() + hook.pipedGets.Load(); got < readers {
		t.Errorf("%d GETs sent for %d reads", got, readers)
	}
	if trips > readers/4 {
		t.Errorf("%d round trips for %d concurrent reads: they do not share", trips, readers)
	}

	// Redis hangs: lone and queued reads alike return by the deadline.
	hook.hangFrom.Store(true)
	short := redismodel.NewDocs(rdb, prefix, 100*time.Millisecond)
	start := time.Now()
	var hung sync.WaitGroup
	for i := range 20 {
		hung.Add(1)
		go func() {
			defer hung.Done()
			if _, _, _, err := short.Get(ctx, stored[i]); err == nil {
				t.Errorf("read %d while Redis hangs: no error", i)
			}
		}()
	}
	hung.Wait()
	if d := time.Since(start); d > time.Second {
		t.Errorf("reads while Redis hangs returned after %s, want about the 100ms timeout", d)
	}
}

// watchedCtx counts the calls that would make its owner's deadline timer (httpapi's
// request context makes one only on Done or Err).
type watchedCtx struct {
	context.Context
	deadline time.Time
	waits    atomic.Int32
}

func (w *watchedCtx) Deadline() (time.Time, bool) { return w.deadline, true }
func (w *watchedCtx) Done() <-chan struct{}       { w.waits.Add(1); return w.Context.Done() }
func (w *watchedCtx) Err() error                  { w.waits.Add(1); return w.Context.Err() }

// A GET of a document, hit or miss, bounds itself by the Redis timeout and never waits
// on its caller's context when the caller's deadline is later (the hot GET's one
// deadline); a sooner caller deadline still bounds it.
func TestGetDoesNotWaitOnALaterCallerDeadline(t *testing.T) {
	t.Parallel()
	docs, _ := projectionstest.NewDocs(t)
	id := uuid.New()
	if err := docs.Put(context.Background(), view(id, 1, ticket.StatusOpen)); err != nil {
		t.Fatal(err)
	}
	caller := &watchedCtx{Context: context.Background(), deadline: time.Now().Add(5 * time.Second)}
	if _, v, found, err := docs.Get(caller, id); err != nil || !found || v != 1 {
		t.Fatalf("hit: v%d found=%v err=%v", v, found, err)
	}
	if _, _, found, err := docs.Get(caller, uuid.New()); err != nil || found {
		t.Fatalf("miss: found=%v err=%v", found, err)
	}
	if n := caller.waits.Load(); n != 0 {
		t.Errorf("the caller's Done or Err was called %d times: its deadline timer would be made", n)
	}

	soon, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	<-soon.Done()
	if _, _, _, err := docs.Get(soon, id); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a caller whose deadline passed: err %v, want DeadlineExceeded", err)
	}
}
