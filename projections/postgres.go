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
// the same transaction. The savepoint, the event's statements and the release go to
// Postgres as one pipelined batch: one round trip per event, which is what bounds the
// projector's rate (and so the list's lag) under write load.
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
	// Once the message's context has ended (shutdown, ack deadline) watermill-sql stops
	// waiting and ends the transaction itself: the connection is no longer ours to use.
	if err := ctx.Err(); err != nil {
		return err
	}
	b := &pgx.Batch{}
	b.Queue("SAVEPOINT projection")
	if err := p.queue(b, rec); err != nil {
		return err
	}
	b.Queue("RELEASE SAVEPOINT projection")
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		// undo this event's part so a retry (or the poison queue) can use the transaction
		if ctx.Err() == nil {
			if _, rbErr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT projection"); rbErr != nil {
				err = errors.Join(err, rbErr)
			}
		}
		return fmt.Errorf("project %s v%d of %s: %w", rec.Type(), rec.Version, rec.TicketID, err)
	}
	return nil
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
	b := &pgx.Batch{}
	if err := p.queue(b, r); err != nil {
		return err
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("project %s v%d of %s: %w", r.Type(), r.Version, r.TicketID, err)
	}
	return nil
}

// queue adds the statements that apply one event to b. Each is guarded by version.
func (p Postgres) queue(b *pgx.Batch, r eventstore.Record) error {
	s := pgx.Identifier{p.schema()}.Sanitize()
	switch d := r.Data.(type) {
	case ticket.Opened:
		b.Queue(`INSERT INTO `+s+`.tickets
			(id, title, description, email, created_by, updated_by, status, version, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $5, 'open', $6, $7, $7) ON CONFLICT (id) DO NOTHING`,
			r.TicketID, d.Title, d.Description, d.Email, d.CreatedBy, r.Version, r.At)
	case ticket.CommentAdded:
		b.Queue(`INSERT INTO `+s+`.comments (id, ticket_id, version, body, email, created_by, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
			d.CommentID, r.TicketID, r.Version, d.Body, d.Email, d.CreatedBy, r.At)
		b.Queue(`UPDATE `+s+`.tickets SET version = $2, updated_at = $3, comment_count = comment_count + 1
			WHERE id = $1 AND version < $2`, r.TicketID, r.Version, r.At)
	case ticket.StatusChanged:
		b.Queue(`UPDATE `+s+`.tickets SET status = $2, updated_by = $3, version = $4, updated_at = $5
			WHERE id = $1 AND version < $4`, r.TicketID, string(d.To), d.UpdatedBy, r.Version, r.At)
	case ticket.Deleted:
		b.Queue(`UPDATE `+s+`.tickets SET deleted = true, version = $2, updated_at = $3
			WHERE id = $1 AND version < $2`, r.TicketID, r.Version, r.At)
	default:
		return permanent(fmt.Errorf("unknown event data %T", r.Data))
	}
	return nil
}

func (p Postgres) schema() string {
	if p.Schema == "" {
		return "readmodel"
	}
	return p.Schema
}
