package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Row is one line of the table: a scenario, a baseline, or a single measurement
// (lag, RSS, rebuild).
type Row struct {
	// Key names the row stably across runs (get, list, create, baseline-get, ...).
	Key      string `json:"key"`
	Scenario string `json:"scenario"`
	Conns    int    `json:"conns,omitempty"`
	// Requests is the number of requests (samples, events, rows) measured.
	Requests uint64 `json:"requests"`
	// Value is the throughput in Unit: successful requests per second for the load
	// scenarios.
	Value        float64        `json:"value"`
	Unit         string         `json:"unit"`
	P50ms        float64        `json:"p50_ms,omitempty"`
	P99ms        float64        `json:"p99_ms,omitempty"`
	Errors       uint64         `json:"errors"`
	StatusCodes  map[string]int `json:"status_codes,omitempty"`
	ErrorSamples []string       `json:"error_samples,omitempty"`
	Baseline     string         `json:"baseline,omitempty"`
	BaselineVal  float64        `json:"baseline_value,omitempty"`
	Ratio        float64        `json:"ratio,omitempty"`
	Target       string         `json:"target,omitempty"`
	// Met is nil when the row has no target or could not be measured.
	Met  *bool  `json:"met,omitempty"`
	NA   bool   `json:"na,omitempty"`
	Note string `json:"note,omitempty"`
	// Generator made the load (wrk -t2 -c64, the pgx loop in ticketbench, ...); GenCPU
	// and ServerCPU are the cores (CPU seconds per wall second) it and the server
	// process (ticketd or the baseline's own) took during the run, 0 when not measured.
	Generator string  `json:"generator,omitempty"`
	GenCPU    float64 `json:"generator_cpu_cores,omitempty"`
	ServerCPU float64 `json:"server_cpu_cores,omitempty"`
}

// cpuText is a number of cores for the table; empty when not measured.
func cpuText(cores float64) string {
	if cores <= 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", cores)
}

// vs records base as the row's baseline and the ratio to it.
func (r *Row) vs(base Row, target string) {
	r.Baseline, r.BaselineVal, r.Target = base.Scenario, base.Value, target
	if base.Value > 0 {
		r.Ratio = r.Value / base.Value
	}
}

func (r *Row) judge(ok bool) { r.Met = &ok }

func (r Row) metText() string {
	switch {
	case r.NA:
		return "n/a"
	case r.Met == nil:
		return ""
	case *r.Met:
		return "yes"
	default:
		return "NO"
	}
}

func (r Row) valueText() string {
	switch {
	case r.NA:
		return "n/a"
	case r.Unit == "req/s":
		return fmt.Sprintf("%.0f", r.Value)
	case r.Unit == "MB":
		return fmt.Sprintf("%.1f MB", r.Value)
	case r.Unit == "samples":
		return fmt.Sprintf("%.0f samples", r.Value)
	default:
		return fmt.Sprintf("%.0f %s", r.Value, r.Unit)
	}
}

func msText(v float64) string {
	if v == 0 {
		return "-"
	}
	if v < 10 {
		return fmt.Sprintf("%.2fms", v)
	}
	return fmt.Sprintf("%.0fms", v)
}

func (r Row) short() string {
	s := fmt.Sprintf("%-44s %s", r.Scenario, r.valueText())
	if r.P99ms > 0 {
		s += fmt.Sprintf(" p50 %s p99 %s", msText(r.P50ms), msText(r.P99ms))
	}
	if r.Errors > 0 {
		s += fmt.Sprintf(" errors %d", r.Errors)
	}
	if r.Ratio > 0 {
		s += fmt.Sprintf(" ratio %.2f", r.Ratio)
	}
	if r.NA {
		s += " " + r.Note
	}
	return s
}

// TenX is the check against the original service: ticketd at least ten times it.
type TenX struct {
	Endpoint string  `json:"endpoint"`
	Original float64 `json:"original_rps"`
	Ticketd  float64 `json:"ticketd_rps"`
	Factor   float64 `json:"factor"`
	Met      bool    `json:"met"`
	NA       bool    `json:"na,omitempty"`
}

// RSSSample is ticketd's memory after a scenario.
type RSSSample struct {
	After  string  `json:"after"`
	RSSMB  float64 `json:"rss_mb"`
	PeakMB float64 `json:"peak_mb"`
}

