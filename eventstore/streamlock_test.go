package eventstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

func TestStreamLocksQueueOneTicketAndFreeOthers(t *testing.T) {
	l := newStreamLocks()
	id, other := uuid.New(), uuid.New()
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := l.lock(context.Background(), id)
			if err != nil {
				t.Errorf("lock: %v", err)
				return
			}
			n := inside.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			unlock()
		}()
	}
	// another ticket is never held up by id's queue
	unlock, err := l.lock(context.Background(), other)
	if err != nil {
		t.Fatalf("other ticket: %v", err)
	}
	unlock()
	wg.Wait()
	if most.Load() != 1 {
		t.Fatalf("%d commands held one ticket's lock at once, want 1", most.Load())
	}
	if len(l.locks) != 0 {
		t.Fatalf("%d lock entries left after every release", len(l.locks))
	}
}

func TestStreamLockWaitEndsWithTheContext(t *testing.T) {
	l := newStreamLocks()
	id := uuid.New()
	unlock, _ := l.lock(context.Background(), id)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.lock(ctx, id); !errors.Is(err, ticket.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting past the deadline: %v, want ErrUnavailable wrapping DeadlineExceeded", err)
	}
	unlock()
	if len(l.locks) != 0 {
		t.Fatalf("%d lock entries left", len(l.locks))
	}
}
