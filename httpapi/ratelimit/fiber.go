package ratelimit

import (
	"math"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
)

// The response headers of a limited request (draft-ietf-httpapi-ratelimit-headers): the
// burst, what is left of it, and the seconds until it is whole again.
const (
	HeaderLimit     = "RateLimit-Limit"
	HeaderRemaining = "RateLimit-Remaining"
	HeaderReset     = "RateLimit-Reset"
)

// ProblemCode is the problem code of a refusal (HTTP 429).
const ProblemCode = "rate-limited"

// Error is a request refused for being over its limit. The HTTP layer answers it 429
// problem+json with code ProblemCode and Detail(); Enforce has set the headers already.
type Error struct {
	// AuthFailure is true for the failed-authentication limit of a client address,
	// false for a principal's request limit.
	AuthFailure bool
	Decision    Decision
}

func (e *Error) Error() string { return ProblemCode + ": " + e.Detail() }

// Detail is the problem's detail: which budget is spent and when to come back.
func (e *Error) Detail() string {
	what := "too many requests for this credential"
	if e.AuthFailure {
		what = "too many failed authentications from this address"
	}
	return what + "; retry after " + strconv.Itoa(RetryAfterSeconds(e.Decision)) + " s"
}

// Enforce puts d on c's response: the RateLimit headers when d is enforced, and when d
// refuses the request, Retry-After and an *Error for the caller to return (the error
// handler answers 429). It returns nil when the request may go on. authFailure says
// which limit d is of (AllowAuthFailure's), for the problem's detail.
func Enforce(c *fiber.Ctx, d Decision, authFailure bool) error {
	if !d.Enforced {
		return nil
	}
	c.Set(HeaderLimit, strconv.Itoa(d.Limit))
	c.Set(HeaderRemaining, strconv.Itoa(d.Remaining))
	c.Set(HeaderReset, strconv.Itoa(seconds(d.Reset)))
	if d.Allowed {
		return nil
	}
	c.Set(fiber.HeaderRetryAfter, strconv.Itoa(RetryAfterSeconds(d)))
	return &Error{AuthFailure: authFailure, Decision: d}
}

// RetryAfterSeconds is d's RetryAfter in whole seconds, rounded up and at least 1, as
// Retry-After sends it: a client that waits that long is allowed.
func RetryAfterSeconds(d Decision) int { return max(seconds(d.RetryAfter), 1) }

func seconds(d time.Duration) int { return int(math.Ceil(d.Seconds())) }
