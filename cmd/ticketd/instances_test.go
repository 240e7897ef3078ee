package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/projections/redismodel"
)

// TestTwoInstances runs two ticketd processes as one deployment: the same DATABASE_DSN,
// REDIS_ADDRS and REDIS_PREFIX, and no CURSOR_SECRET, so whatever must be equal across
// instances has to be by default. Writers spread creates, comments and status changes
// over both on one shared set of tickets (retrying 412 and 409 as the API says), a
// list cursor from one is followed on the other, Idempotency-Keys are replayed (and
// raced) across them, and one is SIGKILLed mid-load while the writers go on against the
// other. Then every acknowledged write must be in the event store, and both read models
// of the survivor must equal the replay and what `ticketd -rebuild-projections` builds.
func TestTwoInstances(t *testing.T) {
	t.Parallel()
	began := time.Now()
	bin := buildTicketd(t)
	built := time.Since(began)
	runID := strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	shared := map[string]string{
		"DATABASE_DSN":         dbtest.NewDatabase(t),
		"REDIS_ADDRS":          redisAddrs(),
		"REDIS_PREFIX":         "test-two-" + runID,
		"AUTH_BOOTSTRAP_TOKEN": testAdminToken,
		"LOG_LEVEL":            "warn",
		"PG_MAX_CONNS":         "6",
		// no CURSOR_SECRET: the default must work across instances
	}
	maps.Copy(shared, noRateLimits)
	maps.Copy(shared, testDataKey)
	m := openReadModels(t, shared) // before the instances: its cleanup runs after they are killed
	envOf := func() map[string]string {
		env := map[string]string{"HTTP_ADDR": freeAddr(t)}
		for k, v := range shared {
			env[k] = v
		}
		return env
	}
	// Both start at once, as a deployment's replicas do: migrations and any secret kept
	// in Postgres must survive the race.
	started := time.Now()
	a := launchInstance(t, bin, "A", envOf())
	b := launchInstance(t, bin, "B", envOf())
	a.waitHealthy(t, 30*time.Second)
	b.waitHealthy(t, 30*time.Second)
	t.Logf("binary built in %s; A and B started concurrently and answered /healthz in %s",
		built.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	both := []*instance{a, b}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	t.Cleanup(hc.CloseIdleConnections)

	// --- seed: tickets created on both, one deleted through the other --------------
	var seeds []string
	for i := range 24 {
		in := both[i%2]
		d := createTicket(t, in.srv, map[string]any{
			"title": fmt.Sprintf("seed %d", i), "description": "made on " + in.name,
			"email": fmt.Sprintf("u%d@example.com", i%3), "created_by": "seed-" + in.name})
		seeds = append(seeds, d.ID)
	}
	a.srv.do(t, "DELETE", "/v1/ticket/"+seeds[1], nil, "X-Actor", "admin-A").expect(t, 204) // created on B
	// B answers from the shared Redis: at once when A's write-through made it in time,
	// else when a projector has written the tombstone.
	eventually(t, 10*time.Second, "B answers 404 for the ticket A deleted", func() bool {
		return b.srv.do(t, "GET", "/v1/ticket/"+seeds[1], nil).Status == 404
	})
	seeds = slices.Delete(seeds, 1, 2)
	a.srv.do(t, "POST", "/v1/ticket/"+seeds[2]+"/comments", map[string]any{"body": "seen on A", "created_by": "agent-A"}).expect(t, 201)

	// --- a list cursor of one instance followed on the other ------------------------
	eventually(t, 10*time.Second, "every seed ticket listed", func() bool { return len(listAll(t, a.srv)) == len(seeds) })
	full := listedOf(t, listAll(t, a.srv))
	chain, pages, err := followList(hc, []*instance{a, b}, "/v1/ticket/?limit=5")
	switch {
	case err != nil:
		t.Errorf("following A's list cursor on B (and back): %v\n(an unset CURSOR_SECRET must not be random per process: "+
			"a cursor is only useful if every instance behind the balancer accepts it)", err)
	default:
		if wrong := sameListing(chain, full); wrong != "" {
			t.Errorf("list followed across instances, %d pages of 5: %s", pages, wrong)
		} else if pages != (len(full)+4)/5 {
			t.Errorf("%d tickets came in %d pages of 5", len(full), pages)
		} else {
			t.Logf("list of %d tickets: %d pages of 5, page 1 from A and each next cursor followed on the other instance, "+
				"equal to the one-page list", len(full), pages)
		}
	}
	var u1 []listed
	for _, e := range full {
		if e.Email == "u1@example.com" {
			u1 = append(u1, e)
		}
	}
	chain, pages, err = followList(hc, []*instance{b, a}, "/v1/ticket/?email=u1%40example.com&limit=3")
	switch {
	case err != nil:
		t.Errorf("following B's filtered list cursor on A: %v", err)
	case sameListing(chain, u1) != "":
		t.Errorf("filtered list followed across instances, %d pages of 3: %s", pages, sameListing(chain, u1))
	}

	// --- an Idempotency-Key replayed on the other instance --------------------------
	checkIdempotentAcross(t, m, a, b, runID, seeds[0])

	// --- the load ------------------------------------------------------------------
	// The writers share every seed ticket but the last four, on which keyed comments
	// race under load below: a writer closing one would make that race say nothing.
	raceOn := seeds[len(seeds)-4:]
	l := newTwoLoad(hc, a, b, runID+"-w", seeds[:len(seeds)-4])
	loadStart := time.Now()
	l.start(6)
	defer l.halt() // a failed step must not leave writers behind
	eventually(t, 25*time.Second, "60 writes acknowledged", func() bool { return l.total.Load() >= 60 })

	// Under load: a cursor walk alternating instances keeps order and skips nothing
	// listed before it began, and racing keyed requests on A and B store once.
	before := listedOf(t, listAll(t, b.srv))
	chain, pages, err = followList(hc, []*instance{a, b}, "/v1/ticket/?limit=10")
	if err != nil {
		t.Errorf("following list cursors across instances under load: %v", err)
	} else if wrong := coversListing(chain, before); wrong != "" {
		t.Errorf("list followed across instances under load (%d pages): %s", pages, wrong)
	} else {
		t.Logf("under load: %d list pages of 10 followed alternately on A and B: %d tickets, ordered, no duplicate, "+
			"all %d listed before the walk included", pages, len(chain), len(before))
	}
	raced := raceIdempotent(t, m, hc, a, b, runID, raceOn)

	eventually(t, 30*time.Second, "200 writes acknowledged", func() bool { return l.total.Load() >= 200 })
	killAt := time.Now()
	ackedAtKill := [2]int64{l.acked[0].Load(), l.acked[1].Load()}
	a.kill(t)
	l.down[0].Store(true)
	t.Logf("A SIGKILLed %s into the load, with %d writes acknowledged by A and %d by B; writers go on against B",
		killAt.Sub(loadStart).Round(time.Millisecond), ackedAtKill[0], ackedAtKill[1])
	eventually(t, 30*time.Second, "100 more writes acknowledged by B after the kill", func() bool {
		return l.acked[1].Load()-ackedAtKill[1] >= 100
	})
	l.halt()
	stopped := time.Now()
	res := l.result()
	loadTook := stopped.Sub(loadStart)

	for _, u := range res.unexpected {
		t.Errorf("unexpected answer under load: %s", u)
	}
	if len(res.unexpected) > 0 {
		t.Logf("B's log (tail):\n%s\nA's log (tail):\n%s", tail(b.logs.String(), 20), tail(a.logs.String(), 20))
	}
	if res.transport[1] > 0 {
		t.Errorf("%d writes to B failed in transport: B was never killed", res.transport[1])
	}
	if !res.firstTransport[0].IsZero() && res.firstTransport[0].Before(killAt) {
		t.Errorf("a write to A failed in transport %s before A was killed", killAt.Sub(res.firstTransport[0]))
	}
	for i, in := range both {
		k := res.kinds[i]
		t.Logf("%s acknowledged %d writes (%d creates, %d comments, %d status changes)", in.name,
			k["create"]+k["comment"]+k["status"], k["create"], k["comment"], k["status"])
	}
	t.Logf("load: %d writes acknowledged in %s (%.0f/s) by 6 writers; %d retried after 412, %d after 409; "+
		"%d writes to A lost their answer to the kill; B acknowledged %d after it",
		len(res.acks), loadTook.Round(time.Millisecond), float64(len(res.acks))/loadTook.Seconds(),
		res.n412, res.n409, res.transport[0], res.acked[1]-ackedAtKill[1])

	// --- every acknowledged write is in the event store ----------------------------
	st := checkStored(t, m, res)
	t.Logf("event store: %d events (%s); %d of %d acknowledged writes found by their request id, ticket and version "+
		"(%d of them no-op PUTs, checked by replay); %d writes cut off by the kill were stored without an answer",
		st.events, st.byType, st.found, len(res.acks), st.noops, st.unacked)

	// --- the survivor's projectors catch up; both read models equal the replay -----
	waitBacklogs(t, m, 30*time.Second)
	drained := time.Since(stopped)
	m.converge(t, b.srv, 30*time.Second)
	converged := time.Since(stopped) - drained
	var poisoned int
	if err := m.pool.QueryRow(context.Background(), `SELECT count(*) FROM watermill_ticket_events_poison`).Scan(&poisoned); err != nil {
		t.Fatal(err)
	}
	if poisoned > 0 {
		t.Errorf("%d events went to the poison table", poisoned)
	}
	t.Logf("catch-up on B: both projector groups at the head %s after the load stopped; list and every Redis document "+
		"equal the replay %s later", drained.Round(time.Millisecond), converged.Round(time.Millisecond))

	// --- ... and what a rebuild builds ---------------------------------------------
	rc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(shared["REDIS_ADDRS"], ",")})
	t.Cleanup(func() { _ = rc.Close() })
	projected := snapshotReadModels(t, m.pool, rc, shared["REDIS_PREFIX"])
	out, rebuildTook := rebuildWithBinary(t, bin, shared)
	if n := rebuiltEvents(t, out); n != st.events {
		t.Errorf("the rebuild replayed %d events, the store has %d", n, st.events)
	}
	rebuilt := snapshotReadModels(t, m.pool, rc, shared["REDIS_PREFIX"])
	for _, wrong := range projected.diff(rebuilt) {
		t.Errorf("read model built by the projectors of two instances vs the rebuild: %s", wrong)
	}
	m.converge(t, b.srv, 10*time.Second)
	t.Logf("rebuild (`ticketd -rebuild-projections`, %s): %s; the projected read models equal it: %s",
		rebuildTook.Round(time.Millisecond), summaryLine.FindString(out), projected.sizes())
	t.Logf("raced %d Idempotency-Keys on A and B under load: each stored once, one original and one replay", raced)
	t.Logf("whole test %s", time.Since(began).Round(time.Millisecond))
}

