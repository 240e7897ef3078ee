package projections_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// testRedis returns a client of the test Redis Cluster (TEST_REDIS_ADDRS).
func testRedis(t testing.TB) *redis.ClusterClient {
	t.Helper()
	addrs := os.Getenv("TEST_REDIS_ADDRS")
	if addrs == "" {
		addrs = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(addrs, ",")})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("test Redis Cluster at %s: %v (run the tests through scripts/test-env.sh)", addrs, err)
	}
	return rdb
}

// testPrefix returns a key prefix of its own for one test, so parallel tests and
// other helpers' keys never meet.
func testPrefix(t testing.TB) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "test-" + hex.EncodeToString(b[:])
}

// newDocs returns a RedisDocs under a fresh prefix, wiped when the test ends.
func newDocs(t testing.TB) (*projections.RedisDocs, *redis.ClusterClient) {
	t.Helper()
	rdb := testRedis(t)
	docs := projections.NewRedisDocs(rdb, testPrefix(t), time.Second)
	t.Cleanup(func() {
		if err := docs.Wipe(context.Background()); err != nil {
			t.Errorf("wipe: %v", err)
		}
	})
	return docs, rdb
}

func view(id uuid.UUID, version int, status ticket.Status) projections.View {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	return projections.View{
		Summary: projections.Summary{
			ID: id, Title: "printer", Email: "a@example.com", CreatedBy: "ann", UpdatedBy: "ann",
			Status: status, Version: version, CreatedAt: at, UpdatedAt: at.Add(time.Duration(version) * time.Second),
		},
		Comments: []ticket.Comment{},
	}
}

// storedVersion reads back the document and fails the test on an error other than a
// tombstone.
func storedDoc(t testing.TB, docs *projections.RedisDocs, id uuid.UUID) (projections.View, int, bool, bool) {
	t.Helper()
	body, v, found, err := docs.Get(context.Background(), id)
	if errors.Is(err, projections.ErrDeleted) {
		return projections.View{}, v, found, true
	}
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	var doc projections.View
	if found {
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatalf("stored body %q: %v", body, err)
		}
	}
	return doc, v, found, false
}

func TestRedisDocsWriteOnlyNewerVersions(t *testing.T) {
	t.Parallel()
	docs, _ := newDocs(t)
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
		doc, v, found, _ := storedDoc(t, docs, id)
		if !found || v != 3 || doc.Version != 3 || doc.Status != ticket.StatusWaitAnswer {
			t.Fatalf("stored v%d %+v, want v3 wait_answer", v, doc.Summary)
		}
	})
	t.Run("body_is_the_json_of_the_view", func(t *testing.T) {
		body, _, _, err := docs.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(view(id, 3, ticket.StatusWaitAnswer))
		if string(body) != string(want) {
			t.Fatalf("body\n%s\nwant\n%s", body, want)
		}
	})
	t.Run("tombstone_refuses_older_puts", func(t *testing.T) {
		if err := docs.Tombstone(ctx, id, 2); err != nil {
			t.Fatal(err)
		}
		if _, v, _, deleted := storedDoc(t, docs, id); deleted || v != 3 {
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
		_, v, found, deleted := storedDoc(t, docs, id)
		if !found || !deleted || v != 4 {
			t.Fatalf("after tombstone v4 and older puts: found=%v deleted=%v version=%d", found, deleted, v)
		}
		_, _, _, err := docs.Get(ctx, id)
		if !errors.Is(err, ticket.ErrNotFound) {
			t.Fatalf("tombstone error %v does not wrap ticket.ErrNotFound", err)
		}
	})
}

func TestRedisDocsKeysOfOneTicketShareASlot(t *testing.T) {
	t.Parallel()
	docs, rdb := newDocs(t)
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

func TestRedisDocsWipeRemovesOnlyItsPrefixOnEveryMaster(t *testing.T) {
	t.Parallel()
	docs, rdb := newDocs(t)
	other, _ := newDocs(t)
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
