package redismodel_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/projections/projectionstest"
	"github.com/ticketd/ticketd/projections/redismodel"
)

// countWrites counts the pipelines that write documents (SET NX, which go-redis names
// "set", and the set-if-newer script) and the writes they carry, each such round trip
// taking delay more.
type countWrites struct {
	pipelines, writes atomic.Int32
	delay             atomic.Int64
}

func isWrite(c redis.Cmder) bool {
	return slices.Contains([]string{"set", "setnx", "evalsha", "eval"}, c.Name())
}

func (h *countWrites) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countWrites) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if isWrite(cmd) {
			h.pipelines.Add(1)
			h.writes.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *countWrites) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && isWrite(cmds[0]) {
			h.pipelines.Add(1)
			h.writes.Add(int32(len(cmds)))
			time.Sleep(time.Duration(h.delay.Load()))
		}
		return next(ctx, cmds)
	}
}

// TestConcurrentWriteThroughsShareRoundTrips: write-throughs that meet while Redis is
// busy go in shared pipelines, new tickets' documents (SET NX) and later versions (the
// script) together, and each stores exactly its replay; a lone write goes at once, in
// one pipeline; when Redis hangs, every write, queued or not, gives up within the
// timeout and leaves its ticket read past Redis.
func TestConcurrentWriteThroughsShareRoundTrips(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	rdb := projectionstest.Redis(t)
	fault, count := &rdFault{}, &countWrites{}
	rdb.AddHook(fault)
	rdb.AddHook(count)
	prefix := projectionstest.Prefix(t)
	docs := redismodel.NewDocs(rdb, prefix, 400*time.Millisecond)
	t.Cleanup(func() {
		_ = redismodel.NewDocs(projectionstest.Redis(t), prefix, 5*time.Second).Wipe(context.Background())
	})
	ctx := context.Background()
	reader := redismodel.NewReader(docs, pgmodel.NewReadModel(pool, store), pool, nil)

	// 40 new tickets, and 20 whose v1 Redis holds and whose v2 is to be written
	const fresh, updated = 40, 20
	var ids []uuid.UUID
	var writes [][]eventstore.Record
	for i := range fresh + updated {
		id, opened := projectionstest.Open(t, store, fmt.Sprintf("w%d", i))
		ids = append(ids, id)
		if i < fresh {
			writes = append(writes, opened)
			continue
		}
		reader.Committed(ctx, rdEvents(opened)) // alone: one pipeline each
		writes = append(writes, projectionstest.Do(t, store, id, projectionstest.Comment(1)))
	}
	if p, w := count.pipelines.Load(), count.writes.Load(); p != updated || w != updated {
		t.Fatalf("%d lone write-throughs went in %d pipelines of %d writes, want one each", updated, p, w)
	}
	count.pipelines.Store(0)
	count.writes.Store(0)

	count.delay.Store(int64(80 * time.Millisecond)) // each round trip of writes takes 80 ms longer
	var wg sync.WaitGroup
	for _, recs := range writes {
		wg.Go(func() { reader.Committed(ctx, rdEvents(recs)) })
	}
	wg.Wait()
	count.delay.Store(0)
	// The first write goes alone; the others queue behind it and share the next round
	// trip: SET NX for the new tickets, then the script for the rest.
	if p := count.pipelines.Load(); p > 8 {
		t.Fatalf("%d concurrent write-throughs took %d pipelines, want a few", len(writes), p)
	}
	if reader.Pending() != 0 || rdBacklog(t, pool) != 0 {
		t.Fatalf("%d tickets read past Redis, %d queued for repair, after write-throughs that all succeeded", reader.Pending(), rdBacklog(t, pool))
	}
	for _, id := range ids {
		rdExpectReplay(t, docs, store, id, 0)
	}

	// Redis hangs: queued writes and the one in flight all return within the timeout.
	fault.set("hang", "set", "setnx", "evalsha")
	var late []uuid.UUID
	for i := range 10 {
		id, opened := projectionstest.Open(t, store, fmt.Sprintf("h%d", i))
		late = append(late, id)
		writes[i] = opened
	}
	start := time.Now()
	for _, recs := range writes[:10] {
		wg.Go(func() { reader.Committed(ctx, rdEvents(recs)) })
	}
	wg.Wait()
	fault.set("")
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("write-throughs to a hung Redis returned after %v, want within a few timeouts (400ms)", took)
	}
	if reader.Pending() != len(late) {
		t.Fatalf("%d tickets read past Redis after their write-throughs failed, want %d", reader.Pending(), len(late))
	}
	if n := rdBacklog(t, pool); n != len(late) {
		t.Fatalf("%d tickets queued for repair after %d write-throughs failed", n, len(late))
	}
	for _, id := range late {
		body, v, err := reader.GetRaw(ctx, id)
		want, _ := rdWant(t, store, id, 0)
		if err != nil || v != 1 || string(body) != want {
			t.Fatalf("GET of a ticket whose write-through failed answered v%d (%v)\n%s\nwant\n%s", v, err, body, want)
		}
	}
}
