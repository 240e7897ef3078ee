package httpapi

import (
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/httpapi/ratelimit"
	"github.com/ticketd/ticketd/ticket"
)

// Problem is an RFC 9457 problem details body. Code is a stable machine-readable name
// for the kind of problem; the extensions carry what a client needs to act on it.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	Code     string `json:"code"`
	// Errors names the offending fields of a validation problem.
	Errors []FieldError `json:"errors,omitempty"`
	// CurrentStatus and AllowedStatuses explain a refused transition or comment (409).
	// AllowedStatuses is sent whenever it is set, empty too: a closed ticket has no
	// next status, and `[]` says so where an absent field would leave a client guessing.
	CurrentStatus   ticket.Status   `json:"current_status,omitempty"`
	AllowedStatuses []ticket.Status `json:"allowed_statuses,omitzero"`
	// CurrentVersion is the ticket's version on a failed If-Match (412).
	CurrentVersion int `json:"current_version,omitempty"`
	// Permission names the permission the principal's role lacks (403).
	Permission string `json:"permission,omitempty"`
}

// FieldError says which field is wrong and why.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

func (p *Problem) Error() string { return p.Code + ": " + p.Detail }

// ProblemTypeBase prefixes every problem code to form the problem's type URI.
const ProblemTypeBase = "urn:ticketd:problem:"

// problem builds a Problem with the standard title of its status.
func problem(status int, code, detail string) *Problem {
	return &Problem{Type: ProblemTypeBase + code, Title: http.StatusText(status), Status: status, Code: code, Detail: detail}
}

func invalidField(field, reason string) *Problem {
	return invalidFields([]FieldError{{Field: field, Reason: reason}})
}

// invalidFields is the 422 problem naming every offending field. Its detail is
// "field: reason" of each, joined by "; ": with one field the detail it always was, and
// a client that only reads the detail still learns the first field first.
func invalidFields(errs []FieldError) *Problem {
	parts := make([]string, len(errs))
	for i, e := range errs {
		parts[i] = e.Field + ": " + e.Reason
	}
	p := problem(fiber.StatusUnprocessableEntity, "validation-failed", strings.Join(parts, "; "))
	p.Errors = errs
	return p
}

// toProblem is the one table from error kinds to HTTP statuses. Errors that are no
// known kind are logged and answered with a bare 500: their text never reaches a client.
func toProblem(c *fiber.Ctx, err error, log *slog.Logger) *Problem {
	var p *Problem
	var ves ticket.ValidationErrors
	var ve *ticket.ValidationError
	var te *ticket.TransitionError
	var fe *fiber.Error
	var rl *ratelimit.Error
	switch {
	case errors.As(err, &p):
		return p
	case errors.As(err, &rl):
		// ratelimit.Enforce has set RateLimit-* and Retry-After on the response
		return problem(fiber.StatusTooManyRequests, ratelimit.ProblemCode, rl.Detail())
	case errors.As(err, &ves) && len(ves) > 0:
		fes := make([]FieldError, len(ves))
		for i, v := range ves {
			fes[i] = FieldError{Field: v.Field, Reason: v.Reason}
		}
		return invalidFields(fes)
	case errors.As(err, &ve):
		return invalidField(ve.Field, ve.Reason)
	case errors.As(err, &te):
		code := "transition-refused"
		if te.Wanted == "" {
			code = "ticket-closed"
		}
		detail := te.Error()
		if te.Current == ticket.StatusClosed {
			// the domain's "(allowed: )" tells a client nothing: say why
			detail = "the ticket is closed, and closed is final: it takes no status change and no comment"
			if te.Wanted != "" {
				detail = "cannot change status from closed to " + string(te.Wanted) + ": closed is final, no status change or comment is accepted"
			}
		}
		p = problem(fiber.StatusConflict, code, detail)
		p.CurrentStatus = te.Current
		p.AllowedStatuses = te.Allowed
		if p.AllowedStatuses == nil {
			p.AllowedStatuses = []ticket.Status{}
		}
		return p
	case errors.Is(err, eventstore.ErrIdempotencyKeyReused):
		p = problem(fiber.StatusUnprocessableEntity, "idempotency-key-reused",
			"this Idempotency-Key was already used for a different request; send a new key with a new request")
		p.Errors = []FieldError{{Field: HeaderIdempotencyKey, Reason: "was already used for a different request"}}
		return p
	case errors.Is(err, ticket.ErrNotFound):
		return problem(fiber.StatusNotFound, "ticket-not-found", "no ticket with this id (it may have been deleted)")
	case errors.Is(err, ticket.ErrPrecondition):
		return problem(fiber.StatusPreconditionFailed, "precondition-failed", "the ticket changed since the version in If-Match; fetch it again")
	case errors.Is(err, ticket.ErrConflict):
		return problem(fiber.StatusConflict, "conflict", "the request conflicts with the ticket's state")
	case errors.Is(err, eventstore.ErrConcurrency):
		// Still clashing after Handle's retries: writers crowd this ticket. Transient,
		// like an unreachable database: retry later.
		log.Warn("write contention", "err", err, "path", c.Path())
		return problem(fiber.StatusServiceUnavailable, "contention", "too many concurrent changes to this ticket; retry later")
	case errors.Is(err, ticket.ErrUnavailable):
		log.Warn("dependency unavailable", "err", err, "path", c.Path())
		return problem(fiber.StatusServiceUnavailable, "unavailable", "the database cannot be reached; retry later")
	case errors.As(err, &fe):
		return fiberProblem(fe)
	}
	log.Error("unexpected error", "err", err, "method", c.Method(), "path", c.Path())
	return problem(fiber.StatusInternalServerError, "internal", "an unexpected error occurred; it has been logged")
}

