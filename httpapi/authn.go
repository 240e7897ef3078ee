package httpapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/ticketd/ticketd/httpapi/auth"
	"github.com/ticketd/ticketd/httpapi/ratelimit"
	"github.com/ticketd/ticketd/ticket"
)

// Authentication and authorisation of the API routes. Every route under /v1 (and
// /metrics) names the permission it needs; need authenticates the request's bearer
// token with Config.Auth and checks the permission against the principal's role.

// principalKey is the c.Locals key of the request's principal.
const principalKey = "ticketd.principal"

// anonymousAdmin is the principal of every request when authentication is off
// (Config.Auth nil, AUTH=off in cmd/ticketd: local development only).
var anonymousAdmin = auth.Principal{ID: "anonymous", Name: "anonymous (AUTH=off)", Role: auth.RoleAdmin}

// maxCredential bounds the Authorization header's credential: an API token is 47
// bytes, a JWT a few KiB; anything longer is refused before any lookup.
const maxCredential = 8 << 10

// queryCredentialParams are query parameters that carry credentials in other APIs. A
// token in a URL ends up in logs, proxies and browser history: such a request is
// refused, the parameter never read.
var queryCredentialParams = []string{"access_token", "token", "api_key", "apikey"}

// unauthenticated is the one answer to every failed authentication: missing,
// malformed, unknown, expired or revoked credentials are indistinguishable.
func unauthenticated() *Problem {
	return problem(fiber.StatusUnauthorized, "unauthenticated",
		"send a valid API token as Authorization: Bearer <token>")
}

// forbidden is the answer for a principal whose role lacks perm.
func forbidden(perm auth.Permission, detail string) *Problem {
	p := problem(fiber.StatusForbidden, "forbidden", detail)
	p.Permission = string(perm)
	return p
}

// need returns the middleware of a /v1 route that needs perm: the request is
// authenticated, then spends one request of its principal's rate limit (a principal
// over its limit is refused whatever it asks, forbidden routes too), then perm is
// checked against the principal's role.
func (s *Server) need(perm auth.Permission) fiber.Handler { return s.guard(perm, true) }

// guard is need, with the rate limit only when limited.
func (s *Server) guard(perm auth.Permission, limited bool) fiber.Handler {
	return func(c *fiber.Ctx) error {
		p, err := s.authenticate(c)
		if err != nil {
			return err
		}
		if limited && s.cfg.Limiter != nil && s.cfg.Auth != nil {
			if err := ratelimit.Enforce(c, s.cfg.Limiter.Allow(c.UserContext(), p), false); err != nil {
				return err
			}
		}
		if !p.Role.Can(perm) {
			return forbidden(perm, "the role "+string(p.Role)+" does not have the permission "+string(perm))
		}
		c.Locals(principalKey, p)
		return c.Next()
	}
}

// errJWTOff is why a JWT is refused when JWT login is off (for the debug log only:
// the client gets the same 401 as for any bad credential).
var errJWTOff = errors.New("a JWT was sent but JWT login is off (OIDC_ISSUER is empty)")

// authenticate returns the request's principal, or the 401 problem (400 for a
// credential in the query string, 429 for a client address over its limit of failed
// authentications, 503 when the credential cannot be checked). A credential shaped
// like a JWT goes to the JWT verifier, any other to the token store.
func (s *Server) authenticate(c *fiber.Ctx) (auth.Principal, error) {
	args := c.Context().QueryArgs()
	for _, name := range queryCredentialParams {
		if args.Has(name) {
			p := problem(fiber.StatusBadRequest, "credentials-in-query",
				"credentials are never read from the URL (it ends up in logs and histories): send Authorization: Bearer <token>, and revoke a token that was sent this way")
			p.Errors = []FieldError{{Field: name, Reason: "credentials are accepted only in the Authorization header"}}
			return auth.Principal{}, p
		}
	}
	if s.cfg.Auth == nil {
		return anonymousAdmin, nil
	}
	if len(c.Request().Header.PeekAll(fiber.HeaderAuthorization)) > 1 {
		// which one counts would be a guess (proxies differ): neither
		return auth.Principal{}, s.refuse(c, errors.New("more than one Authorization header"))
	}
	cred, ok := bearer(c.Get(fiber.HeaderAuthorization))
	if !ok {
		return auth.Principal{}, s.refuse(c, errors.New("no bearer credential"))
	}
	var v auth.Verifier = s.cfg.Auth
	if auth.LooksLikeJWT(cred) {
		if s.cfg.JWT == nil {
			return auth.Principal{}, s.refuse(c, errJWTOff)
		}
		v = s.cfg.JWT
	}
	p, err := v.Verify(c.UserContext(), cred)
	switch {
	case err == nil:
		return p, nil
	case errors.Is(err, auth.ErrJWKSUnavailable):
		// the token may be good: it cannot be checked now, which is no 401
		return auth.Principal{}, problem(fiber.StatusServiceUnavailable, "unavailable",
			"the identity provider's keys cannot be fetched, so this JWT cannot be checked; retry later (API tokens are unaffected)")
	case errors.Is(err, auth.ErrUnauthenticated):
		return auth.Principal{}, s.refuse(c, err)
	default:
		// the credential could not be checked (Postgres down or too slow): 503
		return auth.Principal{}, fmt.Errorf("verify credential: %w", errors.Join(ticket.ErrUnavailable, err))
	}
}

