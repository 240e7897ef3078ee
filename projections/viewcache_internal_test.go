package projections

import (
	"testing"

	"github.com/google/uuid"
)

func TestViewCacheKeepsTheNewestWithinItsBudget(t *testing.T) {
	c := NewViewCache(1000)
	a, b := uuid.New(), uuid.New()
	view := func(id uuid.UUID, version int) View {
		return View{Summary: Summary{ID: id, Version: version}}
	}
	c.Put(view(a, 2), 100)
	c.Put(view(a, 1), 100) // older: ignored
	if v, ok := c.Get(a); !ok || v.Version != 2 {
		t.Fatalf("cached %v %v, want version 2", v.Version, ok)
	}
	c.Put(view(b, 1), 300) // over a quarter of the budget: not cached
	if _, ok := c.Get(b); ok {
		t.Fatal("a view larger than a quarter of the budget was cached")
	}
	for i := range 20 { // 20 x 100 bytes: the oldest go
		c.Put(view(uuid.New(), 1), 100)
		if c.size > c.max {
			t.Fatalf("after %d puts the cache holds %d bytes, over its %d", i+1, c.size, c.max)
		}
	}
	if _, ok := c.Get(a); ok {
		t.Fatal("the least recently used view survived twenty newer ones")
	}
	c.Drop()
	if len(c.entries) != 0 || c.size != 0 || c.order.Len() != 0 {
		t.Fatal("drop left entries behind")
	}
}
