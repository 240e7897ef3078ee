package httpapi

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
)

// quietRoutes are probed and scraped every few seconds: their successes are logged at
// debug level so they do not drown the request log.
var quietRoutes = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// observe is the one place a request is accounted for: it recovers a handler's panic,
// turns an error into its problem answer (so the status is final), then counts the
// request, times it and writes its log line. It runs inside requestContext, which
// gives the request its id.
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
	route := unmatchedRoute
	if r := c.Route(); r != self {
		route = r.Path
	}
	status := c.Response().StatusCode()
	method := methodLabel(c.Method())
	s.metrics.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
	s.metrics.duration.WithLabelValues(method, route).Observe(elapsed.Seconds())

	level := slog.LevelInfo
	switch {
	case status >= 500:
		level = slog.LevelError
	case status < 400 && quietRoutes[route]:
		level = slog.LevelDebug
	}
	ctx := context.Background()
	if s.cfg.Log.Enabled(ctx, level) {
		s.cfg.Log.LogAttrs(ctx, level, "request",
			slog.String("method", method),
			slog.String("route", route),
			slog.String("path", c.Path()),
			slog.Int("status", status),
			slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
			slog.String("request_id", RequestID(c.UserContext())),
			slog.String("remote_ip", c.IP()),
			slog.Int("bytes", len(c.Response().Body())),
		)
	}
	return nil
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
