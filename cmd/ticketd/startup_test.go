package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
)

func TestPprofServedOnItsOwnLoopbackListenerOnlyWhenSet(t *testing.T) {
	t.Parallel()
	pp := freeAddr(t)
	s := startServer(t, map[string]string{"PPROF_ADDR": pp, "LOG_LEVEL": "info"})

	get := func(url string) (int, string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("http://" + pp + "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("/debug/pprof/ on PPROF_ADDR: %d %.200s", code, body)
	}
	if code, body := get("http://" + pp + "/debug/pprof/goroutine?debug=1"); code != 200 || !strings.Contains(body, "goroutine profile:") {
		t.Fatalf("goroutine profile: %d %.200s", code, body)
	}
	// a CPU profile, as ticketbench fetches it: a gzipped protobuf
	if code, body := get("http://" + pp + "/debug/pprof/profile?seconds=1"); code != 200 || !strings.HasPrefix(body, "\x1f\x8b") {
		t.Fatalf("CPU profile: %d, %d bytes", code, len(body))
	}
	// never on the API's port
	if r := s.do(t, "GET", "/debug/pprof/", nil); r.Status != 404 {
		t.Fatalf("/debug/pprof/ on the API port answered %d", r.Status)
	}

	if !strings.Contains(s.logs.String(), `"msg":"pprof listening"`) {
		t.Errorf("the start of the profiler is not logged:\n%s", s.logs.String())
	}

	// off by default
	if cfg, err := loadConfig(func(string) string { return "" }); err != nil || cfg.PprofAddr != "" {
		t.Fatalf("default PPROF_ADDR %q (%v), want empty", cfg.PprofAddr, err)
	}
	quiet := startServer(t, map[string]string{"LOG_LEVEL": "info"})
	if strings.Contains(quiet.logs.String(), "pprof") {
		t.Errorf("a server without PPROF_ADDR mentions pprof:\n%s", quiet.logs.String())
	}
}

func TestPprofAddrMustBeLoopback(t *testing.T) {
	t.Parallel()
	base := map[string]string{"HTTP_ADDR": "127.0.0.1:8000"}
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "[::]:6060", "192.0.2.10:6060", "example.com:6060", "127.0.0.1", "127.0.0.1:8000"} {
		env := map[string]string{"PPROF_ADDR": addr}
		for k, v := range base {
			env[k] = v
		}
		_, err := loadConfig(func(k string) string { return env[k] })
		if err == nil || !strings.Contains(err.Error(), "PPROF_ADDR") {
			t.Errorf("PPROF_ADDR=%q: error %v, want one naming PPROF_ADDR", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:6060", "[::1]:6060", "localhost:6060", "127.0.0.2:6060"} {
		env := map[string]string{"PPROF_ADDR": addr}
		if _, err := loadConfig(func(k string) string { return env[k] }); err != nil {
			t.Errorf("PPROF_ADDR=%q refused: %v", addr, err)
		}
	}
	// ticketd refuses to start on it, before touching anything
	env := map[string]string{"PPROF_ADDR": "0.0.0.0:6060", "DATABASE_DSN": "postgres://nobody@127.0.0.1:1/none"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, nil, func(k string) string { return env[k] }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "PPROF_ADDR") || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("run with PPROF_ADDR=0.0.0.0:6060: %v, want a loopback error naming PPROF_ADDR", err)
	}
}

// --- CURSOR_SECRET: one key per database, not per process ----------------------------

// startTogether starts one ticketd per env at the same moment (not one after the other,
// as startServer would) and returns them once all answer /healthz. They stop when the
// test ends.
func startTogether(t *testing.T, envs ...map[string]string) []*testServer {
	t.Helper()
	servers := make([]*testServer, len(envs))
	dones := make([]chan error, len(envs))
	gate := make(chan struct{})
	for i, env := range envs {
		s := &testServer{URL: "http://" + env["HTTP_ADDR"], DSN: env["DATABASE_DSN"], Env: env, logs: &syncBuffer{}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			<-gate
			done <- run(ctx, nil, func(k string) string { return s.Env[k] }, s.logs)
		}()
		var once sync.Once
		var stopErr error
		s.stop = func() error {
			once.Do(func() { cancel(); stopErr = <-done })
			return stopErr
		}
		t.Cleanup(func() {
			if err := s.Stop(); err != nil {
				t.Errorf("server %d stopped with error: %v\nlogs:\n%s", i, err, s.logs.String())
			}
		})
		servers[i], dones[i] = s, done
	}
	close(gate)
	for i, s := range servers {
		eventually(t, 30*time.Second, fmt.Sprintf("server %d answers /healthz", i), func() bool {
			select {
			case err := <-dones[i]:
				t.Fatalf("server %d exited during start: %v\nlogs:\n%s", i, err, s.logs.String())
			default:
			}
			resp, err := client.Get(s.URL + "/healthz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	}
	return servers
}

// testEnv is startServer's environment for a server on dsn.
func testEnv(t *testing.T, dsn string, extra ...string) map[string]string {
	t.Helper()
	env := processEnv(t, dsn)
	env["PG_MAX_CONNS"] = "4"
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// storedSecrets returns the cursor secrets kept in the database.
func storedSecrets(t *testing.T, dsn string) [][]byte {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, `SELECT value FROM settings WHERE name = $1`, db.CursorSecretSetting)
	vals, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	return vals
}

// firstPage lists /v1/ticket/?limit=1 on s once it has at least n tickets and returns
// the next page's path.
func firstPage(t *testing.T, s *testServer, n int) string {
	t.Helper()
	var r response
	eventually(t, 10*time.Second, fmt.Sprintf("the list shows %d tickets", n), func() bool {
		var all []ticketDoc
		s.do(t, "GET", "/v1/ticket/?limit=100", nil).expect(t, 200).JSON(t, &all)
		return len(all) >= n
	})
	r = s.do(t, "GET", "/v1/ticket/?limit=1", nil).expect(t, 200)
	return nextLink(t, r)
}

func TestUnsetCursorSecretIsOnePerDatabaseSharedByInstances(t *testing.T) {
	t.Parallel()
	dsn := dbtest.NewDatabase(t)
	// two instances starting at the same moment on a database that has no secret yet
	servers := startTogether(t, testEnv(t, dsn), testEnv(t, dsn))
	a, b := servers[0], servers[1]
	secrets := storedSecrets(t, dsn)
	if len(secrets) != 1 || len(secrets[0]) != 32 {
		t.Fatalf("settings hold %d cursor secrets (%v), want one of 32 bytes", len(secrets), secrets)
	}

	for range 3 {
		createTicket(t, a, sourceTicket)
	}
	// a cursor issued by one is followed on the other, both ways
	nextA := firstPage(t, a, 3)
	var page []ticketDoc
	r := b.do(t, "GET", nextA, nil).expect(t, 200)
	r.JSON(t, &page)
	if len(page) != 1 {
		t.Fatalf("A's cursor on B gave %d tickets", len(page))
	}
	b.do(t, "GET", nextLink(t, r), nil).expect(t, 200) // B's cursor, followed on B
	a.do(t, "GET", nextLink(t, r), nil).expect(t, 200) // and on A
	nextB := firstPage(t, b, 3)
	a.do(t, "GET", nextB, nil).expect(t, 200)

	// a restart keeps the key: the cursor from before still works
	a.Restart(t)
	a.do(t, "GET", nextB, nil).expect(t, 200)
	if got := storedSecrets(t, dsn); len(got) != 1 || !bytes.Equal(got[0], secrets[0]) {
		t.Fatalf("after a restart the stored secret changed: %x, was %x", got, secrets[0])
	}

	// a set CURSOR_SECRET wins over the stored one (and leaves it alone)
	c := startServer(t, map[string]string{"DATABASE_DSN": dsn, "CURSOR_SECRET": "set-by-the-operator"})
	problemCode(t, c.do(t, "GET", nextA, nil), 422, "validation-failed")
	nextC := firstPage(t, c, 3)
	a.do(t, "GET", nextC, nil).expect(t, 422)
	d := startServer(t, map[string]string{"DATABASE_DSN": dsn, "CURSOR_SECRET": "set-by-the-operator"})
	d.do(t, "GET", nextC, nil).expect(t, 200)
	if got := storedSecrets(t, dsn); len(got) != 1 || !bytes.Equal(got[0], secrets[0]) {
		t.Fatalf("a set CURSOR_SECRET changed the stored one")
	}
}

func TestConcurrentFirstStartsAgreeOnOneSetting(t *testing.T) {
	t.Parallel()
	dsn := dbtest.NewDatabase(t)
	ctx := context.Background()
	const instances = 8
	pools := make([]*pgxpool.Pool, instances)
	for i := range pools {
		p, err := db.Open(ctx, dsn, db.PoolConfig{MaxConns: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := p.Ping(ctx); err != nil { // connected before the race starts
			t.Fatal(err)
		}
		pools[i] = p
	}
	for round := range 20 {
		name := fmt.Sprint("race-", round)
		got := make([][]byte, instances)
		errs := make([]error, instances)
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i, p := range pools {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				got[i], errs[i] = db.Setting(ctx, p, name, 32)
			}()
		}
		close(gate)
		wg.Wait()
		for i := range got {
			if errs[i] != nil {
				t.Fatalf("round %d, instance %d: %v", round, i, errs[i])
			}
			if len(got[i]) != 32 || !bytes.Equal(got[i], got[0]) {
				t.Fatalf("round %d: instance %d got %x, instance 0 %x", round, i, got[i], got[0])
			}
		}
	}
	var rows int
	if err := pools[0].QueryRow(ctx, `SELECT count(*) FROM settings WHERE name LIKE 'race-%'`).Scan(&rows); err != nil || rows != 20 {
		t.Fatalf("%d rows (%v), want 20", rows, err)
	}
}