// refuse answers a failed authentication: it spends one of the client address's
// failed authentications, and returns the 401 problem, or the 429 one over the limit.
// why goes to the debug log only (verifiers never put the credential in an error).
func (s *Server) refuse(c *fiber.Ctx, why error) error {
	s.cfg.Log.Debug("authentication failed", "reason", why.Error(), "ip", c.IP(), "path", c.Path())
	if s.cfg.Limiter != nil {
		if err := ratelimit.Enforce(c, s.cfg.Limiter.AllowAuthFailure(c.UserContext(), c.IP()), true); err != nil {
			return err
		}
	}
	return s.challenge(c)
}

// JWTVerifier is what the HTTP layer needs of auth.JWTVerifier: Verify, and Health
// for /readyz.
type JWTVerifier interface {
	auth.Verifier
	Health() error
}

// challenge sets WWW-Authenticate and returns the 401 problem.
func (s *Server) challenge(c *fiber.Ctx) error {
	c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="ticketd"`)
	return unauthenticated()
}

// bearer returns the credential of an "Authorization: Bearer <credential>" header
// (the scheme is case-insensitive, RFC 9110 11.1), if it has that form.
func bearer(h string) (string, bool) {
	const scheme = "bearer "
	if len(h) <= len(scheme) || len(h) > len(scheme)+maxCredential || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	cred := strings.TrimLeft(h[len(scheme):], " ")
	if cred == "" || strings.ContainsAny(cred, " \t") {
		return "", false
	}
	return cred, true
}

// principal returns the request's principal (set by need).
func principal(c *fiber.Ctx) auth.Principal {
	p, _ := c.Locals(principalKey).(auth.Principal)
	return p
}

// requester returns the principal's email if it is a requester, whose every ticket
// access is bounded to that email.
func requester(c *fiber.Ctx) (string, bool) {
	p := principal(c)
	return p.Email, p.Role == auth.RoleRequester
}

// ownTicket answers ticket.ErrNotFound (the same 404 as an unknown ticket) when the
// principal is a requester and ticket id is not theirs; other roles pass.
func (s *Server) ownTicket(c *fiber.Ctx, id uuid.UUID) error {
	email, ok := requester(c)
	if !ok {
		return nil
	}
	v, err := s.cfg.Reader.Get(c.UserContext(), id)
	if err != nil {
		return err
	}
	if v.Email != email {
		return ticket.ErrNotFound
	}
	return nil
}

// The token management routes, for admins (auth.PermTokens): POST /v1/tokens shows the
// new token once, GET lists them without it, DELETE revokes.

// tokenRequest is the body of POST /v1/tokens.
type tokenRequest struct {
	Name  string `json:"name"`
	Role  string `json:"role"`
	Email string `json:"email"`
	// TTL is the lifetime as a Go duration ("720h"); empty: auth.DefaultTokenTTL.
	TTL string `json:"ttl"`
}

// createdToken is the answer to POST /v1/tokens: the token, shown this once, and its record.
type createdToken struct {
	Secret string `json:"token"`
	auth.Token
}

func (s *Server) createToken(c *fiber.Ctx) error {
	body, err := requestBody(c)
	if err != nil {
		return err
	}
	var req tokenRequest
	bad, err := decodeJSON(body, &req)
	if err != nil {
		return err
	}
	if err := fieldsProblem(bad, nil); err != nil {
		return err
	}
	n := auth.NewToken{Name: req.Name, Role: auth.Role(req.Role), Email: req.Email}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			return invalidField("ttl", "must be a positive duration like 720h or 30m")
		}
		n.TTL = d
	}
	tok, rec, err := s.cfg.Tokens.Create(c.UserContext(), n)
	if err != nil {
		return err // a *ticket.ValidationError is a 422 naming the field (problem table)
	}
	s.cfg.Log.Info("token created", "token_id", rec.ID, "role", rec.Role, "by", principal(c).ID)
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set(fiber.HeaderLocation, "/v1/tokens/"+rec.ID.String())
	return c.Status(fiber.StatusCreated).JSON(createdToken{Secret: tok, Token: rec})
}

func (s *Server) listTokens(c *fiber.Ctx) error {
	ts, err := s.cfg.Tokens.List(c.UserContext())
	if err != nil {
		return err
	}
	if ts == nil {
		ts = []auth.Token{}
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(ts)
}

func (s *Server) revokeToken(c *fiber.Ctx) error {
	raw := c.Params("id")
	id, err := uuid.Parse(raw)
	if err != nil || len(raw) != 36 {
		return invalidQuery("id", "must be a token id (a UUID)")
	}
	if err := s.cfg.Tokens.Revoke(c.UserContext(), id); errors.Is(err, auth.ErrTokenNotFound) {
		return problem(fiber.StatusNotFound, "token-not-found", "no token with this id")
	} else if err != nil {
		return err
	}
	s.cfg.Log.Info("token revoked", "token_id", id, "by", principal(c).ID)
	return c.SendStatus(fiber.StatusNoContent)
}

// TokenStore is what the token routes need (auth.TokenStore).
type TokenStore interface {
	Create(ctx context.Context, n auth.NewToken) (string, auth.Token, error)
	List(ctx context.Context) ([]auth.Token, error)
	Revoke(ctx context.Context, id uuid.UUID) error
}
