package eventstore

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ticketd/ticketd/ticket"
)

// ErrConcurrency is wrapped by every ConcurrencyError.
var ErrConcurrency = errors.New("concurrent append")

// ConcurrencyError says another writer appended to the stream after it was loaded: the
// expected version no longer holds. The command may be retried from a fresh load.
type ConcurrencyError struct {
	StreamID uuid.UUID
	Expected int
}

func (e *ConcurrencyError) Error() string {
	return fmt.Sprintf("stream %s moved past version %d", e.StreamID, e.Expected)
}

// Unwrap makes errors.Is(err, ErrConcurrency) true.
func (e *ConcurrencyError) Unwrap() error { return ErrConcurrency }

// interpret translates driver errors into the kinds of package ticket at the store's
// edge: a unique clash on (stream_id, version) is a ConcurrencyError, a server or
// network that cannot be reached is ticket.ErrUnavailable. Others pass through wrapped.
func interpret(err error, stream uuid.UUID, expected int) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "23505" && pe.ConstraintName == "events_stream_version":
			return &ConcurrencyError{StreamID: stream, Expected: expected}
		case Unreachable(pe):
			return fmt.Errorf("%w: %w", ticket.ErrUnavailable, err)
		}
		return err
	}
	if Unreachable(err) {
		return fmt.Errorf("%w: %w", ticket.ErrUnavailable, err)
	}
	return err
}

// Unreachable reports whether err means Postgres could not be reached in time (dial
// failure, broken connection, pool acquire timing out), as opposed to a query error.
func Unreachable(err error) bool {
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) {
		// connection exception, insufficient resources, operator intervention (the
		// server shutting down: 57P01 admin_shutdown and friends)
		return len(pe.Code) == 5 && (pe.Code[:2] == "08" || pe.Code[:2] == "53" || pe.Code[:3] == "57P")
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) ||
		pgconn.SafeToRetry(err) || errors.Is(err, ticket.ErrUnavailable)
}
