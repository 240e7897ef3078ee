package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/ticketd/ticketd/httpapi/auth"
	"github.com/ticketd/ticketd/webhooks"
)

// The webhook routes, for admins (auth.PermWebhooks): subscriptions, their secrets
// (shown once: at creation and rotation), pings, and the delivery log. Package webhooks
// does the work; this file decodes and answers.

// Webhooks is what the webhook routes need (webhooks.Service).
type Webhooks interface {
	Create(ctx context.Context, n webhooks.NewEndpoint) (webhooks.Endpoint, string, error)
	List(ctx context.Context) ([]webhooks.Endpoint, error)
	Get(ctx context.Context, id uuid.UUID) (webhooks.Endpoint, error)
	Update(ctx context.Context, id uuid.UUID, p webhooks.Patch) (webhooks.Endpoint, error)
	Delete(ctx context.Context, id uuid.UUID) error
	Ping(ctx context.Context, id uuid.UUID) (webhooks.Delivery, error)
	Rotate(ctx context.Context, id uuid.UUID, grace *time.Duration) (webhooks.Endpoint, string, error)
	Deliveries(ctx context.Context, id uuid.UUID, q webhooks.LogQuery) ([]webhooks.Delivery, bool, error)
	Redeliver(ctx context.Context, id, delivery uuid.UUID) (webhooks.Delivery, error)
}

// Page sizes of the delivery log.
const (
	DefaultDeliveryLimit = 20
	MaxDeliveryLimit     = 100
)

// webhookRoutes registers the webhook routes (cfg.Webhooks is set).
func (s *Server) webhookRoutes(app *fiber.App) {
	need := s.need(auth.PermWebhooks)
	g := app.Group("/v1/webhooks")
	g.Post("/", need, queryParams(s.createWebhook))
	g.Get("/", need, queryParams(s.listWebhooks))
	g.Get("/:id", need, queryParams(s.getWebhook))
	g.Patch("/:id", need, queryParams(s.patchWebhook))
	g.Delete("/:id", need, queryParams(s.deleteWebhook))
	g.Post("/:id/ping", need, queryParams(s.pingWebhook))
	g.Post("/:id/rotate-secret", need, queryParams(s.rotateWebhookSecret))
	g.Get("/:id/deliveries", need, queryParams(s.webhookDeliveries, "status", "limit", "cursor"))
	g.Post("/:id/deliveries/:delivery/redeliver", need, queryParams(s.redeliverWebhook))
}

// webhookRequest is the body of POST /v1/webhooks and PATCH /v1/webhooks/{id}.
type webhookRequest struct {
	URL         string   `json:"url"`
	Events      []string `json:"events"`
	Description string   `json:"description"`
	Enabled     bool     `json:"enabled"`
}

// createdWebhook is the answer to POST /v1/webhooks and rotate-secret: the endpoint
// and its signing secret, shown this once.
type createdWebhook struct {
	webhooks.Endpoint
	Secret string `json:"secret"`
}

// webhookError turns the service's errors into problems; others pass to the table.
func webhookError(err error) error {
	switch {
	case errors.Is(err, webhooks.ErrNotFound):
		return problem(fiber.StatusNotFound, "webhook-not-found", "no webhook with this id")
	case errors.Is(err, webhooks.ErrDeliveryNotFound):
		return problem(fiber.StatusNotFound, "delivery-not-found", "no delivery with this id for this webhook")
	case errors.Is(err, webhooks.ErrDisabled):
		return problem(fiber.StatusConflict, "webhook-disabled", "the webhook is disabled: enable it (PATCH {\"enabled\": true}) first")
	}
	return err // a *ticket.ValidationError(s) is a 422 naming the field (problem table)
}

func uuidParam(c *fiber.Ctx, name, what string) (uuid.UUID, error) {
	raw := c.Params(name)
	id, err := uuid.Parse(raw)
	if err != nil || len(raw) != 36 {
		return uuid.Nil, invalidQuery(name, "must be a "+what+" id (a UUID)")
	}
	return id, nil
}

