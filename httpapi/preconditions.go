package httpapi

import (
	"errors"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// A ticket's entity tag is its version, quoted: "3" (setETag). It changes with every
// event, so it is a strong validator of the whole ticket document.

// ifMatch parses the If-Match header of a command. Absent or "*" (any current ticket:
// the command itself answers 404 for a missing one) return nil; one entity tag, "N" or
// W/"N" (a weak tag names the same version here), returns N. Anything else, a list of
// several tags included, is a 422 naming the header.
func ifMatch(c *fiber.Ctx) (*int, error) {
	raw := strings.TrimSpace(c.Get(fiber.HeaderIfMatch))
	if raw == "" && c.Request().Header.Peek(fiber.HeaderIfMatch) == nil {
		return nil, nil
	}
	if raw == "*" {
		return nil, nil
	}
	v, ok := parseETag(raw)
	if !ok {
		return nil, invalidField(fiber.HeaderIfMatch, `must be one entity tag such as "3" (the ticket's ETag) or *`)
	}
	return &v, nil
}

// parseETag reads one entity tag "N" or W/"N" with N a version (1 or more).
func parseETag(s string) (int, bool) {
	s = strings.TrimPrefix(s, "W/")
	if len(s) < 3 || s[0] != '"' || s[len(s)-1] != '"' {
		return 0, false
	}
	digits := s[1 : len(s)-1]
	if len(digits) > 9 || strings.TrimLeft(digits, "0123456789") != "" || digits[0] == '0' {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	return n, err == nil && n > 0
}

// notModified answers a GET whose If-None-Match names the ticket's current version (or
// is "*") with 304 and the ETag, and reports whether it did. Tags compare weakly, as
// RFC 9110 says for If-None-Match; a malformed header never matches.
func notModified(c *fiber.Ctx, version int) bool {
	raw := c.Get(fiber.HeaderIfNoneMatch)
	if raw == "" {
		return false
	}
	match := strings.TrimSpace(raw) == "*"
	for _, tag := range strings.Split(raw, ",") {
		if v, ok := parseETag(strings.TrimSpace(tag)); ok && v == version {
			match = true
		}
	}
	if !match {
		return false
	}
	setETag(c, version)
	c.Status(fiber.StatusNotModified)
	c.Response().ResetBody()
	return true
}

// preconditionFailed turns a failed If-Match into its 412 problem, which carries the
// ticket's current version so the client can fetch it and decide again. Other errors
// pass through unchanged.
func (s *Server) preconditionFailed(c *fiber.Ctx, id uuid.UUID, err error) error {
	if !errors.Is(err, ticket.ErrPrecondition) {
		return err
	}
	p := problem(fiber.StatusPreconditionFailed, "precondition-failed",
		"the ticket changed since the version in If-Match; fetch it again and retry with its ETag")
	t, lerr := s.cfg.Store.LoadTicket(c.UserContext(), id, 0)
	switch {
	case lerr == nil && t.Exists():
		p.CurrentVersion = t.Version()
		setETag(c, t.Version())
	case lerr == nil || errors.Is(lerr, ticket.ErrNotFound):
		return ticket.ErrNotFound // deleted in between
	}
	return p
}