// LagReport says whether the backlog drained after the POST load.
type LagReport struct {
	Drained bool    `json:"drained"`
	DrainMs float64 `json:"drain_ms"`
}

// SeedReport says what was seeded and how long it took.
type SeedReport struct {
	Tickets        int     `json:"tickets"`
	TicketsSeconds float64 `json:"tickets_seconds"`
	LongTickets    int     `json:"long_tickets"`
	LongEvents     int     `json:"long_events"`
	LongHow        string  `json:"long_how,omitempty"`
	LongSeconds    float64 `json:"long_seconds"`
	DrainSeconds   float64 `json:"drain_seconds"`
}

// Machine describes where the run happened.
type Machine struct {
	CPU      string `json:"cpu"`
	Cores    int    `json:"cores"`
	MemoryMB int64  `json:"memory_mb"`
	Kernel   string `json:"kernel"`
	Go       string `json:"go"`
	Postgres string `json:"postgres"`
	// LoadStart and LoadEnd are /proc/loadavg at the start and the end of the run: on a
	// shared machine they say how much else was running.
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
}

// Report is the JSON written by a run.
type Report struct {
	RunID          string            `json:"run_id"`
	StartedAt      time.Time         `json:"started_at"`
	Commit         string            `json:"commit,omitempty"`
	Machine        Machine           `json:"machine"`
	Options        map[string]string `json:"options"`
	Seed           SeedReport        `json:"seed"`
	RedisKeyFormat string            `json:"redis_key_format,omitempty"`
	Rows           []Row             `json:"rows"`
	TenX           []TenX            `json:"ten_x_original"`
	Lag            LagReport         `json:"lag"`
	RSS            []RSSSample       `json:"rss,omitempty"`
	RebuildRSSMB   float64           `json:"rebuild_rss_mb,omitempty"`
	// RebuildCPUSeconds is the CPU time (user and system) ticketd -rebuild-projections took.
	RebuildCPUSeconds float64  `json:"rebuild_cpu_seconds,omitempty"`
	Notes             []string `json:"notes,omitempty"`
	TotalSeconds      float64  `json:"total_seconds"`
}

func newReport(runID string, started time.Time, o options) Report {
	opts := map[string]string{
		"duration": o.duration.String(), "c": fmt.Sprint(o.conns), "overload-c": fmt.Sprint(o.overloadConns),
		"tickets": fmt.Sprint(o.tickets), "long-events": fmt.Sprint(o.longEvents),
		"rebuild-events": fmt.Sprint(o.rebuildEvents), "pg-conns": fmt.Sprint(o.pgConns),
		"backlog-events": fmt.Sprint(o.backlogEvents), "generator": o.generator,
	}
	if o.generator == genWrk {
		opts["wrk-threads"] = fmt.Sprint(o.wrkThreads)
	}
	if o.url != "" {
		opts["url"] = o.url
	}
	return Report{RunID: runID, StartedAt: started, Options: opts, Commit: gitCommit()}
}

// tenX compares the GET, list and POST rows with the original service's numbers.
func (b *bench) tenX() {
	for _, e := range []struct {
		endpoint, key string
		original      float64
	}{
		{"GET /v1/ticket/{id}", "get", 285},
		{"GET /v1/ticket/ (list)", "list", 451},
		{"POST /v1/ticket/", "create", 216},
	} {
		t := TenX{Endpoint: e.endpoint, Original: e.original, NA: true}
		for _, r := range b.report.Rows {
			if r.Key == e.key && !r.NA {
				t.Ticketd, t.Factor, t.NA = r.Value, r.Value/e.original, false
				t.Met = t.Factor >= 10
			}
		}
		b.report.TenX = append(b.report.TenX, t)
	}
}

// generators lists the load generators of the rows, each with the rows it made.
func (rep Report) generators() string {
	var order []string
	rows := map[string][]string{}
	for _, r := range rep.Rows {
		if r.Generator == "" {
			continue
		}
		if _, ok := rows[r.Generator]; !ok {
			order = append(order, r.Generator)
		}
		rows[r.Generator] = append(rows[r.Generator], r.Key)
	}
	var parts []string
	for _, g := range order {
		parts = append(parts, g+" ("+strings.Join(rows[g], ", ")+")")
	}
	return strings.Join(parts, "; ")
}