// decodeWebhook decodes a webhook body and says which fields it has.
func decodeWebhook(c *fiber.Ctx) (webhookRequest, map[string]bool, error) {
	body, err := requestBody(c)
	if err != nil {
		return webhookRequest{}, nil, err
	}
	var req webhookRequest
	bad, err := decodeJSON(body, &req)
	if err != nil {
		return req, nil, err
	}
	if err := fieldsProblem(bad, nil); err != nil {
		return req, nil, err
	}
	var present map[string]json.RawMessage
	_ = json.Unmarshal(body, &present) // decodeJSON took it: one object
	has := map[string]bool{}
	for k := range present {
		has[k] = true
	}
	return req, has, nil
}

func (s *Server) createWebhook(c *fiber.Ctx) error {
	req, has, err := decodeWebhook(c)
	if err != nil {
		return err
	}
	if has["enabled"] {
		return invalidField("enabled", "a new webhook is always enabled; PATCH it to disable it")
	}
	e, secret, err := s.cfg.Webhooks.Create(c.UserContext(), webhooks.NewEndpoint{URL: req.URL, Events: req.Events, Description: req.Description})
	if err != nil {
		return webhookError(err)
	}
	s.cfg.Log.Info("webhook created", "webhook_id", e.ID, "url", e.URL, "by", principal(c).ID)
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set(fiber.HeaderLocation, "/v1/webhooks/"+e.ID.String())
	return c.Status(fiber.StatusCreated).JSON(createdWebhook{Endpoint: e, Secret: secret})
}

