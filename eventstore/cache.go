package eventstore

import (
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
// An aggregate holds only what its rules need (ticket.State: status, version,
// deletion, comment count), so every entry is the same small size whatever the
// stream's length; the cache is bounded by its number of entries, evicting the least
// recently used. The states are kept by value in one slice, linked by index into the
// recency list: about 100 bytes an entry with the index, no allocation per entry (a
// list element, a ticket and a map entry of pointers each took ~300 bytes: 15 MB of
// the heap at the default 50,000 entries).
type tickets struct {
	mu         sync.Mutex
	maxEntries int
	entries    []entry             // grows up to maxEntries, then reused
	byID       map[uuid.UUID]int32 // index into entries
	head, tail int32               // most and least recently used; -1 when empty
}

// entry is one cached state and its neighbours in the recency list (-1: none).
type entry struct {
	s          ticket.State
	prev, next int32
}

// newTickets returns a cache of at most maxEntries tickets; 0 or less disables it.
func newTickets(maxEntries int) *tickets {
	return &tickets{maxEntries: maxEntries, byID: map[uuid.UUID]int32{}, head: -1, tail: -1}
}

// len returns how many tickets are cached.
func (c *tickets) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byID)
}

// get returns an independent copy of the cached ticket, or nil.
func (c *tickets) get(id uuid.UUID) *ticket.Ticket {
	if c == nil || c.maxEntries <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byID[id]
	if !ok {
		return nil
	}
	c.toFront(i)
	return ticket.Restore(c.entries[i].s)
}

// put stores t's state (its pending events left out) unless the same or a newer
// version is already cached.
func (c *tickets) put(t *ticket.Ticket) {
	if c == nil || c.maxEntries <= 0 {
		return
	}
	s := t.State()
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.byID[s.ID]; ok {
		if c.entries[i].s.Version >= s.Version {
			return
		}
		c.entries[i].s = s
		c.toFront(i)
		return
	}
	var i int32
	if len(c.entries) < c.maxEntries {
		i = int32(len(c.entries))
		c.entries = append(c.entries, entry{prev: -1, next: -1})
	} else { // full: the least recently used entry takes the new state
		i = c.tail
		c.unlink(i)
		delete(c.byID, c.entries[i].s.ID)
	}
	c.entries[i].s = s
	c.byID[s.ID] = i
	c.pushFront(i)
}

// toFront makes entry i the most recently used.
func (c *tickets) toFront(i int32) {
	if c.head == i {
		return
	}
	c.unlink(i)
	c.pushFront(i)
}

func (c *tickets) unlink(i int32) {
	e := &c.entries[i]
	if e.prev >= 0 {
		c.entries[e.prev].next = e.next
	} else {
		c.head = e.next
	}
	if e.next >= 0 {
		c.entries[e.next].prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next = -1, -1
}

func (c *tickets) pushFront(i int32) {
	e := &c.entries[i]
	e.prev, e.next = -1, c.head
	if c.head >= 0 {
		c.entries[c.head].prev = i
	}
	c.head = i
	if c.tail < 0 {
		c.tail = i
	}
}
