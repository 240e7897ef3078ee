package httpapi

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// The auditors' endpoints: a ticket's history and its state at a version. Both are
// answered from the event store, never from a read model, and both work after the
// ticket was deleted.

// Page sizes of the history. Events are small and auditors read whole streams, so the
// pages are larger than the list's.
const (
	DefaultHistoryLimit = 100
	MaxHistoryLimit     = 1000
)

// HistoryEntry is one event as the history shows it, over HTTP and in `ticketd
// -history -json` alike.
type HistoryEntry struct {
	Version int       `json:"version"`
	Type    string    `json:"type"`
	Time    time.Time `json:"time"`
	Actor   string    `json:"actor"`
	// Principal is who recorded the event, authenticated (token id, name, role);
	// absent for events recorded before authentication existed.
	Principal *eventstore.Principal `json:"principal,omitempty"`
	Metadata  HistoryMetadata       `json:"metadata,omitzero"`
	// Data is the event's payload: TicketOpened {title, description, email,
	// created_by}; CommentAdded the comment {id, body, email, created_by};
	// StatusChanged {from, to, updated_by}; TicketDeleted {deleted_by}.
	Data any `json:"data"`
	// Hash is the event's link in its ticket's hash chain, in hex: SHA-256 over the
	// event as stored and the previous event's hash (README, "Audit: the hash chain").
	Hash string `json:"hash"`
}

// HistoryMetadata is what the event's request left on it; empty fields are omitted.
type HistoryMetadata struct {
	RequestID       string `json:"request_id,omitempty"`
	ClientRequestID string `json:"client_request_id,omitempty"`
	CorrelationID   string `json:"correlation_id,omitempty"`
	IdempotencyKey  string `json:"idempotency_key,omitempty"`
}

// HistoryComment is the data of a CommentAdded entry: the comment as the API shows it
// (its time and version are the entry's).
type HistoryComment struct {
	ID        uuid.UUID `json:"id"`
	Body      string    `json:"body"`
	Email     string    `json:"email,omitempty"`
	CreatedBy string    `json:"created_by"`
}

// NewHistoryEntry renders a stored event for the history.
func NewHistoryEntry(r eventstore.Record) HistoryEntry {
	e := HistoryEntry{
		Version: r.Version, Type: r.Type(), Time: r.RecordedAt.UTC(), Actor: r.Actor,
		Principal: r.Metadata.Principal,
		Metadata: HistoryMetadata{
			RequestID: r.Metadata.RequestID, ClientRequestID: r.Metadata.ClientRequestID,
			CorrelationID:  r.Metadata.CorrelationID,
			IdempotencyKey: r.Metadata.IdempotencyKey,
		},
		Data: r.Data,
		Hash: hex.EncodeToString(r.Hash),
	}
	if c, ok := r.Data.(ticket.CommentAdded); ok {
		e.Data = HistoryComment{ID: c.CommentID, Body: c.Body, Email: c.Email, CreatedBy: c.CreatedBy}
	}
	return e
}

// history answers GET /v1/ticket/{id}/history: the stream's events oldest first, a page
// of `limit` (default 100, at most 1000) at a time, the next page in a Link header whose
// signed cursor holds the last version shown. A page also stops before the event that
// would take its events past HistoryPageBytes of stored JSON (it holds at least one),
// and links on. 404 for an id that never had an event.
func (s *Server) history(c *fiber.Ctx) error {
	id, err := ticketID(c)
	if err != nil {
		return err
	}
	if err := s.ownTicket(c, id); err != nil {
		return err
	}
	limit, err := limitParam(c, DefaultHistoryLimit, MaxHistoryLimit)
	if err != nil {
		return err
	}
	scope := "history:" + id.String()
	after, err := s.afterParam(c, scope)
	if err != nil {
		return err
	}
	recs, more, err := s.cfg.Store.HistoryPage(c.UserContext(), id, after, limit, s.cfg.HistoryPageBytes)
	if err != nil {
		return err
	}
	viewer := principal(c)
	page := make([]HistoryEntry, len(recs))
	for i, r := range recs {
		page[i] = NewHistoryEntry(r)
		if !showsKeyOf(viewer, r.Metadata.Principal) {
			page[i].Metadata.IdempotencyKey = ""
		}
	}
	if more {
		q := url.Values{"limit": {strconv.Itoa(limit)}, "cursor": {s.cursors.sign(cursorBody{Scope: scope, After: recs[len(recs)-1].Version})}}
		c.Set(fiber.HeaderLink, `</v1/ticket/`+id.String()+`/history?`+q.Encode()+`>; rel="next"`)
	}
	return c.JSON(page)
}

