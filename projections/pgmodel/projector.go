// Package pgmodel is the Postgres read model: the readmodel.tickets and
// readmodel.comments tables that serve the list, filters and comment pages, their
// projector (consumer group Group) and their rebuild target. It is the only package
// that queries those tables.
package pgmodel

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// Group is the consumer group of the Postgres read model projector.
const Group = "pg-readmodel"

// Projector projects events into the readmodel.tickets and readmodel.comments tables.
// Whatever a batch's size, it reads the current rows of its tickets in one query (only
// those it cannot fold onto a cached row, and none for a ticket the batch opens) and writes every changed row with one
// multi-row upsert and one insert from arrays, which Queue leaves for the consumer to
// send with its ack. Rows are what Fold makes of the events; writes are guarded by
// version, so a redelivered event changes nothing.
type Projector struct {
	// Schema is the schema holding the read model tables ("readmodel" unless a rebuild
	// writes into a fresh copy).
	Schema string
	// Events folds a ticket afresh when its row is more than one event behind (a gap
	// that only a lost or hand-dropped row can cause). Nil: such an event fails.
	Events projections.Streams
	// Cache, if set, keeps the rows this projector wrote, so a batch reads only the
	// rows of tickets whose next event does not follow a cached row. A row is cached
	// once its batch is written; if the batch then rolls back, the cached version is
	// ahead of the table, which a redelivery (starting at or below it) never takes as
	// fitting.
	Cache *projections.ViewCache
}

// Handler returns the projector as the projections.Handler of its consumer group. The
// read model is derived (a rebuild makes it from the event store): its batches commit
// without waiting for their WAL flush (projections.Handler.Derived).
func (p Projector) Handler() projections.Handler {
	return projections.Handler{Group: Group, Apply: p.Apply, Queue: p.Queue, Derived: true}
}

// ticketColumns are the columns of readmodel.tickets, in the order of ticketRow.
var ticketColumns = []string{"id", "title", "description", "email", "created_by", "updated_by", "status",
	"version", "comment_count", "created_at", "updated_at", "deleted", "email_hash"}

// emailHasher returns the keyed hash of an email (the subject id of package pii) the
// email_hash column holds, when events is a store with a keyring (the event store's
// EmailHash); nil otherwise (the column stays NULL and lookups compare the email).
func emailHasher(events projections.Streams) func(string) []byte {
	if h, ok := events.(interface{ EmailHash(string) []byte }); ok {
		return h.EmailHash
	}
	return nil
}

func hashOf(hash func(string) []byte, email string) []byte {
	if hash == nil {
		return nil
	}
	return hash(email)
}

// commentColumns are the columns of readmodel.comments, in the order of queueComments and
// of the rebuild's copyComments.
var commentColumns = []string{"id", "ticket_id", "version", "body", "email", "created_by", "created_at"}

// Apply writes a batch of events (in outbox order) into the read model inside tx. It is
// idempotent: an event the read model already reflects (by version) changes nothing.
func (p Projector) Apply(ctx context.Context, tx pgx.Tx, recs []eventstore.Record) error {
	b := &pgx.Batch{}
	if err := p.Queue(ctx, tx, recs, b); err != nil || b.Len() == 0 {
		return err
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return projections.Unavailable(fmt.Errorf("project %d events: %w", len(recs), err))
	}
	return nil
}

