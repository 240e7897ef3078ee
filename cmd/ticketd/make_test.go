package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The operator tasks run through make reach the services make run uses (the local
// Redis Cluster, not a single Redis on 6379) and read .env like the server: make
// rebuild and make history with a .env naming the database and the key prefix.
func TestMakeTasksReachTheServicesOfMakeRun(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(root, "scripts/redis-cluster.sh"), "addrs").Output()
	if err != nil {
		t.Fatal(err)
	}
	local := strings.TrimSpace(string(out))
	if local != redisAddrs() {
		t.Skipf("the tests use the Redis Cluster %s, not the local one (%s) that make run starts", redisAddrs(), local)
	}
	s := startServer(t, nil)
	var created ticketDoc
	s.do(t, "POST", "/v1/ticket/", sourceTicket).expect(t, 201).JSON(t, &created)

	envFile := filepath.Join(t.TempDir(), ".env")
	dotenv := "# as copied from .env.example\nDATABASE_DSN=" + s.DSN + "\nREDIS_ADDRS=\nREDIS_HOST=127.0.0.1\nREDIS_PORT=6379\n" +
		"REDIS_PREFIX='" + s.Env["REDIS_PREFIX"] + "'\nLOG_LEVEL=info\nDATA_KEY=" + s.Env["DATA_KEY"] + "\n"
	if err := os.WriteFile(envFile, []byte(dotenv), 0o600); err != nil {
		t.Fatal(err)
	}
	// The environment of a shell that has not exported anything of ticketd's.
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "REDIS_") && !strings.HasPrefix(k, "DATABASE_") && !strings.HasPrefix(k, "DATA_KEY") && !strings.HasPrefix(k, "MAKE") && k != "LOG_LEVEL" {
			env = append(env, kv)
		}
	}
	env = append(env, "ENV_FILE="+envFile, "GOFLAGS=-buildvcs=false")
	makeRun := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), "make", append([]string{"-s", "-C", root}, args...)...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("make %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
		}
		return stdout.String()
	}

	t.Run("rebuild", func(t *testing.T) {
		out := makeRun("rebuild")
		var started map[string]any
		for _, l := range strings.Split(out, "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "rebuilding projections" {
				started = m
			}
		}
		if started == nil {
			t.Fatalf("make rebuild logged no \"rebuilding projections\" line:\n%s", out)
		}
		addrs, _ := json.Marshal(started["redis_addrs"])
		if want, _ := json.Marshal(strings.Split(local, ",")); started["cluster"] != true || string(addrs) != string(want) {
			t.Errorf("make rebuild used Redis %s (cluster %v), want the cluster of make run %s", addrs, started["cluster"], want)
		}
		if started["redis_prefix"] != s.Env["REDIS_PREFIX"] {
			t.Errorf("make rebuild used the prefix %v, want %s from .env", started["redis_prefix"], s.Env["REDIS_PREFIX"])
		}
		if !strings.Contains(out, "rebuilt read models: 1 events, 1 tickets") {
			t.Errorf("make rebuild did not rebuild the .env's database (1 event, 1 ticket):\n%s", out)
		}
	})
	t.Run("history", func(t *testing.T) {
		out := makeRun("history", "ID="+created.ID, "JSON=1")
		var e map[string]any
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &e); err != nil || e["type"] != "TicketOpened" {
			t.Errorf("make history ID=%s JSON=1 printed %q, want the one TicketOpened event as JSON", created.ID, out)
		}
	})
}

// make test compiles everything first (scripts/test-build.sh, which names packages as
// they compile) and its test steps use the same build flags, so they find every package
// in the build cache instead of compiling silently for minutes; CI runs make test.
func TestMakeTestCompilesOnceBeforeItsSteps(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("make", "-s", "-n", "-C", root, "test").Output()
	if err != nil {
		t.Fatalf("make -n test: %v", err)
	}
	var cmds []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "echo ") {
			cmds = append(cmds, l)
		}
	}
	// scripts/test-build.sh comes before every go test step (the spec lint may precede it)
	build := slices.IndexFunc(cmds, func(c string) bool { return strings.Contains(c, "scripts/test-build.sh") })
	if build < 0 || slices.ContainsFunc(cmds[:build], func(c string) bool { return strings.Contains(c, " test ") }) {
		t.Fatalf("make test runs %q: want scripts/test-build.sh before any go test", cmds)
	}
	cmds = cmds[build:]
	script, err := os.ReadFile(filepath.Join(root, "scripts/test-build.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(script), "\nFLAGS=(-race)\n") {
		t.Fatalf("scripts/test-build.sh does not build with FLAGS=(-race)")
	}
	// Flags of go test that change what is compiled: the steps must give exactly -race.
	buildFlags := []string{"-race", "-msan", "-asan", "-cover", "-covermode", "-coverpkg", "-tags", "-gcflags",
		"-ldflags", "-asmflags", "-trimpath", "-mod", "-pgo", "-buildmode", "-compiler", "-installsuffix", "-linkshared"}
	steps := 0
	for _, c := range cmds[1:] {
		_, args, ok := strings.Cut(c, " test ")
		if !ok {
			continue
		}
		steps++
		var got []string
		for _, a := range strings.Fields(args) {
			name, _, _ := strings.Cut(a, "=")
			for _, f := range buildFlags {
				if name == f {
					got = append(got, a)
				}
			}
		}
		if strings.Join(got, " ") != "-race" {
			t.Errorf("the test step %q has the build flags %q, want exactly -race (those of test-build.sh)", c, got)
		}
	}
	if steps != 2 {
		t.Errorf("%d go test steps in make test, want 2: %q", steps, cmds)
	}
	ci, err := os.ReadFile(filepath.Join(root, ".ci/run"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ci), "\nmake test\n") {
		t.Errorf(".ci/run does not call make test")
	}
}
