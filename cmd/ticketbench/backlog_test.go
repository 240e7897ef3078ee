package main

import (
	"io"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

func TestOutboxPos_reached_orders_by_transaction_then_offset(t *testing.T) {
	head := outboxPos{Tx: 900, Offset: 5000}
	for _, tc := range []struct {
		p    outboxPos
		want bool
	}{
		{outboxPos{900, 5000}, true},     // at the head
		{outboxPos{900, 4999}, false},    // same transaction, one short
		{outboxPos{901, 1}, true},        // a later transaction, whatever its offset
		{outboxPos{899, 9999999}, false}, // an earlier transaction with a higher offset
		{outboxPos{0, 0}, false},         // a group that has acknowledged nothing
	} {
		if got := tc.p.reached(head); got != tc.want {
			t.Errorf("%v.reached(%v) = %v, want %v", tc.p, head, got, tc.want)
		}
	}
}

func TestStreamLengths_splits_into_full_streams_and_a_short_last(t *testing.T) {
	for _, tc := range []struct {
		n, per int
		want   []int
	}{
		{200000, 100, slices.Repeat([]int{100}, 2000)},
		{250, 100, []int{100, 100, 50}},
		{1, 100, []int{1}},
		{0, 100, nil},
	} {
		if got := streamLengths(tc.n, tc.per); !slices.Equal(got, tc.want) {
			t.Errorf("streamLengths(%d, %d) = %d streams %v..., want %d", tc.n, tc.per, len(got), got[:min(3, len(got))], len(tc.want))
		}
	}
}

func TestInterleave_round_robin_keeps_each_stream_in_order(t *testing.T) {
	start := time.Now()
	var streams [][]ticket.Event
	total := 0
	for _, n := range []int{3, 1, 12} {
		events, err := longTicketEvents(uuid.New(), n, start)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, events)
		total += n
	}
	got := interleave(streams)
	if len(got) != total {
		t.Fatalf("interleave: %d events, want %d", len(got), total)
	}
	// round robin: the first three are every stream's first event
	for i, s := range streams {
		if got[i].TicketID != s[0].TicketID || got[i].Version != 1 {
			t.Errorf("event %d is %s v%d, want stream %d's first", i, got[i].TicketID, got[i].Version, i)
		}
	}
	next := map[uuid.UUID]int{}
	for i, e := range got {
		if want := next[e.TicketID] + 1; e.Version != want {
			t.Fatalf("event %d: %s v%d, want v%d: a stream out of order", i, e.TicketID, e.Version, want)
		}
		next[e.TicketID] = e.Version
	}
}

func TestKilo(t *testing.T) {
	for n, want := range map[int]string{200000: "200k", 1000: "1k", 1500: "1500", 999: "999"} {
		if got := kilo(n); got != want {
			t.Errorf("kilo(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestParseOptions_backlog_flags(t *testing.T) {
	o, err := parseOptions([]string{"-only", "create,backlog", "-backlog-events", "5000", "-backlog-timeout", "30s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.runs("backlog") || !o.runs("create") || o.runs("rebuild") || o.backlogEvents != 5000 || o.backlogLimit != 30*time.Second {
		t.Errorf("options %+v: want create and backlog only, 5000 events, 30s", o)
	}
	if _, err := parseOptions([]string{"-backlog-events", "0"}, io.Discard); err == nil {
		t.Error("-backlog-events 0 accepted")
	}
}
