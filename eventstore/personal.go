package eventstore

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/pii"
	"github.com/ticketd/ticketd/ticket"
)

// Personal data in events (package pii, README "Personal data and erasure").
//
// The personal fields of an event are stored sealed, each as the string
//
//	pii:v1:<subject id, hex>:<base64url of nonce || AES-GCM ciphertext || tag>
//
// under the data key of its subject, with the stream id, the version and the field's
// name as associated data, so a sealed value copied to another event or field does not
// open. The fields, and whose they are:
//
//   - TicketOpened email and created_by, the metadata's actor, and the principal's name
//     when the principal is a requester: the requester's (the ticket's subject, named
//     by the email);
//   - CommentAdded email and created_by, actor and requester name: the comment's own
//     email's subject when it has one, else the ticket's subject;
//   - StatusChanged updated_by, TicketDeleted deleted_by, their actor and requester
//     name: the ticket's subject (the names written in a ticket are erased with its
//     requester: the principal, kept in clear, still says which credential acted);
//   - SubjectErased holds no personal data (the subject's keyed id, the operator's
//     name, the operator's reason) and is stored as it is.
//
// Every other field (title, description, bodies, ids, statuses) is stored as given.
// The hash chain covers the stored (sealed) form, so destroying a key leaves it valid.
//
// Writing: the append statement takes the key row of every subject it seals for FOR
// SHARE in its own transaction and stores nothing for a command whose key is not the
// one it sealed with (erased or replaced meanwhile); that command is sealed again with
// the key as it now stands (a new one after an erasure) and appended again. A subject
// without a key gets one in the same statement. Reading: a field whose key is erased,
// or does not open it (it was sealed under a key erased since), reads ticket.Erased.

const (
	sealedPrefix = "pii:v1:"
	// KeyCacheTTL is how long a key read from the database is used for reads without
	// reading it again: an erasure on another instance is seen by this one's reads
	// after at most this long (at once on this instance, and at once by every read of
	// a stream that holds the erasure event). Appends never rely on it: their
	// statement checks the key.
	KeyCacheTTL = 5 * time.Second
	// maxCachedKeys bounds the unwrapped keys kept: each holds an AES-GCM instance
	// (its expanded key and GHASH tables, some 500-600 bytes with the wrapped key), so
	// 10,000 subjects are about 6 MB. A key older than KeyCacheTTL is read again
	// anyway; a miss costs a read of the keys a batch lacks, in one query.
	maxCachedKeys = 10_000
	// maxCachedStreams bounds the streams whose subject is kept (about 80 bytes each
	// with the map's own): as many as the aggregate cache holds tickets, so the streams
	// being written are in both; a miss costs one indexed read of the stream's first
	// event. (200,000 was about 16 MB, every MB of which the collector's headroom
	// doubles in RSS.)
	maxCachedStreams = DefaultCacheEntries
	// maxResealAttempts bounds how often a command is sealed again after its key
	// changed under it (an erasure or a concurrent first key of its subject).
	maxResealAttempts = 8
)

// personal seals and opens the personal fields of events for a Store.
type personal struct {
	ring *pii.Keyring
	pool *pgxpool.Pool
	now  func() time.Time

	mu      sync.Mutex
	keys    map[pii.SubjectID]*subjectKey
	streams map[uuid.UUID]pii.SubjectID
}

// subjectKey is a subject's key as last seen.
type subjectKey struct {
	wrapped []byte // nil: erased or unknown (as of checked)
	sealer  pii.Sealer
	checked time.Time
}

func newPersonal(pool *pgxpool.Pool, ring *pii.Keyring) *personal {
	return &personal{ring: ring, pool: pool, now: time.Now,
		keys: map[pii.SubjectID]*subjectKey{}, streams: map[uuid.UUID]pii.SubjectID{}}
}

// keyUse is one subject's key used by one command: what the append statement checks.
type keyUse struct {
	stream  uuid.UUID
	subject pii.SubjectID
	wrapped []byte
	fresh   bool // made for this command: the statement stores it
	sealer  pii.Sealer
}

// errStaleKey: a command was sealed with a key that is no longer its subject's.
type errStaleKey struct{ stream uuid.UUID }

func (e errStaleKey) Error() string {
	return fmt.Sprintf("append to %s: a subject's key changed while sealing", e.stream)
}

