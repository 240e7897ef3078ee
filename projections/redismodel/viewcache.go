package redismodel

import (
	"container/list"
	"sync"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/projections"
)

// viewCache remembers the views this process last wrote to Redis, so the projector and
// the write-through can fold new events onto a document without reading it back (a
// long ticket's document is tens of kilobytes of JSON to fetch and decode). A view at
// version N is the same whoever folds it, so a cached view is never wrong; and since
// writes are set-if-newer, Redis held at least that version when it was cached. Redis
// losing documents (a flush, a restart without persistence) is healed by the read path,
// which refills a miss from Postgres, and by the next write of the ticket, which writes
// the whole document. Bounded by the size of the documents' JSON, least recently used
// first out.
type viewCache struct {
	mu      sync.Mutex
	max     int
	size    int
	order   *list.List // front: most recently used
	entries map[uuid.UUID]*list.Element
}

type cachedView struct {
	view projections.View
	size int
}

// viewCacheBytes bounds the cache: about four hundred long tickets' documents (20 KB
// each with 100 embedded comments), any number of short ones.
const viewCacheBytes = 8 << 20

func newViewCache(maxBytes int) *viewCache {
	return &viewCache{max: maxBytes, order: list.New(), entries: map[uuid.UUID]*list.Element{}}
}

// get returns the cached view of id. The caller must not change it (Fold and FoldAll
// never change the view they are given).
func (c *viewCache) get(id uuid.UUID) (projections.View, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok {
		return projections.View{}, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*cachedView).view, true
}

// put remembers v (size: its document's bytes) unless a newer version is cached.
func (c *viewCache) put(v projections.View, size int) {
	if size > c.max/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[v.ID]; ok {
		old := e.Value.(*cachedView)
		if old.view.Version >= v.Version {
			return
		}
		c.size -= old.size
		c.order.Remove(e)
	}
	c.entries[v.ID] = c.order.PushFront(&cachedView{view: v, size: size})
	c.size += size
	for c.size > c.max {
		last := c.order.Back()
		old := last.Value.(*cachedView)
		c.order.Remove(last)
		delete(c.entries, old.view.ID)
		c.size -= old.size
	}
}

// drop forgets everything (after a wipe).
func (c *viewCache) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.order.Init()
	c.entries = map[uuid.UUID]*list.Element{}
	c.size = 0
}
