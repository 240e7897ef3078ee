package main

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/projections/redismodel"
)

// rebuildNow runs `ticketd -rebuild-projections` against the server's database and
// Redis prefix, as an operator would from another machine, and returns its output.
func rebuildNow(t testing.TB, s *testServer) string {
	t.Helper()
	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, []string{"-rebuild-projections"}, func(k string) string { return s.Env[k] }, &out); err != nil {
		t.Fatalf("ticketd -rebuild-projections: %v\n%s", err, out.String())
	}
	return out.String()
}

var summaryLine = regexp.MustCompile(`rebuilt read models: (\d+) events, (\d+) tickets in \S+ \((\d+) events/s\)`)

// rebuiltEvents returns the event count of the summary line (stdout is not a
// terminal in tests: no progress bar, one line).
func rebuiltEvents(t testing.TB, out string) int {
	t.Helper()
	m := summaryLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no summary line in the output:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// sameCount fails the test unless the two queries count the same.
func sameCount(t testing.TB, m *readModels, what, got, want string) {
	t.Helper()
	var a, b int
	ctx := context.Background()
	if err := m.pool.QueryRow(ctx, got).Scan(&a); err != nil {
		t.Fatal(err)
	}
	if err := m.pool.QueryRow(ctx, want).Scan(&b); err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatalf("%s: %d, want %d", what, a, b)
	}
}

func TestRebuildWhileServingWritesLosesAndDoublesNothing(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	m := openReadModels(t, s.Env)
	load(t, s.URL, 8, 200, nil) // some history to replay

	stop := make(chan struct{})
	loaded := make(chan []ack)
	go func() { loaded <- load(t, s.URL, 8, 1_000_000, stop) }()
	time.Sleep(300 * time.Millisecond)
	out := rebuildNow(t, s)
	time.Sleep(300 * time.Millisecond) // writes go on after the rebuild, too
	close(stop)
	acks := <-loaded
	if len(acks) < 20 {
		t.Fatalf("only %d writes acknowledged during the rebuild", len(acks))
	}
	t.Logf("%d writes acknowledged while rebuilding; %s", len(acks), summaryLine.FindString(out))

	checkAcknowledged(t, s, acks)
	took := m.converge(t, s, 10*time.Second)
	t.Logf("list and every Redis document equal the replay %s after the load", took.Round(time.Millisecond))
	sameCount(t, m, "comment rows vs CommentAdded events",
		`SELECT count(*) FROM readmodel.comments`, `SELECT count(*) FROM events WHERE type = 'CommentAdded'`)
	sameCount(t, m, "sum of comment_count vs CommentAdded events",
		`SELECT coalesce(sum(comment_count), 0) FROM readmodel.tickets`, `SELECT count(*) FROM events WHERE type = 'CommentAdded'`)
	sameCount(t, m, "read model tickets vs streams",
		`SELECT count(*) FROM readmodel.tickets`, `SELECT count(DISTINCT stream_id) FROM events`)

	// Incremental projection goes on from where the rebuild left it.
	created := createTicket(t, s, sourceTicket)
	s.do(t, "POST", "/v1/ticket/"+created.ID+"/comments", map[string]any{"body": "after the rebuild", "created_by": "ann"}).expect(t, 201)
	m.converge(t, s, 5*time.Second)
	for _, g := range []string{pgmodel.Group, redismodel.Group} {
		sameCount(t, m, g+" backlog", `SELECT count(*) FROM watermill_ticket_events e, watermill_offsets_ticket_events o
			WHERE o.consumer_group = '`+g+`' AND (e.transaction_id, e."offset") > (o.last_processed_transaction_id, o.offset_acked)`,
			`SELECT 0`)
	}
}

func TestRebuildAfterWipingRedisRestoresEveryDocumentAndRunsTwice(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	m := openReadModels(t, s.Env)
	load(t, s.URL, 8, 200, nil)
	m.converge(t, s, 10*time.Second)
	var events int
	if err := m.pool.QueryRow(context.Background(), `SELECT count(*) FROM events`).Scan(&events); err != nil {
		t.Fatal(err)
	}

	if err := m.docs.Wipe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := rebuiltEvents(t, rebuildNow(t, s)); n != events {
		t.Fatalf("rebuild replayed %d events, the store has %d", n, events)
	}
	// The projectors were idle and Redis empty: only the rebuild can have written the
	// documents, so they must all be there at once.
	m.converge(t, s, 0)

	if n := rebuiltEvents(t, rebuildNow(t, s)); n != events {
		t.Fatalf("second rebuild replayed %d events, the store has %d", n, events)
	}
	m.converge(t, s, 0)
	createTicket(t, s, sourceTicket)
	m.converge(t, s, 5*time.Second)
}

func TestProgressBarShowsEventsRateAndTimeLeft(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	bar := newProgressBar(&out)
	bar.set(0, 1000)
	time.Sleep(150 * time.Millisecond)
	bar.set(400, 1000)
	time.Sleep(150 * time.Millisecond)
	bar.set(1000, 1000) // not complete yet: the total may still grow
	if strings.Contains(out.String(), "1000/1000") {
		t.Fatalf("the bar completed before finish:\n%q", out.String())
	}
	bar.set(1100, 1200) // catch-up found more
	bar.finish(nil)
	got := out.String()
	for _, want := range []string{"rebuild", "400/1000", "1200/1200", "events/s", "100%"} {
		if !strings.Contains(got, want) {
			t.Fatalf("progress output lacks %q:\n%q", want, got)
		}
	}
	if !regexp.MustCompile(`\[\d+s:\d+s\]`).MatchString(got) {
		t.Fatalf("progress output shows no elapsed:left times:\n%q", got)
	}
}
