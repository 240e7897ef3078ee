package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
)

// The load generators of the throughput rows. wrk (C, epoll, a Lua script per thread)
// costs the two shared cores far less per request than vegeta in the bench process, so
// the rows measure the server rather than the generator; -generator vegeta is the
// fallback where wrk cannot be installed, and says so in every row it measures.
const (
	genWrk    = "wrk"
	genVegeta = "vegeta"
)

// errNoWrk is returned when -generator wrk (the default) finds no wrk on PATH.
var errNoWrk = errors.New("wrk is not installed (the throughput rows use it as their load generator): " +
	"run scripts/tools.sh (make bench does), or pass -generator vegeta to measure with the in-process generator instead, " +
	"whose CPU competes with the server's")

// lookWrk returns the path of wrk.
func lookWrk() (string, error) {
	p, err := exec.LookPath("wrk")
	if err != nil {
		return "", errNoWrk
	}
	return p, nil
}

// loadKind is what a throughput run sends.
type loadKind string

const (
	kindGet     loadKind = "get"     // GET /v1/ticket/{id}, round robin over ids
	kindList    loadKind = "list"    // GET /v1/ticket/?status=open
	kindCreate  loadKind = "create"  // POST /v1/ticket/
	kindPut     loadKind = "put"     // PUT /v1/ticket/{id}, the status toggler
	kindComment loadKind = "comment" // POST /v1/ticket/{id}/comments, round robin over ids
	kindMixed   loadKind = "mixed"   // 80% reads, 20% writes in a fixed pattern of 20
)

// loadSpec is one throughput run.
type loadSpec struct {
	name  string // the run: log lines, profile and script file names
	kind  loadKind
	base  string // the server's base URL
	conns int
	// ids are the tickets of a get or comment run; a mixed run reads b.ids and comments
	// on b.fresh's, and every PUT goes through b.toggles.
	ids []uuid.UUID
	// serverPID is the process whose CPU is read in the same window (0: none of ours).
	serverPID int
}

// load runs one throughput measurement with the bench's generator, profiling ticketd
// during it when -pprof asks.
func (b *bench) load(ctx context.Context, s loadSpec) (measured, error) {
	stopProfile := b.maybeProfile(ctx, s.name, b.o.duration)
	defer stopProfile()
	if b.o.generator == genVegeta {
		return b.attack(ctx, s), nil
	}
	return b.runWrk(ctx, s)
}

// wrkThreads is the number of wrk threads for conns connections: -wrk-threads, or
// fewer so that every thread has the same number of connections.
func wrkThreads(want, conns int) int {
	t := max(1, min(want, conns))
	for conns%t != 0 {
		t--
	}
	return t
}

// wrkMarker starts the line the Lua done() hook prints.
const wrkMarker = "TICKETBENCH_WRK "

// wrkSummary is what done() prints: wrk's summary, its latency percentiles and each
// thread's counters.
type wrkSummary struct {
	DurationUs float64 `json:"duration_us"`
	Requests   uint64  `json:"requests"`
	Bytes      uint64  `json:"bytes"`
	Errors     struct {
		Connect uint64 `json:"connect"`
		Read    uint64 `json:"read"`
		Write   uint64 `json:"write"`
		Status  uint64 `json:"status"` // responses with a status >= 400
		Timeout uint64 `json:"timeout"`
	} `json:"errors"`
	LatencyUs struct {
		P50 float64 `json:"p50"`
		P90 float64 `json:"p90"`
		P99 float64 `json:"p99"`
		Max float64 `json:"max"`
	} `json:"latency_us"`
	Threads []struct {
		Tid  int    `json:"tid"`
		PutN uint64 `json:"put_n"` // the thread's toggler counter after the run
		Sent uint64 `json:"sent"`  // requests its request() made (dynamic scripts only)
	} `json:"threads"`
}

// parseWrkOutput finds the done() line in wrk's stdout.
func parseWrkOutput(out []byte) (wrkSummary, error) {
	var s wrkSummary
	var line string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, wrkMarker) {
			line = strings.TrimPrefix(l, wrkMarker)
		}
	}
	if line == "" {
		return s, errors.New("no summary from the Lua done() hook")
	}
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		return s, fmt.Errorf("the done() summary: %w", err)
	}
	return s, nil
}

