package pii_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/pii"
)

func newKey(t testing.TB) (*pii.MasterKey, string) {
	t.Helper()
	raw := make([]byte, pii.MasterKeySize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	s := base64.StdEncoding.EncodeToString(raw)
	m, err := pii.ParseMasterKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return m, s
}

// TestParseMasterKey: DATA_KEY is the base64 of 32 bytes in any common alphabet and
// padding; anything else is refused with the expected form.
func TestParseMasterKey(t *testing.T) {
	t.Parallel()
	raw := bytes.Repeat([]byte{0xfb}, 32) // base64 with + and / in the standard alphabet
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		s := enc.EncodeToString(raw)
		m, err := pii.ParseMasterKey(" " + s + "\n")
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		ref, _ := pii.ParseMasterKey(base64.StdEncoding.EncodeToString(raw))
		if !bytes.Equal(m.CheckValue(), ref.CheckValue()) {
			t.Fatalf("%q gives another key than the standard encoding of the same bytes", s)
		}
	}
	for _, bad := range []string{"", "not base64!", base64.StdEncoding.EncodeToString(make([]byte, 31)), base64.StdEncoding.EncodeToString(make([]byte, 33)), "0123456789abcdef0123456789abcdef"} {
		if _, err := pii.ParseMasterKey(bad); !errors.Is(err, pii.ErrMasterKeyForm) {
			t.Errorf("%q: want ErrMasterKeyForm, got %v", bad, err)
		}
	}
}

// TestSubjectIDIsKeyedAndNormalised: one person whatever the case or spaces of their
// email; another database (another lookup key) names them differently; the id does not
// show the address.
func TestSubjectIDIsKeyedAndNormalised(t *testing.T) {
	t.Parallel()
	m, _ := newKey(t)
	ring := openRing(t, dbtest.NewPool(t), m)
	other := openRing(t, dbtest.NewPool(t), m)
	a := ring.SubjectID("Ann@Example.com ")
	if a != ring.SubjectID("ann@example.com") {
		t.Fatal("case and spaces change the subject")
	}
	if a == ring.SubjectID("bob@example.com") {
		t.Fatal("two emails, one subject")
	}
	if a == other.SubjectID("ann@example.com") {
		t.Fatal("two databases share a lookup key")
	}
	if bytes.Contains([]byte(a.String()), []byte("ann")) || len(a.String()) != 64 {
		t.Fatalf("subject id %q", a)
	}
}

func openRing(t testing.TB, pool *pgxpool.Pool, m *pii.MasterKey) *pii.Keyring {
	t.Helper()
	ring, err := pii.Open(dbtest.Context(t), pool, m)
	if err != nil {
		t.Fatal(err)
	}
	return ring
}

// TestSealOpen: a sealed value opens with its key and associated data only, and two
// seals of one value differ (fresh nonces).
func TestSealOpen(t *testing.T) {
	t.Parallel()
	key := make([]byte, pii.DataKeySize)
	rand.Read(key)
	s, err := pii.NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.Seal([]byte("ann@example.com"), []byte("ticket 1 v1 email"))
	b, _ := s.Seal([]byte("ann@example.com"), []byte("ticket 1 v1 email"))
	if bytes.Equal(a, b) || bytes.Contains(a, []byte("ann")) {
		t.Fatal("seals repeat or show the plaintext")
	}
	if got, err := s.Open(a, []byte("ticket 1 v1 email")); err != nil || string(got) != "ann@example.com" {
		t.Fatalf("open: %q, %v", got, err)
	}
	if _, err := s.Open(a, []byte("ticket 2 v1 email")); !errors.Is(err, pii.ErrUnreadable) {
		t.Fatalf("moved value: %v", err)
	}
	other := make([]byte, pii.DataKeySize)
	rand.Read(other)
	o, _ := pii.NewSealer(other)
	if _, err := o.Open(a, []byte("ticket 1 v1 email")); !errors.Is(err, pii.ErrUnreadable) {
		t.Fatalf("other key: %v", err)
	}
	a[len(a)-1] ^= 1
	if _, err := s.Open(a, []byte("ticket 1 v1 email")); !errors.Is(err, pii.ErrUnreadable) {
		t.Fatalf("changed value: %v", err)
	}
	if _, err := s.Open(a[:5], nil); !errors.Is(err, pii.ErrUnreadable) {
		t.Fatalf("short value: %v", err)
	}
}

