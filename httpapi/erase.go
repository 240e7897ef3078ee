package httpapi

import (
	"errors"
	"net/url"

	"github.com/gofiber/fiber/v2"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// Erasure is the answer of DELETE /v1/subjects/{email}.
type Erasure struct {
	// Subject is the erased subject's keyed id (hex), as the SubjectErased events name
	// it; never the email.
	Subject string `json:"subject"`
	// Tickets is how many tickets held the subject's data; Appended, how many got a
	// SubjectErased event now (fewer on a repeated erasure).
	Tickets  int `json:"tickets"`
	Appended int `json:"appended"`
	// AlreadyErased: the subject's key had been destroyed before (erasing twice is
	// harmless: this run only completed and scrubbed again).
	AlreadyErased bool `json:"already_erased"`
}

// eraseSubject answers DELETE /v1/subjects/{email}: the subject's key destroyed, an
// erasure event on each of their tickets, their data scrubbed from every store outside
// the events (Config.Erase). 200 with what was done; 404 subject-not-found for an email
// that never had data stored; 422 for a malformed email or reason.
func (s *Server) eraseSubject(c *fiber.Ctx) error {
	email, err := url.PathUnescape(c.Params("email"))
	if err != nil {
		return invalidQuery("email", "must be a percent-encoded email address")
	}
	if err := ticket.ValidEmail("email", email); err != nil {
		return err
	}
	reason := c.Query("reason")
	if err := queryText("reason", reason, 1000); err != nil {
		return err
	}
	p := principal(c)
	by := p.Name
	if by == "" {
		by = p.ID
	}
	md := s.metadata(c)
	md.Actor = by
	er, err := s.cfg.Erase(c.UserContext(), email, by, reason, md)
	if errors.Is(err, eventstore.ErrUnknownSubject) {
		return problem(fiber.StatusNotFound, "subject-not-found", "no personal data of this email is stored")
	}
	if err != nil {
		return err
	}
	for _, id := range er.Tickets {
		s.versions.forgetStream(id)
	}
	s.cfg.Log.Info("subject erased", "subject", er.Subject.String(), "tickets", len(er.Tickets), "by", p.ID)
	return c.JSON(Erasure{Subject: er.Subject.String(), Tickets: len(er.Tickets), Appended: len(er.Appended), AlreadyErased: er.AlreadyErased})
}
