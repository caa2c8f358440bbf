#!/usr/bin/env bash
# The benchmark matrix of issue 10: for each message size and session count,
# the same load generator (bench/cmd/loadgen, one connection per message,
# DKIM-signed messages) sends to
#   (a) smtp-sink directly (the limit of this machine),
#   (b) moat with no checks, relaying to the same sink,
#   (c) moat with DNSBL (3 zones), SPF, DKIM, DMARC, greylisting (triplet
#       already passed) and a header rule, all on,
# and a markdown table goes to stdout: messages/s, latency p50/p99, moat's
# CPU microseconds per message (utime+stime from /proc/PID/stat) and the
# ratio to (a) of the same size and sessions, measured in the same run.
# smtp-source -> smtp-sink is printed beside it, as the tool of the issue.
#
#   bash bench/matrix.sh                 # sizes 1024 10240 102400, sessions 20 200
#   MSGS=4000 SIZES="10240" SESSIONS="20" bash bench/matrix.sh
#
# Loopback only: DNS answers come from bench/cmd/benchdns, never from
# /etc/resolv.conf. Every load is bounded by a message count (MSGS, halved
# for 100 KB messages) and loadgen's per-message timeout. Each cell is the
# median of REPS (3) runs, the cases interleaved (a, b, c, a, b, c, ...) so
# that a noisy moment of the machine hits them alike.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

MSGS=${MSGS:-2000}
REPS=${REPS:-3}
SIZES=${SIZES:-"1024 10240 102400"}
SESSIONS=${SESSIONS:-"20 200"}
BASE_PORT=${BASE_PORT:-12530}
SINK_PORT=$BASE_PORT
MOAT_B_PORT=$((BASE_PORT + 1))
MOAT_C_PORT=$((BASE_PORT + 2))
DNS_PORT=$((BASE_PORT + 3))
ADMIN_B_PORT=$((BASE_PORT + 4))
ADMIN_C_PORT=$((BASE_PORT + 5))
FROM=sender@bench.example
RCPT=rcpt@example.com

ensure_go
if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null; then
	# Only the load tools are wanted: no mail system is configured or started.
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt_install postfix
fi
command -v jq >/dev/null || apt_install jq

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	[[ -n ${KEEP:-} ]] && { log "kept $work"; return; }
	rm -rf "$work"
}
trap cleanup EXIT

log "building moat, loadgen, benchdns"
go build -o "$work/moat" ./cmd/moat
go build -o "$work/loadgen" ./bench/cmd/loadgen
go build -o "$work/benchdns" ./bench/cmd/benchdns
"$work/loadgen" -genkey "$work"

"$work/benchdns" -addr 127.0.0.1:$DNS_PORT -domain bench.example -selector bench -dkim-txt "$work/dkim.txt" 2>"$work/dns.err" &
pids+=($!)
# -u nobody: smtp-sink refuses to keep root privileges. Backlog 1024.
smtp-sink -u nobody -c 127.0.0.1:$SINK_PORT 1024 >/dev/null 2>&1 &
pids+=($!)

# moat_config NAME PORT ADMIN_PORT POLICY_GLOB: one gateway's config. The
# connection limits are off: every session comes from 127.0.0.1.
moat_config() {
	mkdir -p "$work/$1"
	cat >"$work/$1/moat.yaml" <<YAML
hostname: bench.moat.test
data_dir: $work/$1/data
smtp:
  listeners: [ { addr: "127.0.0.1:$2", mode: mx } ]
  trusted_networks: [ 192.0.2.0/24 ]   # loopback is not trusted: the full pipeline runs
  max_message_size: 25MiB
  limits: { connections: 5000, connections_per_ip: 0, connection_rate_per_ip: "0", errors_per_session: 10 }
routes:
  example.com: { upstream: "127.0.0.1:$SINK_PORT" }
dns: { servers: ["127.0.0.1:$DNS_PORT"], timeout: 2s }   # the bench DNS, never /etc/resolv.conf
greylist: { store: bolt }
policies: [ "$4" ]
log: { format: json, output: $work/$1/events.log }
admin: { addr: "127.0.0.1:$3" }
YAML
}

