package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/httpapi/auth"
)

// sseEvent is one event read from a stream.
type sseEvent struct {
	ID   int
	Type string
	Data map[string]any
}

// sseConn is an open GET /v1/ticket/{id}/events; its events arrive on Events, which is
// closed when the stream ends (EOF: the server ended it) or the test closes it.
type sseConn struct {
	Status int
	Header http.Header
	Events chan sseEvent
	body   io.ReadCloser
	cancel context.CancelFunc
	mu     sync.Mutex
	lines  []string // comment lines seen
}

var sseClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: -1, DisableKeepAlives: true}}

// openStream opens a stream; headers are name, value pairs (an Authorization replaces
// the admin token).
func openStream(t testing.TB, base, path string, headers ...string) *sseConn {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := sseClient.Do(authorize(req))
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", path, err)
	}
	c := &sseConn{Status: resp.StatusCode, Header: resp.Header, Events: make(chan sseEvent, 1000), body: resp.Body, cancel: cancel}
	t.Cleanup(c.Close)
	if resp.StatusCode != 200 {
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.lines = append(c.lines, string(raw))
		close(c.Events)
		return c
	}
	go c.read()
	return c
}

func (c *sseConn) read() {
	defer close(c.Events)
	sc := bufio.NewScanner(c.body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var e sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if e.Type != "" {
				c.Events <- e
			}
			e = sseEvent{}
		case strings.HasPrefix(line, ":"):
			c.mu.Lock()
			c.lines = append(c.lines, line)
			c.mu.Unlock()
		case strings.HasPrefix(line, "id: "):
			e.ID, _ = strconv.Atoi(line[4:])
		case strings.HasPrefix(line, "event: "):
			e.Type = line[7:]
		case strings.HasPrefix(line, "data: "):
			_ = json.Unmarshal([]byte(line[6:]), &e.Data)
		}
	}
}

// Close drops the connection.
func (c *sseConn) Close() {
	c.cancel()
	c.body.Close()
}

func (c *sseConn) comments() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// next returns the next event, failing the test after timeout.
func (c *sseConn) next(t testing.TB, timeout time.Duration) sseEvent {
	t.Helper()
	select {
	case e, ok := <-c.Events:
		if !ok {
			t.Fatalf("the stream ended; comments %q", c.comments())
		}
		return e
	case <-time.After(timeout):
		t.Fatalf("no event within %s", timeout)
	}
	return sseEvent{}
}

// ended waits for the server to end the stream.
func (c *sseConn) ended(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case e, ok := <-c.Events:
		if ok {
			t.Fatalf("event %d %s, want the end of the stream", e.ID, e.Type)
		}
	case <-time.After(timeout):
		t.Fatalf("the stream did not end within %s", timeout)
	}
}

func newTicketOn(t testing.TB, s *testServer, email string) string {
	t.Helper()
	var v struct{ ID string }
	s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "stream me", "email": email, "created_by": "c"}).expect(t, 201).JSON(t, &v)
	return v.ID
}

func commentOn(t testing.TB, base, id, body string) {
	t.Helper()
	r, err := (&testServer{URL: base}).tryDo("POST", "/v1/ticket/"+id+"/comments", map[string]any{"body": body, "created_by": "c"})
	if err != nil || r.Status != 201 {
		t.Fatalf("comment: %d %v %s", r.Status, err, r.Body)
	}
}

// expectEvents reads n events and checks they carry versions from, from+1, ... with
// the types wanted (empty: any), ids and data agreeing.
func expectEvents(t *testing.T, c *sseConn, from int, types ...string) {
	t.Helper()
	for i, typ := range types {
		e := c.next(t, 5*time.Second)
		if e.ID != from+i || (typ != "" && e.Type != typ) {
			t.Fatalf("event %d %s, want %d %s", e.ID, e.Type, from+i, typ)
		}
		if v, _ := e.Data["version"].(float64); int(v) != e.ID || e.Data["type"] != e.Type {
			t.Fatalf("data %v disagrees with id %d and event %s", e.Data, e.ID, e.Type)
		}
	}
}

