package eventstore

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

var cacheNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// openedTicket is a ticket opened by a command, its event still pending.
func openedTicket(t *testing.T) *ticket.Ticket {
	t.Helper()
	tk := ticket.New(uuid.New())
	if err := tk.Open(ticket.OpenTicket{Title: "t", Email: "a@example.com", CreatedBy: "a"}, cacheNow); err != nil {
		t.Fatal(err)
	}
	return tk
}

func comment(t *testing.T, tk *ticket.Ticket) {
	t.Helper()
	if err := tk.AddComment(ticket.AddComment{ID: uuid.New(), Body: "b", CreatedBy: "c"}, cacheNow); err != nil {
		t.Fatal(err)
	}
}

func TestCacheIsBoundedByEntriesAndEvictsTheLeastRecentlyUsed(t *testing.T) {
	c := newTickets(3)
	a, b, d, e := openedTicket(t), openedTicket(t), openedTicket(t), openedTicket(t)
	// a long ticket takes one entry like any other
	for range 500 {
		comment(t, a)
	}
	c.put(a)
	c.put(b)
	c.put(d)
	if c.get(a.ID()) == nil { // a is now the most recently used, b the least
		t.Fatal("a: not cached")
	}
	c.put(e)
	if n := c.len(); n != 3 || len(c.entries) != 3 {
		t.Fatalf("cache holds %d entries (%d slots), want 3", n, len(c.entries))
	}
	if c.get(b.ID()) != nil {
		t.Error("b, the least recently used, was not evicted")
	}
	for _, tk := range []*ticket.Ticket{a, d, e} {
		if c.get(tk.ID()) == nil {
			t.Errorf("ticket %s evicted, want b evicted", tk.ID())
		}
	}
	if got := c.get(a.ID()); got.CommentCount() != 500 || got.Version() != 501 {
		t.Errorf("cached long ticket: %d comments at version %d, want 500 at 501", got.CommentCount(), got.Version())
	}
}

func TestCacheHandsOutIndependentCopiesWithoutPendingEvents(t *testing.T) {
	c := newTickets(10)
	tk := openedTicket(t)
	c.put(tk)
	comment(t, tk) // the caller goes on using its own ticket

	got := c.get(tk.ID())
	if got == nil {
		t.Fatal("not cached")
	}
	if len(got.Pending()) != 0 || got.Version() != 1 || got.CommentCount() != 0 {
		t.Fatalf("cached copy: %d pending, version %d, %d comments; want none, 1, 0", len(got.Pending()), got.Version(), got.CommentCount())
	}
	comment(t, got) // a command on one copy ...
	if again := c.get(tk.ID()); again.Version() != 1 || len(again.Pending()) != 0 {
		t.Fatalf("... changed the cached entry: version %d, %d pending", again.Version(), len(again.Pending()))
	}
}

func TestCacheKeepsTheNewestVersion(t *testing.T) {
	c := newTickets(10)
	tk := openedTicket(t)
	old := tk.Clone()
	comment(t, tk)
	c.put(tk)
	c.put(old) // a slower command that loaded earlier finishes last
	if got := c.get(tk.ID()); got.Version() != 2 {
		t.Fatalf("cached version %d, want 2", got.Version())
	}
}

func TestDisabledCacheHoldsNothing(t *testing.T) {
	for _, c := range []*tickets{nil, newTickets(0)} {
		tk := openedTicket(t)
		c.put(tk)
		if c.get(tk.ID()) != nil {
			t.Errorf("cache %v handed out a ticket", c)
		}
	}
}

// The cache agrees with a plain model of an LRU of states over a long random run of
// gets and puts: the same tickets cached, at the same versions, evicted in the same
// order.
func TestCacheAgreesWithAModelLRU(t *testing.T) {
	const capacity, ids = 7, 20
	c := newTickets(capacity)
	pool := make([]uuid.UUID, ids)
	for i := range pool {
		pool[i] = uuid.New()
	}
	var model []ticket.State // front: most recently used
	find := func(id uuid.UUID) int {
		for i, s := range model {
			if s.ID == id {
				return i
			}
		}
		return -1
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := range 20_000 {
		id := pool[rng.IntN(ids)]
		if rng.IntN(2) == 0 {
			got, i := c.get(id), find(id)
			switch {
			case (got == nil) != (i < 0):
				t.Fatalf("step %d: get %s: cached %v, model %v", step, id, got != nil, i >= 0)
			case got != nil:
				if got.State() != model[i] {
					t.Fatalf("step %d: get %s: %+v, model %+v", step, id, got.State(), model[i])
				}
				s := model[i]
				model = append([]ticket.State{s}, append(model[:i:i], model[i+1:]...)...)
			}
			continue
		}
		s := ticket.State{ID: id, Status: ticket.StatusOpen, Version: 1 + rng.IntN(50), CommentCount: rng.IntN(10)}
		c.put(ticket.Restore(s))
		if i := find(id); i >= 0 {
			if model[i].Version >= s.Version {
				continue
			}
			model = append(model[:i], model[i+1:]...)
		}
		model = append([]ticket.State{s}, model...)
		if len(model) > capacity {
			model = model[:capacity]
		}
	}
	if c.len() != len(model) {
		t.Fatalf("%d cached, model %d", c.len(), len(model))
	}
}
