package httpapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// logBuffer collects JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// requests returns the access log lines.
func (b *logBuffer) requests(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if m["msg"] == "request" {
			out = append(out, m)
		}
	}
	return out
}

func loggedApp(level slog.Level, cfg Config) (*fiber.App, *logBuffer) {
	logs := &logBuffer{}
	cfg.Log = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: level}))
	return New(cfg), logs
}

func hit(t *testing.T, app *fiber.App, method, path string) {
	t.Helper()
	resp, err := app.Test(httptest.NewRequest(method, path, nil), -1)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// levels counts the access log lines by level and route.
func levels(lines []map[string]any) map[string]int {
	out := map[string]int{}
	for _, l := range lines {
		out[l["level"].(string)+" "+l["method"].(string)+" "+l["route"].(string)]++
	}
	return out
}

func TestAccessLogSamplesFastSuccessfulReadsOnly(t *testing.T) {
	// sample 0: no successful read at info, every error and every slow request is
	app, logs := loggedApp(slog.LevelInfo, Config{AccessLogSample: 0, SlowRequest: time.Hour})
	for i := 0; i < 20; i++ {
		hit(t, app, http.MethodGet, "/api/openapi.json")
		hit(t, app, http.MethodHead, "/api/openapi.json")
	}
	hit(t, app, http.MethodGet, "/v1/ticket/not-a-uuid") // 422
	hit(t, app, http.MethodGet, "/no/such/route")        // 404
	hit(t, app, http.MethodPatch, "/v1/ticket/")         // 405
	got := levels(logs.requests(t))
	want := map[string]int{"INFO GET /v1/ticket/:id": 1, "INFO GET unmatched": 1, "INFO PATCH unmatched": 1}
	if len(got) != len(want) {
		t.Errorf("logged %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("logged %v, want %v", got, want)
		}
	}

	// at debug level the reads that were not sampled are there, at debug
	app, logs = loggedApp(slog.LevelDebug, Config{AccessLogSample: 0})
	hit(t, app, http.MethodGet, "/api/openapi.json")
	if got := levels(logs.requests(t)); got["DEBUG GET /api/openapi.json"] != 1 {
		t.Errorf("at LOG_LEVEL=debug: %v", got)
	}

	// sample 1: every read at info, unmarked
	app, logs = loggedApp(slog.LevelInfo, Config{AccessLogSample: 1})
	for i := 0; i < 5; i++ {
		hit(t, app, http.MethodGet, "/api/openapi.json")
	}
	lines := logs.requests(t)
	if got := levels(lines); got["INFO GET /api/openapi.json"] != 5 {
		t.Errorf("sample 1 logged %v", got)
	}
	if _, ok := lines[0]["sample_rate"]; ok {
		t.Errorf("an unsampled line says sample_rate: %v", lines[0])
	}

	// sample 0.25: about a quarter, each line saying so
	app, logs = loggedApp(slog.LevelInfo, Config{AccessLogSample: 0.25})
	const n = 800
	for i := 0; i < n; i++ {
		hit(t, app, http.MethodGet, "/api/openapi.json")
	}
	lines = logs.requests(t)
	if len(lines) < n/4-80 || len(lines) > n/4+80 { // > 5 standard deviations
		t.Errorf("sample 0.25 of %d reads logged %d", n, len(lines))
	}
	for _, l := range lines {
		if l["sample_rate"] != 0.25 || l["status"] != float64(200) {
			t.Fatalf("sampled line %v", l)
		}
	}

	// a slow request is always logged, marked; probes stay quiet unless slow
	app, logs = loggedApp(slog.LevelInfo, Config{AccessLogSample: 0, SlowRequest: time.Nanosecond})
	hit(t, app, http.MethodGet, "/api/openapi.json")
	lines = logs.requests(t)
	if len(lines) != 1 || lines[0]["slow"] != true || lines[0]["level"] != "INFO" {
		t.Errorf("slow read logged as %v", lines)
	}
	app, logs = loggedApp(slog.LevelInfo, Config{AccessLogSample: 1})
	hit(t, app, http.MethodGet, "/healthz")
	if got := logs.requests(t); len(got) != 0 {
		t.Errorf("a successful probe logged at info: %v", got)
	}
}

func TestMetricChildrenAreResolvedOncePerRouteMethodAndCode(t *testing.T) {
	app := newTestApp()
	for i := 0; i < 3; i++ {
		fetch(t, app, "/v1/ticket/not-a-uuid")
	}
	hit(t, app, http.MethodHead, "/v1/ticket/not-a-uuid")
	hit(t, app, http.MethodDelete, "/v1/ticket/not-a-uuid")
	hit(t, app, http.MethodGet, "/healthz")
	hit(t, app, http.MethodPost, "/no/such/route")
	hit(t, app, http.MethodGet, "/no/such/route")
	// a route added after New is counted under its own template
	app.Get("/later/:x", func(c *fiber.Ctx) error { return c.SendStatus(fiber.StatusTeapot) })
	hit(t, app, http.MethodGet, "/later/1")
	hit(t, app, http.MethodGet, "/later/2")

	body, _ := io.ReadAll(fetch(t, app, "/metrics").Body)
	for _, want := range []string{
		`http_requests_total{method="GET",route="/v1/ticket/:id",status="422"} 3`,
		`http_requests_total{method="HEAD",route="/v1/ticket/:id",status="422"} 1`,
		`http_requests_total{method="DELETE",route="/v1/ticket/:id",status="422"} 1`,
		`http_requests_total{method="GET",route="/healthz",status="200"} 1`,
		`http_requests_total{method="POST",route="unmatched",status="404"} 1`,
		`http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		`http_requests_total{method="GET",route="/later/:x",status="418"} 2`,
		`http_request_duration_seconds_count{method="GET",route="/v1/ticket/:id"} 3`,
		`http_request_duration_seconds_count{method="HEAD",route="/v1/ticket/:id"} 1`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", grepLines(body, "http_requests_total"))
	}
	// the hot path allocates nothing for its metrics once a route's children exist
	reg := NewRegistry()
	s := &Server{metrics: newHTTPMetrics(reg)}
	r := &fiber.Route{Method: fiber.MethodGet, Path: "/v1/ticket/:id"}
	s.metrics.forRoute(r, fiber.MethodGet, r.Path).requests(200)
	if a := testing.AllocsPerRun(100, func() {
		rm := s.metrics.forRoute(r, fiber.MethodGet, r.Path)
		rm.requests(200).Inc()
		rm.duration.Observe(0.001)
	}); a != 0 {
		t.Errorf("%v allocations per request for the metrics", a)
	}
	// a fresh *Route per request (never seen from Fiber's router) is counted all the
	// same, without growing the cache past its bound
	for range maxRouteEntries + 100 {
		fresh := &fiber.Route{Method: fiber.MethodGet, Path: "/fresh"}
		s.metrics.forRoute(fresh, fiber.MethodGet, fresh.Path).requests(200).Inc()
	}
	if n := s.metrics.nroutes.Load(); n > maxRouteEntries {
		t.Errorf("%d cached routes, bound %d", n, maxRouteEntries)
	}
	if got := counted(t, reg, "/fresh"); got != maxRouteEntries+100 {
		t.Errorf("fresh routes counted %v times, want %d", got, maxRouteEntries+100)
	}
}

// counted returns http_requests_total of route (all methods and codes) in reg.
func counted(t *testing.T, reg Registry, route string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "http_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" && l.GetValue() == route {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

func BenchmarkObserveMetrics(b *testing.B) {
	s := &Server{metrics: newHTTPMetrics(NewRegistry())}
	r := &fiber.Route{Method: fiber.MethodGet, Path: "/v1/ticket/:id"}
	b.Run("resolved", func(b *testing.B) {
		for b.Loop() {
			rm := s.metrics.forRoute(r, fiber.MethodGet, r.Path)
			rm.requests(200).Inc()
			rm.duration.Observe(0.001)
		}
	})
	b.Run("WithLabelValues", func(b *testing.B) {
		for b.Loop() {
			s.metrics.requests.WithLabelValues(fiber.MethodGet, r.Path, "200").Inc()
			s.metrics.duration.WithLabelValues(fiber.MethodGet, r.Path).Observe(0.001)
		}
	})
}

// TestClientErrorLinesAreBounded: a client sending bad requests in a loop gets at most
// clientErrorLines info lines a second; the rest go to debug, and the next line logged
// says how many were held back.
func TestClientErrorLinesAreBounded(t *testing.T) {
	app, logs := loggedApp(slog.LevelInfo, Config{SlowRequest: time.Hour})
	for time.Now().Nanosecond() > 50_000_000 { // start just after a second begins
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	const bad = 3 * clientErrorLines
	for range bad {
		hit(t, app, http.MethodGet, "/v1/ticket/not-a-uuid") // 422
	}
	if time.Now().Unix() != start.Unix() {
		t.Skip("the requests did not fit in one second on this machine")
	}
	if n := len(logs.requests(t)); n != clientErrorLines {
		t.Fatalf("%d bad requests within a second gave %d info lines, want %d", bad, n, clientErrorLines)
	}
	// a second later, the next bad request is logged and reports those held back
	for time.Now().Unix() == start.Unix() || time.Since(start) < time.Second {
		time.Sleep(20 * time.Millisecond)
	}
	before := len(logs.requests(t))
	hit(t, app, http.MethodGet, "/v1/ticket/not-a-uuid")
	lines := logs.requests(t)
	if len(lines) != before+1 {
		t.Fatalf("the next bad request was not logged")
	}
	if held, _ := lines[len(lines)-1]["client_errors_not_logged"].(float64); held != bad-clientErrorLines {
		t.Fatalf("the next line does not say how many were held back: %v", lines[len(lines)-1])
	}
}

// TestMethodGuardAnswersAreLoggedAndCounted: a method Fiber does not know (FOO, or a
// lowercase get) is answered before any middleware, and still gets its log line and
// its count, under the method label "other".
func TestMethodGuardAnswersAreLoggedAndCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	app, logs := loggedApp(slog.LevelInfo, Config{SlowRequest: time.Hour, Metrics: reg})
	hit(t, app, "FOO", "/v1/ticket/")
	hit(t, app, "get", "/no/such/route")
	got := levels(logs.requests(t))
	if got["INFO other unmatched"] != 2 {
		t.Fatalf("logged %v, want both answers at info as other/unmatched", got)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var counted float64
	for _, f := range families {
		if f.GetName() != "http_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == "other" {
					counted += m.GetCounter().GetValue()
				}
			}
		}
	}
	if counted != 2 {
		t.Fatalf("http_requests_total{method=\"other\"} = %v, want 2", counted)
	}
}
