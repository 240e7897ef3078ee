package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// healthcheck asks the ticketd listening on cfg.HTTPAddr for /healthz and returns nil
// only for a 200. It is the container's HEALTHCHECK: the final image has no shell and
// no curl, so the binary probes itself (`ticketd -healthcheck`).
func healthcheck(ctx context.Context, cfg Config, stdout io.Writer) error {
	url := "http://" + probeAddr(cfg.HTTPAddr) + "/healthz"
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %s", url, resp.Status)
	}
	fmt.Fprintln(stdout, "healthy")
	return nil
}

// probeAddr turns a listen address into one to dial: a wildcard or empty host
// (":8000", "0.0.0.0:8000", "[::]:8000") becomes loopback.
func probeAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
