package projections

import (
	"testing"
	"time"

	"github.com/ticketd/ticketd/eventstore"
)

func TestRecentRowsKeepTheNewestForAWhile(t *testing.T) {
	t.Parallel()
	r := newRecentRows()
	now := time.Now()
	rec := func(pos int64) eventstore.Record { return eventstore.Record{Position: pos} }
	for i := range int64(recentRowsSize + 10) {
		r.put(rowKey{tx: 7, offset: i}, rec(i), now)
	}
	if len(r.m) != recentRowsSize {
		t.Fatalf("%d records kept, want at most %d", len(r.m), recentRowsSize)
	}
	for i := range int64(10) {
		if _, ok := r.get(rowKey{tx: 7, offset: i}, now); ok {
			t.Fatalf("row %d kept after %d newer ones", i, recentRowsSize)
		}
	}
	got, ok := r.get(rowKey{tx: 7, offset: recentRowsSize + 9}, now)
	if !ok || got.Position != recentRowsSize+9 {
		t.Fatalf("the newest row: %v %v", got.Position, ok)
	}
	if _, ok := r.get(rowKey{tx: 8, offset: recentRowsSize + 9}, now); ok {
		t.Fatal("a row of another transaction with the same offset was found")
	}
	if _, ok := r.get(rowKey{tx: 7, offset: recentRowsSize + 9}, now.Add(recentRowsTTL+time.Millisecond)); ok {
		t.Fatal("a row was reused after recentRowsTTL")
	}
	// Putting a kept row again refreshes it without evicting another.
	r.put(rowKey{tx: 7, offset: recentRowsSize + 9}, rec(1), now)
	if len(r.m) != recentRowsSize {
		t.Fatalf("%d records after a refresh, want %d", len(r.m), recentRowsSize)
	}
	if got, _ := r.get(rowKey{tx: 7, offset: recentRowsSize + 9}, now); got.Position != 1 {
		t.Fatalf("the refreshed row holds %d, want 1", got.Position)
	}
}
