package main

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// discoverRedis finds how ticketd keys a ticket's Redis document, from a ticket it
// just wrote: first the format of projections/redis.go ("<prefix>:{<id>}:doc"), then
// any key holding the id on any master. Finding none means ticketd keeps no Redis read
// model (yet); the Redis lag is then reported as n/a. It waits up to wait for the
// document, since a projector may write it a little after the 2xx.
func (b *bench) discoverRedis(ctx context.Context, id uuid.UUID, wait time.Duration) {
	if b.rdb == nil {
		b.redisNA = "n/a (no Redis Cluster configured)"
		return
	}
	deadline := time.Now().Add(wait)
	for {
		if b.redisPrefix != "" && b.ownServer {
			key := b.redisPrefix + ":{" + id.String() + "}:doc"
			if n, err := b.rdb.Exists(ctx, key).Result(); err == nil && n == 1 {
				b.useKeyTemplate(key, id)
				return
			}
		}
		if key := scanForID(ctx, b.rdb, id); key != "" {
			b.useKeyTemplate(key, id)
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			b.redisNA = "n/a (no Redis document found for a written ticket: Redis read model not built yet?)"
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (b *bench) useKeyTemplate(key string, id uuid.UUID) {
	before, after, _ := strings.Cut(key, id.String())
	b.redisKeyFormat = before + "<id>" + after
	b.redisKey = func(id uuid.UUID) string { return before + id.String() + after }
}

// scanForID returns a key containing id on any master, or "". It gives up after a
// few seconds: the cluster is shared and may hold many keys.
func scanForID(ctx context.Context, rdb *redis.ClusterClient, id uuid.UUID) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var mu sync.Mutex
	found := ""
	_ = rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, "*"+id.String()+"*", 1000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			found = it.Val()
			mu.Unlock()
			return nil
		}
		return it.Err()
	})
	return found
}

// deletePrefix unlinks every key starting with prefix on every master: the run's own
// keys only (ticketd's documents under the run's REDIS_PREFIX and the baseline's).
func deletePrefix(ctx context.Context, rdb *redis.ClusterClient, prefix string) (int, error) {
	if prefix == "" || strings.ContainsAny(prefix, "*?[]") {
		return 0, errors.New("refusing to delete keys of an empty or glob prefix")
	}
	var mu sync.Mutex
	total := 0
	err := rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var batch []string
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range batch {
					p.Unlink(ctx, k)
				}
				return nil
			})
			mu.Lock()
			total += len(batch)
			mu.Unlock()
			batch = batch[:0]
			return err
		}
		for it.Next(ctx) {
			batch = append(batch, it.Val())
			if len(batch) == 500 {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := it.Err(); err != nil {
			return err
		}
		return flush()
	})
	return total, err
}
