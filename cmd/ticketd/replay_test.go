package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// randomText returns n bytes of random Cyrillic letters (2 bytes each): text Postgres
// cannot compress much, so a stream of it costs what its size says.
func randomText(r *rand.Rand, n int) string {
	var b strings.Builder
	for b.Len()+2 <= n {
		b.WriteRune(rune('а' + r.IntN(32)))
	}
	return b.String()
}

// seedComments creates a ticket on s and appends comments of bodyBytes random bytes
// each straight to its stream; it returns the ticket's id and an open pool on s's
// database.
func seedComments(t testing.TB, s *testServer, comments, bodyBytes int) (uuid.UUID, *pgxpool.Pool) {
	t.Helper()
	return seedStream(t, s, func(tk *ticket.Ticket, r *rand.Rand, now time.Time) error {
		return tk.AddComment(ticket.AddComment{ID: uuid.New(), Body: randomText(r, bodyBytes), CreatedBy: "bob"}, now)
	}, comments)
}

// seedStream creates a ticket on s and appends n events that decide makes straight to
// its stream; it returns the ticket's id and an open pool on s's database.
func seedStream(t testing.TB, s *testServer, decide func(*ticket.Ticket, *rand.Rand, time.Time) error, n int) (uuid.UUID, *pgxpool.Pool) {
	t.Helper()
	id := uuid.MustParse(createTicket(t, s, sourceTicket).ID)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pool, err := db.Open(ctx, s.DSN, db.PoolConfig{MaxConns: 3})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	store := eventstore.New(pool, dbtest.Keyring(t, pool))
	tk, err := store.LoadTicket(ctx, id, 0)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	r := rand.New(rand.NewPCG(1, uint64(n)))
	now := time.Now().UTC().Truncate(time.Microsecond)
	for range n {
		now = now.Add(time.Millisecond)
		if err := decide(tk, r, now); err != nil {
			t.Fatalf("seed event: %v", err)
		}
	}
	pending := tk.Pending()
	for i := 0; i < len(pending); i += 500 {
		if _, err := store.Append(ctx, 1+i, pending[i:min(i+500, len(pending))], eventstore.Metadata{RequestID: "seed"}); err != nil {
			t.Fatalf("append from version %d: %v", 2+i, err)
		}
	}
	return id, pool
}

// worstEvents is the length of the worst-case stream the replay tests seed: 30,000
// status changes by 400-byte names, ~15 MB of event data, all of it read by a replay.
const worstEvents = 30_000

// seedStatusChanges creates a ticket on s and appends n status changes (answered and
// wait_answer in turn) straight to its stream, each by a name of nameBytes random
// bytes: the worst case of a replay, since every event's data is read and folded
// (a replay skips the bodies of comments past those a document embeds). It returns the
// ticket's id and an open pool on s's database.
func seedStatusChanges(t testing.TB, s *testServer, n, nameBytes int) (uuid.UUID, *pgxpool.Pool) {
	t.Helper()
	return seedStream(t, s, func(tk *ticket.Ticket, r *rand.Rand, now time.Time) error {
		to := map[ticket.Status]string{ticket.StatusAnswered: "wait_answer"}[tk.Status()]
		if to == "" {
			to = "answered"
		}
		return tk.ChangeStatus(ticket.ChangeStatus{Status: to, UpdatedBy: randomText(r, nameBytes)}, now)
	}, n)
}

