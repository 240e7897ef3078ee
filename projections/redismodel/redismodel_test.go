package redismodel_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/projections/projectionstest"
	"github.com/ticketd/ticketd/projections/redismodel"
	"github.com/ticketd/ticketd/ticket"
)

func view(id uuid.UUID, version int, status ticket.Status) projections.View {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	return projections.View{
		Summary: projections.Summary{
			ID: id, Title: "printer", Email: "a@example.com", CreatedBy: "ann", UpdatedBy: "ann",
			Status: status, Version: version, CreatedAt: at, UpdatedAt: at.Add(time.Duration(version) * time.Second),
		},
		Comments: []projections.Comment{},
	}
}

func TestRedisDocsWriteOnlyNewerVersions(t *testing.T) {
	t.Parallel()
	docs, _ := projectionstest.NewDocs(t)
	ctx := context.Background()
	id := uuid.New()

	t.Run("miss_is_not_an_error", func(t *testing.T) {
		_, _, found, err := docs.Get(ctx, uuid.New())
		if err != nil || found {
			t.Fatalf("miss: found=%v err=%v, want found=false and no error", found, err)
		}
	})
	t.Run("older_or_equal_put_changes_nothing", func(t *testing.T) {
		for _, step := range []struct {
			version int
			status  ticket.Status
			wrote   bool
		}{
			{2, ticket.StatusAnswered, true},
			{1, ticket.StatusOpen, false},
			{2, ticket.StatusClosed, false},
			{3, ticket.StatusWaitAnswer, true},
			{1, ticket.StatusOpen, false},
		} {
			wrote, err := docs.PutIfNewer(ctx, view(id, step.version, step.status))
			if err != nil {
				t.Fatalf("put v%d: %v", step.version, err)
			}
			if wrote != step.wrote {
				t.Fatalf("put v%d wrote=%v, want %v", step.version, wrote, step.wrote)
			}
		}
		doc, v, found, _ := projectionstest.StoredDoc(t, docs, id)
		if !found || v != 3 || doc.Version != 3 || doc.Status != ticket.StatusWaitAnswer {
			t.Fatalf("stored v%d %+v, want v3 wait_answer", v, doc.Summary)
		}
	})
	t.Run("body_is_the_json_of_the_view", func(t *testing.T) {
		body, _, _, err := docs.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := eventstore.EncodeJSON(view(id, 3, ticket.StatusWaitAnswer))
		if string(body) != string(want) {
			t.Fatalf("body\n%s\nwant\n%s", body, want)
		}
	})
	t.Run("tombstone_refuses_older_puts", func(t *testing.T) {
		if err := docs.Tombstone(ctx, id, 2); err != nil {
			t.Fatal(err)
		}
		if _, v, _, deleted := projectionstest.StoredDoc(t, docs, id); deleted || v != 3 {
			t.Fatalf("an older tombstone (v2) replaced v3: version %d deleted %v", v, deleted)
		}
		if err := docs.Tombstone(ctx, id, 4); err != nil {
			t.Fatal(err)
		}
		for _, old := range []int{1, 3, 4} {
			if err := docs.Put(ctx, view(id, old, ticket.StatusOpen)); err != nil {
				t.Fatal(err)
			}
		}
		_, v, found, deleted := projectionstest.StoredDoc(t, docs, id)
		if !found || !deleted || v != 4 {
			t.Fatalf("after tombstone v4 and older puts: found=%v deleted=%v version=%d", found, deleted, v)
		}
		_, _, _, err := docs.Get(ctx, id)
		if !errors.Is(err, ticket.ErrNotFound) {
			t.Fatalf("tombstone error %v does not wrap ticket.ErrNotFound", err)
		}
	})
}

// FillMany (the rebuild's writes after a wipe) writes a document where nothing is
// stored and is set-if-newer where a live writer stored one meanwhile: a newer stored
// version stays, an older one is replaced, a tombstone is written with its expiry.
func TestRedisDocsFillWritesWhereNothingIsStoredAndOnlyNewerElsewhere(t *testing.T) {
	t.Parallel()
	docs, rdb := projectionstest.NewDocs(t)
	ctx := context.Background()
	absent, newer, older, deleted := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	if err := docs.Put(ctx, view(newer, 5, ticket.StatusClosed)); err != nil {
		t.Fatal(err)
	}
	if err := docs.Put(ctx, view(older, 1, ticket.StatusOpen)); err != nil {
		t.Fatal(err)
	}
	gone := view(deleted, 4, ticket.StatusOpen)
	gone.Deleted = true
	failed, err := docs.FillMany(ctx, []projections.View{
		view(absent, 3, ticket.StatusAnswered), view(newer, 4, ticket.StatusAnswered), view(older, 2, ticket.StatusAnswered), gone,
	})
	if err != nil || len(failed) > 0 {
		t.Fatalf("fill: %d failed, %v", len(failed), err)
	}
	for _, want := range []struct {
		id      uuid.UUID
		version int
		status  ticket.Status
	}{{absent, 3, ticket.StatusAnswered}, {newer, 5, ticket.StatusClosed}, {older, 2, ticket.StatusAnswered}} {
		doc, v, found, _ := projectionstest.StoredDoc(t, docs, want.id)
		if !found || v != want.version || doc.Status != want.status {
			t.Fatalf("stored v%d %q (found %v), want v%d %q", v, doc.Status, found, want.version, want.status)
		}
	}
	if _, v, found, isDeleted := projectionstest.StoredDoc(t, docs, deleted); !found || !isDeleted || v != 4 {
		t.Fatalf("tombstone: found=%v deleted=%v version=%d, want a v4 tombstone", found, isDeleted, v)
	}
	if ttl := rdb.PTTL(ctx, docs.Key(deleted)).Val(); ttl <= 0 || ttl > redismodel.TombstoneTTL {
		t.Fatalf("tombstone expires in %s, want within %s", ttl, redismodel.TombstoneTTL)
	}
	if ttl := rdb.PTTL(ctx, docs.Key(absent)).Val(); ttl != -1 {
		t.Fatalf("a document expires in %s, want never", ttl)
	}
}

