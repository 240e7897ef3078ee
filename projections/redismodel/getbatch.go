package redismodel

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Concurrent reads share round trips, as concurrent appends share one commit
//
// A hot GET is two system calls to Redis (a write, a read) and little else, so under
// concurrency the server spends most of its CPU in them. Reads therefore go in
// pipelines when they meet: up to getLanes reads are out at once, each alone (a lone
// request waits for nothing: no timer anywhere); a read that arrives while every lane
// is out queues, and when a lane's call returns, everything queued goes together in
// one pipelined round trip per cluster node. Each read keeps its own result, miss and
// error, and its own deadline: a read whose deadline passes in the queue returns at
// once (the pipeline it would have joined still runs, for the others).

// getLanes is how many reads (single GETs or pipelines) may be out at once. Two keep
// one lane busy while the other's answer is handed out; more spread a burst over more
// round trips, which costs system calls without shortening the wait.
const getLanes = 2

// getQueue holds the reads waiting for a lane.
type getQueue struct {
	mu      sync.Mutex
	out     int // lanes out
	waiting []*getWaiter
}

type getWaiter struct {
	key  string
	done chan struct{} // closed when raw and err are set
	raw  []byte
	err  error
}

// getValue reads key, alone when a lane is free, else in the next pipeline. ctx bounds
// the wait and the call.
func (d *Docs) getValue(ctx context.Context, key string) ([]byte, error) {
	q := &d.gets
	q.mu.Lock()
	if q.out < getLanes {
		q.out++
		q.mu.Unlock()
		raw, err := d.rdb.Get(ctx, key).Bytes()
		d.nextGets()
		return raw, err
	}
	w := &getWaiter{key: key, done: make(chan struct{})}
	q.waiting = append(q.waiting, w)
	q.mu.Unlock()
	select {
	case <-w.done:
		return w.raw, w.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// nextGets hands a returning lane to the queued reads, or frees it when none wait. The
// pipelines run in a goroutine of their own, so the read that held the lane answers
// its request at once.
func (d *Docs) nextGets() {
	q := &d.gets
	q.mu.Lock()
	if len(q.waiting) == 0 {
		q.out--
		q.mu.Unlock()
		return
	}
	q.mu.Unlock()
	go func() {
		for {
			q.mu.Lock()
			w := q.waiting
			q.waiting = nil
			if len(w) == 0 {
				q.out--
				q.mu.Unlock()
				return
			}
			q.mu.Unlock()
			d.getPipelined(w)
		}
	}()
}

// getPipelined reads the waiters' keys in one round trip per node, bounded by the
// timeout, and answers each.
func (d *Docs) getPipelined(w []*getWaiter) {
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	cmds := make([]*redis.StringCmd, len(w))
	// Each command carries its own answer (a miss is redis.Nil, a failure its error),
	// so the pipeline's first error adds nothing.
	_, _ = d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, x := range w {
			cmds[i] = p.Get(ctx, x.key)
		}
		return nil
	})
	for i, x := range w {
		x.raw, x.err = cmds[i].Bytes()
		close(x.done)
	}
}
