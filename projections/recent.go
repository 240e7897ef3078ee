package projections

import (
	"sync"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"

	"github.com/ticketd/ticketd/eventstore"
)

// recentRows holds the records this process's consumers decoded and opened (their
// personal fields revealed) lately, by outbox row, for the other groups: every group
// reads the same rows, moments apart, and decoding and opening them was most of what
// reading a batch cost (under a create load with three groups, 12% of ticketd's CPU
// against 2-3% for the read models' own writes). Each row is then decoded and opened
// by one or two of ticketd's three groups instead of all three. The rows themselves
// are still read by every group, in its own transaction: positions, order and poison
// handling are the group's own, as before.
//
// Only derived read models (Handler.Derived) take records from here, for
// recentRowsTTL at most: one that meets a subject erased meanwhile sees the row as a
// group that read it just before the erasure would, and the SubjectErased event that
// follows scrubs it either way. A group whose output leaves ticketd (the webhooks'
// payloads) opens every row itself, so an erasure reaches it as soon as it did before.
// Records are shared, read only: no handler changes the records it is given.
type recentRows struct {
	mu   sync.Mutex
	m    map[rowKey]recentRow
	ring []rowKey // insertion order; the oldest entry is evicted first
	next int
}

// rowKey is an outbox row: its transaction and offset.
type rowKey struct {
	tx     wsql.XID8
	offset int64
}

type recentRow struct {
	rec eventstore.Record
	at  time.Time
}

const (
	// recentRowsSize bounds the records kept (about 1-2 KB each: a few MB at most, on
	// a heap the default soft memory limit keeps small): a quarter of a second of
	// events at 4,000 a second, while the groups of a process that keeps up read the
	// same rows milliseconds apart.
	recentRowsSize = 1024
	// recentRowsTTL is how long a record is reused.
	recentRowsTTL = time.Second
)

func newRecentRows() *recentRows {
	return &recentRows{m: make(map[rowKey]recentRow, recentRowsSize), ring: make([]rowKey, recentRowsSize)}
}

// get returns the record of row k if it was kept within recentRowsTTL of now.
func (r *recentRows) get(k rowKey, now time.Time) (eventstore.Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.m[k]
	if !ok || now.Sub(e.at) > recentRowsTTL {
		return eventstore.Record{}, false
	}
	return e.rec, true
}

// put keeps the record of row k, evicting the oldest one when full.
func (r *recentRows) put(k rowKey, rec eventstore.Record, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[k]; ok {
		r.m[k] = recentRow{rec: rec, at: now}
		return
	}
	if old := r.ring[r.next]; len(r.m) == recentRowsSize {
		delete(r.m, old)
	}
	r.ring[r.next] = k
	r.next = (r.next + 1) % recentRowsSize
	r.m[k] = recentRow{rec: rec, at: now}
}
