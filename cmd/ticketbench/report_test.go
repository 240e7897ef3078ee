package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplaceTable_rewrites_only_between_the_markers(t *testing.T) {
	doc := "# x\n\nbefore\n" + tableBegin + "\n| old |\n|---|\n" + tableEnd + "\nafter\n## next\n"
	got, err := replaceTable(doc, "| new |\n|---|\n\n")
	if err != nil {
		t.Fatal(err)
	}
	want := "# x\n\nbefore\n" + tableBegin + "\n| new |\n|---|\n" + tableEnd + "\nafter\n## next\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// again: idempotent
	if again, err := replaceTable(got, "| new |\n|---|\n"); err != nil || again != want {
		t.Errorf("second replace: %v\n%s", err, again)
	}
	for _, bad := range []string{
		"no markers",
		tableBegin + "\n" + tableEnd + "\n" + tableBegin + "\n" + tableEnd,
		tableEnd + "\n" + tableBegin,
	} {
		if _, err := replaceTable(bad, "| t |"); err == nil {
			t.Errorf("replaceTable accepted %q", bad)
		}
	}
}

func TestUpdateReadmeTable_from_a_results_file(t *testing.T) {
	dir := t.TempDir()
	readme := filepath.Join(dir, "README.md")
	if err := os.WriteFile(readme, []byte("intro\n"+tableBegin+"\nold\n"+tableEnd+"\nrest\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := true
	rep := Report{RunID: "20990101t000000", Commit: "abc1234", Rows: []Row{
		{Key: "get", Scenario: "GET /v1/ticket/{id}", Conns: 64, Value: 1234, Unit: "req/s", Met: &ok, Generator: "wrk -t2 -c64", GenCPU: 0.4, ServerCPU: 1.3},
	}}
	js, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if err := updateReadmeTable(readme, back); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(readme)
	s := string(b)
	if !strings.HasPrefix(s, "intro\n"+tableBegin+"\n<!-- ticketbench 20990101t000000, abc1234 -->\n") ||
		!strings.HasSuffix(s, "\n"+tableEnd+"\nrest\n") || strings.Contains(s, "old") ||
		!strings.Contains(s, "| GET /v1/ticket/{id} | 64 | 1234 |") || !strings.Contains(s, "| 0.40 | 1.30 |") ||
		!strings.Contains(s, "wrk -t2 -c64 (get)") {
		t.Errorf("README after the update:\n%s", s)
	}
}

func TestParseOptions_results_are_git_ignored_by_default(t *testing.T) {
	o, err := parseOptions(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.outDir != filepath.Join("bench", "out") || o.updateReadme || o.tableFrom != "" {
		t.Errorf("defaults: out %q, update-readme %v, table-from %q", o.outDir, o.updateReadme, o.tableFrom)
	}
	gi, err := os.ReadFile("../../.gitignore")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains("\n"+string(gi)+"\n", "\n/bench/out/\n") {
		t.Error(".gitignore does not ignore /bench/out/")
	}
}
