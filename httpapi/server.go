// Package httpapi is ticketd's REST interface on Fiber: it decodes requests, hands
// commands to the event store and queries to the read models, and encodes answers and
// RFC 9457 problems. It holds no business rules: those live in package ticket.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/httpapi/auth"
	"github.com/ticketd/ticketd/httpapi/ratelimit"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/ticket"
)

// Reader serves the read endpoints from the read models.
type Reader interface {
	Get(ctx context.Context, id uuid.UUID) (projections.View, error)
	List(ctx context.Context, q pgmodel.ListQuery) ([]projections.Summary, *pgmodel.ListKey, error)
	Comments(ctx context.Context, id uuid.UUID, after, limit int) ([]projections.Comment, bool, error)
}

// RawReader is an optional fast path of a Reader: the ticket document as the JSON GET
// sends (what encoding/json gives for its View) and its version, so a document held
// ready in Redis goes out without being decoded and encoded again. Errors as Get.
type RawReader interface {
	GetRaw(ctx context.Context, id uuid.UUID) (body []byte, version int, err error)
}

// Checker reports whether a dependency is usable, for /readyz.
type Checker func(ctx context.Context) error

// Config is what the HTTP layer needs.
type Config struct {
	Store  *eventstore.Store
	Reader Reader
	Log    *slog.Logger
	// CursorKey signs list cursors. Instances behind one load balancer must share it
	// (cmd/ticketd keeps one in Postgres when CURSOR_SECRET is unset). Empty: a random
	// key of this server's own, for tests and single instances.
	CursorKey []byte
	// BodyLimit is the largest request body accepted, in bytes (413 above).
	BodyLimit int
	// RequestTimeout bounds the work of one request (503 when a dependency is too slow).
	RequestTimeout time.Duration
	// IdempotencyTTL is how long a response stored under an Idempotency-Key answers
	// retries (DefaultIdempotencyTTL when 0).
	IdempotencyTTL time.Duration
	// OnCommitted, if set, is called after a command appended events and before the
	// client is answered, with those events (the Redis read model writes them through,
	// so a GET never sees an older state than was acknowledged). It must be bounded in
	// time and must not fail the request.
	OnCommitted func(ctx context.Context, events []ticket.Event)
	// Erase, when set, serves DELETE /v1/subjects/{email} (admins): it erases the data
	// subject of an email everywhere (cmd/ticketd: the event store's EraseSubject and
	// the scrub of the webhook delivery log), returning eventstore.ErrUnknownSubject for
	// an email without stored data.
	Erase func(ctx context.Context, email, by, reason string, md eventstore.Metadata) (eventstore.Erasure, error)
	// Postgres and Redis are checked by /readyz; Redis is reported, not required.
	Postgres Checker
	Redis    Checker
	// RedisMode is "cluster" or "single", reported by /readyz.
	RedisMode string
	// Metrics receives the HTTP metrics and is served at /metrics; nil: a fresh
	// NewRegistry.
	Metrics Registry
	// AccessLogSample is the fraction (0..1) of successful GET and HEAD requests that
	// get an info-level access log line, marked with sample_rate; the others are logged
	// at debug level. Errors (4xx, 5xx), slow requests (SlowRequest) and every other
	// method are always logged. 0: none of those reads; 1: all of them.
	AccessLogSample float64
	// SlowRequest: a request that takes at least this long is always logged, marked
	// slow (DefaultSlowRequest when 0).
	SlowRequest time.Duration
	// ReplayConcurrency caps the replays of past versions (GET ?version=N) running at
	// once; beyond it a replay is answered 429 with Retry-After. 0: GOMAXPROCS/2, at
	// least 1: a replay of a long stream keeps about a core busy between ticketd and
	// Postgres, and under 4 worst-case replayers a 2-core host kept 0.46× its GET rate
	// with 1 slot, 0.04× with 4.
	ReplayConcurrency int
	// ReplayCacheBytes is the budget of the cache of replayed versions (a version of a
	// stream never changes). 0: DefaultReplayCacheBytes; negative: no cache.
	ReplayCacheBytes int
	// HistoryPageBytes caps a history page's events (their stored JSON) besides its
	// limit; a page holds at least one event. 0: DefaultHistoryPageBytes.
	HistoryPageBytes int
	// PageBytes caps a page of the list or of a ticket's comments in bytes of its JSON,
	// besides its limit; a page holds at least one item. 0: DefaultPageBytes.
	PageBytes int
	// Auth verifies the bearer credential of every /v1 request (and /metrics). nil: no
	// authentication, every request is an admin ("anonymous"), and /readyz says so;
	// cmd/ticketd passes nil only with AUTH=off, for local development.
	Auth auth.Verifier
	// JWT verifies bearer credentials shaped like a JWT (auth.LooksLikeJWT); nil: JWT
	// login is off and such a credential is a 401. Its Health is reported by /readyz.
	JWT JWTVerifier
	// Limiter limits each principal's /v1 requests, and failed authentications per
	// client address; nil: no limits.
	Limiter *ratelimit.Limiter
	// Tokens serves /v1/tokens (admins); nil: those routes answer 404.
	Tokens TokenStore
	// Streams configures the live event streams (GET /v1/ticket/{id}/events, events.go).
	Streams StreamConfig
	// Webhooks serves /v1/webhooks (admins; httpapi/webhooks.go); nil: no such routes.
	Webhooks Webhooks
}

