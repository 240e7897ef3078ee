package httpapi

import (
	"crypto/sha256"
	"encoding/json"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/ticketd/ticketd/eventstore"
)

// Idempotency-Key on the POSTs (create, comment): the first successful response is
// stored with the key in the transaction that appends the events, and a retry with the
// same key and the same request gets that response again (same status, body, Location
// and ETag, plus "Idempotent-Replayed: true") without anything new being stored, also
// when the retries race each other. The same key with another request is refused with
// 422 "idempotency-key-reused": the key identifies one request, and a client reusing it
// for another has a bug it should hear about. Refused requests (4xx) store nothing, so
// their retry runs again.
const (
	// HeaderIdempotencyKey is the request header carrying the client's key.
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderIdempotentReplayed marks a response replayed from an earlier request.
	HeaderIdempotentReplayed = "Idempotent-Replayed"
	// MaxIdempotencyKey is the longest key accepted, in bytes (printable ASCII).
	MaxIdempotencyKey = 255
	// DefaultIdempotencyTTL is how long a stored response answers retries.
	DefaultIdempotencyTTL = 24 * time.Hour
)

// idempotencyKey returns the request's Idempotency-Key, "" when it has none. A key that
// is empty, longer than MaxIdempotencyKey, not printable ASCII, or sent twice is a 422
// naming the header.
func idempotencyKey(c *fiber.Ctx) (string, error) {
	vals := c.Request().Header.PeekAll(HeaderIdempotencyKey)
	if len(vals) == 0 {
		return "", nil
	}
	if len(vals) > 1 {
		return "", invalidField(HeaderIdempotencyKey, "must be sent once")
	}
	if !validIdempotencyKey(vals[0]) {
		return "", invalidField(HeaderIdempotencyKey, "must be 1 to 255 printable ASCII characters")
	}
	return string(vals[0]), nil
}

func validIdempotencyKey(k []byte) bool {
	if len(k) == 0 || len(k) > MaxIdempotencyKey {
		return false
	}
	for _, b := range k {
		if b < 0x20 || b > 0x7e {
			return false
		}
	}
	return true
}

// idempotency returns the store option of a keyed command, or nil without a key. scope
// names the route (and ticket); request is the decoded request, whose canonical JSON
// (not the bytes sent: spacing and key order do not matter) identifies the request
// together with the scope. render builds the response to store and to send.
func (s *Server) idempotency(c *fiber.Ctx, scope string, request any, render func(eventstore.Result) (eventstore.Response, error)) (*eventstore.Idempotency, error) {
	key, err := idempotencyKey(c)
	if err != nil || key == "" {
		return nil, err
	}
	canonical, err := json.Marshal(request)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write([]byte(scope))
	h.Write([]byte{0})
	h.Write(canonical)
	return &eventstore.Idempotency{
		Scope:       scope,
		Key:         key,
		RequestHash: h.Sum(nil),
		TTL:         s.cfg.IdempotencyTTL,
		Response:    render,
	}, nil
}

// jsonResponse renders a JSON answer with the headers that matter to a retry.
func jsonResponse(status int, body any, header map[string]string) (eventstore.Response, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return eventstore.Response{}, err
	}
	return eventstore.Response{Status: status, Header: header, Body: raw}, nil
}

// send writes a rendered response; replayed marks one stored by an earlier request.
func send(c *fiber.Ctx, r eventstore.Response, replayed bool) error {
	for k, v := range r.Header {
		c.Set(k, v)
	}
	if replayed {
		c.Set(HeaderIdempotentReplayed, "true")
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(r.Status).Send(r.Body)
}
