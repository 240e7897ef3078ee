package pii

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The keyring's table (db/migrations/*_subject_keys.sql):
//
//	subject_keys(subject bytea primary key, wrapped bytea, created_at, erased_at)
//
// wrapped is the subject's data key sealed under the master key with the subject as
// associated data (a wrapped key copied to another subject's row does not open), and
// NULL once the subject is erased; the row stays, so erasing twice is harmless and an
// erased subject is told from an unknown one.

// Errors of the keyring.
var (
	// ErrErased: the subject's key was destroyed; what it sealed is gone for good.
	ErrErased = errors.New("subject erased")
	// ErrUnknownSubject: no key was ever made for the subject.
	ErrUnknownSubject = errors.New("unknown subject")
	// ErrWrongMasterKey: DATA_KEY is not the key this database was first used with.
	ErrWrongMasterKey = errors.New("DATA_KEY is not the master key this database was first used with " +
		"(its check value differs): start with that key, or move the data keys to a new one with -rotate-data-key")
)

// Settings rows of the keyring: the master key's check value, and the lookup key (the
// key of SubjectID's hash) wrapped by the master key. The lookup key is random and
// stored, not derived from DATA_KEY, so a rotation of DATA_KEY rewraps it and every
// subject keeps its id (the ids are in the keys table and in stored events).
const (
	CheckSetting  = "data_key_check"
	LookupSetting = "pii_lookup_key"
)

// lookupAAD binds the wrapped lookup key to its use.
var lookupAAD = []byte("ticketd pii lookup key v1")

// Queryer is what the keyring needs of a pool or a transaction: the caller decides in
// which transaction a key is made or read (an append takes its subject's key in its own).
type Queryer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Keyring keeps the subjects' data keys in Postgres, wrapped by the master key, and
// names subjects by a keyed hash of their email.
type Keyring struct {
	master *MasterKey
	lookup []byte
}