func TestRedisDocsKeysOfOneTicketShareASlot(t *testing.T) {
	t.Parallel()
	docs, rdb := projectionstest.NewDocs(t)
	ctx := context.Background()
	for range 20 {
		id := uuid.New()
		key := docs.Key(id)
		if !strings.Contains(key, "{"+id.String()+"}") {
			t.Fatalf("key %q has no hash tag of the ticket id", key)
		}
		want, err := rdb.ClusterKeySlot(ctx, "{"+id.String()+"}").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{key, docs.Prefix() + ":{" + id.String() + "}:other"} {
			got, err := rdb.ClusterKeySlot(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("CLUSTER KEYSLOT %q = %d, want the ticket's slot %d", k, got, want)
			}
		}
	}
}

// A floor ("<version>\n~"), which rebuilds of earlier versions left while they
// refilled Redis, is never served, counts with its version, and gives way only to that
// version or a newer one.
func TestRedisFloorLeftByAnEarlierRebuildMissesUntilReplaced(t *testing.T) {
	t.Parallel()
	docs, rdb := projectionstest.NewDocs(t)
	ctx := context.Background()
	older, same := uuid.New(), uuid.New()
	for _, id := range []uuid.UUID{older, same} {
		if err := rdb.Set(ctx, docs.Key(id), "3\n~", time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	ids := []uuid.UUID{older, same}
	for _, id := range ids {
		if _, v, found, err := docs.Get(ctx, id); found || err != nil || v != 0 {
			t.Fatalf("Get %s on a floor: found=%v v%d err=%v, want a miss", id, found, v, err)
		}
	}
	got, err := docs.GetMany(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range got {
		if d.Found {
			t.Fatalf("GetMany %s on a floor: %+v, want a miss", ids[i], d)
		}
	}
	if vs, _ := docs.Versions(ctx, ids); !slices.Equal(vs, []int{3, 3}) {
		t.Fatalf("versions of the floors %v, want [3 3]", vs)
	}
	if wrote, err := docs.PutIfNewer(ctx, view(older, 2, ticket.StatusAnswered)); err != nil || wrote {
		t.Fatalf("v2 over a floor at v3: wrote=%v err=%v, want refused", wrote, err)
	}
	if wrote, err := docs.PutIfNewer(ctx, view(same, 3, ticket.StatusAnswered)); err != nil || !wrote {
		t.Fatalf("v3 over a floor at v3: wrote=%v err=%v, want written", wrote, err)
	}
	if doc, v, found, _ := projectionstest.StoredDoc(t, docs, same); !found || v != 3 || doc.Status != ticket.StatusAnswered {
		t.Fatalf("after v3: found=%v v%d %s", found, v, doc.Status)
	}
}

func encoded(t testing.TB, v projections.View) redismodel.EncodedDoc {
	t.Helper()
	b, err := redismodel.AppendDoc(nil, &v)
	if err != nil {
		t.Fatal(err)
	}
	return redismodel.EncodedDoc{ID: v.ID, Version: v.Version, Deleted: v.Deleted, Value: b}
}

// A rebuild's write replaces a document of its own version (the fold of the same
// events, by the rebuild's code), an older one and a floor, writes where nothing is
// stored, and refuses only a newer version, which it reports; with and without SET NX
// first.
func TestRedisReplaceEncodedReplacesItsOwnVersionAndOlderOnly(t *testing.T) {
	t.Parallel()
	for _, fill := range []bool{true, false} {
		t.Run(fmt.Sprintf("fill=%v", fill), func(t *testing.T) {
			t.Parallel()
			docs, rdb := projectionstest.NewDocs(t)
			ctx := context.Background()
			absent, same, older, newer, floored, deleted := uuid.New(), uuid.New(), uuid.New(), uuid.New(), uuid.New(), uuid.New()
			putAll := []projections.View{view(same, 2, ticket.StatusOpen), view(older, 1, ticket.StatusOpen), view(newer, 5, ticket.StatusClosed)}
			for _, v := range putAll {
				if err := docs.Put(ctx, v); err != nil {
					t.Fatal(err)
				}
			}
			if err := rdb.Set(ctx, docs.Key(floored), "2\n~", time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
			gone := view(deleted, 4, ticket.StatusOpen)
			gone.Deleted = true
			r, err := docs.ReplaceEncoded(ctx, []redismodel.EncodedDoc{
				encoded(t, view(absent, 3, ticket.StatusAnswered)), encoded(t, view(same, 2, ticket.StatusAnswered)),
				encoded(t, view(older, 2, ticket.StatusAnswered)), encoded(t, view(newer, 4, ticket.StatusAnswered)),
				encoded(t, view(floored, 2, ticket.StatusAnswered)), encoded(t, gone),
			}, fill)
			if err != nil || len(r.Failed) > 0 || !slices.Equal(r.Refused, []int{3}) {
				t.Fatalf("replace: %+v, %v; want only the newer (3) refused", r, err)
			}
			if want := 0; fill {
				if want = 2; r.Filled != want { // absent and deleted
					t.Fatalf("filled %d, want %d", r.Filled, want)
				}
			} else if r.Filled != want {
				t.Fatalf("filled %d without fill", r.Filled)
			}
			for _, want := range []struct {
				id      uuid.UUID
				version int
				status  ticket.Status
			}{{absent, 3, ticket.StatusAnswered}, {same, 2, ticket.StatusAnswered}, {older, 2, ticket.StatusAnswered},
				{newer, 5, ticket.StatusClosed}, {floored, 2, ticket.StatusAnswered}} {
				doc, v, found, _ := projectionstest.StoredDoc(t, docs, want.id)
				if !found || v != want.version || doc.Status != want.status {
					t.Fatalf("stored v%d %q (found %v), want v%d %q", v, doc.Status, found, want.version, want.status)
				}
			}
			if _, v, found, isDeleted := projectionstest.StoredDoc(t, docs, deleted); !found || !isDeleted || v != 4 {
				t.Fatalf("tombstone: found=%v deleted=%v version=%d, want a v4 tombstone", found, isDeleted, v)
			}
			if ttl := rdb.PTTL(ctx, docs.Key(deleted)).Val(); ttl <= 0 || ttl > redismodel.TombstoneTTL {
				t.Fatalf("tombstone expires in %s, want within %s", ttl, redismodel.TombstoneTTL)
			}
			// The live writers' set-if-newer still refuses the same version.
			if wrote, err := docs.PutIfNewer(ctx, view(same, 2, ticket.StatusClosed)); err != nil || wrote {
				t.Fatalf("a live v2 over the rebuild's v2: wrote=%v err=%v, want refused", wrote, err)
			}
		})
	}
}

// Sweep passes over the tickets it is told were written, keeps what the store holds,
// removes the rest (a ticket the store does not have, a version newer than it has, a
// malformed value), but not a document rewritten since it read it, and removes nothing
// when the store cannot say.
func TestRedisSweepRemovesWhatTheStoreDoesNotHold(t *testing.T) {
	t.Parallel()
	docs, rdb := projectionstest.NewDocs(t)
	other, _ := projectionstest.NewDocs(t)
	ctx := context.Background()
	written, held, orphan, ahead, rewritten := uuid.New(), uuid.New(), uuid.New(), uuid.New(), uuid.New()
	for _, v := range []projections.View{view(written, 9, ticket.StatusOpen), view(held, 2, ticket.StatusOpen),
		view(orphan, 1, ticket.StatusOpen), view(ahead, 7, ticket.StatusOpen), view(rewritten, 1, ticket.StatusOpen)} {
		if err := docs.Put(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.Put(ctx, view(orphan, 1, ticket.StatusOpen)); err != nil {
		t.Fatal(err)
	}
	malformed := docs.Key(uuid.New())
	if err := rdb.Set(ctx, malformed, "junk", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// The store: held at v2, ahead only up to v3, rewritten at v1.
	store := map[uuid.UUID]int{held: 2, ahead: 3, rewritten: 1}
	var asked []string
	holds := func(_ context.Context, ids []uuid.UUID, versions []int) ([]bool, error) {
		out := make([]bool, len(ids))
		for i, id := range ids {
			asked = append(asked, fmt.Sprintf("%s v%d", id, versions[i]))
			out[i] = store[id] >= versions[i]
			if id == rewritten {
				// a live writer moves it on after the sweep read it (and the store
				// says no, as it might for a moment about a version just committed)
				out[i] = false
				if err := docs.Put(ctx, view(rewritten, 2, ticket.StatusAnswered)); err != nil {
					return nil, err
				}
			}
		}
		return out, nil
	}
	isWritten := func(id uuid.UUID) bool { return id == written }

	if _, err := docs.Sweep(ctx, isWritten, func(context.Context, []uuid.UUID, []int) ([]bool, error) {
		return nil, errors.New("store down")
	}); err == nil {
		t.Fatal("a sweep whose store failed reported no error")
	}
	ids := []uuid.UUID{written, held, orphan, ahead, rewritten}
	if vs, _ := docs.Versions(ctx, ids); !slices.Equal(vs, []int{9, 2, 1, 7, 1}) {
		t.Fatalf("versions after a failed sweep %v, want all there", vs)
	}

	n, err := docs.Sweep(ctx, isWritten, holds)
	if err != nil || n != 3 {
		t.Fatalf("swept %d (err %v), want 3 (the orphan, the newer version, the malformed value)", n, err)
	}
	slices.Sort(asked)
	want := []string{fmt.Sprintf("%s v7", ahead), fmt.Sprintf("%s v2", held), fmt.Sprintf("%s v1", orphan), fmt.Sprintf("%s v1", rewritten)}
	slices.Sort(want)
	if !slices.Equal(asked, want) {
		t.Fatalf("the store was asked about %v, want %v (never the written ticket, nor the malformed value)", asked, want)
	}
	if vs, _ := docs.Versions(ctx, ids); !slices.Equal(vs, []int{9, 2, 0, 0, 2}) {
		t.Fatalf("versions after the sweep %v, want [9 2 0 0 2]", vs)
	}
	if n, _ := rdb.Exists(ctx, malformed).Result(); n != 0 {
		t.Fatal("the malformed value survived the sweep")
	}
	if _, v, found, _ := other.Get(ctx, orphan); !found || v != 1 {
		t.Fatalf("another prefix's document: found=%v v%d, want v1 untouched", found, v)
	}
	if wrote, err := docs.PutIfNewer(ctx, view(ahead, 3, ticket.StatusOpen)); err != nil || !wrote {
		t.Fatalf("the store's v3 after the newer document was swept: wrote=%v err=%v", wrote, err)
	}
}

func TestRedisDocsWipeRemovesOnlyItsPrefixOnEveryMaster(t *testing.T) {
	t.Parallel()
	docs, rdb := projectionstest.NewDocs(t)
	other, _ := projectionstest.NewDocs(t)
	ctx := context.Background()
	ids := make([]uuid.UUID, 200) // enough to land on all three masters
	for i := range ids {
		ids[i] = uuid.New()
		if err := docs.Put(ctx, view(ids[i], 1, ticket.StatusOpen)); err != nil {
			t.Fatal(err)
		}
		if err := other.Put(ctx, view(ids[i], 1, ticket.StatusOpen)); err != nil {
			t.Fatal(err)
		}
	}
	masters := map[string]bool{}
	for _, id := range ids {
		slot, _ := rdb.ClusterKeySlot(ctx, docs.Key(id)).Result()
		masters[strings.Repeat("x", int(slot*3/16384)+1)] = true
	}
	if len(masters) < 3 {
		t.Fatalf("keys landed on %d of 3 masters; test needs more keys", len(masters))
	}
	if err := docs.Wipe(ctx); err != nil {
		t.Fatal(err)
	}
	vs, err := docs.Versions(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	ov, err := other.Versions(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ids {
		if vs[i] != 0 {
			t.Fatalf("document %s survived the wipe at v%d", ids[i], vs[i])
		}
		if ov[i] != 1 {
			t.Fatalf("wipe of one prefix removed %s under another prefix", ids[i])
		}
	}
}

// rdLife records a ticket's whole life: comments (more than a document embeds) and
// every status, ending closed and, if deleted, deleted. It returns the records in order.
func rdLife(t testing.TB, store *eventstore.Store, comments int, deleted bool) (uuid.UUID, []eventstore.Record) {
	t.Helper()
	id, recs := projectionstest.Open(t, store, "ann")
	steps := []projectionstest.Decide{projectionstest.Move(ticket.StatusAnswered, "agent"), projectionstest.Move(ticket.StatusWaitAnswer, "agent")}
	for i := range comments {
		steps = append(steps, projectionstest.Comment(i))
		if i == comments/2 {
			steps = append(steps, projectionstest.Move(ticket.StatusAnswered, "agent"))
		}
	}
	steps = append(steps, projectionstest.Move(ticket.StatusClosed, "agent"))
	if deleted {
		steps = append(steps, projectionstest.Delete)
	}
	for _, s := range steps {
		recs = append(recs, projectionstest.Do(t, store, id, s)...)
	}
	return id, recs
}

// rdWant is the stored form the Redis document of id must have: the JSON of the
// replayed view up to version upTo (0: all), or "" for a deleted ticket.
func rdWant(t testing.TB, store *eventstore.Store, id uuid.UUID, upTo int) (string, int) {
	t.Helper()
	v, _, err := projections.ViewAt(context.Background(), store, id, upTo)
	if err != nil {
		t.Fatalf("replay %s: %v", id, err)
	}
	if v.Deleted {
		return "", v.Version
	}
	b, err := eventstore.EncodeJSON(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), v.Version
}

// rdEvents returns the events of the records a command appended.
func rdEvents(recs []eventstore.Record) []ticket.Event {
	var out []ticket.Event
	for _, r := range recs {
		out = append(out, r.Event)
	}
	return out
}

// rdProject projects events through p and fails unless every document was written.
func rdProject(ctx context.Context, p *redismodel.Projector, evs ...ticket.Event) error {
	failed, err := p.Project(ctx, evs)
	if err == nil && len(failed) > 0 {
		err = fmt.Errorf("documents of %v not written", failed)
	}
	return err
}

// rdHave is the stored body ("" for a tombstone) and version of id's document.
func rdHave(t testing.TB, docs *redismodel.Docs, id uuid.UUID) (string, int, bool) {
	t.Helper()
	body, v, found, err := docs.Get(context.Background(), id)
	if err != nil && !errors.Is(err, redismodel.ErrDeleted) {
		t.Fatalf("redis get %s: %v", id, err)
	}
	return string(body), v, found
}

// rdExpectReplay fails the test unless id's document is byte for byte the replay of
// its stream up to upTo (0: all).
func rdExpectReplay(t testing.TB, docs *redismodel.Docs, store *eventstore.Store, id uuid.UUID, upTo int) {
	t.Helper()
	want, wv := rdWant(t, store, id, upTo)
	got, gv, found := rdHave(t, docs, id)
	if !found || got != want || gv != wv {
		t.Fatalf("document of %s: found=%v v%d\n%s\nwant v%d\n%s", id, found, gv, got, wv, want)
	}
}

func TestRedisProjectorBuildsExactlyTheDocumentOfTheReplay(t *testing.T) {
	t.Parallel()
	_, store := projectionstest.NewStore(t)
	docs, _ := projectionstest.NewDocs(t)
	p := &redismodel.Projector{Docs: docs, Events: store}
	ctx := context.Background()
	// more comments than a document embeds, so the cut at EmbeddedComments is exercised
	id, recs := rdLife(t, store, projections.EmbeddedComments+3, false)
	for _, r := range recs {
		if err := rdProject(ctx, p, r.Event); err != nil {
			t.Fatalf("project v%d: %v", r.Version, err)
		}
		rdExpectReplay(t, docs, store, id, r.Version)
	}
	for _, r := range projectionstest.Shuffled(recs, 1) {
		if err := rdProject(ctx, p, r.Event); err != nil {
			t.Fatalf("project v%d again: %v", r.Version, err)
		}
	}
	rdExpectReplay(t, docs, store, id, 0)
}

func TestRedisProjectorNeverMovesADocumentBackwards(t *testing.T) {
	t.Parallel()
	_, store := projectionstest.NewStore(t)
	ctx := context.Background()
	for _, deleted := range []bool{false, true} {
		name := "live_ticket"
		if deleted {
			name = "deleted_ticket"
		}
		t.Run(name, func(t *testing.T) {
			docs, _ := projectionstest.NewDocs(t)
			p := &redismodel.Projector{Docs: docs, Events: store}
			id, recs := rdLife(t, store, 6, deleted)
			for seed := range uint64(5) {
				if err := docs.Wipe(ctx); err != nil {
					t.Fatal(err)
				}
				// reordered from an empty Redis: an event that does not follow the
				// stored version rebuilds from the store, an older one is skipped; the
				// stored version only ever grows
				last := 0
				for _, r := range projectionstest.Shuffled(recs, seed) {
					if err := rdProject(ctx, p, r.Event); err != nil {
						t.Fatalf("project v%d: %v", r.Version, err)
					}
					_, v, _ := rdHave(t, docs, id)
					if v < last || v < r.Version {
						t.Fatalf("after v%d the document is at v%d, was v%d", r.Version, v, last)
					}
					last = v
				}
				rdExpectReplay(t, docs, store, id, 0)
				// redelivered, oldest first
				for _, r := range recs {
					if err := rdProject(ctx, p, r.Event); err != nil {
						t.Fatalf("project v%d again: %v", r.Version, err)
					}
				}
				rdExpectReplay(t, docs, store, id, 0)
			}
			// a stale write-through or refill of an older state changes nothing either
			v3, _, _ := projections.ViewAt(ctx, store, id, 3)
			if err := docs.Put(ctx, v3); err != nil {
				t.Fatal(err)
			}
			rdExpectReplay(t, docs, store, id, 0)
		})
	}
}

// rdEventually polls cond (which returns what is still wrong, "" when done) until it
// holds or timeout passes.
func rdEventually(t testing.TB, timeout time.Duration, cond func() string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		wrong := cond()
		if wrong == "" {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("not within %s: %s", timeout, wrong)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rdConverged returns what differs between the Redis documents of ids and their
// replays, "" when nothing does.
func rdConverged(t testing.TB, docs *redismodel.Docs, store *eventstore.Store, ids []uuid.UUID) string {
	t.Helper()
	for _, id := range ids {
		want, wv := rdWant(t, store, id, 0)
		got, gv, found := rdHave(t, docs, id)
		if !found || got != want || gv != wv {
			return fmt.Sprintf("document of %s is v%d (found=%v), replay is v%d", id, gv, found, wv)
		}
	}
	return ""
}

func TestRedisProjectorThroughTheRouterIgnoresRepublishedEvents(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	docs, _ := projectionstest.NewDocs(t)
	p := &redismodel.Projector{Docs: docs, Events: store}
	projectionstest.RunRouter(t, pool, projections.Config{}, p.Handler())
	var ids []uuid.UUID
	for i := range 4 {
		id, _ := rdLife(t, store, 3, i == 3)
		ids = append(ids, id)
	}
	rdEventually(t, 10*time.Second, func() string { return rdConverged(t, docs, store, ids) })

	// Publish every event again, newest first, through the outbox, as a redelivery or
	// an operator's replay would; then one new ticket, which the projector can only
	// reach after the old events, since it takes the outbox in order.
	var old []*message.Message
	rows, err := pool.Query(context.Background(), `SELECT uuid, payload::text FROM watermill_ticket_events ORDER BY "offset" DESC`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, payload string
		if err := rows.Scan(&id, &payload); err != nil {
			t.Fatal(err)
		}
		old = append(old, message.NewMessage(id, []byte(payload)))
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	pub, err := wsql.NewPublisher(wsql.BeginnerFromPgx(pool), wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(eventstore.Topic, old...); err != nil {
		t.Fatal(err)
	}
	sentinel, _ := projectionstest.Open(t, store, "sentinel")
	rdEventually(t, 10*time.Second, func() string {
		if _, _, found := rdHave(t, docs, sentinel); !found {
			return "the ticket opened after the republished events has no document"
		}
		return ""
	})
	if wrong := rdConverged(t, docs, store, ids); wrong != "" {
		t.Fatalf("after republishing %d old events: %s", len(old), wrong)
	}
	if p.Queued() != 0 {
		t.Fatalf("%d events went to the backlog with Redis up", p.Queued())
	}
}

// rdFault injects failures into a real Redis client: commands whose name is in
// names (all when empty) fail at once ("fail"), hang until their deadline ("hang", as
// a SIGSTOPped node does) or succeed after 80ms ("slow"). before, if set, runs before
// each matching command.
type rdFault struct {
	mu     sync.Mutex
	mode   string
	names  []string
	before func(cmd redis.Cmder)
}

func (f *rdFault) set(mode string, names ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mode, f.names = mode, names
}

func (f *rdFault) inject(ctx context.Context, cmds ...redis.Cmder) error {
	f.mu.Lock()
	mode, names, before := f.mode, f.names, f.before
	f.mu.Unlock()
	for _, c := range cmds {
		if len(names) > 0 && !slices.Contains(names, c.Name()) {
			continue
		}
		if before != nil {
			before(c)
		}
		switch mode {
		case "fail":
			return errors.New("injected failure")
		case "hang":
			<-ctx.Done()
			return ctx.Err()
		case "slow":
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(80 * time.Millisecond):
			}
		}
	}
	return nil
}

func (f *rdFault) DialHook(next redis.DialHook) redis.DialHook { return next }

func (f *rdFault) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := f.inject(ctx, cmd); err != nil {
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (f *rdFault) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if err := f.inject(ctx, cmds...); err != nil {
			return err
		}
		return next(ctx, cmds)
	}
}

// faultyDocs returns RedisDocs (each call bounded by timeout) on a client of its own
// with a fault injector, under a fresh prefix wiped at the end; and RedisDocs on the
// same keys without faults (and with a breaker of their own), for the test's checks.
func faultyDocs(t testing.TB, timeout time.Duration) (*redismodel.Docs, *rdFault, *redismodel.Docs) {
	t.Helper()
	rdb := projectionstest.Redis(t)
	f := &rdFault{}
	rdb.AddHook(f)
	prefix := projectionstest.Prefix(t)
	docs := redismodel.NewDocs(rdb, prefix, timeout)
	clean := redismodel.NewDocs(projectionstest.Redis(t), prefix, 5*time.Second)
	t.Cleanup(func() {
		if err := clean.Wipe(context.Background()); err != nil {
			t.Errorf("wipe: %v", err)
		}
	})
	return docs, f, clean
}

func rdBacklog(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	n, err := redismodel.Backlog(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// rdQueuedOrCurrent returns a ticket of ids that is neither in the backlog nor current
// in Redis (so would be lost), "" when there is none.
func rdQueuedOrCurrent(t testing.TB, pool *pgxpool.Pool, docs *redismodel.Docs, store *eventstore.Store, ids []uuid.UUID) string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT ticket_id FROM redis_backlog`)
	if err != nil {
		t.Fatal(err)
	}
	queued, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if slices.Contains(queued, id) {
			continue
		}
		want, wv := rdWant(t, store, id, 0)
		body, v, found, err := docs.Get(context.Background(), id)
		if err != nil || !found || v != wv || string(body) != want {
			return fmt.Sprintf("ticket %s is neither queued nor current in Redis (v%d, found %v, err %v)", id, v, found, err)
		}
	}
	return ""
}

func TestRedisProjectorQueuesTicketsWhileRedisFailsAndTheRepairerCatchesUp(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"hang", "slow"} {
		t.Run("redis_"+mode+"s", func(t *testing.T) {
			t.Parallel()
			pool, store := projectionstest.NewStore(t)
			docs, fault, clean := faultyDocs(t, 100*time.Millisecond)
			p := &redismodel.Projector{Docs: docs, Events: store}
			projectionstest.RunRouter(t, pool, projections.Config{},
				pgmodel.Projector{}.Handler(),
				p.Handler())
			rm := pgmodel.NewReadModel(pool, store)

			fault.set(mode)
			var ids []uuid.UUID
			for i := range 30 {
				id, _ := projectionstest.Open(t, store, fmt.Sprintf("u%d", i))
				projectionstest.Do(t, store, id, projectionstest.Comment(i))
				ids = append(ids, id)
			}
			// The Postgres read model keeps up although every Redis call hangs or
			// crawls: the breaker opens after a few such calls and the projector queues
			// the rest without waiting for Redis in its transaction.
			took := rdEventually(t, 5*time.Second, func() string {
				list, _, err := rm.List(context.Background(), pgmodel.ListQuery{Limit: 100})
				if err != nil {
					return err.Error()
				}
				if len(list) != len(ids) {
					return fmt.Sprintf("list has %d of %d tickets", len(list), len(ids))
				}
				return ""
			})
			t.Logf("Postgres read model caught up %s after the writes while Redis %ss", took, mode)
			rdEventually(t, 5*time.Second, func() string {
				return rdQueuedOrCurrent(t, pool, clean, store, ids)
			})
			if p.Queued() == 0 {
				t.Fatalf("nothing went to the backlog while Redis %ss", mode)
			}

			repairer := &redismodel.Repairer{Pool: pool, Events: store, Docs: docs, Log: slog.New(slog.DiscardHandler)}
			if mode == "hang" {
				before := rdBacklog(t, pool)
				if _, err := repairer.RepairOnce(context.Background()); err == nil {
					t.Fatalf("repair while Redis hangs reported no error")
				}
				if n := rdBacklog(t, pool); n != before {
					t.Fatalf("a failed repair dropped tickets from the backlog: %d left of %d", n, before)
				}
				fault.set("")
			}
			// A slow Redis is still repaired, outside the projector's transaction.
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- repairer.Run(ctx) }()
			took = rdEventually(t, 15*time.Second, func() string {
				if n := rdBacklog(t, pool); n != 0 {
					return fmt.Sprintf("%d tickets still queued", n)
				}
				return rdConverged(t, clean, store, ids)
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("repairer: %v", err)
			}
			t.Logf("repairer restored %d documents in %s", repairer.Repaired(), took)
		})
	}
}

func TestRedisRepairerKeepsATicketQueuedAgainDuringItsRepair(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	// the injected step writes to Postgres inside the Redis call: a generous timeout
	docs, fault, _ := faultyDocs(t, 10*time.Second)
	ctx := context.Background()
	id, _ := projectionstest.Open(t, store, "ann")
	if err := redismodel.EnqueueRepair(ctx, pool, id); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	fault.mu.Lock()
	fault.names = []string{"evalsha", "eval"}
	fault.before = func(redis.Cmder) {
		// Another failure of this ticket is recorded while the repairer writes the
		// state it loaded before: that newer state must be repaired too.
		once.Do(func() {
			projectionstest.Do(t, store, id, projectionstest.Comment(1))
			if err := redismodel.EnqueueRepair(ctx, pool, id); err != nil {
				t.Error(err)
			}
		})
	}
	fault.mu.Unlock()
	repairer := &redismodel.Repairer{Pool: pool, Events: store, Docs: docs}
	if n, err := repairer.RepairOnce(ctx); err != nil || n != 1 {
		t.Fatalf("first pass: repaired %d, %v", n, err)
	}
	if n := rdBacklog(t, pool); n != 1 {
		t.Fatalf("the ticket queued again during its repair left the backlog (%d rows)", n)
	}
	if _, v, _ := rdHave(t, docs, id); v != 1 {
		t.Fatalf("first pass wrote v%d, want the v1 it loaded", v)
	}
	if n, err := repairer.RepairOnce(ctx); err != nil || n != 1 {
		t.Fatalf("second pass: repaired %d, %v", n, err)
	}
	if n := rdBacklog(t, pool); n != 0 {
		t.Fatalf("backlog still has %d rows", n)
	}
	rdExpectReplay(t, docs, store, id, 0)
}

func TestReaderNeverServesAnOlderStateThanItAcknowledged(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	docs, fault, _ := faultyDocs(t, 2*time.Second)
	ctx := context.Background()
	// No projector runs: the Postgres read model stays empty, so reads that skip Redis
	// come from the event store, and only the write-through and refills fill Redis.
	reader := redismodel.NewReader(docs, pgmodel.NewReadModel(pool, store), pool, nil)
	id, recs := projectionstest.Open(t, store, "ann")
	reader.Committed(ctx, rdEvents(recs))
	rdExpectReplay(t, docs, store, id, 1)

	// The write-through of v2 fails while reads of Redis still work: Redis holds v1.
	fault.set("fail", "evalsha", "eval")
	recs = projectionstest.Do(t, store, id, projectionstest.Comment(1))
	reader.Committed(ctx, rdEvents(recs))
	fault.set("")
	if _, v, _ := rdHave(t, docs, id); v != 1 {
		t.Fatalf("Redis holds v%d, want the stale v1 for this test", v)
	}
	if reader.Pending() != 1 {
		t.Fatalf("pending marks after the failed write-through: %d, want 1", reader.Pending())
	}
	body, v, err := reader.GetRaw(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := rdWant(t, store, id, 0)
	if v != 2 || string(body) != want {
		t.Fatalf("GET after a failed write-through answered v%d\n%s\nwant v2\n%s", v, body, want)
	}
	if rdBacklog(t, pool) != 1 {
		t.Fatalf("the failed write-through did not queue the ticket for repair")
	}
	// The read refilled Redis with v2 in the background; once there, Redis serves again.
	rdEventually(t, 5*time.Second, func() string {
		if _, v, _ := rdHave(t, docs, id); v != 2 {
			return fmt.Sprintf("Redis still at v%d", v)
		}
		return ""
	})
	if _, _, err := reader.GetRaw(ctx, id); err != nil {
		t.Fatal(err)
	}
	if reader.Pending() != 0 {
		t.Fatalf("pending mark kept after Redis caught up")
	}

	t.Run("deleted_ticket_is_not_found", func(t *testing.T) {
		recs := projectionstest.Do(t, store, id, projectionstest.Delete)
		reader.Committed(ctx, rdEvents(recs))
		if _, _, err := reader.GetRaw(ctx, id); !errors.Is(err, ticket.ErrNotFound) {
			t.Fatalf("GET of a deleted ticket: %v, want ErrNotFound", err)
		}
	})
}

func TestReaderAnswersWithinItsTimeoutWhileRedisHangs(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	docs, fault, _ := faultyDocs(t, 100*time.Millisecond)
	ctx := context.Background()
	reader := redismodel.NewReader(docs, pgmodel.NewReadModel(pool, store), pool, nil)
	id, recs := projectionstest.Open(t, store, "ann")
	fault.set("hang")
	reader.Committed(ctx, rdEvents(recs))
	var slowest time.Duration
	for range 20 {
		start := time.Now()
		_, v, err := reader.GetRaw(ctx, id)
		if err != nil || v != 1 {
			t.Fatalf("GET while Redis hangs: v%d %v", v, err)
		}
		slowest = max(slowest, time.Since(start))
	}
	// 100ms Redis timeout plus a Postgres read (the breaker makes most reads skip Redis);
	// 3 s is what the API promises while Redis is down.
	if slowest > 3*time.Second {
		t.Fatalf("slowest GET took %s while Redis hung", slowest)
	}
	if docs.Up() {
		t.Fatalf("breaker still closed after repeated timeouts")
	}
	t.Logf("slowest GET while Redis hung: %s", slowest)
}

// TestRedisProjectorNeverDropsACachedTicketWhenReadsFail: in a batch of a ticket whose
// document this process wrote last (folded without a read) and one it must read, a
// failed read queues the second and still writes the first; neither is dropped.
func TestRedisProjectorNeverDropsACachedTicketWhenReadsFail(t *testing.T) {
	t.Parallel()
	_, store := projectionstest.NewStore(t)
	docs, fault, clean := faultyDocs(t, 2*time.Second)
	p := &redismodel.Projector{Docs: docs, Events: store}
	ctx := context.Background()
	cachedID, cachedOpen := projectionstest.Open(t, store, "ann")
	if err := rdProject(ctx, p, rdEvents(cachedOpen)...); err != nil { // written, so cached
		t.Fatal(err)
	}
	readID, readOpen := projectionstest.Open(t, store, "bob")
	more := projectionstest.Do(t, store, cachedID, projectionstest.Comment(1))

	fault.set("fail", "get") // reads fail, writes work
	failed, err := p.Project(ctx, append(rdEvents(more), rdEvents(readOpen)...))
	fault.set("")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(failed, []uuid.UUID{readID}) {
		t.Fatalf("failed %v, want only the ticket that had to be read, %s", failed, readID)
	}
	rdExpectReplay(t, clean, store, cachedID, 0)
}

// TestWriteThroughLeavesARedisThatIsMerelyBehindToItsProjector: when Redis answers with
// an older document than the one before a command's events (the projector has not
// written the events in between yet), the write-through writes nothing and queues no
// repair, and this instance reads the ticket past Redis until Redis has caught up.
func TestWriteThroughLeavesARedisThatIsMerelyBehindToItsProjector(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	docs, _, _ := faultyDocs(t, 2*time.Second)
	ctx := context.Background()
	reader := redismodel.NewReader(docs, pgmodel.NewReadModel(pool, store), pool, nil)
	id, opened := projectionstest.Open(t, store, "ann")
	reader.Committed(ctx, rdEvents(opened))                               // Redis holds v1
	projectionstest.Do(t, store, id, projectionstest.Comment(1))          // v2: not written through
	third := projectionstest.Do(t, store, id, projectionstest.Comment(2)) // v3
	reader.Committed(ctx, rdEvents(third))

	if _, v, _ := rdHave(t, docs, id); v != 1 {
		t.Fatalf("Redis holds v%d, want v1: the write-through must not skip v2", v)
	}
	if n := rdBacklog(t, pool); n != 0 {
		t.Fatalf("%d tickets queued for repair, want none: Redis works, its projector will catch up", n)
	}
	if reader.Pending() != 1 {
		t.Fatalf("pending marks %d, want 1: this instance must read the ticket past Redis", reader.Pending())
	}
	body, v, err := reader.GetRaw(ctx, id)
	want, _ := rdWant(t, store, id, 0)
	if err != nil || v != 3 || string(body) != want {
		t.Fatalf("GET answered v%d (%v)\n%s\nwant v3\n%s", v, err, body, want)
	}
}

// TestReaderDistrustsWhatItsPredecessorMayHaveLeftBehind: a process that starts does
// not have the pending marks of the one before it (killed after acknowledging writes
// whose write-through failed) nor of other instances. At start it marks the tickets
// with outbox messages past the Redis projector's position, and those queued for
// repair, so GET does not answer them from an older Redis document.
func TestReaderDistrustsWhatItsPredecessorMayHaveLeftBehind(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	docs, _, _ := faultyDocs(t, 2*time.Second)
	ctx := context.Background()
	before := redismodel.NewReader(docs, pgmodel.NewReadModel(pool, store), pool, nil)

	// a, b and c are in Redis at v1, and the projector's position covers them.
	a, recs := projectionstest.Open(t, store, "ann")
	before.Committed(ctx, rdEvents(recs))
	b, recs := projectionstest.Open(t, store, "bob")
	before.Committed(ctx, rdEvents(recs))
	c, recs := projectionstest.Open(t, store, "cy")
	before.Committed(ctx, rdEvents(recs))
	// b's v2 was projected (the position covers it) but its Redis write failed: queued
	// for repair, Redis still at v1.
	projectionstest.Do(t, store, b, projectionstest.Comment(1))
	if err := redismodel.EnqueueRepair(ctx, pool, b); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO watermill_offsets_ticket_events (consumer_group, offset_acked, last_processed_transaction_id)
		SELECT $1, "offset", transaction_id FROM watermill_ticket_events ORDER BY transaction_id DESC, "offset" DESC LIMIT 1`, redismodel.Group); err != nil {
		t.Fatal(err)
	}
	// a's v2 was acknowledged by a process killed before its write-through and before
	// the projector got to it.
	projectionstest.Do(t, store, a, projectionstest.Comment(1))
	for _, id := range []uuid.UUID{a, b, c} {
		if _, v, _ := rdHave(t, docs, id); v != 1 {
			t.Fatalf("Redis holds v%d of %s, want v1 for this test", v, id)
		}
	}

	after := redismodel.NewReader(docs, pgmodel.NewReadModel(pool, store), pool, nil)
	n, err := after.DistrustUnprojected(ctx)
	if err != nil || n != 2 || after.Pending() != 2 {
		t.Fatalf("distrusted %d tickets (%d pending), %v; want a and b", n, after.Pending(), err)
	}
	for _, id := range []uuid.UUID{a, b} {
		body, v, err := after.GetRaw(ctx, id)
		want, _ := rdWant(t, store, id, 0)
		if err != nil || v != 2 || string(body) != want {
			t.Fatalf("GET %s after the restart: v%d, %v\n%s\nwant v2\n%s", id, v, err, body, want)
		}
	}
	if _, v, err := after.GetRaw(ctx, c); err != nil || v != 1 {
		t.Fatalf("GET of the up-to-date ticket: v%d, %v", v, err)
	}
}
