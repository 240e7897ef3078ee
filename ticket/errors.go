package ticket

import (
	"errors"
	"fmt"
	"strings"
)

// The error kinds of ticketd, defined once. Every error a command or a store returns
// wraps one of them, so callers (the HTTP layer above all) branch with errors.Is and
// never on message text.
var (
	// ErrNotFound: the ticket never existed or has been deleted.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: the input breaks a rule on its own (a field too long, a bad email).
	ErrInvalid = errors.New("invalid input")
	// ErrConflict: the input is fine but the ticket's state refuses it.
	ErrConflict = errors.New("conflict")
	// ErrPrecondition: a client precondition (If-Match) no longer holds.
	ErrPrecondition = errors.New("precondition failed")
	// ErrUnavailable: a dependency (Postgres) cannot be reached; the request may be retried.
	ErrUnavailable = errors.New("unavailable")
)

// ValidationError names the field that broke a rule and why. It wraps ErrInvalid.
type ValidationError struct {
	Field  string // the wire name of the field, e.g. "title"
	Reason string // human-readable, e.g. "must be at most 200 characters"
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Reason }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Unwrap() error { return ErrInvalid }

// TransitionError is returned when the ticket's status refuses a command: a status
// change the table does not allow, or a comment on a closed ticket. It wraps ErrConflict
// and carries what a client needs to recover: the current status and the allowed next ones.
type TransitionError struct {
	Current Status
	Wanted  Status // empty for a refused comment
	Allowed []Status
}

func (e *TransitionError) Error() string {
	allowed := make([]string, len(e.Allowed))
	for i, s := range e.Allowed {
		allowed[i] = string(s)
	}
	if e.Wanted == "" {
		return fmt.Sprintf("ticket is %s: comments are not accepted", e.Current)
	}
	return fmt.Sprintf("cannot change status from %s to %s (allowed: %s)", e.Current, e.Wanted, strings.Join(allowed, ", "))
}

// Unwrap makes errors.Is(err, ErrConflict) true.
func (e *TransitionError) Unwrap() error { return ErrConflict }