// Open returns the keyring of the database behind pool under master, after making sure
// the database was first used with this master key: the first start stores the key's
// check value and a fresh lookup key, and every later start compares and unwraps. A
// database whose keys were wrapped by another master key must not be served with this
// one (nothing sealed would open): that is ErrWrongMasterKey.
func Open(ctx context.Context, pool *pgxpool.Pool, master *MasterKey) (*Keyring, error) {
	fresh := make([]byte, 32)
	if _, err := rand.Read(fresh); err != nil {
		return nil, err
	}
	wrappedFresh, err := master.wrapKey(lookupAAD, fresh)
	if err != nil {
		return nil, err
	}
	// Both rows in one statement: the first start stores both or neither. A concurrent
	// first start waits for the other's insert and then does nothing; the read after it
	// sees the winner's rows.
	if _, err := pool.Exec(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2), ($3, $4) ON CONFLICT (name) DO NOTHING`,
		CheckSetting, master.CheckValue(), LookupSetting, wrappedFresh); err != nil {
		return nil, fmt.Errorf("data key check: store: %w", err)
	}
	var check, wrapped []byte
	if err := pool.QueryRow(ctx, `SELECT (SELECT value FROM settings WHERE name = $1), (SELECT value FROM settings WHERE name = $2)`,
		CheckSetting, LookupSetting).Scan(&check, &wrapped); err != nil {
		return nil, fmt.Errorf("data key check: read: %w", err)
	}
	if !hmac.Equal(check, master.CheckValue()) {
		return nil, ErrWrongMasterKey
	}
	lookup, err := master.unwrapKey(lookupAAD, wrapped)
	if err != nil {
		return nil, fmt.Errorf("the lookup key does not open with DATA_KEY: %w", err)
	}
	return &Keyring{master: master, lookup: lookup}, nil
}

// SubjectID returns the keyed hash naming the subject of email.
func (k *Keyring) SubjectID(email string) SubjectID {
	h := hmac.New(sha256.New, k.lookup)
	h.Write([]byte(NormalizeEmail(email)))
	var id SubjectID
	copy(id[:], h.Sum(nil))
	return id
}

// Sealer returns the sealer of subject's data key, read in q. With create, a subject
// without a key gets one (also one erased before: a new key, for what they write from
// now on; what the old key sealed stays unreadable). Without, an unknown subject is
// ErrUnknownSubject and an erased one ErrErased. lock takes the subject's row FOR SHARE
// in q's transaction, so an erasure waits until that transaction ends (and the
// transaction, until an erasure in progress has committed).
func (k *Keyring) Sealer(ctx context.Context, q Queryer, subject SubjectID, create, lock bool) (Sealer, error) {
	read := `SELECT wrapped FROM subject_keys WHERE subject = $1`
	if lock {
		read += ` FOR SHARE`
	}
	var wrapped []byte
	err := q.QueryRow(ctx, read, subject[:]).Scan(&wrapped)
	switch {
	case err == nil && wrapped != nil:
		return k.open(subject, wrapped)
	case err != nil && !errors.Is(err, pgx.ErrNoRows):
		return Sealer{}, fmt.Errorf("subject key: %w", err)
	case !create && err != nil:
		return Sealer{}, ErrUnknownSubject
	case !create:
		return Sealer{}, ErrErased
	}
	fresh := make([]byte, DataKeySize)
	if _, err := rand.Read(fresh); err != nil {
		return Sealer{}, err
	}
	w, err := k.master.wrapKey(subject[:], fresh)
	if err != nil {
		return Sealer{}, err
	}
	// Concurrent creators: the insert waits for a concurrent one of the same subject and
	// then does nothing, and the read after it sees the winner's key.
	if _, err := q.Exec(ctx, `INSERT INTO subject_keys (subject, wrapped) VALUES ($1, $2)
		ON CONFLICT (subject) DO UPDATE SET wrapped = EXCLUDED.wrapped, erased_at = NULL, created_at = now()
		WHERE subject_keys.wrapped IS NULL`, subject[:], w); err != nil {
		return Sealer{}, fmt.Errorf("subject key: create: %w", err)
	}
	if err := q.QueryRow(ctx, read, subject[:]).Scan(&wrapped); err != nil {
		return Sealer{}, fmt.Errorf("subject key: read after create: %w", err)
	}
	if wrapped == nil {
		return Sealer{}, ErrErased // erased again in between
	}
	return k.open(subject, wrapped)
}

func (k *Keyring) open(subject SubjectID, wrapped []byte) (Sealer, error) {
	key, err := k.master.unwrapKey(subject[:], wrapped)
	if err != nil {
		return Sealer{}, fmt.Errorf("subject key %s does not open with DATA_KEY: %w", subject, err)
	}
	return NewSealer(key)
}

// Erase destroys subject's data key. It reports whether the subject was known (erased
// before counts: erasing twice is harmless).
func (k *Keyring) Erase(ctx context.Context, q Queryer, subject SubjectID) (bool, error) {
	tag, err := q.Exec(ctx, `UPDATE subject_keys SET wrapped = NULL, erased_at = coalesce(erased_at, now()) WHERE subject = $1`, subject[:])
	if err != nil {
		return false, fmt.Errorf("erase subject key: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// Rotate moves every data key and the lookup key from the master key from to to, and
// the check value with them, in one transaction: a crash leaves either the old key or
// the new one in force, never a mix. Subjects keep their ids. It returns how many data
// keys it rewrapped.
func Rotate(ctx context.Context, pool *pgxpool.Pool, from, to *MasterKey) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var check, lookup []byte
		rows, err := tx.Query(ctx, `SELECT name, value FROM settings WHERE name IN ($1, $2) FOR UPDATE`, CheckSetting, LookupSetting)
		if err != nil {
			return err
		}
		for rows.Next() {
			var name string
			var value []byte
			if err := rows.Scan(&name, &value); err != nil {
				return err
			}
			if name == CheckSetting {
				check = value
			} else {
				lookup = value
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if check == nil || lookup == nil {
			return errors.New("rotate: this database has no data key yet: start ticketd with the new DATA_KEY instead")
		}
		if !hmac.Equal(check, from.CheckValue()) {
			return fmt.Errorf("rotate: the old key is not the one this database uses: %w", ErrWrongMasterKey)
		}
		lk, err := from.unwrapKey(lookupAAD, lookup)
		if err != nil {
			return fmt.Errorf("rotate: the lookup key does not open with the old key: %w", err)
		}
		if lookup, err = to.wrapKey(lookupAAD, lk); err != nil {
			return err
		}
		keys, err := tx.Query(ctx, `SELECT subject, wrapped FROM subject_keys WHERE wrapped IS NOT NULL FOR UPDATE`)
		if err != nil {
			return err
		}
		type row struct {
			subject SubjectID
			wrapped []byte
		}
		var all []row
		for keys.Next() {
			var r row
			var s []byte
			if err := keys.Scan(&s, &r.wrapped); err != nil {
				return err
			}
			copy(r.subject[:], s)
			all = append(all, r)
		}
		if err := keys.Err(); err != nil {
			return err
		}
		for _, r := range all {
			key, err := from.unwrapKey(r.subject[:], r.wrapped)
			if err != nil {
				return fmt.Errorf("rotate: subject key %s does not open with the old key: %w", r.subject, err)
			}
			w, err := to.wrapKey(r.subject[:], key)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE subject_keys SET wrapped = $2 WHERE subject = $1`, r.subject[:], w); err != nil {
				return err
			}
			n++
		}
		_, err = tx.Exec(ctx, `UPDATE settings SET value = CASE name WHEN $1 THEN $2::bytea ELSE $4::bytea END WHERE name IN ($1, $3)`,
			CheckSetting, to.CheckValue(), LookupSetting, lookup)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// NewKey makes a fresh data key for subject and returns it wrapped (for the caller to
