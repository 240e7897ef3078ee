package eventstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/pii"
	"github.com/ticketd/ticketd/ticket"
)

// ErrUnknownSubject is returned by EraseSubject for an email that no stored event
// names (no key was ever made for it). It wraps ticket.ErrNotFound.
var ErrUnknownSubject = fmt.Errorf("no personal data of this subject is stored: %w", ticket.ErrNotFound)

// Erasure is what EraseSubject did.
type Erasure struct {
	// Subject is the erased subject's keyed id.
	Subject pii.SubjectID
	// AlreadyErased: the key was destroyed before (this run appended only what an
	// earlier, interrupted one had not, and scrubbed again).
	AlreadyErased bool
	// Tickets are the streams that hold the subject's data; Appended, those that got a
	// SubjectErased event now.
	Tickets, Appended []uuid.UUID
	// Values are the subject's personal values as they were stored (the email and the
	// names sealed under the key), for scrubbing copies kept outside the events (stored
	// answers, webhook delivery logs). Only the email when the key was destroyed before.
	Values []string
	// ScrubbedAnswers is how many stored idempotency answers were scrubbed.
	ScrubbedAnswers int64
}

// EraseSubject erases the data subject of email by crypto-shredding:
//
//  1. in one transaction, it takes the subject's key row FOR UPDATE (appends sealing
//     with the key wait, and an append in progress is waited for), reads what the key
//     sealed in the subject's streams (to scrub copies of it later), and destroys the
//     key (pii.Keyring.Erase): from then on none of it opens, anywhere;
//  2. it appends SubjectErased (by, reason, in the metadata md) to every stream that
//     holds data of the subject sealed since its last erasure, naming what was the
//     subject's, so the read models scrub it through the fold;
//  3. it scrubs the subject's values from the stored idempotency answers of those
//     streams (answers are JSON: a string equal to a value becomes "[erased]").
//
// Erasing again is harmless: the key stays destroyed, streams that already carry the
// erasure get no second one, and the scrubs are repeated. An email that never had a key
// is ErrUnknownSubject. The events themselves are never changed: the chain verifies.
func (s *Store) EraseSubject(ctx context.Context, email, by, reason string, md Metadata) (Erasure, error) {
	if s.personal == nil {
		return Erasure{}, errors.New("erase: the store has no keyring (DATA_KEY)")
	}
	p := s.personal
	subject := s.ring.SubjectID(email)
	er := Erasure{Subject: subject, Values: []string{strings.TrimSpace(email)}}
	if n := pii.NormalizeEmail(email); n != er.Values[0] {
		er.Values = append(er.Values, n)
	}
	type streamInfo struct {
		requester     bool
		comments      []uuid.UUID
		lastSealed    int
		lastErasure   int
		sealedSubject bool
	}
	streams := map[uuid.UUID]*streamInfo{}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var wrapped []byte
		err := tx.QueryRow(ctx, `SELECT wrapped FROM subject_keys WHERE subject = $1 FOR UPDATE`, subject[:]).Scan(&wrapped)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrUnknownSubject
		}
		if err != nil {
			return err
		}
		er.AlreadyErased = wrapped == nil
		var sealer pii.Sealer
		if wrapped != nil {
			if sealer, err = s.ring.Unwrap(subject, wrapped); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, `SELECT `+eventColumns+` FROM events
			WHERE stream_id IN (SELECT stream_id FROM subject_streams WHERE subject = $1)
			ORDER BY stream_id, version`, subject[:])
		if err != nil {
			return err
		}
		recs, err := collect(rows)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for i := range recs {
			r := &recs[i]
			info := streams[r.TicketID]
			if info == nil {
				info = &streamInfo{}
				streams[r.TicketID] = info
			}
			if d, ok := r.Data.(ticket.SubjectErased); ok && d.Subject == subject.String() {
				info.lastErasure = r.Version
				continue
			}
			fs, _ := fieldsOf(&r.Event, &r.Metadata)
			mine := false
			for _, f := range fs {
				sub, body, ok := sealedSubject(*f.v)
				if !ok || sub != subject {
					continue
				}
				mine = true
				if wrapped == nil {
					continue
				}
				sealed, err := base64.RawURLEncoding.DecodeString(body)
				if err != nil {
					continue
				}
				if v, err := sealer.Open(sealed, aad(r.TicketID, r.Version, f.name)); err == nil && !seen[string(v)] {
					seen[string(v)] = true
					er.Values = append(er.Values, string(v))
				}
			}
			if !mine {
				continue
			}
			info.lastSealed = r.Version
			switch d := r.Data.(type) {
			case ticket.Opened:
				info.requester = true
			case ticket.CommentAdded:
				if !slices.Contains(info.comments, d.CommentID) {
					info.comments = append(info.comments, d.CommentID)
				}
			}
		}
		_, err = s.ring.Erase(ctx, tx, subject)
		return err
	})
	p.forget(subject)
	if err != nil {
		if errors.Is(err, ErrUnknownSubject) {
			return er, err
		}
		return er, interpret(err, uuid.Nil, 0)
	}
	for id, info := range streams {
		er.Tickets = append(er.Tickets, id)
		if info.lastSealed <= info.lastErasure {
			continue // nothing of the subject since its last erasure here
		}
		cmd := ticket.EraseSubject{Subject: subject.String(), Requester: info.requester, Comments: info.comments, ErasedBy: by, Reason: reason}
		if _, err := s.Handle(ctx, id, Options{Metadata: md}, func(t *ticket.Ticket, now time.Time) error {
			return t.EraseSubject(cmd, now)
		}); err != nil {
			return er, fmt.Errorf("erase: append to %s: %w", id, err)
		}
		er.Appended = append(er.Appended, id)
	}
	n, err := s.scrubAnswers(ctx, er.Tickets, er.Values)
	er.ScrubbedAnswers = n
	return er, err
}