// TestKeyringLifecycle: the master key check, a subject's key made once (also by
// concurrent creators), erasure (twice harmless; unknown told apart), a new key after
// erasure that does not open the old seals, and rotation to a new master key.
func TestKeyringLifecycle(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewPool(t)
	ctx := dbtest.Context(t)
	m, _ := newKey(t)
	// concurrent first starts agree on the lookup key
	rings := make([]*pii.Keyring, 4)
	var starts sync.WaitGroup
	for i := range rings {
		starts.Add(1)
		go func() { defer starts.Done(); rings[i] = openRing(t, pool, m) }()
	}
	starts.Wait()
	ring := rings[0]
	for _, r := range rings {
		if r.SubjectID("ann@example.com") != ring.SubjectID("ann@example.com") {
			t.Fatal("concurrent first starts made two lookup keys")
		}
	}
	wrong, _ := newKey(t)
	if _, err := pii.Open(ctx, pool, wrong); !errors.Is(err, pii.ErrWrongMasterKey) {
		t.Fatalf("wrong master key: %v", err)
	}

	ann := ring.SubjectID("ann@example.com")
	if _, err := ring.Sealer(ctx, pool, ann, false, false); !errors.Is(err, pii.ErrUnknownSubject) {
		t.Fatalf("unknown subject: %v", err)
	}
	// concurrent creators end up with one key
	sealers := make([]pii.Sealer, 8)
	var wg sync.WaitGroup
	for i := range sealers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if sealers[i], err = ring.Sealer(ctx, pool, ann, true, false); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	sealed, _ := sealers[0].Seal([]byte("Ann"), []byte("aad"))
	for i, s := range sealers {
		if got, err := s.Open(sealed, []byte("aad")); err != nil || string(got) != "Ann" {
			t.Fatalf("creator %d has another key: %v", i, err)
		}
	}
	var wrapped []byte
	if err := pool.QueryRow(ctx, `SELECT wrapped FROM subject_keys WHERE subject = $1`, ann[:]).Scan(&wrapped); err != nil || len(wrapped) < pii.DataKeySize {
		t.Fatalf("stored key: %x, %v", wrapped, err)
	}

	// another subject's row cannot borrow ann's wrapped key
	bob := ring.SubjectID("bob@example.com")
	if _, err := pool.Exec(ctx, `INSERT INTO subject_keys (subject, wrapped) VALUES ($1, $2)`, bob[:], wrapped); err != nil {
		t.Fatal(err)
	}
	if _, err := ring.Sealer(ctx, pool, bob, false, false); err == nil {
		t.Fatal("a wrapped key copied to another subject opens")
	}

	// erasure
	for i := range 2 {
		if found, err := ring.Erase(ctx, pool, ann); err != nil || !found {
			t.Fatalf("erase %d: found %v, %v", i, found, err)
		}
	}
	if found, err := ring.Erase(ctx, pool, ring.SubjectID("nobody@example.com")); err != nil || found {
		t.Fatalf("erase an unknown subject: found %v, %v", found, err)
	}
	if _, err := ring.Sealer(ctx, pool, ann, false, false); !errors.Is(err, pii.ErrErased) {
		t.Fatalf("erased subject: %v", err)
	}
	again, err := ring.Sealer(ctx, pool, ann, true, false)
	if err != nil {
		t.Fatalf("a new key after erasure: %v", err)
	}
	if _, err := again.Open(sealed, []byte("aad")); !errors.Is(err, pii.ErrUnreadable) {
		t.Fatalf("the new key opens what the erased one sealed: %v", err)
	}

	// rotation: every key moves; the old master key no longer passes the check
	if _, err := pool.Exec(ctx, `DELETE FROM subject_keys WHERE subject = $1`, bob[:]); err != nil {
		t.Fatal(err)
	}
	carol := ring.SubjectID("carol@example.com")
	cs, err := ring.Sealer(ctx, pool, carol, true, false)
	if err != nil {
		t.Fatal(err)
	}
	carolSealed, _ := cs.Seal([]byte("Carol"), nil)
	next, _ := newKey(t)
	if _, err := pii.Rotate(ctx, pool, wrong, next); !errors.Is(err, pii.ErrWrongMasterKey) {
		t.Fatalf("rotating from a key the database does not use: %v", err)
	}
	n, err := pii.Rotate(ctx, pool, m, next)
	if err != nil || n != 2 {
		t.Fatalf("rotate: %d keys, %v (want 2: ann's new key and carol's)", n, err)
	}
	if _, err := pii.Open(ctx, pool, m); !errors.Is(err, pii.ErrWrongMasterKey) {
		t.Fatalf("the old master key after rotation: %v", err)
	}
	rotated := openRing(t, pool, next)
	if rotated.SubjectID("carol@example.com") != carol {
		t.Fatal("a subject's id changed with the master key")
	}
	cs2, err := rotated.Sealer(ctx, pool, carol, false, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cs2.Open(carolSealed, nil); err != nil || string(got) != "Carol" {
		t.Fatalf("carol's seal after rotation: %q, %v", got, err)
	}
}

// TestEraseWaitsForAWriterHoldingTheKey: a transaction that took the subject's key FOR
// SHARE (an append sealing with it) makes an erasure wait until it commits, so nothing
// is sealed with a key already destroyed.
func TestEraseWaitsForAWriterHoldingTheKey(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewPool(t)
	ctx := dbtest.Context(t)
	m, _ := newKey(t)
	ring := openRing(t, pool, m)
	ann := ring.SubjectID("ann@example.com")
	if _, err := ring.Sealer(ctx, pool, ann, true, false); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := ring.Sealer(ctx, tx, ann, false, true); err != nil {
		t.Fatal(err)
	}
	erased := make(chan time.Time, 1)
	go func() {
		if _, err := ring.Erase(ctx, pool, ann); err != nil {
			t.Error(err)
		}
		erased <- time.Now()
	}()
	time.Sleep(200 * time.Millisecond)
	committed := time.Now()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if at := <-erased; at.Before(committed) {
		t.Fatal("the erasure did not wait for the transaction holding the key")
	}
}