// activeReplays counts the statements of replays (eventstore.ReadStream) running in
// s's database.
func activeReplays(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
		AND query LIKE '%CASE WHEN type = $5 THEN NULL ELSE data END%'`).Scan(&n)
	if err != nil {
		t.Fatalf("pg_stat_activity: %v", err)
	}
	return n
}

// timedGet GETs path on s and returns the status and how long it took.
func timedGet(t testing.TB, s *testServer, path string) (response, time.Duration) {
	t.Helper()
	start := time.Now()
	r := s.do(t, "GET", path, nil)
	return r, time.Since(start)
}

// A replay ends at the request's deadline, its Postgres statement with it; one whose
// client hangs up ends within milliseconds and frees its slot.
func TestReplayEndsAtDeadlineOrWhenTheClientLeaves(t *testing.T) {
	t.Parallel()
	s2 := startServer(t, map[string]string{"REQUEST_TIMEOUT": "30s", "REPLAY_CONCURRENCY": "1"})
	id, pool := seedStatusChanges(t, s2, worstEvents, 400)
	path := fmt.Sprintf("/v1/ticket/%s?version=%d", id, worstEvents+1)

	s := startServerOn(t, s2, map[string]string{"REQUEST_TIMEOUT": "150ms"})
	r, d := timedGet(t, s, path)
	t.Logf("GET ?version=%d (%d status changes) with a 150ms deadline: %d in %s", worstEvents+1, worstEvents, r.Status, d)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503 at the deadline; body %.300s", r.Status, r.Body)
	}
	if d > time.Second {
		t.Errorf("the answer took %s: the deadline (150ms) did not end the replay", d)
	}
	eventually(t, 2*time.Second, "the replay's statement to end in Postgres", func() bool { return activeReplays(t, pool) == 0 })

	// the same stream with a generous deadline: the client gives up after 50ms. A whole
	// replay is timed on another instance: a replay keeps states on its way (every
	// 1,000 events) that later replays start from, and this one must start from scratch.
	s3 := startServerOn(t, s2, nil)
	full, dFull := timedGet(t, s3, fmt.Sprintf("/v1/ticket/%s?version=%d", id, worstEvents))
	full.expect(t, 200)
	t.Logf("a whole replay of version %d takes %s", worstEvents, dFull)

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "GET", s2.URL+path, nil)
	start := time.Now()
	if resp, err := (&http.Client{}).Do(authorize(req)); err == nil {
		resp.Body.Close()
		t.Fatalf("the replay answered %d within 50ms; the stream is too small for this test", resp.StatusCode)
	}
	cancel()
	// the slot frees once the replay noticed: another replay is then served, not 429
	var freed time.Duration
	eventually(t, 5*time.Second, "the abandoned replay to free its slot", func() bool {
		r := s2.do(t, "GET", fmt.Sprintf("/v1/ticket/%s?version=1", id), nil)
		if r.Status == 200 {
			freed = time.Since(start)
			return true
		}
		if r.Status != http.StatusTooManyRequests {
			t.Fatalf("status %d, want 200 or 429; body %s", r.Status, r.Body)
		}
		return false
	})
	t.Logf("client left after 50ms; its replay's slot was free %s after the request began (a whole replay: %s)", freed, dFull)
	if dFull > 200*time.Millisecond && freed > dFull*3/4 {
		t.Errorf("the slot freed after %s, about a whole replay (%s): the replay did not stop when its client left", freed, dFull)
	}
	eventually(t, 2*time.Second, "the abandoned replay's statement to end in Postgres", func() bool { return activeReplays(t, pool) == 0 })
}

// startServerOn starts a second ticketd on base's database, with env over its own.
func startServerOn(t testing.TB, base *testServer, env map[string]string) *testServer {
	t.Helper()
	full := map[string]string{}
	for k, v := range base.Env {
		full[k] = v
	}
	for k, v := range env {
		full[k] = v
	}
	full["HTTP_ADDR"] = freeAddr(t)
	s := &testServer{URL: "http://" + full["HTTP_ADDR"], DSN: full["DATABASE_DSN"], Env: full, logs: &syncBuffer{}}
	s.start(t)
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("server stopped with error: %v\nlogs:\n%s", err, s.logs.String())
		}
	})
	return s
}

// Beyond REPLAY_CONCURRENCY replays at once, the next is a 429 problem with Retry-After
// at once (not queued); the current state stays served.
func TestReplaysBeyondTheLimitAre429(t *testing.T) {
	t.Parallel()
	const slots = 2
	s := startServer(t, map[string]string{"REQUEST_TIMEOUT": "30s", "REPLAY_CONCURRENCY": strconv.Itoa(slots)})
	id, _ := seedStatusChanges(t, s, worstEvents, 400)

	var wg sync.WaitGroup
	statuses := make(chan int, slots)
	for i := range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := s.do(t, "GET", fmt.Sprintf("/v1/ticket/%s?version=%d", id, worstEvents-i), nil)
			statuses <- r.Status
		}()
	}
	// both slots taken, as the server counts them (a replay reads its stream in pages,
	// so Postgres shows it active only part of the time: on a loaded machine two
	// replays were not both seen active there within 10 s)
	eventually(t, 10*time.Second, "both replays running", func() bool {
		return slices.Contains(scrape(t, s, "ticketd_replays_running "), "ticketd_replays_running "+strconv.Itoa(slots))
	})
	r, d := timedGet(t, s, fmt.Sprintf("/v1/ticket/%s?version=%d", id, worstEvents-100))
	if r.Status != http.StatusTooManyRequests {
		t.Fatalf("replay %d: status %d, want 429; body %.300s", slots+1, r.Status, r.Body)
	}
	if ra := r.Header.Get("Retry-After"); ra == "" {
		t.Errorf("429 without Retry-After")
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Errorf("429 Content-Type %q, want application/problem+json", ct)
	}
	if p := r.problem(t); p["code"] != "too-many-replays" {
		t.Errorf("429 code %v, want too-many-replays", p["code"])
	}
	t.Logf("replay %d answered 429 in %s", slots+1, d)
	if d > time.Second {
		t.Errorf("the 429 took %s: it waited instead of refusing", d)
	}
	s.do(t, "GET", "/v1/ticket/"+id.String(), nil).expect(t, 200)
	wg.Wait()
	close(statuses)
	for st := range statuses {
		if st != 200 {
			t.Errorf("a replay within the limit answered %d", st)
		}
	}
	if got := scrape(t, s, "ticketd_replays_running "); !slices.Equal(got, []string{"ticketd_replays_running 0"}) {
		t.Errorf("after the replays /metrics says %v, want ticketd_replays_running 0", got)
	}
}

// A version replayed once is answered again without Postgres: with the events table
// locked, a repeat is served at once while a version not yet replayed waits (and ends
// at the deadline).
func TestReplayedVersionsAreCached(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"REQUEST_TIMEOUT": "1s"})
	id, pool := seedComments(t, s, 200, 2_000)
	path := fmt.Sprintf("/v1/ticket/%s?version=150", id)
	first, dFirst := timedGet(t, s, path)
	first.expect(t, 200)

	tx, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(t.Context(), `LOCK TABLE events IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatalf("lock: %v", err)
	}
	again, dAgain := timedGet(t, s, path)
	again.expect(t, 200)
	if string(again.Body) != string(first.Body) || again.Header.Get("ETag") != `"150"` {
		t.Errorf("the cached answer differs: ETag %s, %d bytes vs %d", again.Header.Get("ETag"), len(again.Body), len(first.Body))
	}
	s.do(t, "GET", path, nil, "If-None-Match", `"150"`).expect(t, http.StatusNotModified)
	other, dOther := timedGet(t, s, fmt.Sprintf("/v1/ticket/%s?version=149", id))
	if other.Status != http.StatusServiceUnavailable {
		t.Errorf("an uncached version with the events table locked: %d, want 503 (it must have read Postgres)", other.Status)
	}
	t.Logf("version 150: first %s, cached (events locked) %s; version 149 with events locked: %d in %s", dFirst, dAgain, other.Status, dOther)
}

