package httpapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// TestToProblemKinds: each error kind the command path returns maps to its status and
// code, wrapped or not; an unknown error is a bare 500.
func TestToProblemKinds(t *testing.T) {
	clash := &eventstore.ConcurrencyError{StreamID: uuid.New(), Expected: 3}
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("after 20 retries: %w", clash), 503, "contention"},
		{fmt.Errorf("db: %w", ticket.ErrUnavailable), 503, "unavailable"},
		{ticket.ErrPrecondition, 412, "precondition-failed"},
		{fmt.Errorf("x: %w", ticket.ErrNotFound), 404, "ticket-not-found"},
		{errors.New("something else"), 500, "internal"},
	} {
		app := fiber.New()
		var p *Problem
		app.Get("/", func(c *fiber.Ctx) error {
			p = toProblem(c, tc.err, slog.New(slog.DiscardHandler))
			return nil
		})
		if _, err := app.Test(httptest.NewRequest("GET", "/", nil)); err != nil {
			t.Fatal(err)
		}
		if p == nil || p.Status != tc.status || p.Code != tc.code {
			t.Errorf("%v: got %+v, want %d %s", tc.err, p, tc.status, tc.code)
		}
	}
}
