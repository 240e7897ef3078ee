package httpapi

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
)

// quietRoutes are probed and scraped every few seconds: their successes are logged at
// debug level so they do not drown the request log.
var quietRoutes = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// DefaultSlowRequest is Config.SlowRequest's default.
const DefaultSlowRequest = 100 * time.Millisecond

// observe is the one place a request is accounted for: it recovers a handler's panic,
// turns an error into its problem answer (so the status is final), then counts the
// request, times it and writes its log line. It runs inside requestContext, which
// gives the request its id.
//
// Its cost is on every request, the hot GET's included: the metric children come
// resolved from routeMetrics, and the log line (microseconds of JSON and a write) is
// only written for the requests worth reading, see logLevel.
//
// Requests the server refuses before routing (413 body too large, 431 headers too
// large, malformed HTTP) never reach it: fasthttp answers them directly.
func (s *Server) observe(c *fiber.Ctx) error {
	start := time.Now()
	self := c.Route() // this middleware's route: still current after Next if no route matched
	s.metrics.inFlight.Inc()
	defer s.metrics.inFlight.Dec()

	if err := s.nextRecovering(c); err != nil {
		if herr := c.App().ErrorHandler(c, err); herr != nil {
			_ = c.SendStatus(fiber.StatusInternalServerError)
		}
	}
	elapsed := time.Since(start)

	// The label is a registered route's template, never the raw path: cardinality stays
	// bounded by the route table.
	r, route := c.Route(), unmatchedRoute
	if r != self {
		route = r.Path
	}
	if l, ok := c.Locals(streamLogKey).(*streamLog); ok {
		l.begin(s, c, r, route, start) // a stream is logged and counted once, at its end
		return nil
	}
	s.record(c, r, route, start, elapsed)
	return nil
}

// record counts an answered request and writes its log line (see observe); route is
// its route's template, r the route (nil for none).
func (s *Server) record(c *fiber.Ctx, r *fiber.Route, route string, start time.Time, elapsed time.Duration) {
	status := c.Response().StatusCode()
	method := methodLabel(c.Method())
	rm := s.metrics.forRoute(r, method, route)
	rm.requests(status).Inc()
	rm.duration.Observe(elapsed.Seconds())

	level, sampled := s.logLevel(rm, status, elapsed)
	var suppressed int
	if status >= 400 && status < 500 && elapsed < s.cfg.SlowRequest {
		// A client's mistakes cost a line each, up to clientErrorLines a second; past
		// that they go to debug, and the next line logged says how many did.
		var ok bool
		if ok, suppressed = s.clientErrors.allow(start); !ok {
			level = slog.LevelDebug
		}
	}
	ctx := context.Background()
	if !s.cfg.Log.Enabled(ctx, level) {
		return
	}
	attrs := [12]slog.Attr{
		slog.String("method", method),
		slog.String("route", route),
		slog.String("path", c.Path()),
		slog.Int("status", status),
		slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
		slog.String("request_id", RequestID(c.UserContext())),
		slog.String("remote_ip", c.IP()),
		slog.Int("bytes", len(c.Response().Body())),
	}
	n := 8
	if own := ClientRequestID(c.UserContext()); own != "" {
		attrs[n] = slog.String("client_request_id", own)
		n++
	}
	if sampled {
		// one line stands for 1/rate requests like it
		attrs[n] = slog.Float64("sample_rate", s.cfg.AccessLogSample)
		n++
	}
	if elapsed >= s.cfg.SlowRequest {
		attrs[n] = slog.Bool("slow", true)
		n++
	}
	if suppressed > 0 {
		attrs[n] = slog.Int("client_errors_not_logged", suppressed)
		n++
	}
	s.cfg.Log.LogAttrs(ctx, level, "request", attrs[:n]...)
}

// clientErrorLines bounds the 4xx lines logged at info per second: a client sending
// garbage in a loop must not fill the disk (every one is still counted in the metrics).
const clientErrorLines = 50

// lineBudget lets through up to clientErrorLines log lines per wall-clock second and
// counts the rest, to be reported by the next line let through.
type lineBudget struct {
	mu         sync.Mutex
	second     int64
	used       int
	suppressed int
}

// allow reports whether a line may be logged at now, and how many were held back
// since the last one that was (to be reported by this one).
func (b *lineBudget) allow(now time.Time) (ok bool, suppressed int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if sec := now.Unix(); sec != b.second {
		b.second, b.used = sec, 0
	}
	if b.used >= clientErrorLines {
		b.suppressed++
		return false, 0
	}
	b.used++
	suppressed, b.suppressed = b.suppressed, 0
	return true, suppressed
}

// logLevel is the level of a request's log line, and whether it is a sampled one:
//   - 5xx: error; 4xx: info (up to clientErrorLines a second: see lineBudget);
//   - requests taking SlowRequest or longer: info (always);
//   - successful probes and scrapes (/healthz, /readyz, /metrics): debug;
//   - other successful requests that change something (not GET or HEAD): info (always);
//   - successful reads: info for a random AccessLogSample of them (sampled), debug for
//     the rest, so LOG_LEVEL=debug still shows every request.
func (s *Server) logLevel(rm *routeMetrics, status int, elapsed time.Duration) (level slog.Level, sampled bool) {
	switch {
	case status >= 500:
		return slog.LevelError, false
	case status >= 400 || elapsed >= s.cfg.SlowRequest:
		return slog.LevelInfo, false
	case rm.quiet:
		return slog.LevelDebug, false
	case rm.method != fiber.MethodGet && rm.method != fiber.MethodHead:
		return slog.LevelInfo, false
	case s.cfg.AccessLogSample >= 1:
		return slog.LevelInfo, false
	case s.cfg.AccessLogSample > 0 && rand.Float64() < s.cfg.AccessLogSample:
		return slog.LevelInfo, true
	}
	return slog.LevelDebug, false
}

// nextRecovering runs the rest of the chain; a panic becomes a logged 500 instead of
// taking the process down.
func (s *Server) nextRecovering(c *fiber.Ctx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.cfg.Log.Error("panic while serving a request", "panic", fmt.Sprint(r),
				"method", c.Method(), "path", c.Path(), "request_id", RequestID(c.UserContext()),
				"stack", string(debug.Stack()))
			err = problem(fiber.StatusInternalServerError, "internal", "an unexpected error occurred; it has been logged")
		}
	}()
	return c.Next()
}

// methodLabel returns the method as a constant string. c.Method() points into
// fasthttp's reused request buffer; a label (kept by Prometheus for the life of the
// process) must not, or it changes under the counter when the buffer is reused.
func methodLabel(m string) string {
	for _, known := range []string{fiber.MethodGet, fiber.MethodHead, fiber.MethodPost, fiber.MethodPut,
		fiber.MethodDelete, fiber.MethodPatch, fiber.MethodOptions, fiber.MethodConnect, fiber.MethodTrace} {
		if m == known {
			return known
		}
	}
	return "other"
}