// A history page stops at HISTORY_PAGE_BYTES and its next link continues without gaps
// or repeats; an event larger than the cap still makes a page of one.
func TestHistoryPagesAreCappedInBytes(t *testing.T) {
	t.Parallel()
	const capBytes = 50_000
	s := startServer(t, map[string]string{"HISTORY_PAGE_BYTES": strconv.Itoa(capBytes)})
	id, _ := seedComments(t, s, 60, 9_000)

	path := "/v1/ticket/" + id.String() + "/history?limit=1000"
	var versions []int
	pages := 0
	for path != "" {
		r := s.do(t, "GET", path, nil).expect(t, 200)
		var page []historyEntry
		r.JSON(t, &page)
		pages++
		if len(page) == 0 {
			t.Fatalf("page %d is empty", pages)
		}
		if len(page) > 1 && len(r.Body) > capBytes+len(page)*400 {
			t.Errorf("page %d: %d events in %d bytes, over the %d-byte cap", pages, len(page), len(r.Body), capBytes)
		}
		for _, e := range page {
			versions = append(versions, e.Version)
		}
		path = historyNext(t, r)
		if path != "" && !strings.Contains(path, "limit=1000") {
			t.Errorf("next link %q lost the limit", path)
		}
	}
	if len(versions) != 61 {
		t.Fatalf("%d events over %d pages, want 61", len(versions), pages)
	}
	for i, v := range versions {
		if v != i+1 {
			t.Fatalf("entry %d has version %d: a gap or a repeat", i, v)
		}
	}
	if pages < 61*9_000/capBytes {
		t.Errorf("%d pages for %d bytes of events at a %d-byte cap", pages, 60*9_000, capBytes)
	}
	t.Logf("61 events of ~9 KB: %d pages at a %d-byte cap", pages, capBytes)

	// a cap below one event: one event a page
	s2 := startServerOn(t, s, map[string]string{"HISTORY_PAGE_BYTES": "1024"})
	r := s2.do(t, "GET", "/v1/ticket/"+id.String()+"/history?limit=10", nil).expect(t, 200)
	var page []historyEntry
	r.JSON(t, &page)
	if len(page) != 1 || historyNext(t, r) == "" {
		t.Errorf("a 1024-byte cap: page of %d events, next %q; want 1 and a link", len(page), historyNext(t, r))
	}
	hist, n := fullHistory(t, s2, "/v1/ticket/"+id.String()+"/history?limit=10")
	if len(hist) != 61 || n < 60 {
		t.Errorf("a 1024-byte cap: %d events in %d pages, want 61 in about 61", len(hist), n)
	}
}

