// Package dbtest gives each test its own migrated Postgres database, so tests run in
// parallel against the real server without seeing each other's rows. The server is
// the one named by TEST_DATABASE_DSN (scripts/test-env.sh sets it).
package dbtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/pii"
)

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
	counter      atomic.Int64
)

// ServerDSN returns TEST_DATABASE_DSN, or the local default.
func ServerDSN() string {
	if v := os.Getenv("TEST_DATABASE_DSN"); v != "" {
		return v
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// WithDatabase returns dsn pointing at database name instead.
func WithDatabase(dsn, name string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		panic(err)
	}
	u.Path = "/" + name
	return u.String()
}

// template migrates, once per process, a template database named after the
// migrations' content, so unchanged migrations are applied once and not per test.
func template(ctx context.Context) (string, error) {
	templateOnce.Do(func() {
		h := sha256.New()
		_ = fs.WalkDir(db.Migrations(), ".", func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				b, _ := fs.ReadFile(db.Migrations(), path)
				h.Write([]byte(path))
				h.Write(b)
			}
			return nil
		})
		templateName = "ticketd_tmpl_" + hex.EncodeToString(h.Sum(nil))[:12]
		// Migrate takes an advisory lock, so parallel test binaries build it once.
		templateErr = db.Migrate(ctx, WithDatabase(ServerDSN(), templateName), io.Discard)
	})
	return templateName, templateErr
}

// NewDatabase creates a fresh migrated database for t, drops it when t ends, and
// returns its DSN.
func NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tmpl, err := template(ctx)
	if err != nil {
		t.Fatalf("migrate template database: %v", err)
	}
	name := fmt.Sprintf("ticketd_t_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, counter.Add(1))
	conn, err := pgx.Connect(ctx, ServerDSN())
	if err != nil {
		t.Fatalf("connect to test server %s: %v", ServerDSN(), err)
	}
	defer conn.Close(context.Background())
	// CREATE DATABASE ... TEMPLATE fails while another session uses the template;
	// only Migrate does, briefly, so retry a few times.
	for i := 0; ; i++ {
		_, err = conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+tmpl)
		if err == nil || i == 50 || !strings.Contains(err.Error(), "being accessed by other users") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("create test database: %v", err)
	}
	dropWhenDone(t, name)
	return WithDatabase(ServerDSN(), name)
}

// Context returns a context that ends with t or after two minutes, so a hung database
// fails the test instead of the whole run.
func Context(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// NewPool opens a small pool (many parallel tests share one Postgres) on a fresh
// migrated database of t's own, closed when t ends.
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := db.Open(Context(t), NewDatabase(t), db.PoolConfig{MaxConns: 4})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// NewDatabaseAt creates a fresh database for t migrated only up to and including the
// migration whose version (the file name's leading number) is upTo, as a ticketd of
// that schema left it; it drops it when t ends and returns its DSN. db.Migrate on the
// DSN then applies the rest, as a newer ticketd's start would.
func NewDatabaseAt(t testing.TB, upTo string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	older := fstest.MapFS{}
	found := false
	err := fs.WalkDir(db.Migrations(), "migrations", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		version, _, _ := strings.Cut(d.Name(), "_")
		if version > upTo {
			return nil
		}
		found = found || version == upTo
		b, err := fs.ReadFile(db.Migrations(), path)
		older[path] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil || !found {
		t.Fatalf("no migration %s (%v)", upTo, err)
	}
	name := fmt.Sprintf("ticketd_at_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, counter.Add(1))
	dsn := WithDatabase(ServerDSN(), name)
	dropWhenDone(t, name)
	if err := db.MigrateFS(ctx, dsn, older, io.Discard); err != nil {
		t.Fatalf("migrate a database up to %s: %v", upTo, err)
	}
	return dsn
}

// dropWhenDone drops database name when t ends.
func dropWhenDone(t testing.TB, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, ServerDSN())
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
}

// DataKey is the master key (DATA_KEY) tests run ticketd and its stores with: fixed,
// so a test can start several processes on one database.
const DataKey = "dGlja2V0ZC10ZXN0LWRhdGEta2V5LTMyLWJ5dGVzISE="

// Keyring opens the keyring of pool's database under DataKey (see pii.Open).
func Keyring(t testing.TB, pool *pgxpool.Pool) *pii.Keyring {
	t.Helper()
	m, err := pii.ParseMasterKey(DataKey)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := pii.Open(Context(t), pool, m)
	if err != nil {
		t.Fatalf("open keyring: %v", err)
	}
	return ring
}
