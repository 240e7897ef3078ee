package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// connectRedis returns a cluster client when the target is a Redis Cluster and a plain
// client otherwise, detected with INFO cluster on the first reachable address. When
// no node answers at start, several addresses mean a cluster and one means a single
// node, and err says why the last one did not answer (the client is usable still: it
// connects when Redis comes).
func connectRedis(ctx context.Context, addrs []string, timeout time.Duration, bufferBytes int) (_ redis.UniversalClient, cluster bool, err error) {
	cluster = len(addrs) > 1
	for _, a := range addrs {
		probe := redis.NewClient(&redis.Options{Addr: a, DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var info string
		info, err = probe.Info(pctx, "cluster").Result()
		cancel()
		_ = probe.Close()
		if err == nil {
			cluster = strings.Contains(info, "cluster_enabled:1")
			break
		}
	}
	return newRedisClient(addrs, cluster, timeout, bufferBytes), cluster, err
}

// redisBufferBytes is the read and the write buffer of each Redis connection of the
// serving process. go-redis defaults to 32 KiB each, 64 KiB a connection, and ticketd
// keeps a pool of them per node (about 10 MB of the heap under the bench's load, twice
// that in RSS between collections); a document is a few hundred bytes to a few tens of
// KB, and one larger than the buffer only takes another read. The rebuild, which writes
// documents in long pipelines, keeps the default (0).
const redisBufferBytes = 8 << 10

// redisPipelineBufferBytes is the read and the write buffer of each connection of
// go-redis's separate pipeline pool (10 connections per node), when bufferBytes is set.
// Its default is 128 KiB each: 7.5 MB of the heap for a 3-node cluster, held for good
// once the projectors' and the batched GETs' pipelines have opened them. A pipeline
// of the serving process carries a batch of documents; a larger batch only takes
// more reads and writes.
const redisPipelineBufferBytes = 32 << 10

// pipelineBuffer is the pipeline pool's buffer size for a regular buffer size of
// bufferBytes: 0 (go-redis's default) when that is its default too.
func pipelineBuffer(bufferBytes int) int {
	if bufferBytes <= 0 {
		return 0
	}
	return max(bufferBytes, redisPipelineBufferBytes)
}

func newRedisClient(addrs []string, cluster bool, timeout time.Duration, bufferBytes int) redis.UniversalClient {
	if cluster {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:        addrs,
			DialTimeout:  timeout * 4,
			ReadTimeout:  timeout,
			WriteTimeout: timeout,
			MaxRetries:   1,
			PoolTimeout:  timeout,

			ReadBufferSize:          bufferBytes,
			WriteBufferSize:         bufferBytes,
			PipelineReadBufferSize:  pipelineBuffer(bufferBytes),
			PipelineWriteBufferSize: pipelineBuffer(bufferBytes),
		})
	}
	return redis.NewClient(&redis.Options{
		Addr:         addrs[0],
		DialTimeout:  timeout * 4,
		ReadTimeout:  timeout,
		WriteTimeout: timeout,
		MaxRetries:   1,
		PoolTimeout:  timeout,

		ReadBufferSize:          bufferBytes,
		WriteBufferSize:         bufferBytes,
		PipelineReadBufferSize:  pipelineBuffer(bufferBytes),
		PipelineWriteBufferSize: pipelineBuffer(bufferBytes),
	})
}

// redisLogger takes go-redis's internal log lines (dial failures, pool and cluster
// state), which it would print as plain text on stderr, into the JSON log at debug
// level: while Redis is down they come at every attempt, and ticketd reports Redis's
// state itself (a warning at start, /readyz, the repairer's warnings, /metrics).
type redisLogger struct{ log *slog.Logger }

// Printf implements go-redis's internal.Logging.
func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if !l.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	line := strings.TrimPrefix(strings.TrimSpace(fmt.Sprintf(format, v...)), "redis: ")
	l.log.DebugContext(ctx, "go-redis", "line", line)
}
