package projections

import (
	"context"
	"errors"
	"fmt"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// PostgresGroup is the consumer group of the Postgres read model projector.
const PostgresGroup = "pg-readmodel"

// Postgres projects events into the readmodel.tickets and readmodel.comments tables.
// It writes through the subscriber's transaction, so the read model and the consumer
// offset commit together; every write is guarded by version, so a redelivered event
// changes nothing.
type Postgres struct {
	// Schema is the schema holding the read model tables ("readmodel" unless a rebuild
	// writes into a fresh copy).
	Schema string
}

// Handle is the Watermill handler. It needs the watermill-sql transaction in the
// message context and works inside a savepoint, so a failed attempt can be retried in
// the same transaction.
func (p Postgres) Handle(msg *message.Message) error {
	rec, err := eventstore.DecodeMessage(msg.Payload)
	if err != nil {
		return permanent(err)
	}
	tx, err := pgxTx(msg)
	if err != nil {
		return permanent(err)
	}
	ctx := msg.Context()
	return pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error { return p.Apply(ctx, sp, rec) })
}

// pgxTx returns the pgx transaction watermill-sql opened for msg.
func pgxTx(msg *message.Message) (pgx.Tx, error) {
	tx, ok := wsql.TxFromContext(msg.Context())
	if !ok {
		return nil, errors.New("no watermill-sql transaction in message context")
	}
	switch t := tx.(type) {
	case *wsql.PgxTx:
		return t.Tx, nil
	case wsql.PgxTx:
		return t.Tx, nil
	}
	return nil, fmt.Errorf("unexpected transaction type %T", tx)
}

// Apply writes one event into the read model. It is idempotent: applying an event the
// read model already reflects (by version) changes nothing.
func (p Postgres) Apply(ctx context.Context, tx pgx.Tx, r eventstore.Record) error {
	s := pgx.Identifier{p.schema()}.Sanitize()
	var err error
	switch d := r.Data.(type) {
	case ticket.Opened:
		_, err = tx.Exec(ctx, `INSERT INTO `+s+`.tickets
			(id, title, description, email, created_by, updated_by, status, version, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $5, 'open', $6, $7, $7) ON CONFLICT (id) DO NOTHING`,
			r.TicketID, d.Title, d.Description, d.Email, d.CreatedBy, r.Version, r.At)
	case ticket.CommentAdded:
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO `+s+`.comments (id, ticket_id, version, body, email, created_by, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
			d.CommentID, r.TicketID, r.Version, d.Body, d.Email, d.CreatedBy, r.At)
		b.Queue(`UPDATE `+s+`.tickets SET version = $2, updated_at = $3, comment_count = comment_count + 1
			WHERE id = $1 AND version < $2`, r.TicketID, r.Version, r.At)
		err = tx.SendBatch(ctx, b).Close()
	case ticket.StatusChanged:
		_, err = tx.Exec(ctx, `UPDATE `+s+`.tickets SET status = $2, updated_by = $3, version = $4, updated_at = $5
			WHERE id = $1 AND version < $4`, r.TicketID, string(d.To), d.UpdatedBy, r.Version, r.At)
	case ticket.Deleted:
		_, err = tx.Exec(ctx, `UPDATE `+s+`.tickets SET deleted = true, version = $2, updated_at = $3
			WHERE id = $1 AND version < $2`, r.TicketID, r.Version, r.At)
	default:
		return permanent(fmt.Errorf("unknown event data %T", r.Data))
	}
	if err != nil {
		return fmt.Errorf("project %s v%d of %s: %w", r.Type(), r.Version, r.TicketID, err)
	}
	return nil
}

func (p Postgres) schema() string {
	if p.Schema == "" {
		return "readmodel"
	}
	return p.Schema
}