// Page sizes of the list and comment endpoints.
const (
	DefaultLimit = 20
	MaxLimit     = 100
)

// Server holds the handlers' dependencies.
type Server struct {
	cfg     Config
	cursors cursors
	metrics *httpMetrics
	// replays bounds the replays of past versions; versions caches their answers.
	replays  replaySlots
	versions *versionCache
	// clientErrors bounds the 4xx lines of the access log.
	clientErrors lineBudget
	// streams counts the open live event streams (events.go).
	streams *streams
}

// New returns the Fiber app serving the whole API.
func New(cfg Config) *fiber.App {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.BodyLimit <= 0 {
		cfg.BodyLimit = 64 << 10
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.IdempotencyTTL <= 0 {
		cfg.IdempotencyTTL = DefaultIdempotencyTTL
	}
	if len(cfg.CursorKey) == 0 {
		cfg.CursorKey = make([]byte, 32)
		_, _ = rand.Read(cfg.CursorKey)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewRegistry()
	}
	if cfg.SlowRequest <= 0 {
		cfg.SlowRequest = DefaultSlowRequest
	}
	if cfg.ReplayConcurrency <= 0 {
		cfg.ReplayConcurrency = max(1, runtime.GOMAXPROCS(0)/2)
	}
	if cfg.ReplayCacheBytes == 0 {
		cfg.ReplayCacheBytes = DefaultReplayCacheBytes
	}
	if cfg.HistoryPageBytes <= 0 {
		cfg.HistoryPageBytes = DefaultHistoryPageBytes
	}
	if cfg.PageBytes <= 0 {
		cfg.PageBytes = DefaultPageBytes
	}
	s := &Server{cfg: cfg, cursors: cursors{key: cfg.CursorKey}, metrics: newHTTPMetrics(cfg.Metrics),
		replays: make(replaySlots, cfg.ReplayConcurrency), versions: newVersionCache(cfg.ReplayCacheBytes)}
	s.streams = newStreams(cfg.Streams, cfg.Metrics)
	app := fiber.New(fiber.Config{
		AppName:        "ticketd",
		BodyLimit:      cfg.BodyLimit,
		ReadBufferSize: 16 << 10, // also the header size limit (431 above it)
		// a connection's 16 KiB read buffer goes back to the pool once its request is
		// read, instead of staying with the connection: a live event stream (SSE) holds
		// its connection for hours, and 1,000 of them held 16 MB of buffers they never
		// read from again (twice that in RSS between collections)
		ReduceMemoryUsage:     true,
		ErrorHandler:          errorHandler(cfg.Log, cfg.BodyLimit),
		JSONEncoder:           eventstore.EncodeJSON, // no HTML escaping, as stored
		CaseSensitive:         true,                  // /V1/TICKET/ is no route, as in the spec
		DisableStartupMessage: true,
		ReadTimeout:           30 * time.Second,
		WriteTimeout:          30 * time.Second,
		// a keep-alive connection waiting for its next request holds a descriptor and
		// buffers: close it in tens of seconds (cmd/ticketd sets IDLE_TIMEOUT, and
		// MAX_CONNS as fasthttp's Concurrency, on app.Server())
		IdleTimeout: 30 * time.Second,
	})
	app.Use(s.requestContext)
	app.Use(s.observe)
	app.Get("/healthz", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"status": "ok"}) })
	app.Get("/readyz", s.ready)
	// /metrics is scraped by a monitoring system: authenticated, not rate limited
	app.Get("/metrics", s.guard(auth.PermMetrics, false), metricsHandler(cfg.Metrics))
	registerDocs(app)

	// Every route names its permission (httpapi/auth; a requester is further bound to
	// its own tickets in the handlers: ownTicket, the list's email) and the query
	// parameters it takes; any other is refused (queryParams).
	v1 := app.Group("/v1/ticket")
	v1.Get("/", s.need(auth.PermRead), queryParams(s.list, "status", "email", "created_by", "limit", "cursor"))
	v1.Post("/", s.need(auth.PermCreate), queryParams(s.create))
	v1.Get("/:id", s.need(auth.PermRead), queryParams(s.get, "version"))
	v1.Put("/:id", s.need(auth.PermChangeStatus), queryParams(s.changeStatus))
	v1.Delete("/:id", s.need(auth.PermDelete), queryParams(s.delete))
	v1.Post("/:id/comments", s.need(auth.PermComment), queryParams(s.addComment))
	v1.Get("/:id/comments", s.need(auth.PermRead), queryParams(s.listComments, "limit", "cursor"))
	v1.Get("/:id/history", s.need(auth.PermHistory), queryParams(s.history, "limit", "cursor"))
	v1.Get("/:id/events", s.need(auth.PermRead), queryParams(s.events, "after"))
	if cfg.Tokens != nil {
		tokens := app.Group("/v1/tokens")
		tokens.Post("/", s.need(auth.PermTokens), queryParams(s.createToken))
		tokens.Get("/", s.need(auth.PermTokens), queryParams(s.listTokens))
		tokens.Delete("/:id", s.need(auth.PermTokens), queryParams(s.revokeToken))
	}
	if cfg.Webhooks != nil {
		s.webhookRoutes(app)
	}
	if cfg.Erase != nil {
		app.Delete("/v1/subjects/:email", s.need(auth.PermErase), queryParams(s.eraseSubject, "reason"))
	}
	guardMethods(app, s)
	return app
}

