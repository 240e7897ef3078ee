package main

import (
	"math"
	"os"
	"runtime/debug"
	"strings"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// The Go runtime's soft memory limit (GOMEMLIMIT) when the environment does not set
// it: 90% of the container's memory limit (cgroups v1 or v2, read by automemlimit),
// and without one 90% of fallbackMemoryLimit. Every cache in ticketd is bounded, so
// its live heap stays at 30-90 MB under `make bench`; with GOGC=100 alone the
// collector lets the heap grow to twice that before it runs, which put the peak RSS
// at 185-240 MB. Under the limit the collector runs as usual; near it, more often.
// GOMEMLIMIT in the environment wins; AUTOMEMLIMIT=off keeps the runtime's default
// (no limit), AUTOMEMLIMIT=0.8 sets another share.
const (
	fallbackMemoryLimit = 200 << 20
	memoryLimitRatio    = 0.9
)

// setMemoryLimit sets the runtime's soft memory limit as above and returns it
// (math.MaxInt64: none).
func setMemoryLimit() int64 {
	// An empty AUTOMEMLIMIT counts as unset, as every other variable does (automemlimit
	// would take it for a malformed ratio). A malformed one is refused by
	// Config.Validate before the server starts.
	if v, ok := os.LookupEnv("AUTOMEMLIMIT"); ok && strings.TrimSpace(v) == "" {
		os.Unsetenv("AUTOMEMLIMIT")
	}
	limit, err := memlimit.Set(
		memlimit.WithRatio(memoryLimitRatio),
		memlimit.WithProvider(memlimit.ApplyFallback(memlimit.FromCgroup, memlimit.Limit(fallbackMemoryLimit))),
	)
	if err != nil {
		// An unreadable cgroup, or a malformed AUTOMEMLIMIT (which stops the start
		// right after, in Config.Validate): keep what the runtime has.
		return debug.SetMemoryLimit(-1)
	}
	return limit
}

// memoryLimitAttr is the limit for a log line: bytes, or "none".
func memoryLimitAttr() any {
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		return l
	}
	return "none"
}
