package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/ticket"
)

// privatePostgres is a Postgres server of the test's own, in a temporary directory on a
// free port, which the test may stop and start at will. The shared server on 5432 is
// never touched.
type privatePostgres struct {
	bin, dir, data string
	port           int
}

// pgBinDir returns the newest installed PostgreSQL's bin directory.
func pgBinDir(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var ok []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			ok = append(ok, d)
		}
	}
	if len(ok) == 0 {
		t.Skip("no PostgreSQL server binaries under /usr/lib/postgresql (scripts/postgres.sh installs them)")
	}
	sort.Slice(ok, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(ok[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(ok[j])))
		return vi < vj
	})
	return ok[len(ok)-1]
}

// startPrivatePostgres initdb's a cluster and starts it. As root the server runs as the
// postgres OS user (it refuses to run as root), in a directory handed to that user.
func startPrivatePostgres(t *testing.T) *privatePostgres {
	t.Helper()
	pg := &privatePostgres{bin: pgBinDir(t)}
	dir, err := os.MkdirTemp("", "ticketd-outage-")
	if err != nil {
		t.Fatal(err)
	}
	pg.dir, pg.data = dir, filepath.Join(dir, "data")
	t.Cleanup(func() {
		_ = pg.ctl("stop", "-m", "immediate")
		os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("running as root without a postgres OS user to run the server as")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	addr := freeAddr(t)
	pg.port, _ = strconv.Atoi(addr[strings.LastIndexByte(addr, ':')+1:])
	if out, err := pg.run("initdb", "-D", pg.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	if err := pg.ctl("start"); err != nil {
		t.Fatalf("pg_ctl start: %v", err)
	}
	return pg
}

func (pg *privatePostgres) run(tool string, args ...string) ([]byte, error) {
	name, full := filepath.Join(pg.bin, tool), args
	if os.Geteuid() == 0 {
		name, full = "runuser", append([]string{"-u", "postgres", "--", filepath.Join(pg.bin, tool)}, args...)
	}
	cmd := exec.Command(name, full...)
	cmd.Dir = pg.dir
	return cmd.CombinedOutput()
}

// ctl runs pg_ctl: "start" waits until the server accepts connections; "stop" takes a
// mode ("-m", "fast").
func (pg *privatePostgres) ctl(action string, extra ...string) error {
	args := []string{"-D", pg.data, "-w", "-t", "60", "-l", filepath.Join(pg.dir, "server.log")}
	if action == "start" {
		args = append(args, "-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40", pg.port, pg.dir))
	}
	args = append(append(args, action), extra...)
	out, err := pg.run("pg_ctl", args...)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(pg.dir, "server.log"))
		return fmt.Errorf("%v\n%s\nserver log:\n%s", err, out, tail(string(log), 20))
	}
	return nil
}

func (pg *privatePostgres) dsn(dbname string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", pg.port, dbname)
}

// answerWithin sends a request and fails the test if the answer took longer than limit.
// The slowest answer so far is kept in *slowest.
func answerWithin(t *testing.T, s *testServer, limit time.Duration, slowest *time.Duration, method, path string, body any) response {
	t.Helper()
	start := time.Now()
	r := s.do(t, method, path, body)
	took := time.Since(start)
	if took > limit {
		t.Errorf("%s %s took %s (limit %s)", method, path, took.Round(time.Millisecond), limit)
	}
	*slowest = max(*slowest, took)
	return r
}

