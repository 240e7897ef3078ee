package main

import (
	"bytes"
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/httpapi/auth"
)

// TestTokenCLI: -create-token prints the token alone on stdout, -list-tokens never
// shows it, -revoke-token makes it stop verifying.
func TestTokenCLI(t *testing.T) {
	t.Parallel()
	env := processEnv(t, dbtest.NewDatabase(t))
	getenv := func(k string) string { return env[k] }
	cli := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(t.Context(), args, getenv, &out)
		return out.String(), err
	}
	out, err := cli("-create-token", "-role", "requester", "-name", "Ada's laptop", "-email", "ada@example.com", "-ttl", "24h")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^tkd_[A-Za-z0-9_-]{43}\n$`).MatchString(out) {
		t.Fatalf("stdout %q: want the token alone on one line", out)
	}
	tok := strings.TrimSpace(out)

	pool, err := db.Open(context.Background(), env["DATABASE_DSN"], db.PoolConfig{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := auth.NewTokenStore(pool)
	store.CacheTTL = -1
	p, err := store.Verify(t.Context(), tok)
	if err != nil || p.Role != auth.RoleRequester || p.Email != "ada@example.com" || p.Name != "Ada's laptop" {
		t.Fatalf("Verify: %+v, %v", p, err)
	}

	list, err := cli("-list-tokens")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(list, p.ID) || !strings.Contains(list, "active") || strings.Contains(list, tok) || strings.Contains(list, tok[4:20]) {
		t.Fatalf("list must name the token's id and state, never the token:\n%s", list)
	}

	if out, err := cli("-revoke-token", p.ID); err != nil || out != "" {
		t.Fatalf("revoke: stdout %q, err %v", out, err)
	}
	if _, err := store.Verify(t.Context(), tok); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("revoked token verifies: %v", err)
	}
	if list, _ := cli("-list-tokens"); !strings.Contains(list, "revoked") {
		t.Fatalf("list after revoke:\n%s", list)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-create-token", "-role", "requester", "-name", "x"}, "-email"},
		{[]string{"-create-token", "-role", "root", "-name", "x"}, "-role"},
		{[]string{"-create-token", "-role", "agent"}, "-name"},
		{[]string{"-list-tokens", "-role", "agent"}, "-role"},
		{[]string{"-list-tokens", "-create-token"}, "one task per invocation"},
		{[]string{"-revoke-token", "nope"}, "not a token id"},
		{[]string{"-revoke-token", "01936f1e-7c4a-7000-8000-000000000000"}, "no token"},
	} {
		if out, err := cli(c.args...); err == nil || !strings.Contains(err.Error(), c.want) || out != "" {
			t.Errorf("%v: stdout %q, err %v; want an error naming %s", c.args, out, err, c.want)
		}
	}
}