// measured turns the summary into a measurement. Successful requests are wrk's
// completed responses less those with a status >= 400 (wrk counts nothing else as an
// error status; the bench's servers send no 1xx).
func (s wrkSummary) measured() measured {
	e := s.Errors
	m := measured{requests: s.Requests, errors: e.Status + e.Connect + e.Read + e.Write + e.Timeout}
	if s.DurationUs > 0 {
		m.throughput = float64(s.Requests-min(e.Status, s.Requests)) / (s.DurationUs / 1e6)
	}
	m.p50 = time.Duration(s.LatencyUs.P50) * time.Microsecond
	m.p99 = time.Duration(s.LatencyUs.P99) * time.Microsecond
	if e.Status > 0 {
		m.statusCodes = map[string]int{">=400": int(e.Status)}
	}
	for _, c := range []struct {
		what string
		n    uint64
	}{{"status >= 400", e.Status}, {"connect", e.Connect}, {"read", e.Read}, {"write", e.Write}, {"timeout", e.Timeout}} {
		if c.n > 0 {
			m.errorSamples = append(m.errorSamples, fmt.Sprintf("wrk %s errors: %d", c.what, c.n))
		}
	}
	return m
}

// runWrk runs wrk with a script generated for s and measures its CPU and the server's.
func (b *bench) runWrk(ctx context.Context, s loadSpec) (measured, error) {
	u, err := url.Parse(s.base)
	if err != nil {
		return measured{}, err
	}
	threads := wrkThreads(b.o.wrkThreads, s.conns)
	script := filepath.Join(b.tmp, "wrk-"+s.name+".lua")
	if err := os.WriteFile(script, []byte(b.wrkScript(s, strings.TrimRight(u.Path, "/"), threads)), 0o644); err != nil {
		return measured{}, err
	}
	secs := max(1, int((b.o.duration + time.Second/2).Seconds()))
	timeout := max(1, int((b.o.timeout + time.Second/2).Seconds()))
	cmd := exec.CommandContext(ctx, b.wrkPath,
		"-t", strconv.Itoa(threads), "-c", strconv.Itoa(s.conns), "-d", strconv.Itoa(secs)+"s",
		"--timeout", strconv.Itoa(timeout)+"s", "-s", script, (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: "/"}).String())
	// wrk stops early and still prints its summary on SIGINT.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	win := startCPUWindow(s.serverPID)
	if err := cmd.Run(); err != nil && ctx.Err() == nil {
		return measured{}, fmt.Errorf("wrk (%s): %w\n%s%s", strings.Join(cmd.Args, " "), err, tail2(stderr.String()), tail2(stdout.String()))
	}
	wall, _, serverCores := win.stop()
	sum, err := parseWrkOutput(stdout.Bytes())
	if err != nil {
		if ctx.Err() != nil {
			return measured{}, ctx.Err()
		}
		return measured{}, fmt.Errorf("wrk %s: %w; its output:\n%s%s", s.name, err, tail2(stderr.String()), tail2(stdout.String()))
	}
	if strings.TrimSpace(stderr.String()) != "" {
		// wrk reports a failing script on stderr and carries on.
		b.logf("wrk %s stderr: %s", s.name, tail2(stderr.String()))
	}
	m := sum.measured()
	m.generator = fmt.Sprintf("wrk -t%d -c%d", threads, s.conns)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && wall > 0 {
		m.genCPU = (tvDuration(ru.Utime) + tvDuration(ru.Stime)).Seconds() / wall.Seconds()
	}
	m.serverCPU = serverCores
	if s.kind == kindPut || s.kind == kindMixed {
		// Carry each toggler's counter over to the next run that sends PUTs.
		for _, t := range sum.Threads {
			if t.Tid >= 0 && t.Tid < len(b.toggles) {
				b.toggles[t.Tid].n.Store(t.PutN)
			}
		}
	}
	return m, nil
}

// tail2 is the last lines of a command's output, for error messages.
func tail2(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	if out := strings.Join(lines, "\n"); out != "" {
		return out + "\n"
	}
	return ""
}

func tvDuration(tv syscall.Timeval) time.Duration {
	return time.Duration(tv.Sec)*time.Second + time.Duration(tv.Usec)*time.Microsecond
}

// cpuWindow measures CPU time over a stretch of wall time: this process's (getrusage)
// and a server process's (/proc/<pid>/stat).
type cpuWindow struct {
	start     time.Time
	self      time.Duration
	serverPID int
	server    time.Duration
	serverOK  bool
}

