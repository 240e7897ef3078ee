package main

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/httpapi/auth"
)

// tokenFor creates a token of role (and email) on s's database through the token store.
func tokenFor(t *testing.T, s *testServer, role auth.Role, email string, ttl time.Duration) (string, auth.Token) {
	t.Helper()
	pool, err := db.Open(context.Background(), s.DSN, db.PoolConfig{MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	tok, rec, err := auth.NewTokenStore(pool).Create(context.Background(), auth.NewToken{Name: string(role) + " of the test", Role: role, Email: email, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return tok, rec
}

func bearerOf(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

// TestAuthRolesByRoute is the table of every role (and no token) on every route: the
// status, and the problem's code (and permission) for 401, 403 and 404.
func TestAuthRolesByRoute(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	const mine, theirs = "req@example.com", "other@example.com"
	tokens := map[string]string{"admin": testAdminToken}
	for _, r := range []auth.Role{auth.RoleAgent, auth.RoleAuditor} {
		tokens[string(r)], _ = tokenFor(t, s, r, "", time.Hour)
	}
	tokens["requester"], _ = tokenFor(t, s, auth.RoleRequester, mine, time.Hour)
	expired, _ := tokenFor(t, s, auth.RoleAdmin, "", time.Nanosecond)
	revoked, rec := tokenFor(t, s, auth.RoleAdmin, "", time.Hour)
	s.do(t, "DELETE", "/v1/tokens/"+rec.ID.String(), nil).expect(t, 204)

	newTicket := func(email string) string {
		var v struct{ ID string }
		s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "t", "email": email, "created_by": "c"}).expect(t, 201).JSON(t, &v)
		return v.ID
	}
	own := "/v1/ticket/" + newTicket(mine)
	other := "/v1/ticket/" + newTicket(theirs)
	create := func(email string) map[string]any {
		return map[string]any{"title": "t", "email": email, "created_by": "c"}
	}
	comment := map[string]any{"body": "b", "created_by": "c"}
	answer := map[string]any{"status": "answered", "updated_by": "u"}
	closeIt := map[string]any{"status": "closed", "updated_by": "u"}
	newToken := map[string]any{"name": "n", "role": "agent"}
	newWebhook := map[string]any{"url": "https://hooks.example.com/ticketd", "events": []string{"*"}}

	type want struct {
		status int
		code   string // the problem's code, for errors
		perm   string // the missing permission, for 403
	}
	ok := func(st int) want { return want{status: st} }
	deny := func(perm auth.Permission) want { return want{403, "forbidden", string(perm)} }
	hidden := want{404, "ticket-not-found", ""}

	// Each route is run by each role, in this order, on tickets that stay usable: the
	// writes that change state (PUT, DELETE) use fresh tickets.
	type route struct {
		name   string
		method string
		path   func() string
		body   any
		byRole map[string]want
	}
	fixed := func(p string) func() string { return func() string { return p } }
	fresh := func(email string) func() string { return func() string { return "/v1/ticket/" + newTicket(email) } }
	routes := []route{
		{"list", "GET", fixed("/v1/ticket/"), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": ok(200)}},
		{"create", "POST", fixed("/v1/ticket/"), create(mine), map[string]want{"admin": ok(201), "agent": ok(201), "auditor": deny(auth.PermCreate), "requester": ok(201)}},
		{"create_as_another", "POST", fixed("/v1/ticket/"), create(theirs), map[string]want{"admin": ok(201), "agent": ok(201), "auditor": deny(auth.PermCreate), "requester": {422, "validation-failed", ""}}},
		{"get_own", "GET", fixed(own), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": ok(200)}},
		{"get_other", "GET", fixed(other), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": hidden}},
		{"get_version_other", "GET", fixed(other + "?version=1"), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": hidden}},
		{"get_version_own", "GET", fixed(own + "?version=1"), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": ok(200)}},
		{"comments_other", "GET", fixed(other + "/comments"), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": hidden}},
		{"history_own", "GET", fixed(own + "/history"), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": ok(200)}},
		{"history_other", "GET", fixed(other + "/history"), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": hidden}},
		{"events_own", "GET", fixed(own + "/events"), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": ok(200)}},
		{"events_other", "GET", fixed(other + "/events"), nil, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": ok(200), "requester": hidden}},
		{"comment_own", "POST", fixed(own + "/comments"), comment, map[string]want{"admin": ok(201), "agent": ok(201), "auditor": deny(auth.PermComment), "requester": ok(201)}},
		{"comment_other", "POST", fixed(other + "/comments"), comment, map[string]want{"admin": ok(201), "agent": ok(201), "auditor": deny(auth.PermComment), "requester": hidden}},
		{"answer_own", "PUT", fresh(mine), answer, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": deny(auth.PermChangeStatus), "requester": deny(auth.PermChangeStatus)}},
		{"close_own", "PUT", fresh(mine), closeIt, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": deny(auth.PermChangeStatus), "requester": ok(200)}},
		{"close_other", "PUT", fresh(theirs), closeIt, map[string]want{"admin": ok(200), "agent": ok(200), "auditor": deny(auth.PermChangeStatus), "requester": hidden}},
		{"delete", "DELETE", fresh(mine), nil, map[string]want{"admin": ok(204), "agent": deny(auth.PermDelete), "auditor": deny(auth.PermDelete), "requester": deny(auth.PermDelete)}},
		{"tokens_list", "GET", fixed("/v1/tokens"), nil, map[string]want{"admin": ok(200), "agent": deny(auth.PermTokens), "auditor": deny(auth.PermTokens), "requester": deny(auth.PermTokens)}},
		{"tokens_create", "POST", fixed("/v1/tokens"), newToken, map[string]want{"admin": ok(201), "agent": deny(auth.PermTokens), "auditor": deny(auth.PermTokens), "requester": deny(auth.PermTokens)}},
		{"webhooks_list", "GET", fixed("/v1/webhooks"), nil, map[string]want{"admin": ok(200), "agent": deny(auth.PermWebhooks), "auditor": deny(auth.PermWebhooks), "requester": deny(auth.PermWebhooks)}},
		{"webhooks_create", "POST", fixed("/v1/webhooks"), newWebhook, map[string]want{"admin": ok(201), "agent": deny(auth.PermWebhooks), "auditor": deny(auth.PermWebhooks), "requester": deny(auth.PermWebhooks)}},
		{"erase_subject", "DELETE", fixed("/v1/subjects/nobody%40example.com"), nil, map[string]want{"admin": ok(404), "agent": deny(auth.PermErase), "auditor": deny(auth.PermErase), "requester": deny(auth.PermErase)}},
		{"metrics", "GET", fixed("/metrics"), nil, map[string]want{"admin": ok(200), "agent": deny(auth.PermMetrics), "auditor": ok(200), "requester": deny(auth.PermMetrics)}},
	}
	var unauthenticated []byte
	for _, rt := range routes {
		t.Run(rt.name, func(t *testing.T) {
			for _, role := range []string{"admin", "agent", "auditor", "requester"} {
				w := rt.byRole[role]
				path := rt.path()
				r := s.do(t, rt.method, path, rt.body, bearerOf(tokens[role])...)
				if r.Status != w.status {
					t.Errorf("%s %s %s: status %d, want %d; body %s", role, rt.method, path, r.Status, w.status, r.Body)
					continue
				}
				if w.code != "" {
					p := r.problem(t)
					if p["code"] != w.code || (w.perm != "" && p["permission"] != w.perm) {
						t.Errorf("%s %s %s: problem %v, want code %s permission %q", role, rt.method, path, p, w.code, w.perm)
					}
					if w.status == 422 {
						if errs, _ := p["errors"].([]any); len(errs) != 1 || errs[0].(map[string]any)["field"] != "email" {
							t.Errorf("%s: 422 must name email: %v", role, p)
						}
					}
				}
			}
			// no token, a wrong scheme, garbage, an unknown, expired or revoked token:
			// one 401, byte for byte (but the instance), with WWW-Authenticate
			other, _ := auth.GenerateToken()
			for _, h := range []string{"", "Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer nonsense", "Bearer " + other,
				"Bearer " + expired, "Bearer " + revoked, "bearer  " + strings.Repeat("x", 10000), "Token " + testAdminToken} {
				r := s.do(t, rt.method, rt.path(), rt.body, "Authorization", h)
				if r.Status != 401 || !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("%s %s with Authorization %.40q: %d %q, want 401 with WWW-Authenticate: Bearer; body %s", rt.method, rt.name, h, r.Status, r.Header.Get("WWW-Authenticate"), r.Body)
					continue
				}
				p := r.problem(t)
				delete(p, "instance")
				body, _ := json.Marshal(p)
				if unauthenticated == nil {
					unauthenticated = body
				} else if string(body) != string(unauthenticated) {
					t.Errorf("401 bodies differ: %s vs %s", body, unauthenticated)
				}
			}
		})
	}

	t.Run("open_routes_need_no_token", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz", "/api/openapi.json", "/api/openapi", "/api/redoc"} {
			s.do(t, "GET", p, nil, "Authorization", "").expect(t, 200)
		}
		var ready map[string]any
		s.do(t, "GET", "/readyz", nil, "Authorization", "").JSON(t, &ready)
		if ready["auth"] != "on" {
			t.Errorf("readyz auth %v, want on", ready["auth"])
		}
	})
	t.Run("token_in_query_is_refused", func(t *testing.T) {
		for _, q := range []string{"access_token=" + testAdminToken, "token=x", "api_key=x"} {
			r := s.do(t, "GET", "/v1/ticket/?"+q, nil, "Authorization", "")
			if r.Status != 400 || r.problem(t)["code"] != "credentials-in-query" {
				t.Errorf("?%.20s: %d %s, want 400 credentials-in-query", q, r.Status, r.Body)
			}
			// also with a valid header: the URL leaked the token, the request is refused
			s.do(t, "GET", "/v1/ticket/?"+q, nil).expect(t, 400)
		}
	})
}

// TestAuthRequesterIsolation: a requester's list holds only its tickets, whatever the
// filter, and a cursor of a wider listing cannot widen it.
func TestAuthRequesterIsolation(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	const mine = "mine@example.com"
	req, _ := tokenFor(t, s, auth.RoleRequester, mine, time.Hour)
	for i := range 6 {
		email := mine
		if i%2 == 1 {
			email = "someone@example.com"
		}
		s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "t", "email": email, "created_by": "c"}).expect(t, 201)
	}
	list := func(path string, headers ...string) ([]map[string]any, string) {
		t.Helper()
		var items []map[string]any
		r := s.do(t, "GET", path, nil, headers...).expect(t, 200)
		r.JSON(t, &items)
		next := ""
		if l := r.Header.Get("Link"); l != "" {
			next = l[strings.Index(l, "<")+1 : strings.Index(l, ">")]
		}
		return items, next
	}
	// the admin's page 1 of 2: its cursor is for the unfiltered listing
	eventually(t, 10*time.Second, "all six listed", func() bool {
		var all []any
		s.do(t, "GET", "/v1/ticket/?limit=100", nil).JSON(t, &all)
		return len(all) == 6
	})
	_, wide := list("/v1/ticket/?limit=2")
	seen := 0
	for path := "/v1/ticket/?limit=2"; path != ""; {
		items, next := list(path, bearerOf(req)...)
		for _, it := range items {
			if it["email"] != mine {
				t.Fatalf("requester sees %v", it)
			}
			seen++
		}
		path = next
	}
	if seen != 3 {
		t.Fatalf("requester listed %d tickets, want its 3", seen)
	}
	u, _ := url.Parse(wide)
	r := s.do(t, "GET", "/v1/ticket/?limit=2&cursor="+url.QueryEscape(u.Query().Get("cursor")), nil, bearerOf(req)...)
	if r.Status != 422 {
		t.Fatalf("a wider listing's cursor: %d %s, want 422", r.Status, r.Body)
	}
	r = s.do(t, "GET", "/v1/ticket/?email=someone@example.com", nil, bearerOf(req)...)
	if r.Status != 422 || !strings.Contains(string(r.Body), `"field":"email"`) {
		t.Fatalf("another's email filter: %d %s, want 422 naming email", r.Status, r.Body)
	}
}

// TestIdempotencyKeyScopedToPrincipal: the same Idempotency-Key from two principals is
// two keys (B never gets A's ticket back, and B claiming a key first with a junk body
// does not refuse A's request), and the history shows a key to its principal, admins
// and auditors only.
func TestIdempotencyKeyScopedToPrincipal(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	a, recA := tokenFor(t, s, auth.RoleAgent, "", time.Hour)
	b, _ := tokenFor(t, s, auth.RoleAgent, "", time.Hour)
	auditor, _ := tokenFor(t, s, auth.RoleAuditor, "", time.Hour)
	body := map[string]any{"title": "t", "email": "e@example.com", "created_by": "c"}
	create := func(tok, key string, body any) (string, bool) {
		t.Helper()
		var v struct{ ID string }
		r := s.do(t, "POST", "/v1/ticket/", body, append(bearerOf(tok), "Idempotency-Key", key)...).expect(t, 201)
		r.JSON(t, &v)
		return v.ID, r.Header.Get("Idempotent-Replayed") == "true"
	}
	idA, _ := create(a, "k-shared", body)
	idB, replayed := create(b, "k-shared", body)
	if idB == idA || replayed {
		t.Fatalf("B with A's key got %s (replayed %v), A's is %s", idB, replayed, idA)
	}
	if again, replayed := create(a, "k-shared", body); again != idA || !replayed {
		t.Fatalf("A's retry got %s (replayed %v), want %s replayed", again, replayed, idA)
	}
	// B claims a key first with a junk body: A's request under that key still runs
	create(b, "k-claimed", map[string]any{"title": "junk", "email": "j@example.com", "created_by": "j"})
	if _, replayed := create(a, "k-claimed", body); replayed {
		t.Fatal("A's request under B's claimed key was replayed")
	}

	keyShown := func(tok string) any {
		t.Helper()
		var h []struct {
			Metadata map[string]any `json:"metadata"`
		}
		s.do(t, "GET", "/v1/ticket/"+idA+"/history", nil, bearerOf(tok)...).expect(t, 200).JSON(t, &h)
		return h[0].Metadata["idempotency_key"]
	}
	for who, tok := range map[string]string{"its principal": a, "an admin": testAdminToken, "an auditor": auditor} {
		if k := keyShown(tok); k != "k-shared" {
			t.Errorf("%s sees key %v, want k-shared", who, k)
		}
	}
	if k := keyShown(b); k != nil {
		t.Errorf("another agent sees key %v", k)
	}
	var h []struct {
		Principal map[string]any `json:"principal"`
	}
	s.do(t, "GET", "/v1/ticket/"+idA+"/history", nil, bearerOf(b)...).JSON(t, &h)
	if h[0].Principal["id"] != recA.ID.String() {
		t.Errorf("history principal %v, want A's token %s", h[0].Principal, recA.ID)
	}
}