type ctxKey int

const (
	requestIDKey ctxKey = iota
	clientRequestIDKey
)

// requestContext gives every request an id of the server's own, 32 random hex digits,
// answered in X-Request-ID and written in the log line and in the metadata of the
// events the request records, and bounds the request's work with a deadline (whose
// timer is made only if something waits on it: see requestCtx). A client's
// X-Request-ID is never the request's id (clients could make several requests share
// one, and so blur the audit trail): a sane one is kept beside it, as the client's.
func (s *Server) requestContext(c *fiber.Ctx) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	rid := hex.EncodeToString(b[:])
	c.Set("X-Request-ID", rid)
	ctx := context.WithValue(context.Background(), requestIDKey, rid)
	if own := c.Get("X-Request-ID"); validRequestID(own) {
		ctx = context.WithValue(ctx, clientRequestIDKey, own)
	}
	rc := newRequestCtx(ctx, time.Now().Add(s.cfg.RequestTimeout))
	defer rc.end()
	c.SetUserContext(rc)
	return c.Next()
}

func validRequestID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// RequestID returns the request id carried by ctx, if any: the server's own.
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(requestIDKey).(string)
	return s
}

// ClientRequestID returns the X-Request-ID the client sent with the request carried
// by ctx, if it was sane (1-128 visible ASCII characters); "" otherwise.
func ClientRequestID(ctx context.Context) string {
	s, _ := ctx.Value(clientRequestIDKey).(string)
	return s
}