// Live events arrive in order with their versions and types; after a dropped
// connection, Last-Event-ID and ?after resume with every event exactly once, those
// written while disconnected included; the stream ends after the deletion.
func TestEventStreamLiveResumeAndEnd(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"SSE_HEARTBEAT": "1s"})
	id := newTicketOn(t, s, "a@example.com")
	path := "/v1/ticket/" + id + "/events"
	c := openStream(t, s.URL, path)
	if c.Status != 200 || !strings.HasPrefix(c.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d, content type %q", c.Status, c.Header.Get("Content-Type"))
	}
	expectEvents(t, c, 1, "TicketOpened")
	commentOn(t, s.URL, id, "one")
	s.do(t, "PUT", "/v1/ticket/"+id, map[string]any{"status": "answered", "updated_by": "u"}).expect(t, 200)
	expectEvents(t, c, 2, "CommentAdded", "StatusChanged")
	c.Close()

	commentOn(t, s.URL, id, "while away 1")
	commentOn(t, s.URL, id, "while away 2")
	// Last-Event-ID wins over ?after (a reconnecting EventSource sends its first URL)
	c = openStream(t, s.URL, path+"?after=1", "Last-Event-ID", "3")
	expectEvents(t, c, 4, "CommentAdded", "CommentAdded")
	commentOn(t, s.URL, id, "live again")
	expectEvents(t, c, 6, "CommentAdded")
	c.Close()

	commentOn(t, s.URL, id, "away again")
	c = openStream(t, s.URL, path+"?after=6")
	expectEvents(t, c, 7, "CommentAdded")
	s.do(t, "DELETE", "/v1/ticket/"+id, nil).expect(t, 204)
	expectEvents(t, c, 8, "TicketDeleted")
	c.ended(t, 5*time.Second)

	// a deleted ticket's stream replays, then ends
	c = openStream(t, s.URL, path+"?after=5")
	expectEvents(t, c, 6, "CommentAdded", "CommentAdded", "TicketDeleted")
	c.ended(t, 5*time.Second)
	c = openStream(t, s.URL, path, "Last-Event-ID", "8")
	c.ended(t, 5*time.Second)
}

// A replay longer than a page of the store (100 events) arrives whole and in order,
// then one comment line says the stream is live, after the last version replayed, and
// live events follow.
func TestEventStreamReplaysManyPagesThenGoesLive(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	id := newTicketOn(t, s, "a@example.com")
	const comments = 250
	for i := range comments {
		commentOn(t, s.URL, id, "comment "+strconv.Itoa(i))
	}
	c := openStream(t, s.URL, "/v1/ticket/"+id+"/events")
	types := make([]string, 1+comments)
	types[0] = "TicketOpened"
	for i := 1; i < len(types); i++ {
		types[i] = "CommentAdded"
	}
	expectEvents(t, c, 1, types...)
	eventually(t, 5*time.Second, "the stream says it is live", func() bool {
		got := c.comments()
		return len(got) == 1 && got[0] == ": stream of ticket "+id+" after version "+strconv.Itoa(1+comments)
	})
	commentOn(t, s.URL, id, "live")
	expectEvents(t, c, 2+comments, "CommentAdded")
}

// Events another instance writes on the same database reach a stream on this one
// (the hub's poll), in order.
func TestEventStreamSeesAnotherInstancesWrites(t *testing.T) {
	t.Parallel()
	a := startServer(t, map[string]string{"SSE_POLL_INTERVAL": "50ms"})
	env := processEnv(t, a.DSN)
	env["REDIS_PREFIX"] = a.Env["REDIS_PREFIX"]
	b := &testServer{URL: "http://" + env["HTTP_ADDR"], DSN: a.DSN, Env: env, logs: &syncBuffer{}}
	b.start(t)
	t.Cleanup(func() { _ = b.Stop() })

	id := newTicketOn(t, a, "a@example.com")
	c := openStream(t, a.URL, "/v1/ticket/"+id+"/events")
	expectEvents(t, c, 1, "TicketOpened")
	for i := range 5 {
		start := time.Now()
		commentOn(t, b.URL, id, "from b "+strconv.Itoa(i))
		expectEvents(t, c, 2+i, "CommentAdded")
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("event %d took %s from the other instance", 2+i, d)
		}
	}
}