// aad is the associated data of a field: stream id, version, field name.
func aad(stream uuid.UUID, version int, field string) []byte {
	b := make([]byte, 0, 16+4+len(field))
	b = append(b, stream[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(version))
	return append(b, field...)
}

// sealedSubject returns the subject a stored value is sealed for, and whether it is
// sealed at all (a value stored before encryption is not).
func sealedSubject(v string) (pii.SubjectID, string, bool) {
	rest, ok := strings.CutPrefix(v, sealedPrefix)
	if !ok || len(rest) < 65 || rest[64] != ':' {
		return pii.SubjectID{}, "", false
	}
	id, err := pii.ParseSubjectID(rest[:64])
	if err != nil {
		return pii.SubjectID{}, "", false
	}
	return id, rest[65:], true
}

// subjectOf returns the subject a stored value names: its sealed subject, or the
// subject of a value stored before encryption (the email itself).
func (p *personal) subjectOf(stored string) pii.SubjectID {
	if id, _, ok := sealedSubject(stored); ok {
		return id
	}
	return p.ring.SubjectID(stored)
}

// streamSubject returns the subject of stream id (its requester's), from the cache or
// from its first event.
func (p *personal) streamSubject(ctx context.Context, id uuid.UUID) (pii.SubjectID, error) {
	p.mu.Lock()
	s, ok := p.streams[id]
	p.mu.Unlock()
	if ok {
		return s, nil
	}
	var email string
	err := p.pool.QueryRow(ctx, `SELECT data->>'email' FROM events WHERE stream_id = $1 AND version = 1`, id).Scan(&email)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return s, fmt.Errorf("ticket %s: %w", id, ticket.ErrNotFound)
		}
		return s, err
	}
	s = p.subjectOf(email)
	p.learnStream(id, s)
	return s, nil
}

func (p *personal) learnStream(id uuid.UUID, s pii.SubjectID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.streams) >= maxCachedStreams {
		for k := range p.streams {
			delete(p.streams, k)
			break
		}
	}
	p.streams[id] = s
}

// learnOpened notes the subject of a stream from its stored first event.
func (p *personal) learnOpened(r Record) {
	if d, ok := r.Data.(ticket.Opened); ok && r.Version == 1 {
		p.learnStream(r.TicketID, p.subjectOf(d.Email))
	}
}

// sealCommand returns recs (one command on one stream) with their personal fields
// sealed, and the keys it used. fromDB says to read the keys from the database rather
// than trust the cache or make new ones (after the statement found one stale).
func (p *personal) sealCommand(ctx context.Context, recs []Record, fromDB bool) ([]Record, []keyUse, error) {
	id := recs[0].TicketID
	var stream pii.SubjectID
	if d, ok := recs[0].Data.(ticket.Opened); ok {
		stream = p.ring.SubjectID(d.Email)
	} else {
		var err error
		if stream, err = p.streamSubject(ctx, id); err != nil {
			return nil, nil, err
		}
	}
	out := make([]Record, len(recs))
	var uses []keyUse
	// prefixes[i] is "pii:v1:<subject id>:" of uses[i], made once per command: the hex
	// of the subject id and the concatenation were more than the sealing's own cost
	var prefixes []string
	sealerOf := func(s pii.SubjectID) (pii.Sealer, string, error) {
		for i := range uses { // a command seals for one subject, two at most
			if uses[i].subject == s {
				return uses[i].sealer, prefixes[i], nil
			}
		}
		k, fresh, err := p.keyForWrite(ctx, s, fromDB)
		if err != nil {
			return pii.Sealer{}, "", err
		}
		uses = append(uses, keyUse{stream: id, subject: s, wrapped: k.wrapped, fresh: fresh, sealer: k.sealer})
		prefixes = append(prefixes, sealedPrefix+s.String()+":")
		return k.sealer, prefixes[len(prefixes)-1], nil
	}
	for i := range recs {
		r := recs[i]
		if _, ok := r.Data.(ticket.SubjectErased); ok {
			out[i] = r
			continue
		}
		subject := stream
		if d, ok := r.Data.(ticket.CommentAdded); ok && d.Email != "" {
			subject = p.ring.SubjectID(d.Email)
		}
		fs, put := fieldsOf(&r.Event, &r.Metadata)
		for _, f := range fs {
			if *f.v == "" || (f.name == "principal.name" && r.Metadata.Principal.Role != "requester") {
				continue
			}
			s, prefix, err := sealerOf(subject)
			if err != nil {
				return nil, nil, err
			}
			sealed, err := s.Seal([]byte(*f.v), aad(id, r.Version, f.name))
			if err != nil {
				return nil, nil, err
			}
			b := make([]byte, 0, len(prefix)+base64.RawURLEncoding.EncodedLen(len(sealed)))
			*f.v = string(base64.RawURLEncoding.AppendEncode(append(b, prefix...), sealed))
		}
		put()
		out[i] = r
	}
	return out, uses, nil
}