// metadata is what the request's events record besides their data: the principal that
// authenticated it (whatever names the body gives: those stay the events' display
// names; with AUTH=off the principal "anonymous", role admin), the server's request id,
// and the ids the client sent (X-Request-ID, X-Correlation-ID) in fields of their own.
func (s *Server) metadata(c *fiber.Ctx) eventstore.Metadata {
	corr := c.Get("X-Correlation-ID")
	if !validRequestID(corr) {
		corr = "" // like a bad X-Request-ID: junk is not recorded
	}
	md := eventstore.Metadata{RequestID: RequestID(c.UserContext()), ClientRequestID: ClientRequestID(c.UserContext()), CorrelationID: corr}
	if p := principal(c); p.ID != "" {
		md.Principal = &eventstore.Principal{ID: p.ID, Name: p.Name, Role: string(p.Role)}
	}
	return md
}

// committed runs the OnCommitted hook for a command that appended events.
func (s *Server) committed(c *fiber.Ctx, res eventstore.Result) {
	if s.cfg.OnCommitted != nil && len(res.Records) > 0 {
		s.cfg.OnCommitted(c.UserContext(), projections.Events(res.Records))
	}
}

// ticketID parses the :id path parameter.
func ticketID(c *fiber.Ctx) (uuid.UUID, error) {
	raw := c.Params("id")
	id, err := uuid.Parse(raw)
	if err != nil || len(raw) != 36 {
		return uuid.Nil, invalidQuery("id", "must be a UUID like 01936f1e-7c4a-7000-8000-000000000000")
	}
	return id, nil
}

// queryParams runs h only if the request's query parameters are among names, each
// given at most once. Otherwise it answers one 422 naming every offending parameter: an
// unknown one (a typo such as ?size=2 must not quietly answer the first page, nor a
// ?dry_run=1 a real DELETE), and one given twice (?limit=5&limit=50: which one the
// server took would be a guess). Names are case-sensitive, like the body's fields.
func queryParams(h fiber.Handler, names ...string) fiber.Handler {
	takes := map[string]bool{}
	for _, n := range names {
		takes[n] = true
	}
	unknown := "is not a query parameter of this route, which takes none"
	if len(names) > 0 {
		unknown = "is not a query parameter of this route, which takes " + strings.Join(names, ", ") + " (names are case-sensitive)"
	}
	return func(c *fiber.Ctx) error {
		args := c.Context().QueryArgs()
		if args.Len() == 0 {
			return h(c)
		}
		var errs []FieldError
		seen := map[string]bool{}
		args.VisitAll(func(k, _ []byte) {
			key := string(k)
			if seen[key] {
				return
			}
			seen[key] = true
			switch {
			case !takes[key]:
				errs = append(errs, FieldError{Field: clip(key), Reason: unknown})
			case len(args.PeekMulti(key)) > 1:
				errs = append(errs, FieldError{Field: key, Reason: "must be given once"})
			}
		})
		if len(errs) > 0 {
			return invalidFields(errs)
		}
		return h(c)
	}
}

func invalidQuery(param, reason string) *Problem {
	return invalidField(param, reason)
}

func setETag(c *fiber.Ctx, version int) {
	c.Set(fiber.HeaderETag, `"`+strconv.Itoa(version)+`"`)
}