# (b): no checks at all (gtube off too).
cat >"$work/none.yaml" <<'YAML'
policy: default
checks: { gtube: false }
actions: { tag: 5, quarantine: 8, reject: 12 }
YAML
# (c): every check of the issue on; none of them fails for the bench traffic.
cat >"$work/checks.yaml" <<'YAML'
policy: default
checks:
  dnsbl:
    zones:
      - { zone: bl1.bench.test, score: 6, match: ["127.0.0.2-127.0.0.11"] }
      - { zone: bl2.bench.test, score: 3 }
      - { zone: bl3.bench.test, score: 3 }
  spf:   { fail: 5, softfail: 2, temperror: tempfail }
  dkim:  { fail: 3, none: 1 }
  dmarc: { honor_policy: true }
  greylist: { enabled: true, delay: 5m, retry_window: 2d, lifetime: 36d, auto_allow_after: 5, min_score: 0 }
  size: { max: 25MiB }
  headers: [ { header: Subject, match: "(?i)\\bviagra\\b", score: 4 } ]
actions: { tag: 5, quarantine: 8, reject: 12 }
YAML
moat_config b $MOAT_B_PORT $ADMIN_B_PORT "$work/none.yaml"
moat_config c $MOAT_C_PORT $ADMIN_C_PORT "$work/checks.yaml"
mkdir -p "$work/c/data"
# The one triplet of the load passed greylisting already (before moat
# starts, the command opens the store itself).
"$work/moat" greylist allow --config "$work/c/moat.yaml" --triplet "127.0.0.1,$FROM,$RCPT" >/dev/null

"$work/moat" serve --config "$work/b/moat.yaml" 2>"$work/b/moat.err" &
moat_b=$!
pids+=($moat_b)
"$work/moat" serve --config "$work/c/moat.yaml" 2>"$work/c/moat.err" &
moat_c=$!
pids+=($moat_c)