func startCPUWindow(serverPID int) cpuWindow {
	w := cpuWindow{start: time.Now(), self: selfCPU(), serverPID: serverPID}
	if serverPID > 0 {
		w.server, w.serverOK = procCPU(serverPID)
	}
	return w
}

// stop returns the wall time and, as cores (CPU seconds per second), the CPU this
// process and the server took since start; 0 for what could not be read.
func (w cpuWindow) stop() (wall time.Duration, selfCores, serverCores float64) {
	wall = time.Since(w.start)
	if wall <= 0 {
		return wall, 0, 0
	}
	selfCores = (selfCPU() - w.self).Seconds() / wall.Seconds()
	if w.serverOK {
		if now, ok := procCPU(w.serverPID); ok && now >= w.server {
			serverCores = (now - w.server).Seconds() / wall.Seconds()
		}
	}
	return wall, selfCores, serverCores
}

// selfCPU is the user and system CPU time of this process so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return tvDuration(ru.Utime) + tvDuration(ru.Stime)
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every Linux
// architecture Go supports.
const clockTick = 10 * time.Millisecond

// procCPU is utime+stime of a process (all its threads) from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseProcStatCPU(string(b))
}

// parseProcStatCPU reads fields 14 (utime) and 15 (stime) of a /proc/<pid>/stat line.
// The command name (field 2) is in parentheses and may hold spaces: count after it.
func parseProcStatCPU(stat string) (time.Duration, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * clockTick, true
}

// authorization is the Authorization header of the bench's requests ("" without a token).
func (b *bench) authorization() string {
	if b.token == "" {
		return ""
	}
	return "Bearer " + b.token
}

// wrkScript is the Lua script of a run: the data (paths, bodies, ids as one string of
// 36-character UUIDs per list, which keeps the script small to parse and far from Lua's
// limits on constants), then the program below.
func (b *bench) wrkScript(s loadSpec, prefix string, threads int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "-- generated by ticketbench for the %s run (%s): wrk -s this-file\n", s.name, s.kind)
	fmt.Fprintf(&sb, "kind = %s\n", luaQuote(string(s.kind)))
	fmt.Fprintf(&sb, "nthreads = %d\n", threads)
	fmt.Fprintf(&sb, "prefix = %s\n", luaQuote(prefix+"/v1/ticket/"))
	fmt.Fprintf(&sb, "list_path = %s\n", luaQuote(prefix+listPath))
	fmt.Fprintf(&sb, "authorization = %s\n", luaQuote(b.authorization()))
	fmt.Fprintf(&sb, "create_body = %s\n", luaQuote(string(createBody)))
	fmt.Fprintf(&sb, "comment_body = %s\n", luaQuote(string(commentBody)))
	fmt.Fprintf(&sb, "answered_body = %s\n", luaQuote(string(statusBody("answered"))))
	fmt.Fprintf(&sb, "waiting_body = %s\n", luaQuote(string(statusBody("wait_answer"))))
	getIDs, commentIDs := s.ids, s.ids
	if s.kind == kindMixed {
		getIDs, commentIDs = b.ids, b.fresh.ids
	}
	if s.kind != kindGet && s.kind != kindMixed {
		getIDs = nil
	}
	if s.kind != kindComment && s.kind != kindMixed {
		commentIDs = nil
	}
	fmt.Fprintf(&sb, "get_ids = %s\n", luaIDs(getIDs))
	fmt.Fprintf(&sb, "comment_ids = %s\n", luaIDs(commentIDs))
	sb.WriteString("put_ids, put_start = {}, {}\n")
	if s.kind == kindPut || s.kind == kindMixed {
		for i, t := range b.toggles[:min(threads, len(b.toggles))] {
			fmt.Fprintf(&sb, "put_ids[%d], put_start[%d] = %s, %d\n", i, i, luaIDs(t.ids), t.n.Load())
		}
	}
	sb.WriteString(wrkProgram)
	return sb.String()
}

// luaQuote is s as a Lua string literal.
func luaQuote(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&sb, "\\%03d", c)
		default:
			sb.WriteByte(c)
		}
	}
	sb.WriteByte('"')
	return sb.String()
}

// luaIDs is the ids as one Lua string of 36-character UUIDs.
func luaIDs(ids []uuid.UUID) string {
	var sb strings.Builder
	sb.Grow(2 + 36*len(ids))
	sb.WriteByte('"')
	for _, id := range ids {
		sb.WriteString(id.String())
	}
	sb.WriteByte('"')
	return sb.String()
}

