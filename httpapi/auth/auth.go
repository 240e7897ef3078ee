// Package auth says who a request comes from and what it may do: principals, roles and
// their permissions, and the Verifier interface that each way in (API tokens, OIDC
// JWTs) implements. The HTTP layer authenticates a request's bearer credential with a
// Verifier, keeps the principal in the request, and checks a route's permission
// against the principal's role.
package auth

import (
	"context"
	"errors"
	"slices"
)

// Role is a fixed set of permissions.
type Role string

// The roles (issue 14).
const (
	// RoleAdmin may do everything, DELETE and token management included.
	RoleAdmin Role = "admin"
	// RoleAgent reads everything, creates, changes status and comments; no DELETE.
	RoleAgent Role = "agent"
	// RoleAuditor reads everything (list, get, comments, history, ?version=N); no write.
	RoleAuditor Role = "auditor"
	// RoleRequester is bound to one email: creates tickets as that email, and reads,
	// comments on and closes only tickets whose requester email is theirs.
	RoleRequester Role = "requester"
)

// Roles lists every role, in a fixed order.
func Roles() []Role { return []Role{RoleAdmin, RoleAgent, RoleAuditor, RoleRequester} }

// ParseRole returns the role named s, or an error naming the roles.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if slices.Contains(Roles(), r) {
		return r, nil
	}
	return "", errors.New("role must be one of admin, agent, auditor, requester")
}

// Permission is one thing a route needs.
type Permission string

// The permissions routes check.
const (
	PermRead         Permission = "tickets:read"          // list, get, comments, ?version=N, …/events
	PermHistory      Permission = "tickets:history"       // GET …/history
	PermCreate       Permission = "tickets:create"        // POST /v1/ticket/
	PermComment      Permission = "tickets:comment"       // POST …/comments
	PermChangeStatus Permission = "tickets:change-status" // PUT …/{id} (a requester: close only)
	PermDelete       Permission = "tickets:delete"        // DELETE …/{id}
	PermTokens       Permission = "tokens:manage"         // /v1/tokens
	PermWebhooks     Permission = "webhooks:manage"       // /v1/webhooks
	PermMetrics      Permission = "metrics:read"          // /metrics
	PermErase        Permission = "subjects:erase"        // DELETE /v1/subjects/{email}
)

var permissions = map[Role][]Permission{
	RoleAdmin:     {PermRead, PermHistory, PermCreate, PermComment, PermChangeStatus, PermDelete, PermTokens, PermWebhooks, PermMetrics, PermErase},
	RoleAgent:     {PermRead, PermHistory, PermCreate, PermComment, PermChangeStatus},
	RoleAuditor:   {PermRead, PermHistory, PermMetrics},
	RoleRequester: {PermRead, PermHistory, PermCreate, PermComment, PermChangeStatus},
}

// Can reports whether role r has permission p. A requester's permissions hold only for
// tickets whose requester email is theirs (the HTTP layer checks that, answering 404
// for another's ticket), and its PermChangeStatus only to close.
func (r Role) Can(p Permission) bool { return slices.Contains(permissions[r], p) }

// Principal is who a request comes from.
type Principal struct {
	// ID identifies the credential: an API token's id, or "jwt:<issuer>#<subject>".
	ID string `json:"id"`
	// Name is the token's name or the JWT's name claim, for people reading the history.
	Name string `json:"name"`
	Role Role   `json:"role"`
	// Email binds a requester to its tickets; optional for other roles.
	Email string `json:"email,omitempty"`
}

// ErrUnauthenticated is wrapped by a Verifier's error for a credential that is missing,
// malformed, unknown, expired or revoked. The HTTP layer answers all of them with the
// same 401, so the answer is no oracle of which.
var ErrUnauthenticated = errors.New("unauthenticated")

// Verifier turns a bearer credential into its principal. Errors: ErrUnauthenticated
// (wrapped) for a credential that does not authenticate; anything else is a failure to
// check (a database that is down), which the HTTP layer answers 503.
type Verifier interface {
	Verify(ctx context.Context, credential string) (Principal, error)
}