// --- instances ---------------------------------------------------------------------

// instance is one ticketd process of a deployment of several.
type instance struct {
	name   string
	srv    *testServer // its URL and environment, for the harness helpers
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan struct{}
}

// launchInstance starts the binary with exactly env and does not wait for it (so
// several can start at once); waitHealthy does. It is SIGKILLed when the test ends.
func launchInstance(t *testing.T, bin, name string, env map[string]string) *instance {
	t.Helper()
	cmd := exec.Command(bin)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	in := &instance{name: name, cmd: cmd, logs: &syncBuffer{}, exited: make(chan struct{}),
		srv: &testServer{URL: "http://" + env["HTTP_ADDR"], DSN: env["DATABASE_DSN"], Env: env}}
	cmd.Stdout, cmd.Stderr = in.logs, in.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ticketd %s: %v", name, err)
	}
	go func() { _ = cmd.Wait(); close(in.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-in.exited
	})
	return in
}

func (in *instance) waitHealthy(t *testing.T, timeout time.Duration) {
	t.Helper()
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := hc.Get(in.srv.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-in.exited:
			t.Fatalf("ticketd %s exited during start:\n%s", in.name, in.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ticketd %s did not answer /healthz within %s:\n%s", in.name, timeout, in.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits until the process is gone.
func (in *instance) kill(t *testing.T) {
	t.Helper()
	if err := in.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL %s: %v", in.name, err)
	}
	select {
	case <-in.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("ticketd %s still running 10s after SIGKILL", in.name)
	}
}

// exchange is a finished request and its answer, for goroutines that must not call t.Fatal.
type exchange struct {
	status int
	header http.Header
	body   []byte
}

func callInstance(hc *http.Client, base, method, path string, body any, headers ...string) (exchange, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return exchange{}, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return exchange{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := hc.Do(authorize(req))
	if err != nil {
		return exchange{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return exchange{}, err
	}
	return exchange{status: resp.StatusCode, header: resp.Header, body: raw}, nil
}

func etagVersion(h http.Header) int {
	v, _ := strconv.Atoi(strings.Trim(h.Get("ETag"), `"`))
	return v
}

func clip(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// --- the list across instances -------------------------------------------------------

// listed is what the cursor checks need of a list entry.
type listed struct {
	ID        string    `json:"id"`
	Email     string    `json:"email"`
	CreatedAt time.Time `json:"created_at"`
}

func listedOf(t *testing.T, raw []string) []listed {
	t.Helper()
	out := make([]listed, len(raw))
	for i, e := range raw {
		if err := json.Unmarshal([]byte(e), &out[i]); err != nil {
			t.Fatalf("list entry %s: %v", e, err)
		}
	}
	return out
}

// followList reads a listing from path page by page, the first page from insts[0] and
// each next page, through the previous page's Link, from the next instance in turn.
func followList(hc *http.Client, insts []*instance, path string) ([]listed, int, error) {
	var out []listed
	pages := 0
	for path != "" {
		in := insts[pages%len(insts)]
		r, err := callInstance(hc, in.srv.URL, "GET", path, nil)
		if err != nil {
			return out, pages, fmt.Errorf("page %d from %s: %w", pages+1, in.name, err)
		}
		if r.status != 200 {
			from := "the first page"
			if pages > 0 {
				from = "a cursor " + insts[(pages-1)%len(insts)].name + " issued"
			}
			return out, pages, fmt.Errorf("page %d from %s (%s) answered %d: %s", pages+1, in.name, from, r.status, clip(r.body))
		}
		var page []listed
		if err := json.Unmarshal(r.body, &page); err != nil {
			return out, pages, fmt.Errorf("page %d from %s: %v", pages+1, in.name, err)
		}
		out = append(out, page...)
		pages++
		path = ""
		if link := r.header.Get("Link"); link != "" {
			start, end := strings.Index(link, "<"), strings.Index(link, ">")
			if start < 0 || end < start || !strings.Contains(link, `rel="next"`) {
				return out, pages, fmt.Errorf("page %d from %s: Link %q", pages, in.name, link)
			}
			path = link[start+1 : end]
		}
		if pages > 10_000 {
			return out, pages, fmt.Errorf("the next links do not end")
		}
	}
	return out, pages, nil
}

// listOrderError says where a walk is not strictly newest first by (created_at, id), or holds
// a ticket twice; "" when it is neither.
func listOrderError(chain []listed) string {
	seen := map[string]int{}
	for i, e := range chain {
		if j, dup := seen[e.ID]; dup {
			return fmt.Sprintf("ticket %s at %d and again at %d", e.ID, j, i)
		}
		seen[e.ID] = i
		if i > 0 {
			p := chain[i-1]
			if c := p.CreatedAt.Compare(e.CreatedAt); c < 0 || (c == 0 && p.ID <= e.ID) {
				return fmt.Sprintf("entry %d (%s %s) does not follow entry %d (%s %s)", i, e.CreatedAt, e.ID, i-1, p.CreatedAt, p.ID)
			}
		}
	}
	return ""
}

// sameListing compares a walk with the listing it must equal.
func sameListing(chain, want []listed) string {
	if wrong := listOrderError(chain); wrong != "" {
		return wrong
	}
	if len(chain) != len(want) {
		return fmt.Sprintf("%d entries, the one-page list has %d", len(chain), len(want))
	}
	for i := range chain {
		if chain[i].ID != want[i].ID {
			return fmt.Sprintf("entry %d is %s, the one-page list has %s", i, chain[i].ID, want[i].ID)
		}
	}
	return ""
}

// coversListing checks a walk taken while tickets are created: ordered, no duplicate,
// and nothing listed before it began is skipped (the load deletes nothing).
func coversListing(chain, before []listed) string {
	if wrong := listOrderError(chain); wrong != "" {
		return wrong
	}
	in := map[string]bool{}
	for _, e := range chain {
		in[e.ID] = true
	}
	for _, e := range before {
		if !in[e.ID] {
			return fmt.Sprintf("ticket %s (created %s), listed before the walk, is missing from it (%d entries)", e.ID, e.CreatedAt, len(chain))
		}
	}
	return ""
}

// --- idempotency across instances ----------------------------------------------------

// countEvents runs a count over the event store.
func countEvents(t *testing.T, m *readModels, where string, args ...any) int {
	t.Helper()
	var n int
	if err := m.pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE `+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// sameAnswer fails unless the replay is the first answer again, marked as a replay.
func sameAnswer(t *testing.T, what string, first, again response) {
	t.Helper()
	if again.Status != first.Status || !bytes.Equal(again.Body, first.Body) {
		t.Errorf("%s: replay answered %d\n%s\nthe first answer was %d\n%s", what, again.Status, again.Body, first.Status, first.Body)
	}
	for _, h := range []string{"Location", "ETag"} {
		if again.Header.Get(h) != first.Header.Get(h) {
			t.Errorf("%s: replay has %s %q, the first answer %q", what, h, again.Header.Get(h), first.Header.Get(h))
		}
	}
	if first.Header.Get("Idempotent-Replayed") != "" || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("%s: Idempotent-Replayed %q on the first answer, %q on the replay", what,
			first.Header.Get("Idempotent-Replayed"), again.Header.Get("Idempotent-Replayed"))
	}
}

// checkIdempotentAcross sends keyed requests to one instance and replays them on the
// other: the same answer, and one event.
func checkIdempotentAcross(t *testing.T, m *readModels, a, b *instance, runID, onTicket string) {
	t.Helper()
	key := "create-" + runID
	body := map[string]any{"title": "keyed on A", "description": "replayed on B", "email": "key@example.com", "created_by": "client"}
	first := a.srv.do(t, "POST", "/v1/ticket/", body, "Idempotency-Key", key).expect(t, 201)
	again := b.srv.do(t, "POST", "/v1/ticket/", body, "Idempotency-Key", key)
	sameAnswer(t, "create keyed on A, replayed on B", first, again)
	var d, d2 ticketDoc
	first.JSON(t, &d)
	again.JSON(t, &d2)
	if d.ID == "" || d2.ID != d.ID {
		t.Errorf("create keyed on A answered ticket %q, its replay on B %q", d.ID, d2.ID)
	}
	b.srv.do(t, "GET", "/v1/ticket/"+d.ID, nil).expect(t, 200)
	if n := countEvents(t, m, `stream_id = $1`, d.ID); n != 1 {
		t.Errorf("the keyed create of %s has %d events, want 1", d.ID, n)
	}
	if n := countEvents(t, m, `metadata->>'idempotency_key' = $1`, key); n != 1 {
		t.Errorf("%d events carry the create's key, want 1", n)
	}
	other := map[string]any{"title": "another request", "email": "key@example.com", "created_by": "client"}
	problemCode(t, b.srv.do(t, "POST", "/v1/ticket/", other, "Idempotency-Key", key), 422, "idempotency-key-reused")

	key = "comment-" + runID
	path := "/v1/ticket/" + onTicket + "/comments"
	cbody := map[string]any{"body": "keyed on B", "created_by": "client"}
	eventsBefore := countEvents(t, m, `stream_id = $1`, onTicket)
	first = b.srv.do(t, "POST", path, cbody, "Idempotency-Key", key).expect(t, 201)
	again = a.srv.do(t, "POST", path, cbody, "Idempotency-Key", key)
	sameAnswer(t, "comment keyed on B, replayed on A", first, again)
	var c struct {
		ID string `json:"id"`
	}
	first.JSON(t, &c)
	if n := countEvents(t, m, `stream_id = $1`, onTicket) - eventsBefore; n != 1 {
		t.Errorf("the keyed comment and its replay appended %d events, want 1", n)
	}
	if n := countEvents(t, m, `type = 'CommentAdded' AND data->>'comment_id' = $1`, c.ID); n != 1 {
		t.Errorf("comment %s is stored %d times", c.ID, n)
	}
	t.Logf("Idempotency-Key: a create keyed on A and a comment keyed on B, replayed on the other instance: " +
		"the same status, body, Location and ETag, marked replayed; one event each; the key with another body is a 422")
}

// raceIdempotent sends keyed creates and comments to A and B at the same moment, as a
// client retrying through a balancer would, and returns how many keys it raced.
func raceIdempotent(t *testing.T, m *readModels, hc *http.Client, a, b *instance, runID string, tickets []string) int {
	t.Helper()
	type job struct {
		key, path string
		body      map[string]any
	}
	var jobs []job
	for i := range 4 {
		jobs = append(jobs, job{fmt.Sprintf("race-create-%s-%d", runID, i), "/v1/ticket/",
			map[string]any{"title": fmt.Sprintf("raced %d", i), "email": "race@example.com", "created_by": "client"}})
	}
	for i, id := range tickets {
		jobs = append(jobs, job{fmt.Sprintf("race-comment-%s-%d", runID, i), "/v1/ticket/" + id + "/comments",
			map[string]any{"body": fmt.Sprintf("raced comment %d", i), "created_by": "client"}})
	}
	for _, j := range jobs {
		var replies [2]exchange
		var errs [2]error
		var wg sync.WaitGroup
		for i, in := range []*instance{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				replies[i], errs[i] = callInstance(hc, in.srv.URL, "POST", j.path, j.body, "Idempotency-Key", j.key)
			}()
		}
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("raced %s: %v, %v", j.key, errs[0], errs[1])
		}
		r0, r1 := replies[0], replies[1]
		if r0.status != 201 || r1.status != 201 || !bytes.Equal(r0.body, r1.body) {
			t.Errorf("%s raced on A and B: %d %s / %d %s", j.key, r0.status, clip(r0.body), r1.status, clip(r1.body))
			continue
		}
		if rep := r0.header.Get("Idempotent-Replayed") + "," + r1.header.Get("Idempotent-Replayed"); rep != ",true" && rep != "true," {
			t.Errorf("%s raced on A and B: Idempotent-Replayed %q, want one original and one replay", j.key, rep)
		}
		if n := countEvents(t, m, `metadata->>'idempotency_key' = $1`, j.key); n != 1 {
			t.Errorf("%s raced on A and B: %d events stored, want 1", j.key, n)
		}
	}
	return len(jobs)
}

// --- the load -----------------------------------------------------------------------

// ackedWrite is an acknowledged (2xx) write: the instance, the request id it carried, and
// what the answer named.
type ackedWrite struct {
	inst    int
	kind    string // create, comment, status
	rid     string
	ticket  string
	version int
	comment string // comment: its id
	status  string // status: the status asked for
	noop    bool   // status: answered with another updated_by than sent, so no event
}

// sentWrite is what became of a write request: its HTTP status, 0 for a transport error.
type sentWrite struct {
	inst    int
	outcome int
}

// twoLoad writes through both instances on one shared set of tickets.
type twoLoad struct {
	hc     *http.Client
	insts  [2]*instance
	down   [2]atomic.Bool // killed: the writers leave it alone
	prefix string         // of the request ids
	seq    atomic.Int64
	total  atomic.Int64
	acked  [2]atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	mu   sync.Mutex
	pool []string // tickets open for writes, hottest first
	res  twoLoadResult
}

type twoLoadResult struct {
	prefix         string // of every request id the writers sent
	acks           []ackedWrite
	sent           map[string]sentWrite
	kinds          [2]map[string]int
	acked          [2]int64
	transport      [2]int
	firstTransport [2]time.Time
	n412, n409     int
	unexpected     []string
}

func newTwoLoad(hc *http.Client, a, b *instance, prefix string, pool []string) *twoLoad {
	l := &twoLoad{hc: hc, insts: [2]*instance{a, b}, prefix: prefix, stop: make(chan struct{}), pool: slices.Clone(pool)}
	l.res.prefix = prefix
	l.res.sent = map[string]sentWrite{}
	l.res.kinds = [2]map[string]int{{}, {}}
	return l
}

func (l *twoLoad) start(workers int) {
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				i := l.pick(rnd)
				if i < 0 {
					return
				}
				id := l.ticket(rnd)
				switch op := rnd.IntN(100); {
				case id == "" || op < 15:
					l.create(w, i)
				case op < 60:
					l.comment(rnd, i, id)
				default:
					l.changeStatus(rnd, i, id)
				}
			}
		}()
	}
}

// halt stops the writers and waits for them.
func (l *twoLoad) halt() {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
}

func (l *twoLoad) result() twoLoadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.res
	r.acked = [2]int64{l.acked[0].Load(), l.acked[1].Load()}
	return r
}

// pick chooses an instance that is up, at random.
func (l *twoLoad) pick(rnd *rand.Rand) int {
	switch a, b := l.down[0].Load(), l.down[1].Load(); {
	case a && b:
		return -1
	case a:
		return 1
	case b:
		return 0
	}
	return rnd.IntN(2)
}

// other is the instance a write reads its ETag from: the other one while it is up.
func (l *twoLoad) other(i int) int {
	if l.down[1-i].Load() {
		return i
	}
	return 1 - i
}

// ticket picks a shared ticket, most often one of the eight oldest open ones, so that
// writers on both instances clash on them.
func (l *twoLoad) ticket(rnd *rand.Rand) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pool) == 0 {
		return ""
	}
	if rnd.IntN(10) < 6 {
		return l.pool[rnd.IntN(min(len(l.pool), 8))]
	}
	return l.pool[rnd.IntN(len(l.pool))]
}

func (l *twoLoad) drop(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i := slices.Index(l.pool, id); i >= 0 {
		l.pool = slices.Delete(l.pool, i, i+1)
	}
}

// send sends one write with a request id of its own and records what became of it.
func (l *twoLoad) send(i int, method, path string, body any, headers ...string) (exchange, string, error) {
	rid := l.prefix + strconv.FormatInt(l.seq.Add(1), 10)
	r, err := callInstance(l.hc, l.insts[i].srv.URL, method, path, body, append(headers, "X-Request-ID", rid)...)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.res.sent[rid] = sentWrite{inst: i, outcome: r.status}
	if err != nil {
		l.res.transport[i]++
		if l.res.firstTransport[i].IsZero() {
			l.res.firstTransport[i] = time.Now()
		}
	}
	return r, rid, err
}

func (l *twoLoad) ack(w ackedWrite) {
	l.mu.Lock()
	l.res.acks = append(l.res.acks, w)
	l.res.kinds[w.inst][w.kind]++
	if w.kind == "create" {
		l.pool = append(l.pool, w.ticket)
	}
	l.mu.Unlock()
	l.acked[w.inst].Add(1)
	l.total.Add(1)
}

func (l *twoLoad) unexpected(i int, method, path string, r exchange) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.res.unexpected) < 20 {
		l.res.unexpected = append(l.res.unexpected, fmt.Sprintf("%s %s %s -> %d %s", l.insts[i].name, method, path, r.status, clip(r.body)))
	}
}

func (l *twoLoad) count(n *int) {
	l.mu.Lock()
	*n++
	l.mu.Unlock()
}

func (l *twoLoad) create(w, i int) {
	r, rid, err := l.send(i, "POST", "/v1/ticket/", map[string]any{
		"title": fmt.Sprintf("two instances %d", w), "description": "shared load",
		"email": fmt.Sprintf("u%d@example.com", w%3), "created_by": "writer-" + l.insts[i].name})
	if err != nil {
		return
	}
	var d struct {
		ID string `json:"id"`
	}
	if r.status != 201 || json.Unmarshal(r.body, &d) != nil || d.ID == "" {
		l.unexpected(i, "POST", "/v1/ticket/", r)
		return
	}
	l.ack(ackedWrite{inst: i, kind: "create", rid: rid, ticket: d.ID, version: etagVersion(r.header)})
}

// current reads a ticket's ETag and status, from instance i.
func (l *twoLoad) current(i int, id string) (etag, status string, ok bool) {
	r, err := callInstance(l.hc, l.insts[i].srv.URL, "GET", "/v1/ticket/"+id, nil)
	if err != nil {
		return "", "", false
	}
	var d struct {
		Status string `json:"status"`
	}
	if r.status != 200 || json.Unmarshal(r.body, &d) != nil || r.header.Get("ETag") == "" {
		l.unexpected(i, "GET", "/v1/ticket/"+id, r)
		return "", "", false
	}
	return r.header.Get("ETag"), d.Status, true
}

const writeAttempts = 8

func (l *twoLoad) comment(rnd *rand.Rand, i int, id string) {
	var etag string
	if rnd.IntN(2) == 0 {
		var ok bool
		if etag, _, ok = l.current(l.other(i), id); !ok {
			return
		}
	}
	path := "/v1/ticket/" + id + "/comments"
	for range writeAttempts {
		var hdr []string
		if etag != "" {
			hdr = []string{"If-Match", etag}
		}
		r, rid, err := l.send(i, "POST", path, map[string]any{"body": "from a writer on " + l.insts[i].name, "created_by": "agent-" + l.insts[i].name}, hdr...)
		if err != nil {
			return
		}
		switch r.status {
		case 201:
			var c struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(r.body, &c) != nil || c.ID == "" {
				l.unexpected(i, "POST", path, r)
				return
			}
			l.ack(ackedWrite{inst: i, kind: "comment", rid: rid, ticket: id, version: etagVersion(r.header), comment: c.ID})
			return
		case 412: // another writer was first: retry on the version the answer names
			l.count(&l.res.n412)
			if etag = r.header.Get("ETag"); etag == "" {
				l.unexpected(i, "POST", path, r)
				return
			}
		case 409: // closed meanwhile
			var p struct {
				Code string `json:"code"`
			}
			if json.Unmarshal(r.body, &p) != nil || p.Code != "ticket-closed" {
				l.unexpected(i, "POST", path, r)
			}
			l.drop(id)
			return
		default:
			l.unexpected(i, "POST", path, r)
			return
		}
	}
}

// pickStatus chooses a status to move to from the ones allowed (any of them when the
// current status is not known); closing, which ends a ticket's writes, is rare.
func pickStatus(rnd *rand.Rand, allowed []string) string {
	if len(allowed) == 0 {
		allowed = []string{"answered", "wait_answer", "closed"}
	}
	open := slices.DeleteFunc(slices.Clone(allowed), func(s string) bool { return s == "closed" })
	if len(open) == 0 || rnd.IntN(100) < 3 {
		return allowed[rnd.IntN(len(allowed))]
	}
	return open[rnd.IntN(len(open))]
}

var nextStatuses = map[string][]string{
	"open": {"answered", "closed"}, "answered": {"wait_answer", "closed"}, "wait_answer": {"answered", "closed"}, "closed": {},
}

func (l *twoLoad) changeStatus(rnd *rand.Rand, i int, id string) {
	var etag string
	var allowed []string
	if rnd.IntN(2) == 0 {
		var status string
		var ok bool
		if etag, status, ok = l.current(l.other(i), id); !ok {
			return
		}
		if allowed = nextStatuses[status]; len(allowed) == 0 {
			l.drop(id)
			return
		}
	}
	want := pickStatus(rnd, allowed)
	path := "/v1/ticket/" + id
	for range writeAttempts {
		var hdr []string
		if etag != "" {
			hdr = []string{"If-Match", etag}
		}
		// an updated_by of its own: the answer names it only if this PUT stored an event
		by := fmt.Sprintf("agent-%s-%d", l.insts[i].name, l.seq.Add(1))
		r, rid, err := l.send(i, "PUT", path, map[string]any{"status": want, "updated_by": by}, hdr...)
		if err != nil {
			return
		}
		switch r.status {
		case 200:
			var d struct {
				Status    string `json:"status"`
				UpdatedBy string `json:"updated_by"`
				Version   int    `json:"version"`
			}
			if json.Unmarshal(r.body, &d) != nil || d.Status != want || d.Version < 1 || etagVersion(r.header) != d.Version {
				l.unexpected(i, "PUT", path, r)
				return
			}
			l.ack(ackedWrite{inst: i, kind: "status", rid: rid, ticket: id, version: d.Version, status: want, noop: d.UpdatedBy != by})
			if want == "closed" {
				l.drop(id)
			}
			return
		case 409: // the workflow refuses it from the current status: choose among the allowed
			l.count(&l.res.n409)
			var p struct {
				Allowed []string `json:"allowed_statuses"`
			}
			if json.Unmarshal(r.body, &p) != nil {
				l.unexpected(i, "PUT", path, r)
				return
			}
			if len(p.Allowed) == 0 {
				l.drop(id) // closed
				return
			}
			want = pickStatus(rnd, p.Allowed)
		case 412:
			l.count(&l.res.n412)
			if etag = r.header.Get("ETag"); etag == "" {
				l.unexpected(i, "PUT", path, r)
				return
			}
		default:
			l.unexpected(i, "PUT", path, r)
			return
		}
	}
}

// --- the event store against the acknowledgements -----------------------------------

type storedFigures struct {
	events, found, noops, unacked int
	byType                        string
}

// checkStored finds every acknowledged write's event by the request id it carried
// (a no-op PUT has none: the replay must show the status asked for at the version
// answered), and accounts for every event a load request stored: acknowledged, or cut
// off by the kill, never refused.
func checkStored(t *testing.T, m *readModels, res twoLoadResult) storedFigures {
	t.Helper()
	ctx := context.Background()
	type stored struct {
		stream  string
		version int
		typ     string
		data    map[string]any
	}
	rows, err := m.pool.Query(ctx, `SELECT stream_id::text, version, type, data, coalesce(metadata->>'client_request_id', '') FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	byRID := map[string][]stored{}
	types := map[string]int{}
	var fig storedFigures
	for rows.Next() {
		var s stored
		var rid string
		if err := rows.Scan(&s.stream, &s.version, &s.typ, &s.data, &rid); err != nil {
			t.Fatal(err)
		}
		byRID[rid] = append(byRID[rid], s)
		types[s.typ]++
		fig.events++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"TicketOpened", "CommentAdded", "StatusChanged", "TicketDeleted"} {
		fig.byType += fmt.Sprintf("%s %d, ", typ, types[typ])
	}
	fig.byType = strings.TrimSuffix(fig.byType, ", ")

	errs := 0
	fail := func(format string, args ...any) {
		if errs++; errs <= 10 {
			t.Errorf(format, args...)
		}
	}
	for _, a := range res.acks {
		evs := byRID[a.rid]
		if len(evs) > 1 {
			fail("acknowledged %s %s stored %d events", a.kind, a.rid, len(evs))
			continue
		}
		if a.noop {
			// no event, and the ticket stood in that status at that version
			v, _, err := projections.ViewAt(ctx, m.store, uuid.MustParse(a.ticket), a.version)
			if len(evs) > 0 || err != nil || v.Version != a.version || string(v.Status) != a.status {
				fail("acknowledged no-op PUT %s of %s to %s at v%d: %d events of its own, the store has v%d %s (%v)",
					a.rid, a.ticket, a.status, a.version, len(evs), v.Version, v.Status, err)
				continue
			}
			fig.noops++
			fig.found++
			continue
		}
		if len(evs) == 0 {
			fail("acknowledged %s of ticket %s (request %s, v%d) is not in the event store", a.kind, a.ticket, a.rid, a.version)
			continue
		}
		e := evs[0]
		ok := e.stream == a.ticket && e.version == a.version
		switch a.kind {
		case "create":
			ok = ok && e.typ == "TicketOpened"
		case "comment":
			ok = ok && e.typ == "CommentAdded" && e.data["comment_id"] == a.comment
		case "status":
			ok = ok && e.typ == "StatusChanged" && e.data["to"] == a.status
		}
		if ok {
			fig.found++
		} else {
			fail("acknowledged %s (request %s: ticket %s v%d %s%s) is stored as %s v%d %s %v",
				a.kind, a.rid, a.ticket, a.version, a.comment, a.status, e.stream, e.version, e.typ, e.data)
		}
	}
	for rid, evs := range byRID {
		if !strings.HasPrefix(rid, res.prefix) {
			continue
		}
		s, ok := res.sent[rid]
		switch {
		case !ok:
			fail("%d events carry request id %s, which no writer sent", len(evs), rid)
		case s.outcome == 0:
			fig.unacked++ // cut off by the kill after its commit
		case s.outcome/100 != 2:
			fail("request %s was answered %d, yet its event %s v%d %s is stored", rid, s.outcome, evs[0].stream, evs[0].version, evs[0].typ)
		}
	}
	return fig
}

// --- catching up and rebuilding ------------------------------------------------------

// waitBacklogs waits until no projector group has an outbox row after its position.
func waitBacklogs(t *testing.T, m *readModels, timeout time.Duration) {
	t.Helper()
	var n int
	eventually(t, timeout, "both projector groups at the head of the outbox", func() bool {
		err := m.pool.QueryRow(context.Background(), `SELECT count(*) FROM watermill_ticket_events e
			JOIN watermill_offsets_ticket_events o ON o.consumer_group = ANY($1)
			WHERE (e.transaction_id, e."offset") > (o.last_processed_transaction_id, coalesce(o.offset_acked, 0))`,
			[]string{pgmodel.Group, redismodel.Group}).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
}

// rebuildWithBinary runs `ticketd -rebuild-projections` with the deployment's
// environment, as an operator would beside the serving instance.
func rebuildWithBinary(t *testing.T, bin string, env map[string]string) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-rebuild-projections")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, "HTTP_ADDR=127.0.0.1:1") // not served
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ticketd -rebuild-projections: %v\n%s", err, out)
	}
	return string(out), time.Since(start)
}

// readModelSnapshot is everything both read models hold: every row of every table in
// the readmodel schema, and every key under the Redis prefix with its value and
// whether it expires.
type readModelSnapshot struct {
	tables map[string][]string
	redis  map[string]string
}

func snapshotReadModels(t *testing.T, pool *pgxpool.Pool, rc *redis.ClusterClient, prefix string) readModelSnapshot {
	t.Helper()
	ctx := context.Background()
	s := readModelSnapshot{tables: map[string][]string{}, redis: map[string]string{}}
	rows, err := pool.Query(ctx, `SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'readmodel' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) == 0 {
		t.Fatalf("read model tables %v: %v", tables, err)
	}
	for _, tbl := range tables {
		rows, err := pool.Query(ctx, `SELECT to_jsonb(r)::text FROM readmodel.`+pgx.Identifier{tbl}.Sanitize()+` r ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		if s.tables[tbl], err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	err = rc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, prefix+":*", 1000).Result()
			if err != nil {
				return err
			}
			for _, k := range keys {
				val, err := node.Get(ctx, k).Result()
				if err != nil {
					val = "error: " + err.Error()
				}
				ttl, err := node.PTTL(ctx, k).Result()
				if err != nil {
					return err
				}
				mu.Lock()
				s.redis[k] = fmt.Sprintf("expires=%t %s", ttl > 0, val)
				mu.Unlock()
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	})
	if err != nil {
		t.Fatalf("scan Redis: %v", err)
	}
	return s
}

func (s readModelSnapshot) sizes() string {
	var parts []string
	for tbl, rows := range s.tables {
		parts = append(parts, fmt.Sprintf("%d %s rows", len(rows), tbl))
	}
	slices.Sort(parts)
	return strings.Join(append(parts, fmt.Sprintf("%d Redis keys", len(s.redis))), ", ")
}

// diff lists the differences between two snapshots (at most a few per part).
func (s readModelSnapshot) diff(o readModelSnapshot) []string {
	var out []string
	for tbl, rows := range s.tables {
		other, ok := o.tables[tbl]
		if !ok {
			out = append(out, "table "+tbl+" is gone after the rebuild")
			continue
		}
		if slices.Equal(rows, other) {
			continue
		}
		out = append(out, fmt.Sprintf("readmodel.%s: %d rows, rebuilt %d", tbl, len(rows), len(other)))
		a, b := map[string]bool{}, map[string]bool{}
		for _, r := range rows {
			a[r] = true
		}
		for _, r := range other {
			b[r] = true
		}
		n := 0
		for _, r := range rows {
			if !b[r] && n < 3 {
				out = append(out, "  projected only: "+r)
				n++
			}
		}
		n = 0
		for _, r := range other {
			if !a[r] && n < 3 {
				out = append(out, "  rebuilt only:   "+r)
				n++
			}
		}
	}
	for tbl := range o.tables {
		if _, ok := s.tables[tbl]; !ok {
			out = append(out, "table "+tbl+" appears with the rebuild")
		}
	}
	n := 0
	for k, v := range s.redis {
		if w, ok := o.redis[k]; (!ok || w != v) && n < 5 {
			out = append(out, fmt.Sprintf("redis %s: projected %q, rebuilt %q", k, clip([]byte(v)), clip([]byte(w))))
			n++
		}
	}
	for k, w := range o.redis {
		if _, ok := s.redis[k]; !ok && n < 5 {
			out = append(out, fmt.Sprintf("redis %s: only after the rebuild: %q", k, clip([]byte(w))))
			n++
		}
	}
	return out
}