// wrkProgram is the fixed part of every script. Each wrk thread has a Lua state of its
// own: setup() (in wrk's main state) numbers the threads, init() builds the thread's
// requests once, and request() only picks the next one. A thread takes every
// nthreads-th id from tid on, and the PUTs of thread tid go through toggler tid (its
// own tickets and counter), so no two threads touch the same ticket's status. wrk 4
// calls request() once on thread 0 before the run to check that it returns a request,
// and sends nothing then: that call returns a list request and moves no counter.
// done() prints the summary as one JSON line; it counts errors from wrk's own
// summary: a response() hook would make wrk parse every response, which costs CPU.
const wrkProgram = `
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

-- ids of the list s (36-character UUIDs end to end) that thread t takes
local function part(s, t)
  local out, n = {}, math.floor(#s / 36)
  for i = t, n - 1, nthreads do
    out[#out + 1] = string.sub(s, i * 36 + 1, i * 36 + 36)
  end
  if #out == 0 and n > 0 then -- fewer ids than threads: share them
    for i = 0, n - 1 do out[#out + 1] = string.sub(s, i * 36 + 1, i * 36 + 36) end
  end
  return out
end

function init(args)
  local plain, json = {}, { ["Content-Type"] = "application/json" }
  if authorization ~= "" then
    plain["Authorization"], json["Authorization"] = authorization, authorization
    wrk.headers["Authorization"] = authorization
  end
  list_req = wrk.format("GET", list_path, plain)
  create_req = wrk.format("POST", prefix, json, create_body)
  gets, comments, answered, waiting = {}, {}, {}, {}
  for _, id in ipairs(part(get_ids, tid)) do
    gets[#gets + 1] = wrk.format("GET", prefix .. id, plain)
  end
  for _, id in ipairs(part(comment_ids, tid)) do
    comments[#comments + 1] = wrk.format("POST", prefix .. id .. "/comments", json, comment_body)
  end
  local mine = put_ids[tid] or ""
  for i = 0, math.floor(#mine / 36) - 1 do
    local id = string.sub(mine, i * 36 + 1, i * 36 + 36)
    answered[#answered + 1] = wrk.format("PUT", prefix .. id, json, answered_body)
    waiting[#waiting + 1] = wrk.format("PUT", prefix .. id, json, waiting_body)
  end
  put_n = put_start[tid] or 0
  n_get, n_comment, n_mix, sent = 0, 0, 0, 0
  verifying = (tid == 0)
  if kind == "list" or kind == "create" then
    request = nil -- one static request, built by wrk: no Lua per request
    if kind == "list" then
      wrk.path = list_path
    else
      wrk.method, wrk.path, wrk.body = "POST", prefix, create_body
      wrk.headers["Content-Type"] = "application/json"
    end
  end
end

local function next_get()
  n_get = n_get + 1
  return gets[(n_get - 1) % #gets + 1]
end

local function next_comment()
  n_comment = n_comment + 1
  return comments[(n_comment - 1) % #comments + 1]
end

-- the toggler: the k-th visit of a ticket asks for answered when k is even and
-- wait_answer when k is odd (cmd/ticketbench/attack.go, toggler)
local function next_put()
  local n, i = #answered, put_n
  put_n = put_n + 1
  if math.floor(i / n) % 2 == 0 then
    return answered[i % n + 1]
  end
  return waiting[i % n + 1]
end

-- 70% GET by id, 10% list, 10% create, 5% PUT, 5% comment, in a fixed pattern of 20
local function next_mixed()
  local i = n_mix % 20
  n_mix = n_mix + 1
  if i < 14 then return next_get()
  elseif i < 16 then return list_req
  elseif i < 18 then return create_req
  elseif i < 19 then return next_put()
  end
  return next_comment()
end

local pick = { get = next_get, comment = next_comment, put = next_put, mixed = next_mixed }

function request()
  if verifying then
    verifying = false
    return list_req
  end
  sent = sent + 1
  return pick[kind]()
end

function done(summary, latency, requests)
  local ts = {}
  for _, t in ipairs(threads) do
    ts[#ts + 1] = string.format('{"tid":%.0f,"put_n":%.0f,"sent":%.0f}', t:get("tid"), t:get("put_n") or 0, t:get("sent") or 0)
  end
  local e = summary.errors
  io.write(string.format('\nTICKETBENCH_WRK {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"max":%.0f},"threads":[%s]}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(ts, ",")))
end
`
