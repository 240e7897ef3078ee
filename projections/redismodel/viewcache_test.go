package redismodel

import (
	"testing"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/projections"
)

func TestViewCacheKeepsTheNewestWithinItsBudget(t *testing.T) {
	c := newViewCache(1000)
	a, b := uuid.New(), uuid.New()
	view := func(id uuid.UUID, version int) projections.View {
		return projections.View{Summary: projections.Summary{ID: id, Version: version}}
	}
	c.put(view(a, 2), 100)
	c.put(view(a, 1), 100) // older: ignored
	if v, ok := c.get(a); !ok || v.Version != 2 {
		t.Fatalf("cached %v %v, want version 2", v.Version, ok)
	}
	c.put(view(b, 1), 300) // over a quarter of the budget: not cached
	if _, ok := c.get(b); ok {
		t.Fatal("a view larger than a quarter of the budget was cached")
	}
	for i := range 20 { // 20 x 100 bytes: the oldest go
		c.put(view(uuid.New(), 1), 100)
		if c.size > c.max {
			t.Fatalf("after %d puts the cache holds %d bytes, over its %d", i+1, c.size, c.max)
		}
	}
	if _, ok := c.get(a); ok {
		t.Fatal("the least recently used view survived twenty newer ones")
	}
	c.drop()
	if len(c.entries) != 0 || c.size != 0 || c.order.Len() != 0 {
		t.Fatal("drop left entries behind")
	}
}