// scrubAnswers replaces, in the stored idempotency answers of streams, every JSON
// string equal to one of values (an email compared without case) with "[erased]".
func (s *Store) scrubAnswers(ctx context.Context, streams []uuid.UUID, values []string) (int64, error) {
	if len(streams) == 0 {
		return 0, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT scope, key, answer FROM idempotency_keys WHERE stream_id = ANY($1)`, streams)
	if err != nil {
		return 0, interpret(err, uuid.Nil, 0)
	}
	type answer struct {
		scope, key string
		body       []byte
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (answer, error) {
		var a answer
		return a, row.Scan(&a.scope, &a.key, &a.body)
	})
	if err != nil {
		return 0, interpret(err, uuid.Nil, 0)
	}
	var n int64
	for _, a := range all {
		scrubbed := ScrubJSON(a.body, values)
		if bytes.Equal(scrubbed, a.body) {
			continue
		}
		if _, err := s.pool.Exec(ctx, `UPDATE idempotency_keys SET answer = $3 WHERE scope = $1 AND key = $2`, a.scope, a.key, scrubbed); err != nil {
			return n, interpret(err, uuid.Nil, 0)
		}
		n++
	}
	return n, nil
}

// ScrubJSON returns doc with every JSON string equal to one of values (compared
// without case) replaced by "[erased]", also inside JSON documents embedded as strings
// (their quotes escaped). Text that is not such a string is left alone: a name inside
// a longer text is not found (a known limit: free text is not personal-data aware).
func ScrubJSON(doc []byte, values []string) []byte {
	out := doc
	for _, v := range values {
		if v == "" {
			continue
		}
		enc, err := EncodeJSON(v) // the quoted, escaped form
		if err != nil {
			continue
		}
		out = replaceFold(out, enc, []byte(`"`+ticket.Erased+`"`))
		// the same string inside an embedded JSON document: \"v\"
		inner := enc[1 : len(enc)-1]
		esc := append(append([]byte(`\"`), inner...), `\"`...)
		out = replaceFold(out, esc, []byte(`\"`+ticket.Erased+`\"`))
	}
	return out
}

// replaceFold replaces every case-insensitive (ASCII) occurrence of old in s by new.
func replaceFold(s, old, new []byte) []byte {
	lower, lowOld := bytes.ToLower(s), bytes.ToLower(old)
	if len(lower) != len(s) || !bytes.Contains(lower, lowOld) {
		if len(lower) != len(s) {
			return bytes.ReplaceAll(s, old, new)
		}
		return s
	}
	var b bytes.Buffer
	for {
		i := bytes.Index(lower, lowOld)
		if i < 0 {
			b.Write(s)
			return b.Bytes()
		}
		b.Write(s[:i])
		b.Write(new)
		s, lower = s[i+len(old):], lower[i+len(old):]
	}
}
