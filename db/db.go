// Package db owns ticketd's schema: the dbmate migrations embedded in the binary, how
// they are applied (creating the database if needed, under an advisory lock so several
// instances may start at once), and the Postgres connection pool.
package db

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"strings"
	"time"

	"github.com/amacneil/dbmate/v2/pkg/dbmate"
	_ "github.com/amacneil/dbmate/v2/pkg/driver/postgres" // dbmate's postgres driver
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	pgxuuid "github.com/vgarvardt/pgx-google-uuid/v5"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrateLock is the advisory lock key held while migrations run ("ticketd" in ASCII).
const migrateLock int64 = 0x7469636b657464

// ParseDSN checks that dsn is a postgres:// URL with a database name and returns it.
// dbmate needs the URL form; pgx accepts it as well.
func ParseDSN(dsn string) (*url.URL, error) {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		return nil, fmt.Errorf("DATABASE_DSN must be a URL like postgres://user@host:5432/dbname?sslmode=disable")
	}
	if strings.Trim(u.Path, "/") == "" {
		return nil, fmt.Errorf("DATABASE_DSN must name a database (the path of the URL)")
	}
	return u, nil
}

// Migrate creates the database named in dsn if it is missing and applies every pending
// migration, holding a Postgres advisory lock so concurrent starts apply each file once.
// Progress lines go to log. Any failure is returned: a service must not start on a
// schema it does not know.
func Migrate(ctx context.Context, dsn string, log io.Writer) error {
	return MigrateFS(ctx, dsn, migrations, log)
}

// MigrateFS is Migrate with the migration files of fsys (a "migrations" directory),
// for tests that build a database as an older ticketd left it (dbtest.NewDatabaseAt).
func MigrateFS(ctx context.Context, dsn string, fsys fs.FS, log io.Writer) error {
	u, err := ParseDSN(dsn)
	if err != nil {
		return err
	}
	if err := ensureDatabase(ctx, u); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("migrate: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrateLock); err != nil {
		return fmt.Errorf("migrate: take advisory lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrateLock) //nolint:errcheck // closing the session releases it anyway

	m := dbmate.New(u)
	m.FS = fsys
	m.MigrationsDir = []string{"migrations"}
	m.AutoDumpSchema = false
	m.Log = log
	m.Strict = true
	if err := m.Migrate(); err != nil && !errors.Is(err, dbmate.ErrNoMigrationFiles) {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// ensureDatabase creates the target database through the server's "postgres" database.
// A concurrent creation (42P04 duplicate_database) counts as success.
func ensureDatabase(ctx context.Context, u *url.URL) error {
	name := strings.Trim(u.Path, "/")
	cfg, err := pgx.ParseConfig(u.String())
	if err != nil {
		return fmt.Errorf("parse DATABASE_DSN: %w", err)
	}
	// Try the database itself first: the common case, and it needs no rights on "postgres".
	if c, err := pgx.ConnectConfig(ctx, cfg); err == nil {
		return c.Close(ctx)
	} else if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "3D000" {
		return fmt.Errorf("connect to %s: %w", name, err)
	}
	cfg.Database = "postgres"
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to create database %s: %w", name, err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	_, err = c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "42P04" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// PoolConfig tunes the connection pool.
type PoolConfig struct {
	MaxConns int32
}

// Open returns a pgx pool for dsn. It does not wait for the server: the first use does.
func Open(ctx context.Context, dsn string, pc PoolConfig) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_DSN: %w", err)
	}
	if pc.MaxConns > 0 {
		cfg.MaxConns = pc.MaxConns
	}
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	cfg.HealthCheckPeriod = 5 * time.Second
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "ticketd"
	// A uuid.UUID is a driver.Valuer, which pgx honours before anything else: each one
	// would go as a string and be parsed back, element by element in the projectors'
	// uuid[] arrays (12% of the CPU of a projector draining a backlog). Registered, it
	// goes as its 16 bytes, and uuid columns scan straight into uuid.UUID.
	cfg.AfterConnect = func(_ context.Context, c *pgx.Conn) error {
		pgxuuid.Register(c.TypeMap())
		return nil
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	return pool, nil
}

// Migrations returns the embedded migration files (for tools and tests).
func Migrations() fs.FS { return migrations }
