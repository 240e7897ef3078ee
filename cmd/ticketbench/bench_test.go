package main

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
	"github.com/ticketd/ticketd/webhooks"
)

func TestToggler_every_put_is_a_real_allowed_change(t *testing.T) {
	ids := make([]uuid.UUID, 7)
	status := map[uuid.UUID]ticket.Status{}
	for i := range ids {
		ids[i] = uuid.New()
		status[ids[i]] = ticket.StatusOpen
	}
	tg := &toggler{ids: ids}
	for i := 0; i < 10*len(ids); i++ {
		id, to := tg.next()
		cur := status[id]
		if ticket.Status(to) == cur {
			t.Fatalf("put %d asks %s for ticket already %s: a no-op", i, to, cur)
		}
		if !cur.CanMoveTo(ticket.Status(to)) {
			t.Fatalf("put %d asks %s -> %s, which the workflow refuses", i, cur, to)
		}
		status[id] = ticket.Status(to)
	}
}

func TestNewTogglers_split_every_id_once(t *testing.T) {
	ids := make([]uuid.UUID, 7)
	for i := range ids {
		ids[i] = uuid.New()
	}
	seen := map[uuid.UUID]int{}
	ts := newTogglers(ids, 3)
	if len(ts) != 3 {
		t.Fatalf("%d togglers, want 3", len(ts))
	}
	for _, tg := range ts {
		for _, id := range tg.ids {
			seen[id]++
		}
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("id %s in %d togglers", id, seen[id])
		}
	}
	if n := len(newTogglers(ids[:1], 4)); n != 1 {
		t.Errorf("one id, 4 togglers asked: %d made, want 1", n)
	}
}

func TestParseRebuildRate_reads_text_and_json_summaries(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want float64
		ok   bool
	}{
		{"progress 10%\nrebuilt 200000 events in 2.5s (80,000 events/s)\n", 80000, true},
		{`{"level":"INFO","msg":"rebuild done","events":200000,"events_per_second":61234.5}` + "\n", 61234.5, true},
		{`{"msg":"rebuild done","rate":1234}`, 1234, true},
		{"done\n", 0, false},
	} {
		got, ok := parseRebuildRate(tc.out)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseRebuildRate(%q) = %v, %v; want %v, %v", tc.out, got, ok, tc.want, tc.ok)
		}
	}
}

func TestMixedTarget_is_eighty_percent_reads(t *testing.T) {
	ids := []uuid.UUID{uuid.New(), uuid.New(), uuid.New(), uuid.New()}
	b := &bench{ids: ids, toggles: newTogglers(ids, 2), fresh: &roundRobin{ids: ids}}
	tr := b.mixedTarget("http://x")
	counts := map[string]int{}
	const n = 2000
	for range n {
		var tgt vegeta.Target
		if err := tr(&tgt); err != nil {
			t.Fatal(err)
		}
		counts[tgt.Method]++
	}
	if reads := counts[http.MethodGet]; reads != n*8/10 {
		t.Errorf("reads = %d of %d, want 80%%; methods %v", reads, n, counts)
	}
}

func TestGoLoad_reports_through_vegeta_metrics(t *testing.T) {
	m := goLoad(t.Context(), 4, 200*time.Millisecond, func(ctx context.Context) error {
		time.Sleep(time.Millisecond)
		return nil
	})
	if m.requests == 0 || m.errors != 0 || m.p50 < time.Millisecond || m.throughput <= 0 {
		t.Errorf("goLoad: requests %d errors %d p50 %v throughput %.0f; want some requests, no errors, p50 >= 1ms",
			m.requests, m.errors, m.p50, m.throughput)
	}
	if m.generator == "" {
		t.Error("goLoad: no generator named")
	}
}

// The bench receiver finds a delivery's ticket without decoding it: the top-level
// ticket_id, not one named inside the data; none in a ping.
func TestReceiverTakesTheTopLevelTicketID(t *testing.T) {
	tid, other := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	p := webhooks.Payload{ID: uuid.Must(uuid.NewV7()), Type: webhooks.TypeOpened, TicketID: &tid, Version: 1,
		Data: map[string]any{"ticket_id": other.String()}}
	body, err := eventstore.EncodeJSON(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := ticketIDOf(body); got != tid {
		t.Errorf("ticketIDOf(%s) = %s, want %s", body, got, tid)
	}
	ping, _ := eventstore.EncodeJSON(webhooks.Payload{ID: uuid.Must(uuid.NewV7()), Type: webhooks.TypePing})
	if got := ticketIDOf(ping); got != uuid.Nil {
		t.Errorf("ticketIDOf(a ping) = %s, want none", got)
	}
}