func TestPostgresOutageAnswers503QuicklyAndRecovers(t *testing.T) {
	t.Parallel()
	pg := startPrivatePostgres(t)
	s := startServer(t, map[string]string{
		"DATABASE_DSN":    pg.dsn("ticketd"),
		"REQUEST_TIMEOUT": "3s",
		"REDIS_PREFIX":    "test-outage-" + strings.ReplaceAll(uuid.NewString(), "-", ""),
	})
	doc := createTicket(t, s, sourceTicket)
	s.do(t, "GET", "/readyz", nil).expect(t, 200)

	stopped := time.Now()
	if err := pg.ctl("stop", "-m", "fast"); err != nil {
		t.Fatal(err)
	}
	t.Logf("postgres stopped in %s", time.Since(stopped).Round(time.Millisecond))

	const limit = 6 * time.Second
	var slowest time.Duration
	id := "/v1/ticket/" + doc.ID
	for round := range 3 {
		for _, rq := range []struct {
			method, path string
			body         any
		}{
			{"POST", "/v1/ticket/", sourceTicket},
			{"GET", "/v1/ticket/", nil},
			{"PUT", id, map[string]any{"status": "answered", "updated_by": "Администратор"}},
			{"POST", id + "/comments", map[string]any{"body": "алло", "created_by": "Иван Иванов"}},
			{"GET", id + "/comments", nil},
			{"GET", id + "/history", nil},
			{"GET", id + "?version=1", nil},
		} {
			r := answerWithin(t, s, limit, &slowest, rq.method, rq.path, rq.body)
			if r.Status != 503 {
				t.Errorf("round %d: %s %s answered %d while Postgres is down, want 503; body %s", round, rq.method, rq.path, r.Status, r.Body)
				continue
			}
			if p := r.problem(t); p["code"] != "unavailable" || p["status"] != float64(503) {
				t.Errorf("%s %s: problem %v", rq.method, rq.path, p)
			}
		}
		// The ticket itself may still be served from the Redis read model; either that
		// or a 503, never a hang or a 500.
		if r := answerWithin(t, s, limit, &slowest, "GET", id, nil); r.Status != 200 && r.Status != 503 {
			t.Errorf("GET %s answered %d while Postgres is down; body %s", id, r.Status, r.Body)
		}
		r := answerWithin(t, s, limit, &slowest, "GET", "/readyz", nil).expect(t, 503)
		if p := r.problem(t); p["postgres"] != "unavailable" || p["code"] != "not-ready" {
			t.Errorf("readyz problem %v", p)
		}
		answerWithin(t, s, limit, &slowest, "GET", "/healthz", nil).expect(t, 200)
	}
	down := time.Since(stopped)

	restarted := time.Now()
	if err := pg.ctl("start"); err != nil {
		t.Fatal(err)
	}
	var created ticketDoc
	eventually(t, 15*time.Second, "ticketd serves again after Postgres is back", func() bool {
		if s.do(t, "GET", "/readyz", nil).Status != 200 {
			return false
		}
		r := s.do(t, "POST", "/v1/ticket/", sourceTicket)
		if r.Status != 201 {
			return false
		}
		r.JSON(t, &created)
		return true
	})
	recovered := time.Since(restarted)
	s.do(t, "PUT", id, map[string]any{"status": "answered", "updated_by": "Администратор"}).expect(t, 200)
	if got := getTicket(t, s, doc.ID); got.Status != "answered" {
		t.Fatalf("after recovery the ticket is %+v", got)
	}
	eventually(t, 15*time.Second, "the projector catches up after the outage", func() bool {
		var list []ticketDoc
		s.do(t, "GET", "/v1/ticket/", nil).expect(t, 200).JSON(t, &list)
		for _, d := range list {
			if d.ID == created.ID {
				return true
			}
		}
		return false
	})
	t.Logf("outage of %s answered with 503s (slowest answer %s); recovered %s after Postgres restarted",
		down.Round(time.Millisecond), slowest.Round(time.Millisecond), recovered.Round(time.Millisecond))
}

func TestProjectorsKeepTryingWhenPostgresIsDownAsTheySubscribe(t *testing.T) {
	t.Parallel()
	pg := startPrivatePostgres(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dsn := pg.dsn("ticketd")
	if err := db.Migrate(ctx, dsn, io.Discard); err != nil {
		t.Fatal(err)
	}
	pool, err := db.Open(ctx, dsn, db.PoolConfig{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	router, err := projections.NewRouter(pool, projections.Config{}, log, pgmodel.Projector{}.Handler())
	if err != nil {
		t.Fatal(err)
	}

	// Postgres goes away before the router has subscribed: the consumer keeps trying.
	if err := pg.ctl("stop", "-m", "fast"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- router.Run(ctx) }()
	eventually(t, 20*time.Second, "the failing consumer is reported", func() bool {
		return strings.Contains(logs.String(), "projection failing; retrying with backoff")
	})
	select {
	case err := <-done:
		t.Fatalf("the router returned %v while Postgres was down", err)
	default:
	}

	if err := pg.ctl("start"); err != nil {
		t.Fatal(err)
	}
	id := uuid.Must(uuid.NewV7())
	store := eventstore.New(pool, dbtest.Keyring(t, pool))
	eventually(t, 20*time.Second, "a write succeeds once Postgres is back", func() bool {
		_, err := store.Handle(ctx, id, eventstore.Options{Create: true}, func(tk *ticket.Ticket, now time.Time) error {
			return tk.Open(ticket.OpenTicket{Title: "t", Email: "user@example.com", CreatedBy: "u"}, now)
		})
		return err == nil
	})
	eventually(t, 20*time.Second, "the projector resumes and writes the read model", func() bool {
		var n int
		return pool.QueryRow(ctx, `SELECT count(*) FROM readmodel.tickets WHERE id = $1`, id).Scan(&n) == nil && n == 1
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the router returned %v after the stop", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the router did not return after its context ended")
	}
}
