package redismodel

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/ticketd/ticketd/projections"
)

// writeThrough coalesces the write-throughs of concurrent requests: their documents
// go to Redis in one pipeline (one round trip per cluster node), as the event store's
// group commit does with their appends.
//
// There is no timer. A write joins a queue; when no pipeline is in flight, the
// writing goroutine takes the queue (itself and whoever waits) and sends it at once,
// so a lone write costs what it always did. While a pipeline is in flight, new writes
// wait, and the next pipeline takes all of them (up to maxWriteThrough). Under a create
// load of 64 connections this took a Redis round trip, its syscalls and the client's
// per-call work from every request to every few.
//
// Each write gets its own result: the error of the pipeline when its document is among
// those not known to be written, nil otherwise.
type writeThrough struct {
	docs *Docs

	mu    sync.Mutex
	queue []*throughWrite
	busy  bool

	// pipelines and written count the pipelines sent and the documents they carried.
	pipelines, written atomic.Int64
}

// maxWriteThrough bounds the documents of one pipeline.
const maxWriteThrough = 256

type throughWrite struct {
	view projections.View
	fill bool // SET NX first: a new ticket's document (see FillMany)
	err  error
	done chan struct{}
}

// put stores v (fill: as FillMany would) with the writes of other requests waiting
// meanwhile. It returns nil when v was written, else the pipeline's error; it waits
// for at most the pipeline in flight and its own, each bounded by the Redis timeout
// (or refused at once by an open breaker).
func (w *writeThrough) put(ctx context.Context, v projections.View, fill bool) error {
	me := &throughWrite{view: v, fill: fill, done: make(chan struct{})}
	w.mu.Lock()
	w.queue = append(w.queue, me)
	var batch []*throughWrite
	if !w.busy {
		w.busy = true
		batch = w.take()
	}
	w.mu.Unlock()
	if batch != nil {
		w.send(ctx, batch)
		w.next()
	}
	<-me.done
	return me.err
}

// take removes up to maxWriteThrough writes from the queue; w.mu is held.
func (w *writeThrough) take() []*throughWrite {
	n := min(len(w.queue), maxWriteThrough)
	batch := w.queue[:n:n]
	w.queue = w.queue[n:]
	if len(w.queue) == 0 {
		w.queue = nil // let the backing array go
	}
	return batch
}

// next hands the queue to a new pipeline, sent by a goroutine of its own so that the
// caller answers its request now, or marks the writer idle when nothing waits.
func (w *writeThrough) next() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 {
		w.busy = false
		return
	}
	batch := w.take()
	go func() {
		w.send(context.Background(), batch)
		w.next()
	}()
}

// send writes batch in one pipeline and tells each write its result. Docs bounds it
// by its timeout and breaker.
func (w *writeThrough) send(ctx context.Context, batch []*throughWrite) {
	views, fill := make([]projections.View, len(batch)), make([]bool, len(batch))
	for i, t := range batch {
		views[i], fill[i] = t.view, t.fill
	}
	w.pipelines.Add(1)
	w.written.Add(int64(len(batch)))
	failed, err := w.docs.putMany(ctx, views, false, fill)
	for _, i := range failed {
		batch[i].err = err
	}
	for _, t := range batch {
		close(t.done)
	}
}