// limitParam parses ?limit=, defaulting to def and refusing (not clamping) values
// outside 1..max.
func limitParam(c *fiber.Ctx, def, max int) (int, error) {
	raw := c.Query("limit")
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > max {
		return 0, invalidQuery("limit", "must be a whole number from 1 to "+strconv.Itoa(max))
	}
	return n, nil
}

// afterParam returns the version a ?cursor= of the given scope continues after (0
// without a cursor), or a 422 problem for a cursor this listing did not issue.
func (s *Server) afterParam(c *fiber.Ctx, scope string) (int, error) {
	raw := c.Query("cursor")
	if raw == "" {
		return 0, nil
	}
	cb, err := s.cursors.open(raw, scope)
	if err != nil {
		return 0, err
	}
	return cb.After, nil
}

type createRequest struct {
	Title       string `json:"title"`
	Description string `json:"description"`
	Email       string `json:"email"`
	CreatedBy   string `json:"created_by"`
	Status      string `json:"status"`
}

func (s *Server) create(c *fiber.Ctx) error {
	body, err := requestBody(c)
	if err != nil {
		return err
	}
	cmd, err := parseCreate(body)
	if err != nil {
		return err
	}
	if email, ok := requester(c); ok && cmd.Email != email {
		return invalidField("email", "a requester creates tickets only as its own email, "+email)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	render := func(res eventstore.Result) (answer, error) {
		v, err := projections.FoldAll(projections.View{}, projections.Events(res.Records)...)
		if err != nil {
			return answer{}, err
		}
		return jsonAnswer(fiber.StatusCreated, v, map[string]string{
			fiber.HeaderLocation: "/v1/ticket/" + id.String(),
			fiber.HeaderETag:     `"` + strconv.Itoa(res.Ticket.Version()) + `"`,
		})
	}
	k, err := s.idempotency(c, "POST /v1/ticket/", cmd, render)
	if err != nil {
		return err
	}
	res, err := s.cfg.Store.Handle(c.UserContext(), id, eventstore.Options{Create: true, Metadata: s.metadata(c), Idempotency: k.opt},
		func(t *ticket.Ticket, now time.Time) error { return t.Open(cmd, now) })
	if err != nil {
		return err
	}
	a, replayed, err := k.answer(res)
	if err != nil {
		return err
	}
	if !replayed {
		s.committed(c, res)
	}
	return send(c, a, replayed)
}

func (s *Server) get(c *fiber.Ctx) error {
	id, err := ticketID(c)
	if err != nil {
		return err
	}
	if err := s.ownTicket(c, id); err != nil {
		return err
	}
	if wantsVersion(c) {
		return s.getAtVersion(c, id)
	}
	if _, isRequester := requester(c); isRequester {
		// ownTicket read the view already; a requester's reads skip the raw fast path
	} else if raw, ok := s.cfg.Reader.(RawReader); ok {
		body, version, err := raw.GetRaw(c.UserContext(), id)
		if err != nil {
			return err
		}
		if notModified(c, version) {
			return nil
		}
		setETag(c, version)
		c.Response().Header.SetContentType(fiber.MIMEApplicationJSON)
		c.Response().SetBodyRaw(body)
		return nil
	}
	v, err := s.cfg.Reader.Get(c.UserContext(), id)
	if err != nil {
		return err
	}
	if notModified(c, v.Version) {
		return nil
	}
	setETag(c, v.Version)
	return c.JSON(v)
}

type statusRequest struct {
	Status    string `json:"status"`
	UpdatedBy string `json:"updated_by"`
}

type statusResponse struct {
	ID        uuid.UUID     `json:"id"`
	Status    ticket.Status `json:"status"`
	UpdatedBy string        `json:"updated_by"`
	Version   int           `json:"version"`
}

// ticketCommand reads what a command on one existing ticket starts with, in the order
// its refusals are answered: the ticket id of the path, the body parsed by parse, the
// caller's right to the ticket, then allowed (nil: no check of its own), then If-Match.
func ticketCommand[C any](s *Server, c *fiber.Ctx, parse func([]byte) (C, error), allowed func(C) error) (id uuid.UUID, cmd C, im *int, err error) {
	if id, err = ticketID(c); err != nil {
		return id, cmd, nil, err
	}
	body, err := requestBody(c)
	if err != nil {
		return id, cmd, nil, err
	}
	if cmd, err = parse(body); err != nil {
		return id, cmd, nil, err
	}
	if err = s.ownTicket(c, id); err != nil {
		return id, cmd, nil, err
	}
	if allowed != nil {
		if err = allowed(cmd); err != nil {
			return id, cmd, nil, err
		}
	}
	im, err = ifMatch(c)
	return id, cmd, im, err
}

func (s *Server) changeStatus(c *fiber.Ctx) error {
	id, cmd, im, err := ticketCommand(s, c, parseStatus, func(cmd ticket.ChangeStatus) error {
		if _, ok := requester(c); ok && ticket.Status(cmd.Status) != ticket.StatusClosed {
			return forbidden(auth.PermChangeStatus, "a requester may only close its tickets (status closed)")
		}
		return nil
	})
	if err != nil {
		return err
	}
	res, err := s.cfg.Store.Handle(c.UserContext(), id, eventstore.Options{IfMatch: im, Metadata: s.metadata(c)},
		func(t *ticket.Ticket, now time.Time) error { return t.ChangeStatus(cmd, now) })
	if err != nil {
		return s.preconditionFailed(c, id, err)
	}
	s.committed(c, res)
	out := statusResponse{ID: id, Status: res.Ticket.Status(), Version: res.Ticket.Version()}
	if n := len(res.Records); n > 0 {
		out.UpdatedBy = res.Records[n-1].Data.(ticket.StatusChanged).UpdatedBy
	} else {
		// A no-op: who last set the status is the read side's knowledge.
		v, err := s.cfg.Reader.Get(c.UserContext(), id)
		if err != nil {
			return err
		}
		out.UpdatedBy = v.UpdatedBy
	}
	setETag(c, out.Version)
	return c.JSON(out)
}

func (s *Server) delete(c *fiber.Ctx) error {
	id, err := ticketID(c)
	if err != nil {
		return err
	}
	cmd := ticket.DeleteTicket{DeletedBy: c.Get("X-Actor")}
	if err := cmd.Validate(); err != nil {
		return err
	}
	im, err := ifMatch(c)
	if err != nil {
		return err
	}
	res, err := s.cfg.Store.Handle(c.UserContext(), id, eventstore.Options{IfMatch: im, Metadata: s.metadata(c)},
		func(t *ticket.Ticket, now time.Time) error { return t.Delete(cmd, now) })
	if err != nil {
		return s.preconditionFailed(c, id, err)
	}
	s.committed(c, res)
	return c.SendStatus(fiber.StatusNoContent)
}

type commentRequest struct {
	Body      string `json:"body"`
	Email     string `json:"email"`
	CreatedBy string `json:"created_by"`
}

func (s *Server) addComment(c *fiber.Ctx) error {
	id, cmd, im, err := ticketCommand(s, c, parseComment, nil)
	if err != nil {
		return err
	}
	render := func(res eventstore.Result) (answer, error) {
		r := res.Records[len(res.Records)-1]
		cm, ok := projections.CommentOf(r.Event)
		if !ok {
			return answer{}, fmt.Errorf("comment command recorded %s", r.Type())
		}
		return jsonAnswer(fiber.StatusCreated, cm, map[string]string{
			fiber.HeaderETag: `"` + strconv.Itoa(r.Version) + `"`,
		})
	}
	// the request is hashed before the comment gets its id: a retry gets another id
	k, err := s.idempotency(c, "POST /v1/ticket/"+id.String()+"/comments", cmd, render)
	if err != nil {
		return err
	}
	if cmd.ID, err = uuid.NewV7(); err != nil {
		return err
	}
	res, err := s.cfg.Store.Handle(c.UserContext(), id, eventstore.Options{IfMatch: im, Metadata: s.metadata(c), Idempotency: k.opt},
		func(t *ticket.Ticket, now time.Time) error { return t.AddComment(cmd, now) })
	if err != nil {
		return s.preconditionFailed(c, id, err)
	}
	a, replayed, err := k.answer(res)
	if err != nil {
		return err
	}
	if !replayed {
		s.committed(c, res)
	}
	return send(c, a, replayed)
}

func (s *Server) listComments(c *fiber.Ctx) error {
	id, err := ticketID(c)
	if err != nil {
		return err
	}
	if err := s.ownTicket(c, id); err != nil {
		return err
	}
	limit, err := limitParam(c, DefaultLimit, MaxLimit)
	if err != nil {
		return err
	}
	scope := "comments:" + id.String()
	after, err := s.afterParam(c, scope)
	if err != nil {
		return err
	}
	page, more, err := s.cfg.Reader.Comments(c.UserContext(), id, after, limit)
	if err != nil {
		return err
	}
	body, n, err := encodePage(page, s.cfg.PageBytes)
	if err != nil {
		return err
	}
	if more || n < len(page) {
		q := url.Values{"limit": {strconv.Itoa(limit)}, "cursor": {s.cursors.sign(cursorBody{Scope: scope, After: page[n-1].Version})}}
		c.Set(fiber.HeaderLink, `</v1/ticket/`+id.String()+`/comments?`+q.Encode()+`>; rel="next"`)
	}
	return sendJSON(c, body)
}

func (s *Server) list(c *fiber.Ctx) error {
	limit, err := limitParam(c, DefaultLimit, MaxLimit)
	if err != nil {
		return err
	}
	q := pgmodel.ListQuery{Limit: limit, Email: c.Query("email"), CreatedBy: c.Query("created_by")}
	if raw := c.Query("status"); raw != "" {
		st, err := ticket.ParseStatus("status", raw)
		if err != nil {
			return err
		}
		q.Status = st
	}
	if err := queryText("email", q.Email, ticket.MaxEmail); err != nil {
		return err
	}
	if err := queryText("created_by", q.CreatedBy, ticket.MaxName); err != nil {
		return err
	}
	if email, ok := requester(c); ok {
		// A requester lists only its tickets: the filter is theirs whatever the query
		// says, and so is the cursor's scope (a cursor of a wider listing is refused).
		if q.Email != "" && q.Email != email {
			return invalidQuery("email", "a requester lists only its own tickets, "+email)
		}
		q.Email = email
	}
	scope := "list:" + string(q.Status) + "\x00" + q.Email + "\x00" + q.CreatedBy
	if raw := c.Query("cursor"); raw != "" {
		cb, err := s.cursors.open(raw, scope)
		if err != nil {
			return err
		}
		q.After = &pgmodel.ListKey{CreatedAt: cb.Time, ID: cb.ID}
	}
	items, next, err := s.cfg.Reader.List(c.UserContext(), q)
	if err != nil {
		return err
	}
	body, n, err := encodePage(items, s.cfg.PageBytes)
	if err != nil {
		return err
	}
	if n < len(items) {
		next = &pgmodel.ListKey{CreatedAt: items[n-1].CreatedAt, ID: items[n-1].ID}
	}
	if next != nil {
		v := url.Values{"limit": {strconv.Itoa(limit)}}
		if q.Status != "" {
			v.Set("status", string(q.Status))
		}
		if q.Email != "" {
			v.Set("email", q.Email)
		}
		if q.CreatedBy != "" {
			v.Set("created_by", q.CreatedBy)
		}
		v.Set("cursor", s.cursors.sign(cursorBody{Scope: scope, Time: next.CreatedAt, ID: next.ID}))
		c.Set(fiber.HeaderLink, `</v1/ticket/?`+v.Encode()+`>; rel="next"`)
	}
	return sendJSON(c, body)
}
