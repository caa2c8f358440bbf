#!/usr/bin/env bash
# CPU and allocation profiles of case (c) (every check on, 10 KB DKIM-signed
# messages, 20 sessions), taken by moat's own pprof endpoint (admin.pprof)
# while loadgen sends a bounded load:
#
#   bash bench/profile.sh                 # top functions to stdout
#   OUT=/tmp/prof bash bench/profile.sh   # also keep cpu.pprof, allocs.pprof, moat
#   MOAT_ENV="GOGC=100" bash bench/profile.sh   # moat with these environment variables
#
# Read the profiles further with `go tool pprof OUT/moat OUT/cpu.pprof`.
# Loopback only; the load is bounded by MSGS messages.
# shellcheck disable=SC2154 # start_moat sets moat_pid
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

MSGS=${MSGS:-12000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-10240}
BASE_PORT=${BASE_PORT:-12560}
SINK_PORT=$BASE_PORT
MOAT_PORT=$((BASE_PORT + 1))
DNS_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 3))
TOP=${TOP:-25}

single_case_c
# shellcheck disable=SC2086 # MOAT_ENV is a list of VAR=VALUE words
start_moat moat_pid c ${MOAT_ENV:-}
for p in $SINK_PORT $MOAT_PORT $ADMIN_PORT; do wait_port "$p"; done
probe_accept $MOAT_PORT c >/dev/null
loadgen $MOAT_PORT $((SESSIONS * 20)) "$SESSIONS" "$SIZE" >/dev/null # warm-up

admin=http://127.0.0.1:$ADMIN_PORT/debug/pprof
curl -fsS -o "$work/allocs0.pprof" "$admin/allocs"
# The CPU profile covers the load: started first, loadgen's run well
# inside its window, then the profile is cut short by its own end.
secs=$(calc "int($MSGS / 1500) + 2")
curl -fsS -o "$work/cpu.pprof" "$admin/profile?seconds=$secs" &
curl_pid=$!
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$moat_pid/stat")
r=$(loadgen $MOAT_PORT "$MSGS" "$SESSIONS" "$SIZE")
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$moat_pid/stat")
curl -fsS -o "$work/allocs1.pprof" "$admin/allocs"
wait $curl_pid

echo "# moat CPU and allocation profile, case (c)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
machine_line
echo "- moat: $(moat_rev); $MSGS messages of $SIZE bytes over $SESSIONS sessions: $r"
ok=$(field ok "$r")
echo "- moat CPU per message: $(calc "($u1 + $s1 - $u0 - $s0) * 1000000 / $hz / $ok") µs: user $(calc "($u1 - $u0) * 1000000 / $hz / $ok") µs, system (kernel) $(calc "($s1 - $s0) * 1000000 / $hz / $ok") µs${MOAT_ENV:+ (moat run with $MOAT_ENV)}"
echo
echo "## CPU, by own time (flat) and with callees (cum)"
echo '```'
go tool pprof -top -nodecount="$TOP" "$work/moat" "$work/cpu.pprof" 2>/dev/null | sed -n '/flat%/,$p'
echo '```'
echo
echo "## CPU, moat's own functions by time with callees"
echo '```'
go tool pprof -top -cum -nodecount=300 "$work/moat" "$work/cpu.pprof" 2>/dev/null |
	grep -E 'moat/|msgauth|go-smtp|zap|bbolt|miekg' | head -n "$TOP" || true # head may close the pipe early
echo '```'
echo
echo "## Allocations during the load (bytes, then objects), per $(field ok "$r") messages"
echo '```'
go tool pprof -sample_index=alloc_space -top -nodecount="$TOP" -base "$work/allocs0.pprof" "$work/moat" "$work/allocs1.pprof" 2>/dev/null | sed -n '/flat%/,$p'
echo
go tool pprof -sample_index=alloc_objects -top -nodecount="$TOP" -base "$work/allocs0.pprof" "$work/moat" "$work/allocs1.pprof" 2>/dev/null | sed -n '/flat%/,$p'
echo '```'
if [[ -n ${OUT:-} ]]; then
	mkdir -p "$OUT"
	cp "$work/moat" "$work/cpu.pprof" "$work/allocs0.pprof" "$work/allocs1.pprof" "$OUT/"
	log "profiles and binary in $OUT"
fi
