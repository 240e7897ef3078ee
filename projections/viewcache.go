package projections

import (
	"container/list"
	"sync"

	"github.com/google/uuid"
)

// ViewCache remembers the views a read model of this process last wrote, so its
// projector can fold new events onto a ticket without reading it back. A view at
// version N is the same whoever folds it, so a cached view is never wrong; it is only
// useful when the next event is N+1 (another instance may have written newer versions
// since, and then the read model is read as usual). Bounded by the views' size, least
// recently used out; safe for concurrent use.
type ViewCache struct {
	mu      sync.Mutex
	max     int
	size    int
	order   *list.List // front: most recently used
	entries map[uuid.UUID]*list.Element
}

type cachedView struct {
	view View
	size int
}

// NewViewCache returns a cache of views of at most maxBytes (as their callers size
// them).
func NewViewCache(maxBytes int) *ViewCache {
	return &ViewCache{max: maxBytes, order: list.New(), entries: map[uuid.UUID]*list.Element{}}
}

// Get returns the cached view of id. The caller must not change it (Fold and FoldAll
// never change the view they are given).
func (c *ViewCache) Get(id uuid.UUID) (View, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok {
		return View{}, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*cachedView).view, true
}

// Put remembers v, of the given size, unless the same or a newer version is cached.
// A view larger than a quarter of the budget is not kept.
func (c *ViewCache) Put(v View, size int) {
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

// Drop forgets everything (after the read model was wiped).
func (c *ViewCache) Drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.order.Init()
	c.entries = map[uuid.UUID]*list.Element{}
	c.size = 0
}
