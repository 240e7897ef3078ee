package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/httpapi/auth"
)

// tokenTask holds the flags of the API token tasks: -create-token, -list-tokens and
// -revoke-token ID.
type tokenTask struct {
	create bool
	list   bool
	revoke string
	role   string
	name   string
	email  string
	ttl    time.Duration
	fs     *flag.FlagSet
}

// addTokenFlags registers the token tasks' flags on fs.
func addTokenFlags(fs *flag.FlagSet) *tokenTask {
	t := &tokenTask{fs: fs}
	fs.BoolVar(&t.create, "create-token", false, "create an API token (-role, -name, [-email], [-ttl]), print it alone on stdout and exit; it is shown only this once")
	fs.BoolVar(&t.list, "list-tokens", false, "list the API tokens (never the tokens themselves) and exit")
	fs.StringVar(&t.revoke, "revoke-token", "", "revoke the API token with this id and exit; every instance refuses it within a second")
	fs.StringVar(&t.role, "role", "", "with -create-token: admin, agent, auditor or requester")
	fs.StringVar(&t.name, "name", "", "with -create-token: who or what holds the token (shown in the history)")
	fs.StringVar(&t.email, "email", "", "with -create-token: the requester's email (required for -role requester)")
	fs.DurationVar(&t.ttl, "ttl", auth.DefaultTokenTTL, "with -create-token: the token's lifetime")
	return t
}

// requested reports whether a token task was asked for, and checks that its flags
// belong together.
func (t *tokenTask) requested() (bool, error) {
	n := 0
	for _, on := range []bool{t.create, t.list, t.revoke != ""} {
		if on {
			n++
		}
	}
	if n > 1 {
		return true, errors.New("-create-token, -list-tokens and -revoke-token are separate tasks: give one")
	}
	if !t.create {
		var stray []string
		t.fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "role", "name", "email", "ttl":
				stray = append(stray, "-"+f.Name)
			}
		})
		if len(stray) > 0 {
			return true, fmt.Errorf("%v only apply to -create-token", stray)
		}
	}
	return n == 1, nil
}

// run performs the task. Only the task's answer goes to stdout (the token, the list);
// logs go to stderr. Migrations are applied first, so a token can be made before the
// first start.
func (t *tokenTask) run(ctx context.Context, cfg Config, stdout io.Writer) error {
	level, _ := cfg.SlogLevel()
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if t.create {
		// checked before any connection: a typo is answered at once
		if err := (auth.NewToken{Name: t.name, Role: auth.Role(t.role), Email: t.email, TTL: t.ttl}).Validate(); err != nil {
			return fmt.Errorf("-create-token: -%w", err)
		}
	}
	var revokeID uuid.UUID
	if t.revoke != "" {
		id, err := uuid.Parse(t.revoke)
		if err != nil || len(t.revoke) != 36 {
			return fmt.Errorf("-revoke-token: %q is not a token id (a UUID, as -list-tokens shows)", t.revoke)
		}
		revokeID = id
	}
	mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := db.Migrate(mctx, cfg.DatabaseDSN, logWriter{log}); err != nil {
		return err
	}
	pool, err := db.Open(ctx, cfg.DatabaseDSN, db.PoolConfig{MaxConns: 2})
	if err != nil {
		return err
	}
	defer pool.Close()
	store := auth.NewTokenStore(pool)
	switch {
	case t.create:
		tok, rec, err := store.Create(ctx, auth.NewToken{Name: t.name, Role: auth.Role(t.role), Email: t.email, TTL: t.ttl})
		if err != nil {
			return fmt.Errorf("-create-token: %w", err)
		}
		log.Info("token created", "token_id", rec.ID, "name", rec.Name, "role", rec.Role, "expires_at", rec.ExpiresAt)
		_, err = fmt.Fprintln(stdout, tok)
		return err
	case t.list:
		ts, err := store.List(ctx)
		if err != nil {
			return err
		}
		return printTokens(stdout, ts, time.Now())
	default:
		if err := store.Revoke(ctx, revokeID); err != nil {
			return fmt.Errorf("-revoke-token %s: %w", revokeID, err)
		}
		log.Info("token revoked", "token_id", revokeID)
		return nil
	}
}

// printTokens writes the tokens as a table: never a token, nor a hash.
func printTokens(out io.Writer, ts []auth.Token, now time.Time) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tROLE\tEMAIL\tCREATED\tEXPIRES\tSTATE\tLAST USED")
	const f = "2006-01-02T15:04:05Z"
	for _, t := range ts {
		state := "active"
		switch {
		case t.RevokedAt != nil:
			state = "revoked " + t.RevokedAt.UTC().Format(f)
		case !now.Before(t.ExpiresAt):
			state = "expired"
		}
		used := "-"
		if t.LastUsedAt != nil {
			used = t.LastUsedAt.UTC().Format(f)
		}
		email := t.Email
		if email == "" {
			email = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, printable(t.Name, 40), t.Role, printable(email, 60),
			t.CreatedAt.UTC().Format(f), t.ExpiresAt.UTC().Format(f), state, used)
	}
	return tw.Flush()
}

// setupAuth returns the token store and the verifier of the server: nil with AUTH=off
// (logged as a warning). AUTH_BOOTSTRAP_TOKEN, when set, is registered as an admin
// token first (only its id is logged).
func setupAuth(ctx context.Context, cfg Config, pool *pgxpool.Pool, log *slog.Logger) (*auth.TokenStore, auth.Verifier, error) {
	store := auth.NewTokenStore(pool)
	store.Log = log
	if cfg.AuthBootstrapToken != "" {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		rec, err := store.Register(rctx, cfg.AuthBootstrapToken, auth.NewToken{Name: "bootstrap", Role: auth.RoleAdmin, TTL: auth.MaxTokenTTL})
		if err != nil {
			return nil, nil, fmt.Errorf("AUTH_BOOTSTRAP_TOKEN: %w", err)
		}
		log.Info("bootstrap admin token registered", "token_id", rec.ID, "revoked", rec.RevokedAt != nil)
	}
	if cfg.Auth == "off" {
		log.Warn("AUTH=off: authentication is disabled, every request is served as an admin; for local development only")
		return store, nil, nil
	}
	return store, store, nil
}

// setupJWT returns the verifier of JWTs from the OIDC provider, or nil when JWT login
// is off (OIDC_ISSUER empty) or authentication is (AUTH=off: every request is an admin
// anyway). A provider that cannot be reached at start is no error: the verifier logs it,
// answers JWTs 503 until its keys are fetched, and /readyz says so. ctx bounds the
// verifier's key refreshes.
func setupJWT(ctx context.Context, cfg Config, log *slog.Logger) (*auth.JWTVerifier, error) {
	if !cfg.OIDC.Enabled() {
		return nil, nil
	}
	if cfg.Auth == "off" {
		log.Warn("OIDC_ISSUER is set but AUTH=off: JWTs are not checked, every request is an admin")
		return nil, nil
	}
	v, err := auth.NewJWTVerifier(ctx, cfg.OIDC, log)
	if err != nil {
		return nil, fmt.Errorf("OIDC: %w", err)
	}
	return v, nil
}