// store, e.g. in the statement that also uses it) and its sealer. Nothing is stored.
func (k *Keyring) NewKey(subject SubjectID) (wrapped []byte, s Sealer, err error) {
	fresh := make([]byte, DataKeySize)
	if _, err := rand.Read(fresh); err != nil {
		return nil, Sealer{}, err
	}
	if wrapped, err = k.master.wrapKey(subject[:], fresh); err != nil {
		return nil, Sealer{}, err
	}
	s, err = NewSealer(fresh)
	return wrapped, s, err
}

// Unwrap returns the sealer of subject's data key wrapped as stored.
func (k *Keyring) Unwrap(subject SubjectID, wrapped []byte) (Sealer, error) {
	return k.open(subject, wrapped)
}

// WrappedKeys reads, in q, the stored wrapped keys of subjects: a subject whose key is
// erased maps to nil, an unknown one is absent.
func WrappedKeys(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}, subjects []SubjectID) (map[SubjectID][]byte, error) {
	ids := make([][]byte, len(subjects))
	for i := range subjects {
		ids[i] = subjects[i][:]
	}
	rows, err := q.Query(ctx, `SELECT subject, wrapped FROM subject_keys WHERE subject = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("subject keys: %w", err)
	}
	out := make(map[SubjectID][]byte, len(subjects))
	var s, w []byte
	_, err = pgx.ForEachRow(rows, []any{&s, &w}, func() error {
		var id SubjectID
		copy(id[:], s)
		out[id] = append([]byte(nil), w...)
		if w == nil {
			out[id] = nil
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("subject keys: %w", err)
	}
	return out, nil
}

// ParseSubjectID reads a SubjectID from its String form.
func ParseSubjectID(s string) (SubjectID, error) {
	var id SubjectID
	// by hand: every sealed value read names its subject, and hex.DecodeString's
	// buffer was an allocation per personal field of every event read
	if len(s) != 2*len(id) {
		return SubjectID{}, fmt.Errorf("subject id %q: not 64 hex digits", s)
	}
	for i := range id {
		hi, ok1 := fromHex(s[2*i])
		lo, ok2 := fromHex(s[2*i+1])
		if !ok1 || !ok2 {
			return SubjectID{}, fmt.Errorf("subject id %q: not 64 hex digits", s)
		}
		id[i] = hi<<4 | lo
	}
	return id, nil
}

func fromHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
