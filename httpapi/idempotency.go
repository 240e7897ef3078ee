package httpapi

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/httpapi/auth"
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

// keyScope is where an Idempotency-Key of principal p on route is valid. The principal's
// id is length-prefixed so that no id and route can run into another pair.
func keyScope(p auth.Principal, route string) string {
	return strconv.Itoa(len(p.ID)) + ":" + p.ID + " " + route
}

// showsKeyOf reports whether viewer may see the Idempotency-Key an event recorded for
// principal by: its own, or any when the viewer reads everything's history as an admin
// or auditor. A key is a client's secret-ish handle on a stored answer (within its
// principal's scope), so other requesters and agents do not see it.
func showsKeyOf(viewer auth.Principal, by *eventstore.Principal) bool {
	if viewer.Role == auth.RoleAdmin || viewer.Role == auth.RoleAuditor {
		return true
	}
	return by != nil && by.ID == viewer.ID
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

// answer is a response as the HTTP layer stores it under an Idempotency-Key (the event
// store keeps the bytes of its JSON and knows nothing of them): enough to send the
// identical response again. Every body is a JSON document, kept as sent.
type answer struct {
	Status int               `json:"status"`
	Header map[string]string `json:"header"`
	Body   json.RawMessage   `json:"body"`
}

// keyed is a command's rendering of its answer, and the store option that stores it
// when the client sent an Idempotency-Key.
type keyed struct {
	opt    *eventstore.Idempotency // nil without a key
	render func(eventstore.Result) (answer, error)
	last   *answer // what opt stored for the attempt that committed
}

// idempotency prepares a command's answer: with an Idempotency-Key, a store option that
// renders it once, stores it with the events and remembers it; without, the rendering
// alone. route names the route (and ticket); request is the decoded request, whose
// canonical JSON (not the bytes sent: spacing and key order do not matter) identifies
// the request together with the route.
//
// A key is scoped to its principal as well as its route: another principal sending the
// same key sends another key, so it can neither read the first one's answer nor claim
// a key before its owner does.
func (s *Server) idempotency(c *fiber.Ctx, route string, request any, render func(eventstore.Result) (answer, error)) (*keyed, error) {
	k := &keyed{render: render}
	key, err := idempotencyKey(c)
	if err != nil || key == "" {
		return k, err
	}
	scope := keyScope(principal(c), route)
	canonical, err := eventstore.EncodeJSON(request)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write([]byte(scope))
	h.Write([]byte{0})
	h.Write(canonical)
	k.opt = &eventstore.Idempotency{
		Scope:       scope,
		Key:         key,
		RequestHash: h.Sum(nil),
		TTL:         s.cfg.IdempotencyTTL,
		Answer: func(res eventstore.Result) ([]byte, error) {
			a, err := render(res)
			if err != nil {
				return nil, err
			}
			k.last = &a
			return eventstore.EncodeJSON(a)
		},
	}
	return k, nil
}

// answer returns the answer to a command's result: the stored one replayed, the one
// stored with its events, or (without a key) rendered now.
func (k *keyed) answer(res eventstore.Result) (answer, bool, error) {
	if res.Replayed != nil {
		var a answer
		if err := json.Unmarshal(res.Replayed, &a); err != nil {
			return answer{}, true, fmt.Errorf("decode stored answer: %w", err)
		}
		return a, true, nil
	}
	if k.last != nil {
		return *k.last, false, nil
	}
	a, err := k.render(res)
	return a, false, err
}

// jsonAnswer renders a JSON answer with the headers that matter to a retry.
func jsonAnswer(status int, body any, header map[string]string) (answer, error) {
	raw, err := eventstore.EncodeJSON(body)
	if err != nil {
		return answer{}, err
	}
	return answer{Status: status, Header: header, Body: raw}, nil
}

// send writes an answer; replayed marks one stored by an earlier request.
func send(c *fiber.Ctx, a answer, replayed bool) error {
	for k, v := range a.Header {
		c.Set(k, v)
	}
	if replayed {
		c.Set(HeaderIdempotentReplayed, "true")
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(a.Status).Send(a.Body)
}
