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
// An aggregate holds only what its rules need (status, version, deletion, comment
// count), so every entry is the same small size whatever the stream's length; the
// cache is bounded by its number of entries, evicting the least recently used.
type tickets struct {
	mu         sync.Mutex
	maxEntries int
	order      *list.List // front: most recently used
	byID       map[uuid.UUID]*list.Element
}

type cached struct {
	id uuid.UUID
	t  *ticket.Ticket
}

// newTickets returns a cache of at most maxEntries tickets; 0 or less disables it.
func newTickets(maxEntries int) *tickets {
	return &tickets{maxEntries: maxEntries, order: list.New(), byID: map[uuid.UUID]*list.Element{}}
}

// get returns an independent copy of the cached ticket, or nil.
func (c *tickets) get(id uuid.UUID) *ticket.Ticket {
	if c == nil || c.maxEntries <= 0 {
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

// put stores a copy of t (without its pending events) unless the same or a newer
// version is already cached.
func (c *tickets) put(t *ticket.Ticket) {
	if c == nil || c.maxEntries <= 0 {
		return
	}
	cp := t.Clone()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[t.ID()]; ok {
		ent := e.Value.(*cached)
		if ent.t.Version() >= t.Version() {
			return
		}
		ent.t = cp
		c.order.MoveToFront(e)
		return
	}
	c.byID[t.ID()] = c.order.PushFront(&cached{id: t.ID(), t: cp})
	for c.order.Len() > c.maxEntries {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byID, last.Value.(*cached).id)
	}
}
