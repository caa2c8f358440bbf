#!/usr/bin/env bash
# Throughput of moat against the limit of this machine: Postfix's
# smtp-source sends to Postfix's smtp-sink directly, then through moat, in
# the same run, and the ratio is printed. Loopback only; every load is
# bounded by a message count.
#
#   bash bench/run.sh [messages] [sessions] [size-bytes]
#
# Defaults: 20000 messages of 10240 bytes over 20 concurrent sessions, one
# connection per message (smtp-source's default).
# shellcheck disable=SC2154 # start_moat sets moat_pid
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

MSGS=${1:-20000}
SESS=${2:-20}
SIZE=${3:-10240}
SINK_PORT=${SINK_PORT:-12525}
MOAT_PORT=${MOAT_PORT:-12526}
DNS_PORT=$((MOAT_PORT + 1))
ADMIN_PORT=$((MOAT_PORT + 2))

bench_tools
bench_init
# shellcheck disable=SC2119 # no extra packages to build
bench_build
start_sink "$SINK_PORT"
start_dns "$DNS_PORT"
# Case (b) of matrix.sh: moat relaying with no checks.
policy_none "$work/none.yaml"
moat_config b "$MOAT_PORT" "$ADMIN_PORT" "$work/none.yaml"
start_moat moat_pid b
wait_port "$SINK_PORT"
wait_port "$MOAT_PORT"

# run PORT -> prints elapsed seconds
run() {
  local start end
  start=$(date +%s.%N)
  smtp-source -s "$SESS" -l "$SIZE" -m "$MSGS" -f sender@bench.example -t rcpt@example.com -M bench.example "127.0.0.1:$1"
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN{print b-a}' 
}

# Warm up both paths (connection set-up, page cache, JIT-free but still).
smtp-source -s "$SESS" -l "$SIZE" -m 500 -f s@bench.example -t r@example.com 127.0.0.1:$SINK_PORT
smtp-source -s "$SESS" -l "$SIZE" -m 500 -f s@bench.example -t r@example.com 127.0.0.1:$MOAT_PORT

direct=$(run $SINK_PORT)
c0=$(cpu_ticks "$moat_pid")
via=$(run $MOAT_PORT)
c1=$(cpu_ticks "$moat_pid")

accepted=$(grep -c '"moat.action":"accept"' "$work/b/events.log" || true)
rate_direct=$(calc "$MSGS / $direct")
rate_moat=$(calc "$MSGS / $via")
cpu_us=$(calc "($c1 - $c0) * 1000000 / $hz / $MSGS")
printf 'messages=%d sessions=%d size=%d bytes\n' "$MSGS" "$SESS" "$SIZE"
printf 'direct to smtp-sink : %8.0f msg/s (%.2f s)\n' "$rate_direct" "$direct"
printf 'through moat        : %8.0f msg/s (%.2f s)\n' "$rate_moat" "$via"
printf 'ratio moat/direct   : %8.2f\n' "$(calc "$rate_moat / $rate_direct")"
printf 'moat CPU per message: %8.0f us\n' "$cpu_us"
printf 'events accepted     : %8d (warm-up included)\n' "$accepted"