// Queue is Apply that queues its final writes (one upsert, one comment insert) into b
// instead of sending them, so the consumer sends them with the position's ack in one
// round trip; it reads through tx. The rows are cached as written: if b then fails,
// the transaction rolls back and the cached versions are ahead of the table, which a
// redelivery never takes as fitting (see Cache).
func (p Projector) Queue(ctx context.Context, tx pgx.Tx, recs []eventstore.Record, b *pgx.Batch) error {
	if len(recs) == 0 {
		return nil
	}
	s := pgx.Identifier{p.schema()}.Sanitize()
	cur := make(map[uuid.UUID]projections.View, len(recs))
	var read []uuid.UUID // tickets whose rows must be read
	for _, r := range recs {
		if _, ok := cur[r.TicketID]; ok {
			continue
		}
		if cached, ok := p.cached(r.TicketID); ok && cached.Version == r.Version-1 {
			cur[r.TicketID] = cached
			continue
		}
		cur[r.TicketID] = projections.View{}
		if r.Version == 1 {
			// A ticket whose first event this is folds from nothing: its row is not
			// read. If a row is there (a redelivery), folding from nothing gives the
			// same states its events gave, and the version guard of the upsert keeps
			// the row when it is as new or newer.
			continue
		}
		read = append(read, r.TicketID)
	}
	if len(read) > 0 {
		rows, err := tx.Query(ctx, `SELECT `+summaryColumns+`, deleted FROM `+s+`.tickets WHERE id = ANY($1)`, read)
		if err != nil {
			return projections.Unavailable(err)
		}
		_, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (struct{}, error) {
			var v projections.View
			sum, err := scanSummary(row, &v.Deleted)
			v.Summary = sum
			cur[v.ID] = v
			return struct{}{}, err
		})
		if err != nil {
			return projections.Unavailable(err)
		}
	}
	ids := len(cur)
	changed := make([]uuid.UUID, 0, ids)
	isChanged := make(map[uuid.UUID]bool, ids)
	var comments []projections.Comment
	var commentTickets []uuid.UUID
	for _, r := range recs {
		v := cur[r.TicketID]
		if r.Version <= v.Version {
			continue // already reflected: a redelivery
		}
		next, err := projections.Fold(v, r.Event)
		added := []eventstore.Record{r}
		if errors.Is(err, projections.ErrOutOfOrder) && p.Events != nil {
			// The row is behind by more than this event: fold the ticket afresh.
			if added, err = p.Events.Load(ctx, r.TicketID, 0, r.Version); err == nil {
				next, err = projections.FoldAll(projections.View{}, projections.Events(added)...)
			}
		}
		if err != nil {
			return fmt.Errorf("project %s v%d of %s: %w", r.Type(), r.Version, r.TicketID, err)
		}
		for _, a := range added {
			if c, ok := projections.CommentOf(a.Event); ok {
				comments = append(comments, c)
				commentTickets = append(commentTickets, a.TicketID)
			}
		}
		if len(comments) >= commentChunk {
			// Tickets folded afresh bring all their comments: written in chunks, so a
			// batch of long tickets the read model lacks does not hold them all.
			chunk := &pgx.Batch{}
			queueComments(chunk, s, commentTickets, comments)
			if err := tx.SendBatch(ctx, chunk).Close(); err != nil {
				return projections.Unavailable(fmt.Errorf("project %d events: %w", len(recs), err))
			}
			comments, commentTickets = comments[:0], commentTickets[:0]
		}
		cur[r.TicketID] = next
		if !isChanged[r.TicketID] {
			isChanged[r.TicketID] = true
			changed = append(changed, r.TicketID)
		}
	}
	if len(changed) == 0 {
		return nil
	}
	views := make([]projections.View, len(changed))
	for i, id := range changed {
		views[i] = cur[id]
	}
	queueUpsert(b, s, views, emailHasher(p.Events))
	if len(comments) > 0 {
		queueComments(b, s, commentTickets, comments)
	}
	// An erasure scrubs the subject's comments beyond those a view embeds, too (after
	// their inserts: a ticket folded afresh brings them in the same batch).
	for _, r := range recs {
		if d, ok := r.Data.(ticket.SubjectErased); ok && len(d.Comments) > 0 {
			queueEraseComments(b, s, r.TicketID, d.Comments)
		}
	}
	if p.Cache != nil {
		for _, v := range views {
			v.Comments = nil // rows do not hold comments
			p.Cache.Put(v, rowSize(v))
		}
	}
	return nil
}

// cached returns the cached row of ticket id, if there is a cache and it has one.
func (p Projector) cached(id uuid.UUID) (projections.View, bool) {
	if p.Cache == nil {
		return projections.View{}, false
	}
	return p.Cache.Get(id)
}

// rowSize estimates what a cached row costs in memory.
func rowSize(v projections.View) int {
	return 200 + len(v.Title) + len(v.Description) + len(v.Email) + len(v.CreatedBy) + len(v.UpdatedBy)
}

