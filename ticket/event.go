package ticket

import (
	"fmt"
	"reflect"
	"slices"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/google/uuid"
)

// Event is one past-tense fact in a ticket's stream. Version is its place in the
// stream (1, 2, 3 … without gaps); At and Actor say when and by whom. Data is one of
// Opened, CommentAdded, StatusChanged, Deleted or SubjectErased.
type Event struct {
	TicketID uuid.UUID
	Version  int
	At       time.Time
	Actor    string
	Data     EventData
}

// Type is the stored name of the event's kind, e.g. "TicketOpened".
func (e Event) Type() string { return typeName(e.Data) }

// EventData is the payload of an event. The set is closed: only this package implements it.
type EventData interface {
	EventType() string
	sealed()
}

// Event type names, as stored in the event table and shown in the history.
const (
	TypeOpened        = "TicketOpened"
	TypeCommentAdded  = "CommentAdded"
	TypeStatusChanged = "StatusChanged"
	TypeDeleted       = "TicketDeleted"
	TypeSubjectErased = "SubjectErased"
)

// Erased is what a personal field reads once its data subject is erased: in the
// history, in a replay and in every read model.
const Erased = "[erased]"

// Opened records a ticket's creation. A ticket is always opened in StatusOpen.
type Opened struct {
	Title       string `json:"title"`
	Description string `json:"description"`
	Email       string `json:"email"`
	CreatedBy   string `json:"created_by"`
}

// CommentAdded records a comment on the ticket.
type CommentAdded struct {
	CommentID uuid.UUID `json:"comment_id"`
	Body      string    `json:"body"`
	Email     string    `json:"email,omitempty"`
	CreatedBy string    `json:"created_by"`
}

// StatusChanged records a move in the workflow, with both ends so that the history
// reads on its own.
type StatusChanged struct {
	From      Status `json:"from"`
	To        Status `json:"to"`
	UpdatedBy string `json:"updated_by"`
}

// Deleted records the ticket's deletion. The stream stays; the ticket is gone from
// every read endpoint but its history.
type Deleted struct {
	DeletedBy string `json:"deleted_by,omitempty"`
}

// SubjectErased records that a data subject's personal data was erased
// (crypto-shredded: their data key destroyed) and names what of this ticket was
// theirs, so the read models can scrub it: the requester's fields (email, created_by
// and the names recorded under the requester, updated_by) when Requester, and the
// email and author of each listed comment. Subject is the subject's keyed id (hex),
// never the email; ErasedBy and Reason say who asked and why (Reason is an operator's
// note and must not itself hold personal data). It is the one event a deleted or
// closed ticket still takes.
type SubjectErased struct {
	Subject   string      `json:"subject"`
	Requester bool        `json:"requester,omitempty"`
	Comments  []uuid.UUID `json:"comments,omitempty"`
	ErasedBy  string      `json:"erased_by"`
	Reason    string      `json:"reason,omitempty"`
}

func (Opened) EventType() string        { return TypeOpened }
func (CommentAdded) EventType() string  { return TypeCommentAdded }
func (StatusChanged) EventType() string { return TypeStatusChanged }
func (Deleted) EventType() string       { return TypeDeleted }
func (SubjectErased) EventType() string { return TypeSubjectErased }

func (Opened) sealed()        {}
func (CommentAdded) sealed()  {}
func (StatusChanged) sealed() {}
func (Deleted) sealed()       {}
func (SubjectErased) sealed() {}

// EventKinds returns one zero value of every kind of event data, in a fixed order. The
// set is closed, so tests use it to prove that every reader of events (decoding, the
// read models' fold) has a case for every kind: adding a kind here without one fails
// a test, not production.
func EventKinds() []EventData { return slices.Clone(kinds) }

var kinds = []EventData{Opened{}, CommentAdded{}, StatusChanged{}, Deleted{}, SubjectErased{}}

// kindTypes are the kinds' Go types, by stored type name, for DecodeData.
var kindTypes = func() map[string]reflect.Type {
	m := make(map[string]reflect.Type, len(kinds))
	for _, k := range kinds {
		m[k.EventType()] = reflect.TypeOf(k)
	}
	return m
}()

// DecodeData turns a stored type name and JSON payload back into event data, for
// every kind EventKinds lists (so a kind missing there cannot be read back, and a
// round-trip test of it fails). An unknown type is an error: the store never holds one
// this binary cannot read.
func DecodeData(typ string, payload []byte) (EventData, error) {
	t, ok := kindTypes[typ]
	if !ok {
		return nil, fmt.Errorf("unknown event type %q", typ)
	}
	p := reflect.New(t)
	if err := gojson.Unmarshal(payload, p.Interface()); err != nil {
		return nil, fmt.Errorf("decode %s: %w", typ, err)
	}
	return p.Elem().Interface().(EventData), nil
}