// cached returns subject's cached key.
func (p *personal) cached(s pii.SubjectID) (*subjectKey, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k, ok := p.keys[s]
	return k, ok
}

func (p *personal) remember(s pii.SubjectID, k *subjectKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.keys[s]; !ok && len(p.keys) >= maxCachedKeys {
		for x := range p.keys {
			delete(p.keys, x)
			break
		}
	}
	p.keys[s] = k
}

// forget drops subjects' cached keys (an erasure, or a stale append).
func (p *personal) forget(subjects ...pii.SubjectID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range subjects {
		delete(p.keys, s)
	}
}

// keyForWrite returns the key to seal subject's fields with: the cached one, or
// (fromDB, or nothing cached) the stored one; a subject without a live key gets a new
// one, made here and stored by the append statement (fresh).
func (p *personal) keyForWrite(ctx context.Context, s pii.SubjectID, fromDB bool) (*subjectKey, bool, error) {
	if k, ok := p.cached(s); ok && k.wrapped != nil && !fromDB {
		return k, false, nil
	}
	if fromDB {
		stored, err := pii.WrappedKeys(ctx, p.pool, []pii.SubjectID{s})
		if err != nil {
			return nil, false, err
		}
		w, known := stored[s]
		if known && w == nil {
			// erased: a new key, stored now (the row's update waits for no append;
			// the statement that seals with it checks it as any other)
			if _, err := p.ring.Sealer(ctx, p.pool, s, true, false); err != nil {
				return nil, false, err
			}
			if stored, err = pii.WrappedKeys(ctx, p.pool, []pii.SubjectID{s}); err != nil {
				return nil, false, err
			}
			w = stored[s]
		}
		if w != nil {
			k, err := p.unwrap(s, w)
			return k, false, err
		}
	}
	w, sealer, err := p.ring.NewKey(s)
	if err != nil {
		return nil, false, err
	}
	// Kept only for this command (and cached once its append commits: confirm).
	return &subjectKey{wrapped: w, sealer: sealer}, true, nil
}

// unwrap returns the key of a stored wrapped value, reusing the cached unwrap of the
// same value, and caches it as checked now.
func (p *personal) unwrap(s pii.SubjectID, w []byte) (*subjectKey, error) {
	now := p.now()
	if k, ok := p.cached(s); ok && k.wrapped != nil && string(k.wrapped) == string(w) {
		k2 := &subjectKey{wrapped: k.wrapped, sealer: k.sealer, checked: now}
		p.remember(s, k2)
		return k2, nil
	}
	sealer, err := p.ring.Unwrap(s, w)
	if err != nil {
		return nil, err
	}
	k := &subjectKey{wrapped: w, sealer: sealer, checked: now}
	p.remember(s, k)
	return k, nil
}

// confirm caches the keys a committed append used: its statement saw them as stored.
func (p *personal) confirm(uses []keyUse) {
	now := p.now()
	for _, u := range uses {
		p.remember(u.subject, &subjectKey{wrapped: u.wrapped, sealer: u.sealer, checked: now})
	}
}

// field is one personal field of a stored record: where it is and its name.
type field struct {
	v    *string
	name string
}