wait_port() {
	for _ in $(seq 1 200); do
		(exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
		sleep 0.05
	done
	echo "port $1 did not open" >&2
	cat "$work"/*/moat.err >&2 || true
	exit 1
}
for p in $SINK_PORT $MOAT_B_PORT $MOAT_C_PORT; do wait_port $p; done

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
calc() { awk "BEGIN{print $*}"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
sum() { printf '%s\n' "$@" | awk '{s+=$1} END{print s+0}'; }
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }

# loadgen PORT N SESS SIZE -> its result line
loadgen() {
	"$work/loadgen" -addr "127.0.0.1:$1" -n "$2" -c "$3" -size "$4" -from "$FROM" -to "$RCPT" \
		-key "$work/dkim.pem" -selector bench -timeout 30s 2>>"$work/loadgen.err"
}

# A check that case (c) really passes every check: one message, then its event.
loadgen $MOAT_C_PORT 1 1 1024 >/dev/null
sleep 0.2
if ! grep -q '"moat.action":"accept"' "$work/c/events.log"; then
	echo "case (c) did not accept the probe message:" >&2
	tail -n 3 "$work/c/events.log" >&2
	exit 1
fi
probe=$(grep '"moat.action"' "$work/c/events.log" | tail -n 1)

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "# moat benchmark matrix"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, $(uname -sr), $(go version | cut -d' ' -f3)"
echo "- moat: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty'); messages per case: $MSGS (half for 100 KB), one connection per message, DKIM-signed (RSA-2048)"
echo
echo "The smtp-source rows compare with each other: the ratio of smtp-source → (b) is to smtp-source → sink;"
echo "the ratio of smtp-source → sink is to (a). Rows (a), (b), (c) are loadgen's, their ratios to (a)."
echo
echo "| size | sessions | case | msg/s | ratio |  moat CPU µs/msg | p50 ms | p99 ms | failed |"
echo "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"

for size in $SIZES; do
	n=$MSGS
	((size >= 102400)) && n=$((MSGS / 2))
	for sess in $SESSIONS; do
		# Warm-up of each path (connections, caches), not measured.
		for p in $SINK_PORT $MOAT_B_PORT $MOAT_C_PORT; do loadgen $p $((sess * 2)) "$sess" "$size" >/dev/null; done
		ss=() ssb=() ssb_cpu=() ra=() a50=() a99=() af=()
		declare -A rate=() cpu=() p50=() p99=() fail=()
		for _ in $(seq 1 "$REPS"); do
			ss_t0=$(date +%s.%N)
			smtp-source -s "$sess" -l "$size" -m "$n" -f "$FROM" -t "$RCPT" 127.0.0.1:$SINK_PORT
			ss+=("$(calc "$n / ($(date +%s.%N) - $ss_t0)")")
			# smtp-source through (b) too: the same-tool ratio of the issue.
			t0=$(cpu_ticks $moat_b)
			ss_t0=$(date +%s.%N)
			smtp-source -s "$sess" -l "$size" -m "$n" -f "$FROM" -t "$RCPT" 127.0.0.1:$MOAT_B_PORT
			ssb+=("$(calc "$n / ($(date +%s.%N) - $ss_t0)")")
			ssb_cpu+=("$(calc "($(cpu_ticks $moat_b) - $t0) * 1000000 / $hz / $n")")
			a=$(loadgen $SINK_PORT "$n" "$sess" "$size")
			ra+=("$(field rate "$a")") a50+=("$(field p50_ms "$a")") a99+=("$(field p99_ms "$a")") af+=("$(field failed "$a")")
			for c in b c; do
				port=$MOAT_B_PORT pid=$moat_b
				[[ $c == c ]] && port=$MOAT_C_PORT pid=$moat_c
				t0=$(cpu_ticks $pid)
				r=$(loadgen $port "$n" "$sess" "$size")
				t1=$(cpu_ticks $pid)
				ok=$(field ok "$r")
				rate[$c]+=" $(field rate "$r")"
				cpu[$c]+=" $(calc "($t1 - $t0) * 1000000 / $hz / ($ok > 0 ? $ok : 1)")"
				p50[$c]+=" $(field p50_ms "$r")" p99[$c]+=" $(field p99_ms "$r")" fail[$c]+=" $(field failed "$r")"
			done
		done
		rate_a=$(median "${ra[@]}")
		printf '| %d | %d | smtp-source → sink | %.0f | %.2f | | | | |\n' "$size" "$sess" "$(median "${ss[@]}")" "$(calc "$(median "${ss[@]}") / $rate_a")"
		printf '| %d | %d | smtp-source → (b) moat → sink | %.0f | %.2f | %.0f | | | |\n' "$size" "$sess" "$(median "${ssb[@]}")" \
			"$(calc "$(median "${ssb[@]}") / $(median "${ss[@]}")")" "$(median "${ssb_cpu[@]}")"
		printf '| %d | %d | (a) → sink | %.0f | 1.00 | | %.2f | %.2f | %s |\n' "$size" "$sess" "$rate_a" \
			"$(median "${a50[@]}")" "$(median "${a99[@]}")" "$(sum "${af[@]}")"
		for c in b c; do
			# shellcheck disable=SC2086 # word splitting of the lists is meant
			printf '| %d | %d | (%s) → moat → sink | %.0f | %.2f | %.0f | %.2f | %.2f | %s |\n' "$size" "$sess" "$c" \
				"$(median ${rate[$c]})" "$(calc "$(median ${rate[$c]}) / $rate_a")" "$(median ${cpu[$c]})" \
				"$(median ${p50[$c]})" "$(median ${p99[$c]})" "$(sum ${fail[$c]})"
		done
		unset rate cpu p50 p99 fail
	done
done
echo
echo "Case (c) check results of a probe message: $(jq -r '."moat.checks" | to_entries | map("\(.key) \(.value.result)") | join(", ")' <<<"$probe")."
echo "Actions logged by case (c) (warm-ups included): $(jq -r '."moat.action" // empty' "$work/c/events.log" | sort | uniq -c | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1}')."
if [[ -s $work/loadgen.err ]]; then
	echo
	echo "loadgen errors:"
	sort "$work/loadgen.err" | uniq -c | sort -rn | head -n 5 | sed 's/^/    /'
fi

# PERF=1: a CPU profile of case (c), 10 KB messages, 20 sessions, taken
# with perf (moat has no pprof endpoint): the top symbols to stderr and
# the perf.data kept when KEEP=1.
if [[ -n ${PERF:-} ]]; then
	command -v perf >/dev/null || die "PERF=1 needs perf (Debian: linux-perf)"
	perf record -F 499 -g -o "$work/perf.data" -p $moat_c 2>/dev/null &
	perf_pid=$!
	sleep 0.5
	loadgen $MOAT_C_PORT $((MSGS * 2)) 20 10240 >&2
	kill -INT $perf_pid
	wait $perf_pid || true
	echo "perf: top symbols by own CPU (self) in moat, case (c), 10 KB, 20 sessions:" >&2
	perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
		grep -E '^ +[0-9.]+%' | sort -rn | head -n 25 | awk '{printf "%8s  %s %s\n", $1, $2, $3}' >&2
	echo "perf: moat's functions by CPU including callees (children, then self):" >&2
	perf report -i "$work/perf.data" --children --sort symbol --stdio 2>/dev/null |
		grep -E '^ +[0-9.]+%.*(moat/|msgauth|spf\.|regexp|zap|json|bbolt)' | sort -rn | head -n 30 |
		awk '{printf "%8s %8s  %s\n", $1, $2, $4}' >&2
fi