// fiberProblem turns the errors Fiber and fasthttp raise themselves into problems.
func fiberProblem(fe *fiber.Error) *Problem {
	switch fe.Code {
	case fiber.StatusNotFound:
		return problem(fe.Code, "route-not-found", "no such route")
	case fiber.StatusMethodNotAllowed:
		return problem(fe.Code, "method-not-allowed", "this route does not accept that method")
	case fiber.StatusRequestEntityTooLarge:
		return problem(fe.Code, "body-too-large", "the request body is larger than the server accepts")
	case fiber.StatusRequestHeaderFieldsTooLarge:
		return problem(fe.Code, "headers-too-large", "the request headers are larger than the server accepts")
	case fiber.StatusRequestTimeout:
		return problem(fe.Code, "request-timeout", "the request took too long to arrive")
	}
	if fe.Code >= 500 {
		return problem(fe.Code, "internal", "an unexpected error occurred")
	}
	return problem(fe.Code, "bad-request", "the request could not be understood")
}

// errorHandler is Fiber's ErrorHandler: every error leaves as problem+json. A 413
// states bodyLimit, the largest body accepted, so a client knows what would fit.
func errorHandler(log *slog.Logger, bodyLimit int) fiber.ErrorHandler {
	return func(c *fiber.Ctx, err error) error {
		p := toProblem(c, err, log)
		if p.Status == fiber.StatusRequestEntityTooLarge {
			p.Detail = "the request body is larger than the server accepts: at most " + strconv.Itoa(bodyLimit) + " bytes"
		}
		if p.Instance == "" {
			p.Instance = c.Path()
		}
		body, _ := eventstore.EncodeJSON(p)
		c.Set(fiber.HeaderContentType, "application/problem+json")
		return c.Status(p.Status).Send(body)
	}
}

// guardMethods answers a request whose method Fiber does not know (it would answer a
// plain-text 400 before any handler runs) as it answers a known method a route does not
// take: 405 problem+json with an Allow header, or 404 for a path that is no route.
func guardMethods(app *fiber.App, s *Server) {
	known := map[string]bool{}
	for _, m := range app.Config().RequestMethods {
		known[m] = true
	}
	srv := app.Server()
	next := srv.Handler
	srv.Handler = func(fc *fasthttp.RequestCtx) {
		if known[string(fc.Method())] {
			next(fc)
			return
		}
		start := time.Now()
		c := app.AcquireCtx(fc)
		defer app.ReleaseCtx(c)
		err := fiber.ErrNotFound
		if allow := allowedMethods(app, c.Path()); len(allow) > 0 {
			c.Set(fiber.HeaderAllow, strings.Join(allow, ", "))
			err = fiber.ErrMethodNotAllowed
		}
		_ = app.Config().ErrorHandler(c, err)
		// answered before any middleware: counted and logged here, like every request
		s.record(c, nil, unmatchedRoute, start, time.Since(start))
	}
}

// allowedMethods lists the methods of the routes matching path (":param" matches one
// segment, "*" the rest; case and a trailing slash do not matter, as in the router).
func allowedMethods(app *fiber.App, path string) []string {
	segs := strings.Split(strings.Trim(strings.ToLower(path), "/"), "/")
	var out []string
	seen := map[string]bool{}
	for _, r := range app.GetRoutes(true) {
		if seen[r.Method] || !routeMatches(strings.Split(strings.Trim(strings.ToLower(r.Path), "/"), "/"), segs) {
			continue
		}
		seen[r.Method] = true
		out = append(out, r.Method)
	}
	return out
}

func routeMatches(pattern, segs []string) bool {
	for i, p := range pattern {
		if p == "*" || strings.HasPrefix(p, "*") || strings.HasPrefix(p, "+") {
			return true
		}
		if i >= len(segs) {
			return false
		}
		if strings.HasPrefix(p, ":") {
			if segs[i] == "" {
				return false
			}
			continue
		}
		if p != segs[i] {
			return false
		}
	}
	return len(segs) == len(pattern)
}