// Replays start from the states earlier replays kept (every 1,000 events, in the cache
// of replayed versions): asked in any order, every version equals the fold of the
// stream from its start.
func TestReplaysFromKeptStatesEqualTheFullFold(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	n := 0
	id, pool := seedStream(t, s, func(tk *ticket.Ticket, r *rand.Rand, now time.Time) error {
		n++
		if n%3 == 0 {
			return tk.AddComment(ticket.AddComment{ID: uuid.New(), Body: randomText(r, 100), CreatedBy: "bob"}, now)
		}
		to := map[ticket.Status]string{ticket.StatusAnswered: "wait_answer"}[tk.Status()]
		if to == "" {
			to = "answered"
		}
		return tk.ChangeStatus(ticket.ChangeStatus{Status: to, UpdatedBy: "agent"}, now)
	}, 2600)
	store := eventstore.New(pool, dbtest.Keyring(t, pool))
	for _, v := range []int{2400, 1200, 2499, 10, 2601, 1001, 2000, 1500, 2} {
		want, _, err := projections.ViewAt(t.Context(), store, id, v)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := eventstore.EncodeJSON(want)
		r := s.do(t, "GET", fmt.Sprintf("/v1/ticket/%s?version=%d", id, v), nil).expect(t, 200)
		if string(r.Body) != string(body) {
			t.Fatalf("version %d differs from the fold from the start:\n got %.300s\nwant %.300s", v, r.Body, body)
		}
	}
}
