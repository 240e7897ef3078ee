package eventstore

import (
	"context"
	"fmt"
	"sync"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// streamLocks queues the commands of one instance on the same ticket, so that 64
// concurrent comments on one ticket append one after another instead of clashing on
// the expected version and replaying the stream up to MaxRetries times each. It is
// only a throughput aid: instances still race, and the expected-version append stays
// what guarantees correctness. Waiting honours the request's context.
type streamLocks struct {
	mu    sync.Mutex
	locks map[uuid.UUID]*streamLock
}

type streamLock struct {
	ch   chan struct{} // a token: holding it is holding the lock
	refs int
}

func newStreamLocks() *streamLocks { return &streamLocks{locks: map[uuid.UUID]*streamLock{}} }

// lock waits for id's lock and returns its release, or fails with ctx's error (as
// ticket.ErrUnavailable: the request ran out of time waiting for its turn).
func (l *streamLocks) lock(ctx context.Context, id uuid.UUID) (func(), error) {
	l.mu.Lock()
	e, ok := l.locks[id]
	if !ok {
		e = &streamLock{ch: make(chan struct{}, 1)}
		l.locks[id] = e
	}
	e.refs++
	l.mu.Unlock()
	done := func() {
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.locks, id)
		}
		l.mu.Unlock()
	}
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; done() }, nil
	case <-ctx.Done():
		done()
		return nil, fmt.Errorf("%w: waiting for ticket %s: %w", ticket.ErrUnavailable, id, ctx.Err())
	}
}