// The answers before a stream starts: 404 for an unknown ticket and another
// requester's, 422 naming after or Last-Event-ID, and the limits.
func TestEventStreamRefusals(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"SSE_MAX_STREAMS": "4", "SSE_MAX_STREAMS_PER_PRINCIPAL": "2", "SSE_HEARTBEAT": "1s"})
	mine := newTicketOn(t, s, "req@example.com")
	theirs := newTicketOn(t, s, "other@example.com")
	req, _ := tokenFor(t, s, auth.RoleRequester, "req@example.com", time.Hour)
	agent, _ := tokenFor(t, s, auth.RoleAgent, "", time.Hour)

	problemOf := func(r response, status int, code, field string) {
		t.Helper()
		if r.Status != status {
			t.Fatalf("status %d, want %d: %s", r.Status, status, r.Body)
		}
		p := r.problem(t)
		if p["code"] != code {
			t.Fatalf("problem %v, want code %s", p, code)
		}
		if field != "" {
			if errs, _ := p["errors"].([]any); len(errs) != 1 || errs[0].(map[string]any)["field"] != field {
				t.Fatalf("problem %v must name %s", p, field)
			}
		}
	}
	ev := func(id string) string { return "/v1/ticket/" + id + "/events" }
	problemOf(s.do(t, "GET", ev("01936f1e-7c4a-7000-8000-000000000000"), nil), 404, "ticket-not-found", "")
	problemOf(s.do(t, "GET", ev(theirs), nil, bearerOf(req)...), 404, "ticket-not-found", "")
	problemOf(s.do(t, "GET", ev(mine)+"?after=-1", nil), 422, "validation-failed", "after")
	problemOf(s.do(t, "GET", ev(mine)+"?after=one", nil), 422, "validation-failed", "after")
	problemOf(s.do(t, "GET", ev(mine)+"?after=2", nil), 422, "validation-failed", "after")
	problemOf(s.do(t, "GET", ev(mine), nil, "Last-Event-ID", "x"), 422, "validation-failed", "Last-Event-ID")
	problemOf(s.do(t, "GET", ev(mine)+"?since=1", nil), 422, "validation-failed", "since")

	// the requester's own ticket streams
	own := openStream(t, s.URL, ev(mine), bearerOf(req)...)
	expectEvents(t, own, 1, "TicketOpened")
	// two per principal
	a1 := openStream(t, s.URL, ev(theirs), bearerOf(agent)...)
	a2 := openStream(t, s.URL, ev(mine), bearerOf(agent)...)
	expectEvents(t, a1, 1, "TicketOpened")
	expectEvents(t, a2, 1, "TicketOpened")
	a3 := openStream(t, s.URL, ev(mine), bearerOf(agent)...)
	if a3.Status != 429 {
		t.Fatalf("a third stream of one principal: %d %v, want 429", a3.Status, a3.comments())
	}
	// four on the server
	expectEvents(t, openStream(t, s.URL, ev(mine)), 1, "TicketOpened")
	if r := s.do(t, "GET", ev(mine), nil); r.Status != 503 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("a fifth stream on the server: %d %s, want 503 with Retry-After", r.Status, r.Body)
	}
	// a place freed is a place taken again
	a1.Close()
	eventually(t, 5*time.Second, "the closed stream's place is free", func() bool {
		c := openStream(t, s.URL, ev(mine))
		defer c.Close()
		return c.Status == 200
	})
}

