package ticket

// Status is a ticket's place in the workflow. The zero value is not a status.
type Status string

// The wire values of the statuses.
const (
	StatusOpen       Status = "open"
	StatusAnswered   Status = "answered"
	StatusWaitAnswer Status = "wait_answer"
	StatusClosed     Status = "closed"
)

// Statuses lists every status in workflow order.
var Statuses = []Status{StatusOpen, StatusAnswered, StatusWaitAnswer, StatusClosed}

// transitions is the status table of DESIGN §1 without the no-op diagonal: from a
// status, the statuses a ticket may move to.
var transitions = map[Status][]Status{
	StatusOpen:       {StatusAnswered, StatusClosed},
	StatusAnswered:   {StatusWaitAnswer, StatusClosed},
	StatusWaitAnswer: {StatusAnswered, StatusClosed},
	StatusClosed:     {},
}

// Valid reports whether s is one of the four statuses.
func (s Status) Valid() bool {
	_, ok := transitions[s]
	return ok
}

// Next returns the statuses a ticket in status s may move to, in workflow order.
// It returns a fresh slice the caller may keep.
func (s Status) Next() []Status {
	return append([]Status{}, transitions[s]...)
}

// CanMoveTo reports whether the table allows s -> to. The no-op s -> s is not a
// transition and reports false.
func (s Status) CanMoveTo(to Status) bool {
	for _, n := range transitions[s] {
		if n == to {
			return true
		}
	}
	return false
}

// ParseStatus returns the status named by a wire value, or a ValidationError for field.
func ParseStatus(field, v string) (Status, error) {
	s := Status(v)
	if !s.Valid() {
		return "", &ValidationError{Field: field, Reason: "must be one of open, answered, wait_answer, closed"}
	}
	return s, nil
}