func (s *Server) listWebhooks(c *fiber.Ctx) error {
	es, err := s.cfg.Webhooks.List(c.UserContext())
	if err != nil {
		return err
	}
	if es == nil {
		es = []webhooks.Endpoint{}
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(es)
}

func (s *Server) getWebhook(c *fiber.Ctx) error {
	id, err := uuidParam(c, "id", "webhook")
	if err != nil {
		return err
	}
	e, err := s.cfg.Webhooks.Get(c.UserContext(), id)
	if err != nil {
		return webhookError(err)
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(e)
}

func (s *Server) patchWebhook(c *fiber.Ctx) error {
	id, err := uuidParam(c, "id", "webhook")
	if err != nil {
		return err
	}
	req, has, err := decodeWebhook(c)
	if err != nil {
		return err
	}
	var p webhooks.Patch
	if has["url"] {
		p.URL = &req.URL
	}
	if has["events"] {
		p.Events = req.Events
		if p.Events == nil {
			p.Events = []string{}
		}
	}
	if has["description"] {
		p.Description = &req.Description
	}
	if has["enabled"] {
		p.Enabled = &req.Enabled
	}
	e, err := s.cfg.Webhooks.Update(c.UserContext(), id, p)
	if err != nil {
		return webhookError(err)
	}
	s.cfg.Log.Info("webhook changed", "webhook_id", e.ID, "enabled", e.Enabled, "by", principal(c).ID)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(e)
}

func (s *Server) deleteWebhook(c *fiber.Ctx) error {
	id, err := uuidParam(c, "id", "webhook")
	if err != nil {
		return err
	}
	if err := s.cfg.Webhooks.Delete(c.UserContext(), id); err != nil {
		return webhookError(err)
	}
	s.cfg.Log.Info("webhook deleted", "webhook_id", id, "by", principal(c).ID)
	return c.SendStatus(fiber.StatusNoContent)
}

func (s *Server) pingWebhook(c *fiber.Ctx) error {
	id, err := uuidParam(c, "id", "webhook")
	if err != nil {
		return err
	}
	d, err := s.cfg.Webhooks.Ping(c.UserContext(), id)
	if err != nil {
		return webhookError(err)
	}
	return c.Status(fiber.StatusAccepted).JSON(d)
}

// rotateRequest is the optional body of rotate-secret.
type rotateRequest struct {
	// Grace is how long the old secret keeps signing beside the new one, as a Go
	// duration ("1h", "0s": not at all); absent: WEBHOOK_ROTATION_GRACE.
	Grace string `json:"grace"`
}

func (s *Server) rotateWebhookSecret(c *fiber.Ctx) error {
	id, err := uuidParam(c, "id", "webhook")
	if err != nil {
		return err
	}
	var grace *time.Duration
	if len(c.Body()) > 0 {
		body, err := requestBody(c)
		if err != nil {
			return err
		}
		var req rotateRequest
		bad, err := decodeJSON(body, &req)
		if err != nil {
			return err
		}
		if err := fieldsProblem(bad, nil); err != nil {
			return err
		}
		if req.Grace != "" {
			d, err := time.ParseDuration(req.Grace)
			if err != nil || d < 0 || d > 30*24*time.Hour {
				return invalidField("grace", "must be a duration from 0s to 720h, like 1h or 30m")
			}
			grace = &d
		}
	}
	e, secret, err := s.cfg.Webhooks.Rotate(c.UserContext(), id, grace)
	if err != nil {
		return webhookError(err)
	}
	s.cfg.Log.Info("webhook secret rotated", "webhook_id", e.ID, "by", principal(c).ID)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(createdWebhook{Endpoint: e, Secret: secret})
}

// webhookDeliveries answers GET /v1/webhooks/{id}/deliveries: the delivery log, newest
// first, a page of `limit` (default 20, at most 100), the next page in a Link header
// with a signed cursor; `status` keeps one status.
func (s *Server) webhookDeliveries(c *fiber.Ctx) error {
	id, err := uuidParam(c, "id", "webhook")
	if err != nil {
		return err
	}
	limit, err := limitParam(c, DefaultDeliveryLimit, MaxDeliveryLimit)
	if err != nil {
		return err
	}
	q := webhooks.LogQuery{Limit: limit, Status: c.Query("status")}
	switch q.Status {
	case "", webhooks.StatusPending, webhooks.StatusDelivered, webhooks.StatusFailed:
	default:
		return invalidQuery("status", "must be pending, delivered or failed")
	}
	scope := "webhook-deliveries:" + id.String() + ":" + q.Status
	if raw := c.Query("cursor"); raw != "" {
		cur, err := s.cursors.open(raw, scope)
		if err != nil {
			return err
		}
		q.BeforeTime, q.BeforeID = cur.Time, cur.ID
	}
	ds, more, err := s.cfg.Webhooks.Deliveries(c.UserContext(), id, q)
	if err != nil {
		return webhookError(err)
	}
	if ds == nil {
		ds = []webhooks.Delivery{}
	}
	if more {
		last := ds[len(ds)-1]
		v := url.Values{"limit": {strconv.Itoa(limit)}, "cursor": {s.cursors.sign(cursorBody{Scope: scope, Time: last.CreatedAt, ID: last.ID})}}
		if q.Status != "" {
			v.Set("status", q.Status)
		}
		c.Set(fiber.HeaderLink, `</v1/webhooks/`+id.String()+`/deliveries?`+v.Encode()+`>; rel="next"`)
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(ds)
}

func (s *Server) redeliverWebhook(c *fiber.Ctx) error {
	id, err := uuidParam(c, "id", "webhook")
	if err != nil {
		return err
	}
	did, err := uuidParam(c, "delivery", "delivery")
	if err != nil {
		return err
	}
	d, err := s.cfg.Webhooks.Redeliver(c.UserContext(), id, did)
	if err != nil {
		return webhookError(err)
	}
	s.cfg.Log.Info("webhook delivery redelivered", "webhook_id", id, "delivery_id", did, "by", principal(c).ID)
	return c.Status(fiber.StatusAccepted).JSON(d)
}
