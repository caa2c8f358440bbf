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
# shellcheck disable=SC2154,SC2119 # start_moat sets moat_b, moat_c; bench_tools, bench_build need no arguments here
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

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

bench_tools
bench_init
bench_build
start_dns $DNS_PORT
start_sink $SINK_PORT

# (b): no checks at all; (c): every check of the issue on, none of them
# failing for the bench traffic (bench/lib.sh has both policies).
policy_none "$work/none.yaml"
policy_checks "$work/checks.yaml"
moat_config b $MOAT_B_PORT $ADMIN_B_PORT "$work/none.yaml"
moat_config c $MOAT_C_PORT $ADMIN_C_PORT "$work/checks.yaml"
# The one triplet of the load passed greylisting already.
allow_bench_triplet c
start_moat moat_b b
start_moat moat_c c
for p in $SINK_PORT $MOAT_B_PORT $MOAT_C_PORT; do wait_port $p; done

# A check that case (c) really passes every check: one message, then its event.
probe=$(probe_accept $MOAT_C_PORT c)

echo "# moat benchmark matrix"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
machine_line
echo "- moat: $(moat_rev); messages per case: $MSGS (half for 100 KB), one connection per message, DKIM-signed (RSA-2048)"
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
loadgen_errors

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