// fieldsOf lists the personal fields of e and md (md nil: e's data only, as read
// without metadata), in a copy of its data and metadata, which it writes back with put.
func fieldsOf(e *ticket.Event, md *Metadata) (fields []field, put func()) {
	var common []field
	if md != nil {
		if md.Principal != nil {
			pr := *md.Principal
			md.Principal = &pr
		}
		common = []field{{&md.Actor, "actor"}}
		if md.Principal != nil {
			common = append(common, field{&md.Principal.Name, "principal.name"})
		}
	}
	actor := func() {
		if md != nil {
			e.Actor = md.Actor
		}
	}
	switch d := e.Data.(type) {
	case ticket.Opened:
		return append([]field{{&d.Email, "email"}, {&d.CreatedBy, "created_by"}}, common...), func() { e.Data = d; actor() }
	case ticket.CommentAdded:
		return append([]field{{&d.Email, "email"}, {&d.CreatedBy, "created_by"}}, common...), func() { e.Data = d; actor() }
	case ticket.StatusChanged:
		return append([]field{{&d.UpdatedBy, "updated_by"}}, common...), func() { e.Data = d; actor() }
	case ticket.Deleted:
		return append([]field{{&d.DeletedBy, "deleted_by"}}, common...), func() { e.Data = d; actor() }
	}
	return nil, func() {}
}

// personalValues returns the values of the personal fields of e and md (those
// fieldsOf lists, in its order), in buf's room: no copy of the event or its metadata.
func personalValues(e *ticket.Event, md *Metadata, buf *[6]string) []string {
	out := buf[:0]
	switch d := e.Data.(type) {
	case ticket.Opened:
		out = append(out, d.Email, d.CreatedBy)
	case ticket.CommentAdded:
		out = append(out, d.Email, d.CreatedBy)
	case ticket.StatusChanged:
		out = append(out, d.UpdatedBy)
	case ticket.Deleted:
		out = append(out, d.DeletedBy)
	default:
		return nil
	}
	if md != nil {
		out = append(out, md.Actor)
		if md.Principal != nil {
			out = append(out, md.Principal.Name)
		}
	}
	return out
}

// hasSealed reports whether any personal field of e and md (see fieldsOf) holds a
// sealed value, without fieldsOf's copies: reveal passes over the others.
func hasSealed(e *ticket.Event, md *Metadata) bool {
	if md != nil && (isSealed(md.Actor) || md.Principal != nil && isSealed(md.Principal.Name)) {
		return true
	}
	switch d := e.Data.(type) {
	case ticket.Opened:
		return isSealed(d.Email) || isSealed(d.CreatedBy)
	case ticket.CommentAdded:
		return isSealed(d.Email) || isSealed(d.CreatedBy)
	case ticket.StatusChanged:
		return isSealed(d.UpdatedBy)
	case ticket.Deleted:
		return isSealed(d.DeletedBy)
	}
	return false
}

func isSealed(v string) bool { return strings.HasPrefix(v, sealedPrefix) }

// fetch reads the stored keys of subjects (one query) into the cache, checked at now;
// an erased or unknown subject is cached as erased.
func (p *personal) fetch(ctx context.Context, q Querier, subjects []pii.SubjectID, now time.Time) error {
	if len(subjects) == 0 {
		return nil
	}
	stored, err := pii.WrappedKeys(ctx, q, subjects)
	if err != nil {
		return err
	}
	for _, s := range subjects {
		w := stored[s]
		if w == nil {
			p.remember(s, &subjectKey{checked: now})
			continue
		}
		if _, err := p.unwrap(s, w); err != nil {
			return err
		}
	}
	return nil
}

// reveal opens the personal fields of recs in place: a field whose subject is erased
// (its key destroyed, or another key now: the value was sealed under one erased
// since), or erased by a SubjectErased event later in recs, reads ticket.Erased.
// Values stored before encryption are left as they are. One query reads the keys
// not cached (or cached longer than KeyCacheTTL ago).
func (p *personal) reveal(ctx context.Context, recs []Record) error {
	if p == nil {
		return nil
	}
	return p.revealVia(ctx, p.pool, recs)
}

// revealVia is reveal reading the keys through q: a caller inside a transaction passes
// it, rather than take another connection from the pool.
func (p *personal) revealVia(ctx context.Context, q Querier, recs []Record) error {
	if p == nil || len(recs) == 0 {
		return nil
	}
	return p.revealEach(ctx, q, len(recs), true, func(i int) (*ticket.Event, *Metadata) {
		return &recs[i].Event, &recs[i].Metadata
	})
}

