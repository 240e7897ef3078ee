package auth_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/httpapi/auth"
	"github.com/ticketd/ticketd/ticket"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newStores returns two token stores on one fresh database (two instances of one
// deployment) sharing a test clock.
func newStores(t *testing.T) (a, b *auth.TokenStore, clk *clock) {
	t.Helper()
	pool, err := db.Open(context.Background(), dbtest.NewDatabase(t), db.PoolConfig{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	clk = &clock{t: time.Now().Truncate(time.Microsecond)}
	a, b = auth.NewTokenStore(pool), auth.NewTokenStore(pool)
	a.Now, b.Now = clk.Now, clk.Now
	return a, b, clk
}

func TestTokenCreateVerifyRevoke(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b, clk := newStores(t)
	tok, rec, err := a.Create(ctx, auth.NewToken{Name: "ops bot", Role: auth.RoleAgent, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "tkd_") || len(tok) != 4+43 || !auth.WellFormed(tok) {
		t.Fatalf("token %q: want tkd_ and 43 base64url characters", tok)
	}
	p, err := b.Verify(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	want := auth.Principal{ID: rec.ID.String(), Name: "ops bot", Role: auth.RoleAgent}
	if p != want {
		t.Fatalf("principal %+v, want %+v", p, want)
	}

	t.Run("unknown_and_malformed_are_unauthenticated", func(t *testing.T) {
		other, _ := auth.GenerateToken()
		for _, cred := range []string{other, "", "tkd_", tok + "x", strings.ToUpper(tok), "Bearer " + tok, tok[:len(tok)-1] + "!"} {
			if _, err := b.Verify(ctx, cred); !errors.Is(err, auth.ErrUnauthenticated) {
				t.Errorf("Verify(%q): %v, want ErrUnauthenticated", cred, err)
			}
		}
	})

	t.Run("revocation_holds_on_another_instance_within_a_second", func(t *testing.T) {
		if err := a.Revoke(ctx, rec.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Verify(ctx, tok); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Fatalf("revoking instance: %v, want ErrUnauthenticated", err)
		}
		// b verified the token less than a second ago: it may still trust its cache...
		clk.Add(time.Second)
		// ...but not a second later.
		if _, err := b.Verify(ctx, tok); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Fatalf("other instance after 1 s: %v, want ErrUnauthenticated", err)
		}
		if err := a.Revoke(ctx, rec.ID); err != nil {
			t.Fatalf("second revoke: %v, want nil (idempotent)", err)
		}
		if err := a.Revoke(ctx, uuid.New()); !errors.Is(err, auth.ErrTokenNotFound) {
			t.Fatalf("revoke unknown: %v, want ErrTokenNotFound", err)
		}
	})
}

func TestTokenExpiry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, _, clk := newStores(t)
	tok, _, err := a.Create(ctx, auth.NewToken{Name: "short", Role: auth.RoleAuditor, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	// cached or not, an expired token is refused
	if _, err := a.Verify(ctx, tok); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("expired: %v, want ErrUnauthenticated", err)
	}
}

func TestTokenValidation(t *testing.T) {
	t.Parallel()
	a, _, _ := newStores(t)
	for _, c := range []struct {
		name  string
		req   auth.NewToken
		field string
	}{
		{"blank_name", auth.NewToken{Name: " ", Role: auth.RoleAdmin}, "name"},
		{"unknown_role", auth.NewToken{Name: "x", Role: "root"}, "role"},
		{"requester_without_email", auth.NewToken{Name: "x", Role: auth.RoleRequester}, "email"},
		{"bad_email", auth.NewToken{Name: "x", Role: auth.RoleAgent, Email: "nope"}, "email"},
		{"negative_ttl", auth.NewToken{Name: "x", Role: auth.RoleAgent, TTL: -time.Hour}, "ttl"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := a.Create(context.Background(), c.req)
			var ve *ticket.ValidationError
			if !errors.As(err, &ve) || ve.Field != c.field {
				t.Fatalf("Create(%+v): %v, want a validation error on %s", c.req, err, c.field)
			}
		})
	}
}

func TestTokenLastUsedWrittenOffThePath(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, _, _ := newStores(t)
	tok, rec, err := a.Create(ctx, auth.NewToken{Name: "r", Role: auth.RoleRequester, Email: "r@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	go a.Run(ctx)
	if p, err := a.Verify(ctx, tok); err != nil || p.Email != "r@example.com" {
		t.Fatalf("Verify: %+v, %v", p, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ts, err := a.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) != 1 || ts[0].ID != rec.ID {
			t.Fatalf("list %+v", ts)
		}
		if ts[0].LastUsedAt != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("last_used_at not written within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
