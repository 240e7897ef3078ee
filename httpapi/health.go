package httpapi

import (
	"context"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/ticketd/ticketd/eventstore"
)

// readyTimeout bounds each dependency check of /readyz.
const readyTimeout = 2 * time.Second

// ready answers /readyz: 200 when Postgres answers, else a 503 problem. Redis is
// reported (ok or unavailable, cluster or single) but does not decide readiness: every
// read falls back to Postgres without it.
func (s *Server) ready(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(c.UserContext(), readyTimeout)
	defer cancel()
	pg := "ok"
	if s.cfg.Postgres != nil {
		if err := s.cfg.Postgres(ctx); err != nil {
			pg = "unavailable"
		}
	}
	rd, mode := "not configured", "none"
	if s.cfg.Redis != nil {
		rd, mode = "ok", s.cfg.RedisMode
		if mode == "" {
			mode = "single"
		}
		rctx, rcancel := context.WithTimeout(c.UserContext(), readyTimeout)
		defer rcancel()
		if err := s.cfg.Redis(rctx); err != nil {
			rd = "unavailable"
		}
	}
	authState := "on"
	if s.cfg.Auth == nil {
		authState = "off: every request is served as an admin (AUTH=off, for local development only)"
	}
	// JWT login, when on, is reported and never decides readiness: API tokens work
	// without the provider, and an instance taken out of rotation would not fetch its
	// keys sooner. The fetch's error stays in the log: /readyz is open to anyone.
	jwt := ""
	if s.cfg.JWT != nil {
		jwt = "ok"
		if s.cfg.JWT.Health() != nil {
			jwt = "unavailable: the provider's keys could not be fetched; JWTs are answered 503, API tokens work"
		}
	}
	if pg == "ok" {
		body := fiber.Map{"status": "ok", "postgres": pg, "redis": rd, "redis_mode": mode, "auth": authState}
		if jwt != "" {
			body["jwt"] = jwt
		}
		return c.JSON(body)
	}
	p := problem(fiber.StatusServiceUnavailable, "not-ready", "postgres: unavailable")
	p.Instance = c.Path()
	body, _ := eventstore.EncodeJSON(struct {
		*Problem
		Postgres  string `json:"postgres"`
		Redis     string `json:"redis"`
		RedisMode string `json:"redis_mode"`
		Auth      string `json:"auth"`
		JWT       string `json:"jwt,omitempty"`
	}{p, pg, rd, mode, authState, jwt})
	c.Set(fiber.HeaderContentType, "application/problem+json")
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Status(fiber.StatusServiceUnavailable).Send(body)
}
