package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/httpapi"
	"github.com/ticketd/ticketd/ticket"
)

// historyPage is how many events the CLI reads per query.
const historyPage = 1000

// printHistory is `ticketd -history <id> [-json]`: it prints every event of the ticket
// from the event store (deleted tickets included) as a table, or as JSON lines shaped
// like GET /v1/ticket/{id}/history entries, and returns. It only reads: no migrations,
// no server, no projectors, a pool of two connections.
func printHistory(ctx context.Context, cfg Config, rawID string, asJSON bool, out io.Writer) error {
	id, err := uuid.Parse(rawID)
	if err != nil || len(rawID) != 36 {
		return fmt.Errorf("-history: %q is not a ticket id (a UUID like 01936f1e-7c4a-7000-8000-000000000000)", rawID)
	}
	pool, err := db.Open(ctx, cfg.DatabaseDSN, db.PoolConfig{MaxConns: 2})
	if err != nil {
		return err
	}
	defer pool.Close()
	ring, err := openKeyring(ctx, cfg, pool)
	if err != nil {
		return err
	}
	store := eventstore.New(pool, ring)

	var table *tabwriter.Writer
	var enc *json.Encoder
	if asJSON {
		enc = json.NewEncoder(out)
		enc.SetEscapeHTML(false)
	} else {
		table = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(table, "VERSION\tTIME\tTYPE\tACTOR\tPRINCIPAL\tDETAILS\tHASH")
	}
	after := 0
	for {
		page, more, err := store.History(ctx, id, after, historyPage)
		if errors.Is(err, ticket.ErrNotFound) {
			return fmt.Errorf("-history: no ticket %s: it has no events in this database", id)
		}
		if err != nil {
			return fmt.Errorf("-history %s: %w", id, err)
		}
		for _, r := range page {
			if asJSON {
				if err := enc.Encode(httpapi.NewHistoryEntry(r)); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(table, "%d\t%s\t%s\t%s\t%s\t%s\t%x\n", r.Version, r.RecordedAt.UTC().Format("2006-01-02T15:04:05.000Z"),
					r.Type(), printable(r.Actor, 40), principalColumn(r.Metadata.Principal), details(r.Data), r.Hash)
			}
			after = r.Version
		}
		if !more {
			break
		}
	}
	if table != nil {
		return table.Flush()
	}
	return nil
}

// principalColumn is the PRINCIPAL column: who recorded the event, authenticated, as
// "role name (id)"; "-" for an event recorded before authentication existed.
func principalColumn(p *eventstore.Principal) string {
	if p == nil {
		return "-"
	}
	return printable(p.Role, 20) + " " + printable(p.Name, 40) + " (" + printable(p.ID, 80) + ")"
}

// details is the DETAILS column: what the event changed, in a few words.
func details(d ticket.EventData) string {
	switch d := d.(type) {
	case ticket.Opened:
		return fmt.Sprintf("%s for %s", quoted(d.Title, 60), printable(d.Email, 60))
	case ticket.StatusChanged:
		return fmt.Sprintf("%s -> %s", d.From, d.To)
	case ticket.CommentAdded:
		return fmt.Sprintf("comment %s: %s", d.CommentID, quoted(d.Body, 60))
	case ticket.Deleted:
		if d.DeletedBy != "" {
			return "deleted by " + printable(d.DeletedBy, 40)
		}
		return "deleted"
	case ticket.SubjectErased:
		what := "subject " + printable(d.Subject, 16) + " erased by " + printable(d.ErasedBy, 40)
		if d.Reason != "" {
			what += ": " + quoted(d.Reason, 40)
		}
		return what
	}
	return ""
}

// quoted cuts s to max runes (marking the cut with …) and quotes it, escaping control
// characters: text typed by users must not steer the auditor's terminal or break the
// table's columns with tabs and newlines.
func quoted(s string, max int) string {
	return strconv.Quote(excerpt(s, max))
}

// printable is s cut to max runes, escaped like quoted only if it holds a character
// that is not printable.
func printable(s string, max int) string {
	s = excerpt(s, max)
	if strings.IndexFunc(s, func(r rune) bool { return !strconv.IsPrint(r) || r == utf8.RuneError }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

func excerpt(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	return string([]rune(s)[:max-1]) + "…"
}
