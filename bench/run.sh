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
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

MSGS=${1:-20000}
SESS=${2:-20}
SIZE=${3:-10240}
SINK_PORT=${SINK_PORT:-12525}
MOAT_PORT=${MOAT_PORT:-12526}

ensure_go
if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null; then
  # Only the load tools are wanted: no mail system is configured or started.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt_install postfix
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/moat" ./cmd/moat

# -u nobody: smtp-sink refuses to keep root privileges.
smtp-sink -u nobody -c 127.0.0.1:$SINK_PORT 1024 >/dev/null 2>&1 &
pids+=($!)

cat >"$work/moat.yaml" <<YAML
hostname: bench.moat.test
data_dir: $work/data
smtp:
  listeners: [ { addr: "127.0.0.1:$MOAT_PORT", mode: mx } ]
  trusted_networks: [ 192.0.2.0/24 ]   # loopback is not trusted: the full pipeline runs
  max_message_size: 25MiB
  # Every session comes from 127.0.0.1: the per-client limits (20 at once,
  # 120 a minute by default) would answer 421 to most of the load.
  limits: { connections_per_ip: 0, connection_rate_per_ip: "0" }
routes:
  example.com: { upstream: "127.0.0.1:$SINK_PORT" }
dns: { servers: ["127.0.0.1:53"] }   # loopback only: no check here needs DNS
log: { format: json, output: $work/events.log }
YAML
"$work/moat" serve --config "$work/moat.yaml" 2>"$work/moat.err" &
moat_pid=$!
pids+=($moat_pid)

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open" >&2; cat "$work/moat.err" >&2; exit 1
}
wait_port $SINK_PORT
wait_port $MOAT_PORT

cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }

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
hz=$(getconf CLK_TCK)
c0=$(cpu_ticks $moat_pid)
via=$(run $MOAT_PORT)
c1=$(cpu_ticks $moat_pid)

accepted=$(grep -c '"moat.action":"accept"' "$work/events.log" || true)
calc() { awk "BEGIN{print $*}"; }
rate_direct=$(calc "$MSGS / $direct")
rate_moat=$(calc "$MSGS / $via")
cpu_us=$(calc "($c1 - $c0) * 1000000 / $hz / $MSGS")
printf 'messages=%d sessions=%d size=%d bytes\n' "$MSGS" "$SESS" "$SIZE"
printf 'direct to smtp-sink : %8.0f msg/s (%.2f s)\n' "$rate_direct" "$direct"
printf 'through moat        : %8.0f msg/s (%.2f s)\n' "$rate_moat" "$via"
printf 'ratio moat/direct   : %8.2f\n' "$(calc "$rate_moat / $rate_direct")"
printf 'moat CPU per message: %8.0f us\n' "$cpu_us"
printf 'events accepted     : %8d (warm-up included)\n' "$accepted"