// revealEvents is reveal for events read without their metadata (ScanCommitted's),
// in place: their data's fields only. It does not note the streams' subjects (see
// learnOpened): it serves the rebuild, which appends nothing.
func (p *personal) revealEvents(ctx context.Context, evs []ticket.Event) error {
	if p == nil || len(evs) == 0 {
		return nil
	}
	return p.revealEach(ctx, p.pool, len(evs), false, func(i int) (*ticket.Event, *Metadata) {
		return &evs[i], nil
	})
}

// revealEach is reveal over n events, each at(i) (md nil: no metadata), reading keys
// through q; learn notes the streams' subjects from their first events.
func (p *personal) revealEach(ctx context.Context, q Querier, n int, learn bool, at func(int) (*ticket.Event, *Metadata)) error {
	type streamSubject struct {
		stream  uuid.UUID
		subject pii.SubjectID
	}
	erasedAt := map[streamSubject]int{}
	var need []pii.SubjectID
	seen := map[pii.SubjectID]bool{}
	now := p.now()
	var vals [6]string
	for i := range n {
		e, md := at(i)
		if learn && e.Version == 1 {
			p.learnOpened(Record{Event: *e})
		}
		if d, ok := e.Data.(ticket.SubjectErased); ok {
			if id, err := pii.ParseSubjectID(d.Subject); err == nil {
				k := streamSubject{e.TicketID, id}
				if _, ok := erasedAt[k]; !ok {
					erasedAt[k] = e.Version
				}
			}
		}
		for _, v := range personalValues(e, md, &vals) {
			s, _, ok := sealedSubject(v)
			if !ok || seen[s] {
				continue
			}
			seen[s] = true
			if k, ok := p.cached(s); !ok || now.Sub(k.checked) > KeyCacheTTL {
				need = append(need, s)
			}
		}
	}
	if err := p.fetch(ctx, q, need, now); err != nil {
		return err
	}
	// A field that does not open with a key this call did not read may be sealed under
	// a key made since (another instance's new key after an erasure): those subjects
	// are read again, once, and their fields tried again.
	type pending struct {
		f       field
		e       *ticket.Event
		subject pii.SubjectID
		body    string
	}
	var retry []pending
	fetched := map[pii.SubjectID]bool{}
	for _, s := range need {
		fetched[s] = true
	}
	open := func(f field, e *ticket.Event, s pii.SubjectID, body string) bool {
		k, ok := p.cached(s)
		if !ok || k.wrapped == nil {
			return false
		}
		sealed, err := base64.RawURLEncoding.DecodeString(body)
		if err != nil {
			return true // not a sealed value: erased it stays
		}
		plain, err := k.sealer.Open(sealed, aad(e.TicketID, e.Version, f.name))
		if err != nil {
			return false
		}
		*f.v = string(plain)
		return true
	}
	var puts []func()
	for i := range n {
		e, md := at(i)
		if !hasSealed(e, md) {
			continue
		}
		fs, put := fieldsOf(e, md)
		if fs == nil {
			continue
		}
		puts = append(puts, put)
		for _, f := range fs {
			s, body, ok := sealedSubject(*f.v)
			if !ok {
				continue
			}
			*f.v = ticket.Erased
			if v, ok := erasedAt[streamSubject{e.TicketID, s}]; ok && e.Version < v {
				continue
			}
			if !open(f, e, s, body) && !fetched[s] {
				retry = append(retry, pending{f, e, s, body})
			}
		}
	}
	if len(retry) > 0 {
		var again []pii.SubjectID
		for _, x := range retry {
			if !fetched[x.subject] {
				fetched[x.subject] = true
				again = append(again, x.subject)
			}
		}
		if err := p.fetch(ctx, q, again, now); err != nil {
			return err
		}
		for _, x := range retry {
			open(x.f, x.e, x.subject, x.body)
		}
	}
	for _, put := range puts {
		put()
	}
	return nil
}

// EmailHash returns the keyed hash by which read models look up an email: the
// subject id of package pii (HMAC-SHA256 of the normalised email under the lookup
// key). Nil for an empty or erased email, or a store without a keyring.
func (s *Store) EmailHash(email string) []byte {
	if s.ring == nil || email == "" || email == ticket.Erased {
		return nil
	}
	id := s.ring.SubjectID(email)
	return id[:]
}