// printTable writes the table as aligned text.
func (rep Report) printTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tc\treq/s\tp50\tp99\terrors\tgen CPU\tsrv CPU\tbaseline\tbase/s\tratio\ttarget\tmet")
	for _, r := range rep.Rows {
		base, baseVal, ratio := "", "", ""
		if r.Baseline != "" {
			base, baseVal = strings.TrimPrefix(r.Baseline, "baseline: "), fmt.Sprintf("%.0f", r.BaselineVal)
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		conns := ""
		if r.Conns > 0 {
			conns = fmt.Sprint(r.Conns)
		}
		errs := fmt.Sprint(r.Errors)
		if r.NA {
			errs = ""
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Scenario, conns, r.valueText(),
			msText(r.P50ms), msText(r.P99ms), errs, cpuText(r.GenCPU), cpuText(r.ServerCPU), base, baseVal, ratio, r.Target, r.metText())
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "10x the original service (285 GET/s, 451 list/s, 216 POST/s):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range rep.TenX {
		if t.NA {
			fmt.Fprintf(tw, "  %s\toriginal %.0f/s\tn/a\n", t.Endpoint, t.Original)
			continue
		}
		met := "NO"
		if t.Met {
			met = "yes"
		}
		fmt.Fprintf(tw, "  %s\toriginal %.0f/s\tticketd %.0f/s\t%.1fx\t%s\n", t.Endpoint, t.Original, t.Ticketd, t.Factor, met)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Notes:")
	for _, r := range rep.Rows {
		if r.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", r.Scenario, r.Note)
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "  %s\n", n)
	}
	if g := rep.generators(); g != "" {
		fmt.Fprintf(w, "\nLoad generators (gen CPU, in cores): %s; srv CPU: the server process (ticketd, or the baseline's own)\n", g)
	}
	m := rep.Machine
	fmt.Fprintf(w, "\nMachine: %s, %d cores, %d MB; %s; %s; Postgres %s; load average %s at the start, %s at the end\n",
		m.CPU, m.Cores, m.MemoryMB, m.Kernel, m.Go, m.Postgres, m.LoadStart, m.LoadEnd)
}

// markdown is the table as a Markdown table, for the README.
func (rep Report) markdown() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "<!-- ticketbench %s, %s -->\n", rep.RunID, rep.Commit)
	sb.WriteString("| scenario | c | req/s | p50 | p99 | errors | gen CPU | srv CPU | baseline | base/s | ratio | target | met |\n")
	sb.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|---|---|\n")
	for _, r := range rep.Rows {
		base, baseVal, ratio := "", "", ""
		if r.Baseline != "" {
			base, baseVal, ratio = strings.TrimPrefix(r.Baseline, "baseline: "), fmt.Sprintf("%.0f", r.BaselineVal), fmt.Sprintf("%.2f", r.Ratio)
		}
		conns, errs := "", fmt.Sprint(r.Errors)
		if r.Conns > 0 {
			conns = fmt.Sprint(r.Conns)
		}
		if r.NA {
			errs = ""
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Scenario, conns, r.valueText(),
			msText(r.P50ms), msText(r.P99ms), errs, cpuText(r.GenCPU), cpuText(r.ServerCPU), base, baseVal, ratio, r.Target, r.metText())
	}
	sb.WriteString("\n| vs original | original | ticketd | factor | ≥10x |\n|---|--:|--:|--:|---|\n")
	for _, t := range rep.TenX {
		if t.NA {
			fmt.Fprintf(&sb, "| %s | %.0f/s | n/a | | |\n", t.Endpoint, t.Original)
			continue
		}
		met := "NO"
		if t.Met {
			met = "yes"
		}
		fmt.Fprintf(&sb, "| %s | %.0f/s | %.0f/s | %.1fx | %s |\n", t.Endpoint, t.Original, t.Ticketd, t.Factor, met)
	}
	if g := rep.generators(); g != "" {
		fmt.Fprintf(&sb, "\nLoad generators (gen CPU): %s. srv CPU: the server process (ticketd, or the baseline's own).\n", g)
	}
	m := rep.Machine
	fmt.Fprintf(&sb, "\nMachine: %s, %d cores, %d MB RAM, %s, %s, Postgres %s; load average %s at the start, %s at the end. ticketbench ran %.0fs (plus the build).\n",
		m.CPU, m.Cores, m.MemoryMB, m.Kernel, m.Go, m.Postgres, m.LoadStart, m.LoadEnd, rep.TotalSeconds)
	return sb.String()
}

