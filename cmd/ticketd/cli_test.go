package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/db/dbtest"
)

// cliResult is one finished run of the ticketd binary.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runBinary runs bin with args and env (and nothing else of the test's environment but
// PATH and HOME), waiting for it to exit.
func runBinary(t *testing.T, bin string, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("ticketd %v: %v", args, err)
	}
	return cliResult{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

// databaseExists reports whether the Postgres server of the tests has database name.
func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbtest.ServerDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_database WHERE datname = $1`, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// Every task flag names one task; two of them, a task without its argument or an
// argument without its task is a usage mistake: exit 2, the reason once on stderr,
// nothing on stdout, and nothing done (a migration would create the missing database).
func TestOneTaskPerInvocation(t *testing.T) {
	t.Parallel()
	bin := buildTicketd(t)
	name := "ticketd_cli_" + strings.ReplaceAll(uuid.NewString(), "-", "")
	env := []string{"DATABASE_DSN=" + dbtest.WithDatabase(dbtest.ServerDSN(), name),
		"REDIS_ADDRS=" + redisAddrs(), "HTTP_ADDR=" + freeAddr(t), "REDIS_PREFIX=test-cli"}
	id := uuid.NewString()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"migrate_and_rebuild", []string{"-migrate", "-rebuild-projections"}, "-migrate and -rebuild-projections: one task per invocation"},
		{"migrate_and_history", []string{"-migrate", "-history", id}, "-history and -migrate: one task per invocation"},
		{"history_and_rebuild", []string{"-history", id, "-rebuild-projections"}, "-history and -rebuild-projections: one task per invocation"},
		{"healthcheck_and_migrate", []string{"-healthcheck", "-migrate"}, "-healthcheck and -migrate: one task per invocation"},
		{"three_tasks", []string{"-migrate", "-rebuild-projections", "-healthcheck"}, "-healthcheck and -migrate and -rebuild-projections"},
		{"history_without_id", []string{"-history"}, "flag needs an argument: -history"},
		{"history_with_empty_id", []string{"-history="}, "-history needs a ticket id"},
		{"json_without_history", []string{"-json"}, "-json only applies to -history"},
		{"json_with_migrate", []string{"-migrate", "-json"}, "-json only applies to -history"},
		{"unknown_flag", []string{"-rebuild"}, "flag provided but not defined: -rebuild"},
		{"stray_argument", []string{"-history", id, "extra"}, `unexpected arguments ["extra"]`},
		{"verify_and_migrate", []string{"-migrate", "-verify"}, "-migrate and -verify: one task per invocation"},
		{"verify_with_two_ids", []string{"-verify", id, id}, `unexpected arguments ["` + id + `"]: -verify takes at most one ticket id`},
		{"verify_with_a_bad_id", []string{"-verify", "nope"}, `-verify: "nope" is not a ticket id`},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runBinary(t, bin, env, c.args...)
			if r.code != 2 {
				t.Errorf("exit %d, want 2\nstderr: %s", r.code, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want nothing", r.stdout)
			}
			want := "ticketd: " + c.want
			if n := strings.Count(r.stderr, c.want); n != 1 || !strings.HasPrefix(r.stderr, want) {
				t.Errorf("stderr %q: want the reason (%q) once, first", r.stderr, want)
			}
			if lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n"); len(lines) != 2 || lines[1] != "Run 'ticketd -h' for the flags." {
				t.Errorf("stderr %q: want the reason and a pointer to -h, not the whole usage", r.stderr)
			}
		})
	}
	if databaseExists(t, name) {
		t.Errorf("database %s was created: a refused invocation migrated", name)
	}

	t.Run("help_is_no_mistake", func(t *testing.T) {
		r := runBinary(t, bin, env, "-h")
		if r.code != 0 || !strings.Contains(r.stdout, "-rebuild-projections") || r.stderr != "" {
			t.Errorf("-h: exit %d, stdout %q, stderr %q; want 0 and the usage on stdout", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("a_false_task_flag_is_no_task", func(t *testing.T) {
		// -migrate=false names no task: -healthcheck alone runs (and finds no server).
		r := runBinary(t, bin, env, "-migrate=false", "-healthcheck")
		if r.code != 1 || !strings.Contains(r.stderr, "healthcheck") {
			t.Errorf("exit %d, stderr %q; want the healthcheck's failure (1)", r.code, r.stderr)
		}
	})
}