// wantsVersion reports whether a GET of a ticket asks for a past version (?version=,
// even empty, which is then refused rather than ignored).
func wantsVersion(c *fiber.Ctx) bool {
	return c.Context().QueryArgs().Has("version")
}

// getAtVersion answers GET /v1/ticket/{id}?version=N: the ticket as it stood right after
// event N, replayed from the event store, with ETag N. A version that is not a whole
// number of at least 1, or lies beyond the stream's last event, is a 422 naming
// `version` (the detail gives the last one); the version of the deletion is a 404 that
// says so (there is no ticket to show then; earlier versions stay readable).
func (s *Server) getAtVersion(c *fiber.Ctx, id uuid.UUID) error {
	n, err := versionParam(c.Query("version"))
	if err != nil {
		return err
	}
	return s.replayVersion(c, id, n)
}

// replayVersion answers for version n >= 1 of ticket id: from the cache of replayed
// versions, else by a replay in one of the ReplayConcurrency slots (429 when none is
// free) that ends at the request's deadline or when the client hangs up.
func (s *Server) replayVersion(c *fiber.Ctx, id uuid.UUID, n int) error {
	key := versionKey{id: id, version: n}
	if r, ok := s.versions.get(key); ok {
		return s.sendReplayed(c, id, r)
	}
	if !s.replays.tryAcquire() {
		return tooManyReplays(c)
	}
	defer s.replays.release()
	s.metrics.replays.Inc()
	defer s.metrics.replays.Dec()
	ctx, done := whileConnected(c.UserContext(), c)
	defer done()
	// start from the nearest version kept, and keep a state every checkpointEvery
	// events on the way: a long stream is folded from its start once, not per version
	var base projections.View
	if r, ok := s.versions.nearest(id, n); ok {
		var err error
		if base, err = projections.DecodeView(r.body); err != nil {
			return err
		}
	}
	last := base.Version
	v, head, err := projections.FoldStreamFrom(ctx, s.cfg.Store, id, base, n, func(v projections.View) {
		if v.Version-last < checkpointEvery || v.Version == n {
			return
		}
		if body, err := c.App().Config().JSONEncoder(v); err == nil {
			last = v.Version
			s.versions.put(&replayed{key: versionKey{id: id, version: v.Version}, body: body})
		}
	})
	if err == nil && ctx.Err() == nil {
		if n > head {
			p := invalidQuery("version", "is beyond the ticket's last event; its history has versions 1 to "+strconv.Itoa(head))
			p.CurrentVersion = head
			return p
		}
		r := &replayed{key: key, deleted: v.Deleted}
		if !v.Deleted {
			if r.body, err = c.App().Config().JSONEncoder(v); err != nil {
				return err
			}
		}
		s.versions.put(r)
		return s.sendReplayed(c, id, r)
	}
	if errors.Is(context.Cause(ctx), errClientGone) {
		// nobody reads this answer; it is logged and counted as the client's doing
		p := problem(fiber.StatusBadRequest, "client-gone", "the client closed the connection before the replay ended")
		p.Status, p.Title = statusClientClosed, "Client Closed Request"
		return p
	}
	if err == nil {
		err = fmt.Errorf("replay of %s at version %d: %w", id, n, ticket.ErrUnavailable)
	}
	return err
}

// statusClientClosed is the status logged for a request whose client left first
// (nginx's 499; the client never sees it).
const statusClientClosed = 499

// sendReplayed sends a replayed version: the ticket as it stood, with ETag the version,
// or, at the version of the deletion, a 404 that says so (there is no ticket to show
// then; earlier versions stay readable).
func (s *Server) sendReplayed(c *fiber.Ctx, id uuid.UUID, r *replayed) error {
	n := r.key.version
	if r.deleted {
		return problem(fiber.StatusNotFound, "ticket-deleted",
			"the ticket was deleted at version "+strconv.Itoa(n)+"; version "+strconv.Itoa(n-1)+
				" is its last state, and /v1/ticket/"+id.String()+"/history lists every event")
	}
	if notModified(c, n) {
		return nil
	}
	setETag(c, n)
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(r.body)
}
