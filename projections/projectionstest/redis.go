package projectionstest

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
	"github.com/ticketd/ticketd/projections/redismodel"
)

// Redis returns a client of the test Redis Cluster (TEST_REDIS_ADDRS, comma-separated;
// by default the three local masters scripts/redis-cluster.sh starts), closed when t
// ends. It fails t if the cluster does not answer a PING within 5 s.
func Redis(t testing.TB) *redis.ClusterClient {
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

// Prefix returns a key prefix of its own for one test, so parallel tests and other
// helpers' keys never meet.
func Prefix(t testing.TB) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "test-" + hex.EncodeToString(b[:])
}

// NewDocs returns redismodel.Docs (each call bounded by a second) on a client of the
// test cluster under a fresh prefix, wiped when t ends, and that client.
func NewDocs(t testing.TB) (*redismodel.Docs, *redis.ClusterClient) {
	t.Helper()
	rdb := Redis(t)
	docs := redismodel.NewDocs(rdb, Prefix(t), time.Second)
	t.Cleanup(func() {
		if err := docs.Wipe(context.Background()); err != nil {
			t.Errorf("wipe: %v", err)
		}
	})
	return docs, rdb
}

// StoredDoc reads back the document of ticket id: the decoded view (zero for a
// tombstone or a miss), its version, whether there is one, and whether it is a
// tombstone. It fails t on any other error.
func StoredDoc(t testing.TB, docs *redismodel.Docs, id uuid.UUID) (doc projections.View, version int, found, deleted bool) {
	t.Helper()
	body, v, found, err := docs.Get(context.Background(), id)
	if errors.Is(err, redismodel.ErrDeleted) {
		return projections.View{}, v, found, true
	}
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	if found {
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatalf("stored body %q: %v", body, err)
		}
	}
	return doc, v, found, false
}
