package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/db/dbtest"
)

// A running ticketd anchors the chain at AUDIT_ANCHOR_INTERVAL and logs the root; the
// history shows each event's hash (HTTP and -history -json alike); `ticketd -verify`
// exits 0 on the intact store and 1 naming the ticket and version of an edited
// payload, and of a tail cut after the anchor saw it.
func TestVerifyAndAnchorsEndToEnd(t *testing.T) {
	t.Parallel()
	bin := buildTicketd(t)
	s := startServer(t, map[string]string{"AUDIT_ANCHOR_INTERVAL": "300ms", "LOG_LEVEL": "info"})
	a, b := createTicket(t, s, sourceTicket), createTicket(t, s, sourceTicket)
	for i := range 3 {
		s.do(t, "POST", "/v1/ticket/"+a.ID+"/comments", map[string]any{"body": fmt.Sprintf("c%d", i), "created_by": "u"}).expect(t, 201)
		s.do(t, "POST", "/v1/ticket/"+b.ID+"/comments", map[string]any{"body": fmt.Sprintf("c%d", i), "created_by": "u"}).expect(t, 201)
	}
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, s.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	// The history's hashes are the stored ones.
	var history []struct {
		Version int    `json:"version"`
		Hash    string `json:"hash"`
	}
	s.do(t, "GET", "/v1/ticket/"+a.ID+"/history", nil).expect(t, 200).JSON(t, &history)
	if len(history) != 4 {
		t.Fatalf("want 4 events, got %d", len(history))
	}
	for _, e := range history {
		var stored []byte
		if err := conn.QueryRow(ctx, `SELECT hash FROM events WHERE stream_id = $1 AND version = $2`, a.ID, e.Version).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if e.Hash != hex.EncodeToString(stored) {
			t.Fatalf("version %d: history shows hash %q, stored %x", e.Version, e.Hash, stored)
		}
	}
	env := []string{"DATABASE_DSN=" + s.DSN, "DATA_KEY=" + dbtest.DataKey}
	if r := runBinary(t, bin, env, "-history", a.ID, "-json"); r.code != 0 || !strings.Contains(r.stdout, `"hash":"`+history[3].Hash+`"`) {
		t.Fatalf("-history -json: exit %d, want the hash of version 4 in:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runBinary(t, bin, env, "-history", a.ID); r.code != 0 || !strings.Contains(r.stdout, history[0].Hash) {
		t.Fatalf("-history: exit %d, want the hash of version 1 in the table:\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The anchor loop runs inside ticketd: an anchor of both heads, logged with its root.
	var id int64
	var root []byte
	eventually(t, 10*time.Second, "an anchor of both tickets' 8 events", func() bool {
		err := conn.QueryRow(ctx, `SELECT id, root FROM audit_anchors WHERE events = 8 ORDER BY id DESC LIMIT 1`).Scan(&id, &root)
		return err == nil
	})
	eventually(t, 5*time.Second, "the anchor's log line", func() bool {
		return strings.Contains(s.logs.String(), fmt.Sprintf(`"msg":"audit anchor","anchor_id":%d,"root":"%x"`, id, root))
	})

	r := runBinary(t, bin, env, "-verify")
	if r.code != 0 || !regexp.MustCompile(`^verify: intact: 8 events in 2 tickets checked in .*; latest anchor \d+ of .* root [0-9a-f]{64} \(2 streams, 8 events\), \d+ anchored heads checked\n$`).MatchString(r.stdout) {
		t.Fatalf("-verify on an intact store: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if r := runBinary(t, bin, env, "-verify", b.ID); r.code != 0 || !strings.HasPrefix(r.stdout, "verify: intact: 4 events in 1 tickets") {
		t.Fatalf("-verify %s: exit %d\nstdout: %s\nstderr: %s", b.ID, r.code, r.stdout, r.stderr)
	}

	// The attacker: a superuser who turns the append-only trigger off.
	for _, q := range []string{
		`ALTER TABLE events DISABLE TRIGGER events_append_only`,
		`UPDATE events SET data = jsonb_set(data, '{body}', '"edited"') WHERE stream_id = '` + a.ID + `' AND version = 3`,
		`DELETE FROM events WHERE stream_id = '` + b.ID + `' AND version = 4`,
		`ALTER TABLE events ENABLE TRIGGER events_append_only`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	r = runBinary(t, bin, env, "-verify")
	if r.code != 1 {
		t.Fatalf("-verify on a tampered store: exit %d, want 1\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"BROKEN ticket " + a.ID + ", version 3: hash mismatch",
		"BROKEN ticket " + b.ID + ", version 4: truncated tail: anchor",
		"verify: BROKEN (2): 7 events in 2 tickets",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("-verify stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.HasPrefix(r.stderr, "ticketd: the hash chain is broken in 2 places; the first: ticket ") {
		t.Errorf("-verify stderr: %q", r.stderr)
	}
	if r := runBinary(t, bin, env, "-verify", a.ID); r.code != 1 || !strings.Contains(r.stderr, "the hash chain is broken: ticket "+a.ID+", version 3: hash mismatch") {
		t.Fatalf("-verify %s: exit %d\nstdout: %s\nstderr: %s", a.ID, r.code, r.stdout, r.stderr)
	}
	unknown := "01936f1e-7c4a-7000-8000-000000000000"
	if r := runBinary(t, bin, env, "-verify", unknown); r.code != 1 || !strings.Contains(r.stderr, "no ticket "+unknown) {
		t.Fatalf("-verify of an unknown ticket: exit %d, stderr %s", r.code, r.stderr)
	}
}
