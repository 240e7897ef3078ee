package main

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// connectRedis returns a cluster client when the target is a Redis Cluster and a plain
// client otherwise, detected with INFO cluster on the first reachable address. When
// no node answers at start, several addresses mean a cluster and one means a single node.
func connectRedis(ctx context.Context, addrs []string, timeout time.Duration) (redis.UniversalClient, bool) {
	cluster := len(addrs) > 1
	for _, a := range addrs {
		probe := redis.NewClient(&redis.Options{Addr: a, DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		info, err := probe.Info(pctx, "cluster").Result()
		cancel()
		_ = probe.Close()
		if err == nil {
			cluster = strings.Contains(info, "cluster_enabled:1")
			break
		}
	}
	if cluster {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:        addrs,
			DialTimeout:  timeout * 4,
			ReadTimeout:  timeout,
			WriteTimeout: timeout,
			MaxRetries:   1,
			PoolTimeout:  timeout,
		}), true
	}
	return redis.NewClient(&redis.Options{
		Addr:         addrs[0],
		DialTimeout:  timeout * 4,
		ReadTimeout:  timeout,
		WriteTimeout: timeout,
		MaxRetries:   1,
		PoolTimeout:  timeout,
	}), false
}