// RowCacheBytes is a good size for Projector.Cache: the rows of some 20,000 recently
// written tickets.
const RowCacheBytes = 8 << 20

// commentChunk is how many comment rows Apply collects before it writes them.
const commentChunk = 5000

// queueUpsert queues one statement writing views as ticket rows, each only over an
// older row.
func queueUpsert(b *pgx.Batch, schema string, views []projections.View, hash func(string) []byte) {
	n := len(views)
	var (
		ids                                   = make([]uuid.UUID, n)
		titles, descs, emails, creators, upds = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		statuses                              = make([]string, n)
		versions, counts                      = make([]int32, n), make([]int32, n)
		created, updated                      = make([]time.Time, n), make([]time.Time, n)
		deleted                               = make([]bool, n)
		hashes                                = make([][]byte, n)
	)
	for i, v := range views {
		ids[i], titles[i], descs[i], emails[i], creators[i], upds[i] = v.ID, v.Title, v.Description, v.Email, v.CreatedBy, v.UpdatedBy
		statuses[i], versions[i], counts[i] = string(v.Status), int32(v.Version), int32(v.CommentCount)
		created[i], updated[i], deleted[i] = v.CreatedAt, v.UpdatedAt, v.Deleted
		hashes[i] = hashOf(hash, v.Email)
	}
	b.Queue(`INSERT INTO `+schema+`.tickets AS t (id, title, description, email, created_by, updated_by, status,
			version, comment_count, created_at, updated_at, deleted, email_hash)
		SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
			$8::int[], $9::int[], $10::timestamptz[], $11::timestamptz[], $12::bool[], $13::bytea[])
		ON CONFLICT (id) DO UPDATE SET title = excluded.title, description = excluded.description,
			email = excluded.email, created_by = excluded.created_by, updated_by = excluded.updated_by,
			status = excluded.status, version = excluded.version, comment_count = excluded.comment_count,
			created_at = excluded.created_at, updated_at = excluded.updated_at, deleted = excluded.deleted,
			email_hash = excluded.email_hash
		WHERE t.version < excluded.version`,
		ids, titles, descs, emails, creators, upds, statuses, versions, counts, created, updated, deleted, hashes)
}

// queueEraseComments queues the scrub of the listed comments of ticket id, as
// projections.EraseComment scrubs an embedded one.
func queueEraseComments(b *pgx.Batch, schema string, id uuid.UUID, comments []uuid.UUID) {
	b.Queue(`UPDATE `+schema+`.comments SET created_by = $3,
		email = CASE WHEN email = '' THEN '' ELSE $3 END
		WHERE ticket_id = $1 AND id = ANY($2)`, id, comments, ticket.Erased)
}

// queueComments queues one statement inserting comments (of the given tickets) that
// are not there yet.
func queueComments(b *pgx.Batch, schema string, tickets []uuid.UUID, comments []projections.Comment) {
	n := len(comments)
	ids := make([]uuid.UUID, n)
	versions := make([]int32, n)
	bodies, emails, creators := make([]string, n), make([]string, n), make([]string, n)
	at := make([]time.Time, n)
	for i, c := range comments {
		ids[i], versions[i], bodies[i], emails[i], creators[i], at[i] = c.ID, int32(c.Version), c.Body, c.Email, c.CreatedBy, c.CreatedAt
	}
	b.Queue(`INSERT INTO `+schema+`.comments (id, ticket_id, version, body, email, created_by, created_at)
		SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
		ON CONFLICT DO NOTHING`, ids, tickets, versions, bodies, emails, creators, at)
}

// ticketRow is a view as a row of readmodel.tickets, in the order of ticketColumns.
// UUIDs as [16]byte take pgx's binary fast path in COPY.
func ticketRow(v projections.View, hash func(string) []byte) []any {
	return []any{[16]byte(v.ID), v.Title, v.Description, v.Email, v.CreatedBy, v.UpdatedBy,
		string(v.Status), v.Version, v.CommentCount, v.CreatedAt, v.UpdatedAt, v.Deleted, hashOf(hash, v.Email)}
}

func (p Projector) schema() string {
	if p.Schema == "" {
		return "readmodel"
	}
	return p.Schema
}
