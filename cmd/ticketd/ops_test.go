package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"golang.org/x/net/html"
	"gopkg.in/yaml.v3"

	"github.com/ticketd/ticketd/db/dbtest"
)

func TestHealthAndReadinessReportDependencies(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)

	var health map[string]any
	s.do(t, "GET", "/healthz", nil).expect(t, 200).JSON(t, &health)
	if health["status"] != "ok" {
		t.Fatalf("healthz %v", health)
	}
	var ready map[string]any
	r := s.do(t, "GET", "/readyz", nil).expect(t, 200)
	r.JSON(t, &ready)
	want := map[string]any{"status": "ok", "postgres": "ok", "redis": "ok", "redis_mode": "cluster"}
	for k, v := range want {
		if ready[k] != v {
			t.Errorf("readyz %s = %v, want %v (body %s)", k, ready[k], v, r.Body)
		}
	}
}

func TestReadinessReportsAnUnreachableRedisButStaysReady(t *testing.T) {
	t.Parallel()
	// a port nobody listens on: Redis is down from the start
	s := startServer(t, map[string]string{"REDIS_ADDRS": freeAddr(t)})
	var ready map[string]any
	s.do(t, "GET", "/readyz", nil).expect(t, 200).JSON(t, &ready)
	if ready["postgres"] != "ok" || ready["redis"] != "unavailable" || ready["redis_mode"] != "single" {
		t.Fatalf("readyz %v, want postgres ok, redis unavailable, single", ready)
	}
	createTicket(t, s, sourceTicket) // writes need Postgres only
}

// scrape returns the /metrics lines that start with prefix.
func scrape(t *testing.T, s *testServer, prefix string) []string {
	t.Helper()
	r := s.do(t, "GET", "/metrics", nil).expect(t, 200)
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(r.Body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			out = append(out, sc.Text())
		}
	}
	return out
}

