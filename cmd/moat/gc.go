package main

import (
	"bufio"
	"io"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// Garbage collection defaults of `moat serve`, each unless its environment
// variable is set. A gateway's live heap is small (sessions, caches: tens
// of MB) and every message allocates about 90 KB of short-lived garbage,
// so Go's default (collect when the heap has grown by 100 %) spends about
// a tenth of the CPU of a filtered message on collection. At GOGC=400
// collections are a quarter as frequent: 8–10 % less CPU per message
// (bench/README.md). The soft memory limit, half the memory the process
// may use (its cgroup's limit, else the machine's), caps what the larger
// heap goal may take. Half, not less: the collector only has to work hard
// once the live heap nears the limit, and with Go's default a live heap
// of half the memory would already need all of it, so the limit never
// makes moat collect harder than the default would before running out.
const (
	defaultGCPercent   = 400
	memoryLimitDivisor = 2
)

// tuneGC applies the defaults above; it returns what it set, for the
// moat.started event ("" when the environment decided).
func tuneGC() (gogc, memLimit string) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
		gogc = strconv.Itoa(defaultGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		if total := memoryAvailable(); total > 0 {
			limit := total / memoryLimitDivisor
			debug.SetMemoryLimit(limit)
			memLimit = strconv.FormatInt(limit, 10)
		}
	}
	return gogc, memLimit
}

// memoryAvailable is the memory this process may use in bytes: its cgroup
// v2 limit when there is one, else MemTotal of /proc/meminfo; 0 when
// neither can be read.
func memoryAvailable() int64 {
	total := int64(0)
	if f, err := os.Open("/proc/meminfo"); err == nil {
		total = parseMemTotal(f)
		f.Close()
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if l := parseCgroupMax(string(b)); l > 0 && (total == 0 || l < total) {
			return l
		}
	}
	return total
}

// parseMemTotal reads "MemTotal:  24576000 kB" from /proc/meminfo.
func parseMemTotal(r io.Reader) int64 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb <= 0 || kb > math.MaxInt64/1024 {
			return 0
		}
		return kb * 1024
	}
	return 0
}

// parseCgroupMax reads a cgroup v2 memory.max: bytes, or "max" (none: 0).
func parseCgroupMax(s string) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 {
		return 0
	}
	return n
}