// writeReport prints the table and writes results-<run>.json, latest.json and
// README-table.md under -out (bench/out by default, which git ignores). With
// -update-readme it also rewrites the table in README.md.
func (b *bench) writeReport(w io.Writer) error {
	fmt.Fprintln(w)
	b.report.printTable(w)
	if b.o.outDir != "" {
		if err := os.MkdirAll(b.o.outDir, 0o755); err != nil {
			return err
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(b.report); err != nil {
			return err
		}
		js := buf.Bytes()
		path := filepath.Join(b.o.outDir, "results-"+b.runID+".json")
		for _, p := range []string{path, filepath.Join(b.o.outDir, "latest.json")} {
			if err := os.WriteFile(p, js, 0o644); err != nil {
				return err
			}
		}
		md := filepath.Join(b.o.outDir, "README-table.md")
		if err := os.WriteFile(md, []byte(b.report.markdown()), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(w, "\nResults: %s (also %s, %s); total %.0fs\n", path, filepath.Join(b.o.outDir, "latest.json"), md, b.report.TotalSeconds)
	}
	if b.o.updateReadme {
		readme, err := readmePath()
		if err != nil {
			return err
		}
		if err := updateReadmeTable(readme, b.report); err != nil {
			return err
		}
		fmt.Fprintf(w, "Rewrote the benchmark table in %s\n", readme)
	} else if b.o.outDir != "" {
		fmt.Fprintf(w, "README.md is unchanged: make bench-table copies this run's table into it\n")
	}
	return nil
}

// The README's benchmark table sits between these markers; updateReadmeTable rewrites
// what is between them and nothing else.
const (
	tableBegin = "<!-- bench-table:begin (make bench-table rewrites this table from bench/out/latest.json) -->"
	tableEnd   = "<!-- bench-table:end -->"
)

// readmePath is README.md at the repository root.
func readmePath() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "README.md"), nil
}

// tableFromResults rewrites the README's table from a results file written by an
// earlier run (-table-from, make bench-table).
func tableFromResults(resultsPath string, w io.Writer) error {
	js, err := os.ReadFile(resultsPath)
	if err != nil {
		return fmt.Errorf("%w (make bench writes it)", err)
	}
	var rep Report
	if err := json.Unmarshal(js, &rep); err != nil {
		return fmt.Errorf("%s: %w", resultsPath, err)
	}
	if len(rep.Rows) == 0 {
		return fmt.Errorf("%s has no rows", resultsPath)
	}
	readme, err := readmePath()
	if err != nil {
		return err
	}
	if err := updateReadmeTable(readme, rep); err != nil {
		return err
	}
	fmt.Fprintf(w, "Rewrote the benchmark table in %s from %s (run %s, commit %s)\n", readme, resultsPath, rep.RunID, rep.Commit)
	return nil
}

// updateReadmeTable replaces the table between the markers of the file at path.
func updateReadmeTable(path string, rep Report) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	doc, err := replaceTable(string(old), rep.markdown())
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(doc), st.Mode().Perm())
}

// replaceTable returns doc with what is between the table markers (each on a line of
// its own, once) replaced by table.
func replaceTable(doc, table string) (string, error) {
	if strings.Count(doc, tableBegin) != 1 || strings.Count(doc, tableEnd) != 1 {
		return "", fmt.Errorf("want the markers %q and %q once each around the benchmark table", tableBegin, tableEnd)
	}
	i := strings.Index(doc, tableBegin) + len(tableBegin)
	j := strings.Index(doc, tableEnd)
	if j < i {
		return "", fmt.Errorf("%q comes before %q", tableEnd, tableBegin)
	}
	return doc[:i] + "\n" + strings.TrimRight(table, "\n") + "\n" + doc[j:], nil
}

// machine describes this machine and the Postgres server.
func machine(ctx context.Context, pool *pgxpool.Pool) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if kb, err := procMemTotalKB(); err == nil {
		m.MemoryMB = kb / 1024
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	_ = pool.QueryRow(ctx, `SHOW server_version`).Scan(&m.Postgres)
	m.LoadStart = loadAvg()
	return m
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func procMemTotalKB() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	var kb int64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			_, err := fmt.Sscanf(strings.TrimPrefix(line, "MemTotal:"), "%d", &kb)
			return kb, err
		}
	}
	return 0, fmt.Errorf("no MemTotal")
}

// gitCommit returns the short commit of the working tree, marked when it is dirty.
func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += "-dirty"
	}
	return c
}