var uuidLike = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-`)

func TestMetricsCountRequestsByRouteTemplate(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	a := createTicket(t, s, sourceTicket)
	b := createTicket(t, s, sourceTicket)
	getTicket(t, s, a.ID)
	getTicket(t, s, b.ID)
	s.do(t, "GET", "/v1/ticket/"+uuid.NewString(), nil).expect(t, 404)
	s.do(t, "GET", "/no/such/"+uuid.NewString(), nil).expect(t, 404)

	lines := strings.Join(scrape(t, s, "http_"), "\n")
	for _, want := range []string{
		`http_requests_total{method="POST",route="/v1/ticket/",status="201"} 2`,
		`http_requests_total{method="GET",route="/v1/ticket/:id",status="200"} 2`,
		`http_requests_total{method="GET",route="/v1/ticket/:id",status="404"} 1`,
		`http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		`http_request_duration_seconds_count{method="GET",route="/v1/ticket/:id"} 3`,
		`http_requests_in_flight 1`, // the scrape itself
	} {
		if !strings.Contains(lines, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if uuidLike.MatchString(lines) {
		t.Errorf("a ticket id leaked into a label:\n%s", lines)
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if len(scrape(t, s, name)) == 0 {
			t.Errorf("metrics lack the standard %s", name)
		}
	}
	// the projectors report to the same registry
	eventually(t, 10*time.Second, "projection metrics count the two tickets", func() bool {
		for _, l := range scrape(t, s, "ticketd_projection_events_total") {
			if strings.Contains(l, `group="pg-readmodel"`) && strings.HasSuffix(l, " 2") {
				return true
			}
		}
		return false
	})
	for _, name := range []string{"ticketd_projection_lag_seconds_bucket"} {
		if len(scrape(t, s, name)) == 0 {
			t.Errorf("metrics lack %s", name)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", lines)
	}
}

// logLines parses the server's JSON log lines.
func logLines(t *testing.T, s *testServer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(s.logs.String(), "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		out = append(out, m)
	}
	return out
}

// requestLog returns the request log line whose field key (request_id,
// client_request_id) is rid.
func requestLog(t *testing.T, s *testServer, key, rid string) map[string]any {
	t.Helper()
	for _, m := range logLines(t, s) {
		if m["msg"] == "request" && m[key] == rid {
			return m
		}
	}
	t.Fatalf("no request log line with %s %q in:\n%s", key, rid, s.logs.String())
	return nil
}

// eventRequestIDs returns the metadata field key (request_id, client_request_id) of a
// stream's events.
func eventRequestIDs(t *testing.T, dsn, stream, key string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT coalesce(metadata->>$2, '') FROM events WHERE stream_id = $1 ORDER BY version`, stream, key)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestRequestIDRoundTripsIntoEventMetadataAndTheLog(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"LOG_LEVEL": "info"})
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)

	// the client's id is kept as its own; the request's id is the server's
	const own = "client-chosen-id-42"
	created := s.do(t, "POST", "/v1/ticket/", sourceTicket, "X-Request-ID", own).expect(t, 201)
	first := created.Header.Get("X-Request-ID")
	if !hex32.MatchString(first) {
		t.Fatalf("X-Request-ID answered %q, want the server's id, 32 hex digits (the client sent %q)", first, own)
	}
	var doc ticketDoc
	created.JSON(t, &doc)

	// no id sent: one is generated, answered, and stored just the same
	put := s.do(t, "PUT", "/v1/ticket/"+doc.ID, map[string]any{"status": "answered", "updated_by": "Администратор"}).expect(t, 200)
	generated := put.Header.Get("X-Request-ID")
	if !hex32.MatchString(generated) || generated == first {
		t.Fatalf("generated X-Request-ID %q, want 32 hex digits of its own", generated)
	}
	// a header that is no sane id is ignored
	bad := s.do(t, "GET", "/v1/ticket/"+doc.ID, nil, "X-Request-ID", strings.Repeat("x", 300)).expect(t, 200)
	if got := bad.Header.Get("X-Request-ID"); !hex32.MatchString(got) {
		t.Fatalf("a 300-byte X-Request-ID came back as %q", got)
	}

	if got := eventRequestIDs(t, s.DSN, doc.ID, "request_id"); len(got) != 2 || got[0] != first || got[1] != generated {
		t.Fatalf("events carry request ids %q, want [%s %s]", got, first, generated)
	}
	if got := eventRequestIDs(t, s.DSN, doc.ID, "client_request_id"); len(got) != 2 || got[0] != own || got[1] != "" {
		t.Fatalf("events carry client request ids %q, want [%s \"\"]", got, own)
	}

	line := requestLog(t, s, "request_id", first)
	for k, want := range map[string]any{"level": "INFO", "method": "POST", "route": "/v1/ticket/", "path": "/v1/ticket/", "status": float64(201), "remote_ip": "127.0.0.1", "client_request_id": own} {
		if line[k] != want {
			t.Errorf("log %s = %v, want %v (line %v)", k, line[k], want, line)
		}
	}
	if d, ok := line["duration_ms"].(float64); !ok || d <= 0 || d > 10_000 {
		t.Errorf("log duration_ms = %v", line["duration_ms"])
	}
	line = requestLog(t, s, "request_id", generated)
	if line["route"] != "/v1/ticket/:id" || line["path"] != "/v1/ticket/"+doc.ID || line["client_request_id"] != nil {
		t.Errorf("PUT logged with route %v, path %v, client_request_id %v", line["route"], line["path"], line["client_request_id"])
	}

	// 4xx at info, probes quiet (debug) when they succeed
	s.do(t, "GET", "/v1/ticket/"+uuid.NewString(), nil, "X-Request-ID", "missing-one").expect(t, 404)
	if l := requestLog(t, s, "client_request_id", "missing-one"); l["level"] != "INFO" || l["status"] != float64(404) {
		t.Errorf("404 logged as %v", l)
	}
	s.do(t, "GET", "/healthz", nil, "X-Request-ID", "probe-1").expect(t, 200)
	for _, m := range logLines(t, s) {
		if m["client_request_id"] == "probe-1" {
			t.Errorf("a successful /healthz was logged at info: %v", m)
		}
	}
}

// Clients choose their X-Request-ID: three separate requests sending the same one get
// three request ids of the server's own, in their answers and their events, each event
// keeping the client's value in client_request_id (before, all three recorded
// request_id "req-shared", and an audit could not tell them apart).
func TestRequestIDOfEventsIsTheServersNotTheClients(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	seen := map[string]bool{}
	for i := range 3 {
		r := s.do(t, "POST", "/v1/ticket/", sourceTicket, "X-Request-ID", "req-shared", "X-Correlation-ID", "case-7").expect(t, 201)
		var doc ticketDoc
		r.JSON(t, &doc)
		answered := r.Header.Get("X-Request-ID")
		var hist []historyEntry
		s.do(t, "GET", "/v1/ticket/"+doc.ID+"/history", nil).expect(t, 200).JSON(t, &hist)
		if len(hist) != 1 {
			t.Fatalf("request %d: history %+v, want one event", i+1, hist)
		}
		md := hist[0].Metadata
		if md["request_id"] != answered || answered == "req-shared" || seen[answered] {
			t.Errorf("request %d: event request_id %v, answered X-Request-ID %q; want the server's own id, new each time (seen %v)", i+1, md["request_id"], answered, seen)
		}
		if md["client_request_id"] != "req-shared" || md["correlation_id"] != "case-7" {
			t.Errorf("request %d: metadata %v, want client_request_id req-shared and correlation_id case-7", i+1, md)
		}
		seen[answered] = true
	}
}

func TestHealthcheckFlagProbesTheServer(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-healthcheck"}, func(k string) string { return s.Env[k] }, &out); err != nil {
		t.Fatalf("-healthcheck against a running server: %v", err)
	}
	if strings.TrimSpace(out.String()) != "healthy" {
		t.Fatalf("-healthcheck printed %q", out.String())
	}
	env := map[string]string{"HTTP_ADDR": freeAddr(t)} // nobody listens there
	if err := run(context.Background(), []string{"-healthcheck"}, func(k string) string { return env[k] }, io.Discard); err == nil {
		t.Fatal("-healthcheck succeeded with no server")
	}
	for listen, want := range map[string]string{":8000": "127.0.0.1:8000", "0.0.0.0:80": "127.0.0.1:80", "[::]:8000": "127.0.0.1:8000", "10.1.2.3:8000": "10.1.2.3:8000"} {
		if got := probeAddr(listen); got != want {
			t.Errorf("probeAddr(%q) = %q, want %q", listen, got, want)
		}
	}
}

// --- the OpenAPI document against real responses -----------------------------------

// specChecker validates exchanges with the server against the document it serves.
type specChecker struct {
	s       *testServer
	v       validator.Validator
	covered map[string]bool // "METHOD /path" with a 2xx seen
}

func newSpecChecker(t *testing.T, s *testServer) *specChecker {
	t.Helper()
	raw := s.do(t, "GET", "/api/openapi.json", nil).expect(t, 200).Body
	doc, err := libopenapi.NewDocument(raw)
	if err != nil {
		t.Fatalf("served document does not parse: %v", err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	return &specChecker{s: s, v: v, covered: map[string]bool{}}
}

// check sends a request and validates the response (and, for a 2xx, the request too)
// against the document. It returns the response for further assertions.
func (sc *specChecker) check(t *testing.T, method, path string, body any, want int, headers ...string) response {
	t.Helper()
	r, err := sc.s.tryDo(method, path, body, headers...)
	for attempt := 1; err != nil && want == http.StatusRequestEntityTooLarge && attempt < 5; attempt++ {
		// The server answers 413 and closes without reading the rest of the body; the
		// client can see the reset of its write instead of the answer.
		r, err = sc.s.tryDo(method, path, body, headers...)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	r.expect(t, want)
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	case []byte:
		raw = b
	default:
		raw, _ = json.Marshal(b)
	}
	newReq := func() *http.Request {
		req, _ := http.NewRequest(method, sc.s.URL+path, bytes.NewReader(raw))
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		return authorize(req)
	}
	resp := &http.Response{
		StatusCode: r.Status, Header: r.Header, Request: newReq(),
		Body: io.NopCloser(bytes.NewReader(r.Body)), ContentLength: int64(len(r.Body)),
	}
	if ok, errs := sc.v.ValidateHttpResponse(newReq(), resp); !ok {
		for _, e := range errs {
			t.Errorf("%s %s -> %d: response breaks the document: %s: %s", method, path, r.Status, e.Message, e.Reason)
			for _, f := range e.SchemaValidationErrors {
				t.Errorf("    at %s: %s", f.FieldPath, f.Reason)
			}
		}
		t.Logf("body: %s", r.Body)
	}
	if r.Status < 300 {
		if ok, errs := sc.v.ValidateHttpRequest(newReq()); !ok {
			for _, e := range errs {
				t.Errorf("%s %s: the request the server accepted breaks the document: %s: %s", method, path, e.Message, e.Reason)
			}
		}
		tmpl := regexp.MustCompile(`/[0-9a-f]{8}-[0-9a-f-]{27}`).ReplaceAllString(strings.SplitN(path, "?", 2)[0], "/{id}")
		sc.covered[method+" "+tmpl] = true
	}
	return r
}

func TestResponsesMatchTheOpenAPIDocument(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	sc := newSpecChecker(t, s)
	missing := "/v1/ticket/" + uuid.NewString()

	sc.check(t, "GET", "/v1/ticket/", nil, 200)
	created := sc.check(t, "POST", "/v1/ticket/", sourceTicket, 201, "Idempotency-Key", "spec-create-1", "X-Request-ID", "spec-check")
	var doc ticketDoc
	created.JSON(t, &doc)
	id := "/v1/ticket/" + doc.ID
	replay := sc.check(t, "POST", "/v1/ticket/", sourceTicket, 201, "Idempotency-Key", "spec-create-1")
	if replay.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replayed create lacks Idempotent-Replayed: %v", replay.Header)
	}
	sc.check(t, "POST", "/v1/ticket/", map[string]any{"title": "другое", "email": "user@example.com", "created_by": "Иван Иванов"}, 422, "Idempotency-Key", "spec-create-1")
	sc.check(t, "POST", "/v1/ticket/", `{"title": "x",`, 400)
	sc.check(t, "POST", "/v1/ticket/", map[string]any{"title": strings.Repeat("я", 201), "email": "user@example.com", "created_by": "u"}, 422)
	sc.check(t, "POST", "/v1/ticket/", sourceTicket, 415, "Content-Type", "text/plain")
	sc.check(t, "POST", "/v1/ticket/", strings.Repeat(" ", 70<<10)+"{}", 413)
	sc.check(t, "GET", "/v1/ticket/?status=bogus", nil, 422)

	sc.check(t, "GET", id, nil, 200)
	sc.check(t, "GET", id, nil, 304, "If-None-Match", `"1"`)
	sc.check(t, "GET", id+"?version=1", nil, 200)
	sc.check(t, "GET", id+"?version=9", nil, 422)
	sc.check(t, "GET", "/v1/ticket/not-a-uuid", nil, 422)
	sc.check(t, "GET", missing, nil, 404)

	sc.check(t, "PUT", id, map[string]any{"status": "answered", "updated_by": "Администратор"}, 200)
	sc.check(t, "PUT", id, map[string]any{"status": "answered", "updated_by": "Администратор"}, 200) // no-op
	sc.check(t, "PUT", id, map[string]any{"status": "open", "updated_by": "Администратор"}, 409)
	sc.check(t, "PUT", id, map[string]any{"status": "closed", "updated_by": "Администратор"}, 412, "If-Match", `"1"`)
	sc.check(t, "PUT", id, map[string]any{"status": "resolved", "updated_by": "Администратор"}, 422)
	sc.check(t, "PUT", missing, map[string]any{"status": "closed", "updated_by": "Администратор"}, 404)

	sc.check(t, "POST", id+"/comments", map[string]any{"body": "Перезагрузите роутер", "created_by": "Администратор"}, 201, "If-Match", `"2"`)
	sc.check(t, "POST", id+"/comments", map[string]any{"body": "И ещё", "created_by": "Администратор", "email": "admin@example.com"}, 201, "Idempotency-Key", "spec-comment-1")
	sc.check(t, "POST", id+"/comments", map[string]any{"body": " ", "created_by": "Администратор"}, 422)
	sc.check(t, "GET", id+"/comments?limit=1", nil, 200)
	sc.check(t, "GET", id+"/comments", nil, 200)
	sc.check(t, "GET", missing+"/comments", nil, 404)
	sc.check(t, "GET", id+"/history", nil, 200)
	sc.check(t, "GET", id+"/history?limit=2", nil, 200)
	sc.check(t, "GET", missing+"/history", nil, 404)

	sc.check(t, "PUT", id, map[string]any{"status": "closed", "updated_by": "Администратор"}, 200)
	sc.check(t, "POST", id+"/comments", map[string]any{"body": "поздно", "created_by": "Иван Иванов"}, 409)
	sc.check(t, "DELETE", id, nil, 412, "If-Match", `"1"`)
	sc.check(t, "DELETE", id, nil, 204, "X-Actor", "Администратор")
	sc.check(t, "DELETE", id, nil, 404)
	sc.check(t, "GET", id, nil, 404)
	sc.check(t, "GET", id+"/history", nil, 200)

	var tok struct{ ID string }
	sc.check(t, "POST", "/v1/tokens", map[string]any{"name": "spec bot", "role": "requester", "email": "user@example.com", "ttl": "1h"}, 201).JSON(t, &tok)
	sc.check(t, "POST", "/v1/tokens", map[string]any{"name": "spec bot", "role": "requester"}, 422)
	sc.check(t, "GET", "/v1/tokens", nil, 200)
	sc.check(t, "DELETE", "/v1/tokens/"+tok.ID, nil, 204)
	sc.check(t, "GET", "/v1/tokens", nil, 200) // now with a revoked_at
	sc.check(t, "DELETE", "/v1/tokens/"+uuid.NewString(), nil, 404)
	sc.check(t, "GET", "/v1/tokens", nil, 401, "Authorization", "Bearer tkd_nope")

	sc.check(t, "GET", "/healthz", nil, 200)
	sc.check(t, "GET", "/readyz", nil, 200)
	sc.check(t, "GET", "/metrics", nil, 200)
	sc.check(t, "GET", "/api/openapi.json", nil, 200)

	// every operation of the document was seen answering 2xx
	var notSeen []string
	for _, op := range []string{
		"GET /v1/ticket/", "POST /v1/ticket/", "GET /v1/ticket/{id}", "PUT /v1/ticket/{id}", "DELETE /v1/ticket/{id}",
		"POST /v1/ticket/{id}/comments", "GET /v1/ticket/{id}/comments", "GET /v1/ticket/{id}/history",
		"POST /v1/tokens", "GET /v1/tokens", "DELETE /v1/tokens/{id}",
		"GET /healthz", "GET /readyz", "GET /metrics", "GET /api/openapi.json",
	} {
		if !sc.covered[op] {
			notSeen = append(notSeen, op)
		}
	}
	if len(notSeen) > 0 {
		t.Errorf("operations never checked with a 2xx: %v (seen %v)", notSeen, sortedKeys(sc.covered))
	}
}

// --- the docs pages from the running binary -----------------------------------------

func TestDocsPagesAndTheirAssetsComeFromTheBinary(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	for _, page := range []string{"/api/openapi", "/api/redoc"} {
		r := s.do(t, "GET", page, nil).expect(t, 200)
		if !strings.HasPrefix(r.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("%s: content type %q", page, r.Header.Get("Content-Type"))
		}
		root, err := html.Parse(bytes.NewReader(r.Body))
		if err != nil {
			t.Fatalf("%s: %v", page, err)
		}
		var refs []string
		var walk func(*html.Node)
		walk = func(n *html.Node) {
			for _, a := range n.Attr {
				if (n.Data == "script" && a.Key == "src") || (n.Data == "link" && a.Key == "href") || (n.Data == "redoc" && a.Key == "spec-url") {
					refs = append(refs, a.Val)
				}
			}
			for c := n.FirstChild; c != nil; c = c.NextSibling {
				walk(c)
			}
		}
		walk(root)
		if len(refs) < 2 {
			t.Fatalf("%s references %v", page, refs)
		}
		for _, ref := range refs {
			if !strings.HasPrefix(ref, "/") || strings.HasPrefix(ref, "//") {
				t.Errorf("%s loads %q from elsewhere than this server", page, ref)
				continue
			}
			a := s.do(t, "GET", ref, nil)
			if a.Status != 200 || len(a.Body) == 0 {
				t.Errorf("%s: asset %s answered %d with %d bytes", page, ref, a.Status, len(a.Body))
			}
		}
	}
}

// --- graceful stop -----------------------------------------------------------------

// writeLoad creates tickets from several goroutines until stop is closed and a few
// requests in a row have failed to connect. It returns the ids of the tickets whose
// creation was acknowledged (201) and counts of everything else.
type loadResult struct {
	acked        []string
	refused      int // connection errors: never acknowledged
	other        map[int]int
	firstFailure time.Time
}

func writeLoad(t *testing.T, url string, workers int, stop <-chan struct{}, acked *atomic.Int64) loadResult {
	t.Helper()
	var mu sync.Mutex
	res := loadResult{other: map[int]int{}}
	var wg sync.WaitGroup
	var stopping atomic.Bool
	go func() { <-stop; stopping.Store(true) }()
	body, _ := json.Marshal(sourceTicket)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 20 * time.Second}
			failures := 0
			for i := 0; i < 100_000 && failures < 3; i++ {
				req, _ := http.NewRequest("POST", url+"/v1/ticket/", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := c.Do(authorize(req))
				if err != nil {
					mu.Lock()
					res.refused++
					if res.firstFailure.IsZero() {
						res.firstFailure = time.Now()
					}
					mu.Unlock()
					if stopping.Load() {
						failures++
					}
					time.Sleep(5 * time.Millisecond)
					continue
				}
				failures = 0
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mu.Lock()
				if resp.StatusCode == 201 {
					var d ticketDoc
					if json.Unmarshal(raw, &d) == nil && d.ID != "" {
						res.acked = append(res.acked, d.ID)
						acked.Add(1)
					}
				} else {
					res.other[resp.StatusCode]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

// storedStreams returns how many of ids have a TicketOpened event in the store.
func storedStreams(t *testing.T, dsn string, ids []string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(DISTINCT stream_id) FROM events WHERE stream_id = ANY($1::uuid[]) AND type = 'TicketOpened'`, ids).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestStopUnderWriteLoadLosesNoAcknowledgedWrite(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"SHUTDOWN_TIMEOUT": "10s"})
	stop := make(chan struct{})
	done := make(chan loadResult, 1)
	var acked atomic.Int64
	go func() { done <- writeLoad(t, s.URL, 8, stop, &acked) }()
	eventually(t, 30*time.Second, "30 creates acknowledged under load", func() bool { return acked.Load() >= 30 })
	stopStart := time.Now()
	close(stop)
	if err := s.Stop(); err != nil { // cancels run's ctx: the SIGTERM path
		t.Fatalf("run returned %v after the stop", err)
	}
	stopTook := time.Since(stopStart)
	res := <-done
	stored := storedStreams(t, s.DSN, res.acked)
	t.Logf("acknowledged %d creates, %d connection errors after the stop, other answers %v; stop took %s; stored %d",
		len(res.acked), res.refused, res.other, stopTook.Round(time.Millisecond), stored)
	if len(res.acked) < 30 {
		t.Fatalf("only %d creates acknowledged: the load did not run", len(res.acked))
	}
	if stored != len(res.acked) {
		t.Fatalf("%d creates were acknowledged but only %d are in the event store", len(res.acked), stored)
	}
	for code := range res.other {
		if code >= 500 {
			t.Errorf("requests answered %d during the stop: %v", code, res.other)
		}
	}
	if !res.firstFailure.IsZero() && res.firstFailure.Before(stopStart) {
		t.Errorf("a request failed before the stop began")
	}
}

func TestSIGTERMDrainsInFlightRequestsAndExitsZero(t *testing.T) {
	t.Parallel()
	bin := buildTicketd(t)
	addr := freeAddr(t)
	dsn := dbtest.NewDatabase(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"DATABASE_DSN="+dsn, "REDIS_ADDRS="+redisAddrs(), "HTTP_ADDR="+addr, "LOG_LEVEL=info",
		"PG_MAX_CONNS=6", "SHUTDOWN_TIMEOUT=10s", "REDIS_PREFIX=test-sigterm-"+strings.ReplaceAll(uuid.NewString(), "-", ""),
		"AUTH_BOOTSTRAP_TOKEN="+testAdminToken, "DATA_KEY="+dbtest.DataKey)
	for k, v := range noRateLimits {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	url := "http://" + addr
	eventually(t, 30*time.Second, "the binary answers /healthz", func() bool {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})

	stop := make(chan struct{})
	done := make(chan loadResult, 1)
	var acked atomic.Int64
	go func() { done <- writeLoad(t, url, 8, stop, &acked) }()
	eventually(t, 30*time.Second, "30 creates acknowledged under load", func() bool { return acked.Load() >= 30 })
	sent := time.Now()
	close(stop)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var exitErr error
	select {
	case exitErr = <-exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("ticketd still running 30s after SIGTERM\nlogs:\n%s", logs.String())
	}
	took := time.Since(sent)
	res := <-done
	if exitErr != nil {
		var ee *exec.ExitError
		if errors.As(exitErr, &ee) {
			t.Fatalf("ticketd exited with %d after SIGTERM\nlogs (tail):\n%s", ee.ExitCode(), tail(logs.String(), 30))
		}
		t.Fatal(exitErr)
	}
	stored := storedStreams(t, dsn, res.acked)
	t.Logf("SIGTERM: acknowledged %d creates, %d connection errors, other %v; exit 0 after %s; stored %d",
		len(res.acked), res.refused, res.other, took.Round(time.Millisecond), stored)
	if len(res.acked) < 30 {
		t.Fatalf("only %d creates acknowledged: the load did not run", len(res.acked))
	}
	if stored != len(res.acked) {
		t.Fatalf("%d creates were acknowledged but only %d are in the event store", len(res.acked), stored)
	}
	for code := range res.other {
		if code >= 500 {
			t.Errorf("requests answered %d during the stop: %v", code, res.other)
		}
	}
	var msgs []string
	for _, l := range strings.Split(logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			if msg, _ := m["msg"].(string); msg == "shutting down" || msg == "stopped" {
				msgs = append(msgs, msg)
			}
		}
	}
	if strings.Join(msgs, ",") != "shutting down,stopped" {
		t.Errorf("shutdown log lines %v, want shutting down then stopped", msgs)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// sortedKeys is for stable failure messages.
func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// --- configuration files ------------------------------------------------------------

func TestEnvExampleListsEveryVariable(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../.env.example")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, l := range strings.Split(string(raw), "\n") {
		if k, _, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			listed[strings.TrimSpace(k)] = true
		}
	}
	params, err := env.GetFieldParams(&Config{})
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{"POSTGRES_PASSWORD": true, "TICKETD_PORT": true} // compose's own
	for _, p := range params {
		known[p.Key] = true
		if !listed[p.Key] {
			t.Errorf(".env.example lacks %s", p.Key)
		}
	}
	for k := range listed {
		if !known[k] {
			t.Errorf(".env.example lists %s, which nothing reads", k)
		}
	}
	// the defaults it shows are valid: loading them is what an unchanged copy does
	vals := map[string]string{}
	for _, l := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			vals[k] = v
		}
	}
	if _, err := loadConfig(func(k string) string { return vals[k] }); err != nil {
		t.Errorf(".env.example does not load: %v", err)
	}
}

func TestComposeSetsOnlyRealVariables(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	svc, ok := compose.Services["ticketd"]
	if !ok {
		t.Fatal("compose.yaml has no ticketd service")
	}
	params, _ := env.GetFieldParams(&Config{})
	known := map[string]bool{"GOMEMLIMIT": true, "AUTOMEMLIMIT": true} // read by the Go runtime, by automemlimit
	for _, p := range params {
		known[p.Key] = true
	}
	for _, k := range []string{"DATABASE_DSN", "REDIS_ADDRS", "HTTP_ADDR"} {
		if svc.Environment[k] == "" {
			t.Errorf("compose.yaml does not set %s for ticketd", k)
		}
	}
	for k := range svc.Environment {
		if !known[k] {
			t.Errorf("compose.yaml sets %s, which ticketd does not read", k)
		}
	}
	if got := svc.Environment["HTTP_ADDR"]; got != ":8000" {
		t.Errorf("HTTP_ADDR %q: the Dockerfile EXPOSEs 8000", got)
	}
}
