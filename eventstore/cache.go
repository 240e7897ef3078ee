package eventstore

import (
	"container/list"
	"sync"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// tickets is a per-process cache of replayed aggregates, so a command on a long stream
// reads only the events after the cached version instead of the whole stream. It is
// an optimisation, never a source of truth: every command still reads the stream's
// tail from Postgres and appends with an expected version, so a stale entry (another
// instance wrote since) costs a few rows, not correctness.
//
// Entries are trimmed to their first CachedComments comments (the count stays exact),
// so a ticket costs at most 1+CachedComments of weight whatever its length; the cache
// is bounded by weight, evicting the least recently used.
// CachedComments is how many comments a cached ticket keeps: enough for the documents
// built from a command's result (projections.EmbeddedComments must not exceed it).
const CachedComments = 100

type tickets struct {
	mu        sync.Mutex
	maxWeight int
	weight    int
	order     *list.List // front: most recently used
	byID      map[uuid.UUID]*list.Element
}

type cached struct {
	id     uuid.UUID
	t      *ticket.Ticket
	weight int
}

func newTickets(maxWeight int) *tickets {
	return &tickets{maxWeight: maxWeight, order: list.New(), byID: map[uuid.UUID]*list.Element{}}
}

// get returns an independent copy of the cached ticket, or nil.
func (c *tickets) get(id uuid.UUID) *ticket.Ticket {
	if c == nil || c.maxWeight <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byID[id]
	if !ok {
		return nil
	}
	c.order.MoveToFront(e)
	return e.Value.(*cached).t.Clone()
}

// put stores a copy of t unless a newer version is already cached.
func (c *tickets) put(t *ticket.Ticket) {
	if c == nil || c.maxWeight <= 0 {
		return
	}
	cp := t.Trimmed(CachedComments)
	w := 1 + len(cp.State().Comments)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[t.ID()]; ok {
		old := e.Value.(*cached)
		if old.t.Version() >= t.Version() {
			return
		}
		c.weight -= old.weight
		c.order.Remove(e)
		delete(c.byID, t.ID())
	}
	c.byID[t.ID()] = c.order.PushFront(&cached{id: t.ID(), t: cp, weight: w})
	c.weight += w
	for c.weight > c.maxWeight {
		last := c.order.Back()
		old := last.Value.(*cached)
		c.order.Remove(last)
		delete(c.byID, old.id)
		c.weight -= old.weight
	}
}
