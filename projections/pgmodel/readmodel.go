package pgmodel

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// ReadModel answers the read endpoints from the Postgres read model, falling back to
// the event store where the read model has not caught up with an acknowledged write.
type ReadModel struct {
	pool   *pgxpool.Pool
	events projections.Streams
}

// NewReadModel returns a ReadModel on pool, with events as the fallback.
func NewReadModel(pool *pgxpool.Pool, events projections.Streams) *ReadModel {
	return &ReadModel{pool: pool, events: events}
}

// ListKey is a position in the list order (newest first): a page starts after it.
type ListKey struct {
	CreatedAt time.Time
	ID        uuid.UUID
}

// ListQuery selects a page of the list. Empty filters match everything.
type ListQuery struct {
	Status    ticket.Status
	Email     string
	CreatedBy string
	Limit     int
	After     *ListKey
}

const summaryColumns = `id, title, description, email, created_by, updated_by, status, version, comment_count, created_at, updated_at`

// scanSummary reads summaryColumns, then into extra the columns selected after them.
func scanSummary(row pgx.Row, extra ...any) (projections.Summary, error) {
	var s projections.Summary
	var status string
	err := row.Scan(append([]any{&s.ID, &s.Title, &s.Description, &s.Email, &s.CreatedBy, &s.UpdatedBy, &status,
		&s.Version, &s.CommentCount, &s.CreatedAt, &s.UpdatedAt}, extra...)...)
	s.Status = ticket.Status(status)
	s.CreatedAt, s.UpdatedAt = s.CreatedAt.UTC(), s.UpdatedAt.UTC()
	return s, err
}

// List returns up to q.Limit tickets, newest first, and the key to continue after when
// there are more. Keyset paging on (created_at, id) keeps pages stable while tickets are
// added: a new ticket sorts before the first page, never into a later one.
func (m *ReadModel) List(ctx context.Context, q ListQuery) ([]projections.Summary, *ListKey, error) {
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	where = append(where, "NOT deleted")
	if q.Status != "" {
		where = append(where, "status = "+arg(string(q.Status)))
	}
	if q.Email != "" {
		// by the keyed hash of the email, never the address (an erased subject's rows
		// have none: they are found by no email)
		if hash := emailHasher(m.events); hash != nil {
			where = append(where, "email_hash = "+arg(hash(q.Email)))
		} else {
			where = append(where, "email = "+arg(q.Email))
		}
	}
	if q.CreatedBy != "" {
		where = append(where, "created_by = "+arg(q.CreatedBy))
	}
	if q.After != nil {
		where = append(where, "(created_at, id) < ("+arg(q.After.CreatedAt)+", "+arg(q.After.ID)+")")
	}
	sql := `SELECT ` + summaryColumns + ` FROM readmodel.tickets WHERE ` + strings.Join(where, " AND ") +
		` ORDER BY created_at DESC, id DESC LIMIT ` + arg(q.Limit+1)
	rows, err := m.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, nil, projections.Unavailable(err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (projections.Summary, error) { return scanSummary(r) })
	if err != nil {
		return nil, nil, projections.Unavailable(err)
	}
	var next *ListKey
	if len(list) > q.Limit {
		list = list[:q.Limit]
		last := list[len(list)-1]
		next = &ListKey{CreatedAt: last.CreatedAt, ID: last.ID}
	}
	return list, next, nil
}

// Get returns the document of ticket id. It reads the read model and, in the same round
// trip, the stream's head version in the event store; if the read model is behind the
// head (or lacks the ticket) the ticket is replayed from the store instead, so an
// acknowledged write is never missing. A deleted or unknown ticket is ticket.ErrNotFound.
func (m *ReadModel) Get(ctx context.Context, id uuid.UUID) (projections.View, error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT `+summaryColumns+`, deleted,
		(`+eventstore.HeadQuery+`)
		FROM readmodel.tickets WHERE id = $1`, id)
	b.Queue(`SELECT id, body, email, created_by, created_at, version FROM readmodel.comments
		WHERE ticket_id = $1 ORDER BY version LIMIT $2`, id, projections.EmbeddedComments)
	br := m.pool.SendBatch(ctx, b)
	defer br.Close()
	var deleted bool
	var head int
	s, err := scanSummary(br.QueryRow(), &deleted, &head)
	if errors.Is(err, pgx.ErrNoRows) {
		br.Close()
		return m.replay(ctx, id)
	}
	if err != nil {
		return projections.View{}, projections.Unavailable(err)
	}
	if head > s.Version {
		br.Close()
		return m.replay(ctx, id)
	}
	if deleted {
		return projections.View{}, fmt.Errorf("ticket %s: %w", id, ticket.ErrNotFound)
	}
	rows, err := br.Query()
	if err != nil {
		return projections.View{}, projections.Unavailable(err)
	}
	comments, err := pgx.CollectRows(rows, scanComment)
	if err != nil {
		return projections.View{}, projections.Unavailable(err)
	}
	if comments == nil {
		comments = []projections.Comment{}
	}
	return projections.View{Summary: s, Comments: comments[:projections.Embedded(comments)]}, nil
}

func scanComment(r pgx.CollectableRow) (projections.Comment, error) {
	var c projections.Comment
	err := r.Scan(&c.ID, &c.Body, &c.Email, &c.CreatedBy, &c.CreatedAt, &c.Version)
	c.CreatedAt = c.CreatedAt.UTC()
	return c, err
}

// replay builds the document from the event store, the source of truth.
func (m *ReadModel) replay(ctx context.Context, id uuid.UUID) (projections.View, error) {
	v, _, err := projections.Replay(ctx, m.events, id)
	return v, err
}

// Comments returns up to limit comments of ticket id added after event version after,
// oldest first, and whether more follow. A deleted or unknown ticket is
// ticket.ErrNotFound. Like Get, it falls back to the event store when the read model
// is behind.
func (m *ReadModel) Comments(ctx context.Context, id uuid.UUID, after, limit int) ([]projections.Comment, bool, error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT t.version, t.deleted, (`+eventstore.HeadQuery+`)
		FROM readmodel.tickets t WHERE t.id = $1`, id)
	b.Queue(`SELECT id, body, email, created_by, created_at, version FROM readmodel.comments
		WHERE ticket_id = $1 AND version > $2 ORDER BY version LIMIT $3`, id, after, limit+1)
	br := m.pool.SendBatch(ctx, b)
	defer br.Close()
	var version, head int
	var deleted bool
	err := br.QueryRow().Scan(&version, &deleted, &head)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || (err == nil && head > version):
		br.Close()
		_, recs, err := projections.Replay(ctx, m.events, id)
		if err != nil {
			return nil, false, err
		}
		var page []projections.Comment
		for _, r := range recs {
			if c, ok := projections.CommentOf(r.Event); ok && c.Version > after {
				page = append(page, c)
			}
		}
		more := len(page) > limit
		return page[:min(limit, len(page))], more, nil
	case err != nil:
		return nil, false, projections.Unavailable(err)
	case deleted:
		return nil, false, fmt.Errorf("ticket %s: %w", id, ticket.ErrNotFound)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, false, projections.Unavailable(err)
	}
	page, err := pgx.CollectRows(rows, scanComment)
	if err != nil {
		return nil, false, projections.Unavailable(err)
	}
	more := len(page) > limit
	return page[:min(limit, len(page))], more, nil
}