// 1,000 idle streams hold no Postgres connection of their own, the server goes on
// answering, and stopping the server ends them.
func TestIdleStreamsHoldNoPostgresConnections(t *testing.T) {
	t.Parallel()
	const n = 1000
	s := startServer(t, map[string]string{"MAX_CONNS_PER_IP": "0", "SSE_MAX_STREAMS_PER_PRINCIPAL": "0", "SSE_HEARTBEAT": "2s"})
	ids := make([]string, 20)
	for i := range ids {
		ids[i] = newTicketOn(t, s, "a@example.com")
	}
	pool, err := db.Open(context.Background(), s.DSN, db.PoolConfig{MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	backends := func() int {
		var k int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	// let the pools settle, then count
	s.do(t, "GET", "/v1/ticket/"+ids[0], nil).expect(t, 200)
	before := backends()
	conns := make([]*sseConn, n)
	for i := range conns {
		conns[i] = openStream(t, s.URL, "/v1/ticket/"+ids[i%len(ids)]+"/events?after=1")
		if conns[i].Status != 200 {
			t.Fatalf("stream %d: %d %v", i, conns[i].Status, conns[i].comments())
		}
	}
	// a write wakes the streams of its ticket
	commentOn(t, s.URL, ids[0], "to every fiftieth stream")
	expectEvents(t, conns[0], 2, "CommentAdded")
	expectEvents(t, conns[n-len(ids)], 2, "CommentAdded")
	time.Sleep(time.Second)
	after := backends()
	t.Logf("Postgres backends of the database: %d before, %d with %d streams open", before, after, n)
	// the pools may have grown to their size while the 1,000 replays ran at once: what
	// counts is that the streams, waiting, hold none (PG_MAX_CONNS 6, the projectors' 3,
	// housekeeping's 1)
	if limit := 6 + projectorConns + 1; after > limit {
		t.Errorf("%d idle streams hold Postgres connections: %d backends before, %d after, more than the pools' %d", n, before, after, limit)
	}
	start := time.Now()
	for i := range 20 {
		s.do(t, "GET", "/v1/ticket/"+ids[i], nil).expect(t, 200)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("20 GETs with %d streams open took %s", n, d)
	}
	// the server stopping ends every stream
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop() }()
	for i, c := range conns {
		select {
		case _, ok := <-c.Events:
			for ok {
				_, ok = <-c.Events
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("stream %d still open 10s after the server began stopping", i)
		}
	}
	// and tells the client to come back
	if got := conns[0].comments(); len(got) == 0 || !strings.Contains(got[len(got)-1], "reconnect with Last-Event-ID") {
		t.Errorf("the last comment lines of a stream the server ended: %q, want the reconnect line last", got)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the server did not stop within 20s")
	}
}

// A client that goes away is noticed at the next heartbeat: its stream is closed and
// its place released.
func TestGoneClientIsNoticedAtTheNextHeartbeat(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"SSE_HEARTBEAT": "1s", "LOG_LEVEL": "info"})
	id := newTicketOn(t, s, "a@example.com")
	open := func() float64 {
		r := s.do(t, "GET", "/metrics", nil).expect(t, 200)
		for _, line := range strings.Split(string(r.Body), "\n") {
			if v, ok := strings.CutPrefix(line, "sse_streams_open "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return -1
	}
	c := openStream(t, s.URL, "/v1/ticket/"+id+"/events")
	expectEvents(t, c, 1, "TicketOpened")
	if got := open(); got != 1 {
		t.Fatalf("sse_streams_open %v, want 1", got)
	}
	c.Close()
	eventually(t, 4*time.Second, "the gone client's stream is closed", func() bool { return open() == 0 })
	// one access log line, at the stream's end
	var lines []map[string]any
	for _, line := range strings.Split(s.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["route"] == "/v1/ticket/:id/events" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 1 || lines[0]["msg"] != "stream" || lines[0]["end"] != "client_gone" || lines[0]["events"] != 1.0 {
		t.Errorf("access log lines of the stream: %v, want one, msg stream, end client_gone, events 1", lines)
	}
}

// The SSE_* variables' error cases, as TestConfigErrorsNameTheVariableAndTheForm's.
func TestSSEConfigErrorsNameTheVariable(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ key, value, want string }{
		{"SSE_HEARTBEAT", "often", `SSE_HEARTBEAT: "often" is not a duration (`},
		{"SSE_HEARTBEAT", "100ms", `SSE_HEARTBEAT must be from 1s to 5m, not 100ms`},
		{"SSE_MAX_STREAMS", "many", `SSE_MAX_STREAMS: "many" is not a whole number (`},
		{"SSE_MAX_STREAMS", "0", `SSE_MAX_STREAMS must be at least 1, not 0`},
		{"SSE_MAX_STREAMS_PER_PRINCIPAL", "x", `SSE_MAX_STREAMS_PER_PRINCIPAL: "x" is not a whole number (`},
		{"SSE_MAX_STREAMS_PER_PRINCIPAL", "-1", `SSE_MAX_STREAMS_PER_PRINCIPAL must be 0 (no cap per principal) or more, not -1`},
		{"SSE_POLL_INTERVAL", "fast", `SSE_POLL_INTERVAL: "fast" is not a duration (`},
		{"SSE_POLL_INTERVAL", "1ms", `SSE_POLL_INTERVAL must be from 10ms to 1m, not 1ms`},
	} {
		_, err := loadConfig(func(k string) string {
			if k == c.key {
				return c.value
			}
			return ""
		})
		var ce *ConfigError
		if !errors.As(err, &ce) || len(ce.Problems) != 1 || !strings.HasPrefix(ce.Problems[0].Error(), c.want) {
			t.Errorf("%s=%s: %v, want one problem starting %s", c.key, c.value, err, c.want)
		}
	}
}
