#!/usr/bin/env bash
# Issue 10's latency and idle-memory targets, against moat with every check
# on (case (c) of matrix.sh: DNSBL ×3, SPF, DKIM, DMARC, greylisting, size,
# a header rule; 10 KB DKIM-signed messages):
#
#   latency: the maximum rate of (c), closed loop, 20 sessions (median of
#            REPS); then loadgen open-loop (-rate: one message every 1/R s,
#            each on its own connection, latency from its due time, so
#            queueing is not hidden) at half that rate and at LOW_RATE, to
#            smtp-sink directly and through moat, interleaved REPS times.
#            Table: p50/p99/p999 of both and the added latency (moat −
#            direct) against "p99 added ≤ 5 ms at half the maximum rate".
#   idle:    IDLE connections held open after the greeting, then (on a
#            fresh moat) after EHLO; moat's VmRSS and Go heap/stacks before
#            and while they are open, per connection, against "≤ 40 KiB per
#            idle connection". Median of IDLE_REPS fresh moats each.
#
#   bash bench/latency.sh              # both parts, about 3 minutes
#   bash bench/latency.sh idle         # one part: latency or idle
#   REPS=1 SECS=3 IDLE=500 bash bench/latency.sh   # a quick look
#   POISSON=1 bash bench/latency.sh latency         # Poisson arrivals
#
# Loopback only; every load is bounded by a count (open loop: rate × SECS
# messages) and loadgen's per-message timeout; only the PIDs started here
# are stopped. Figures are medians on a shared machine: noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

PARTS=${*:-latency idle}
for part in $PARTS; do
	[[ $part == latency || $part == idle ]] || die "unknown part $part: latency or idle"
done
REPS=${REPS:-3}               # repetitions; each figure is the median
SIZE=${SIZE:-10240}           # message size, bytes
MSGS=${MSGS:-3000}            # messages of one closed-loop maximum-rate run
SESSIONS=${SESSIONS:-20}      # sessions of the maximum-rate run
SECS=${SECS:-10}              # seconds of load of one open-loop run
LOW_RATE=${LOW_RATE:-100}     # the unloaded rate, msg/s
CAP=${CAP:-500}               # open loop: messages in flight at most
POISSON=${POISSON:-}          # 1: Poisson arrivals (loadgen -poisson, seed 1) instead of even spacing
IDLE=${IDLE:-2000}            # idle connections
IDLE_REPS=${IDLE_REPS:-3}     # fresh moats per idle state
BASE_PORT=${BASE_PORT:-12640} # sink, moat, DNS, admin: this port and the next three
SINK_PORT=$BASE_PORT
MOAT_PORT=$((BASE_PORT + 1))
DNS_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 3))

# Case (c) of matrix.sh, one gateway, with admin.pprof on (only for
# /debug/pprof/heap?gc=1, a GC before each memory reading).
single_case_c

# fresh_moat: a fresh moat (c) process; its PID in moat_pid.
moat_pid=
fresh_moat() {
	start_moat moat_pid c
	wait_port "$MOAT_PORT"
	wait_port "$ADMIN_PORT"
}
# stop_moat: stops the moat fresh_moat started, and only that one.
stop_moat() {
	bench_stop "$moat_pid"
	moat_pid=
}

# lg PORT ARGS...: one loadgen run of SIZE-byte signed messages.
lg() {
	local port=$1
	shift
	"$work/loadgen" -addr "127.0.0.1:$port" -size "$SIZE" -from "$FROM" -to "$RCPT" \
		-key "$work/dkim.pem" -selector bench -timeout 30s "$@" 2>>"$work/loadgen.err"
}

# metric NAME: the value of a Prometheus metric of moat, summed over labels.
metric() {
	curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" |
		awk -v n="$1" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%.0f\n", s}'
}
# gc: garbage collections in moat (the heap profile with gc=1 runs one):
# two, so that what a sync.Pool let go of at the first is freed at the second.
gc() {
	curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/debug/pprof/heap?gc=1"
	curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/debug/pprof/heap?gc=1"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

echo "# moat latency and idle memory (issue 10)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
machine_line
echo "- load average (1 min) at the start: $(cut -d' ' -f1 /proc/loadavg): other work on the machine shares the CPUs"
echo "- moat: $(moat_rev), case (c): every check on; ${SIZE}-byte DKIM-signed messages, one connection per message"

fresh_moat
# A check that case (c) really passes every check: one message, then its event.
lg $MOAT_PORT -n 1 -c 1 >/dev/null
for _ in $(seq 1 100); do
	grep -q '"moat.action"' "$work/c/events.log" 2>/dev/null && break
	sleep 0.05
done
probe=$(grep '"moat.action"' "$work/c/events.log" | tail -n 1)
if [[ $(jq -r '."moat.action"' <<<"$probe") != accept ]]; then
	echo "case (c) did not accept the probe message: $probe" >&2
	exit 1
fi
echo "- probe message through (c): $(jq -r '."moat.checks" | to_entries | map("\(.key) \(.value.result)") | join(", ")' <<<"$probe")"

if [[ " $PARTS " == *" latency "* ]]; then
	log "latency: warm-up, then the maximum rate of (c), $SESSIONS sessions"
	lg "$SINK_PORT" -n 1000 -c "$SESSIONS" >/dev/null
	lg $MOAT_PORT -n 1000 -c "$SESSIONS" >/dev/null
	maxr=()
	for _ in $(seq 1 "$REPS"); do
		maxr+=("$(field rate "$(lg $MOAT_PORT -n "$MSGS" -c "$SESSIONS")")")
	done
	max=$(median "${maxr[@]}")
	half=$(calc "int($max / 2)")
	rates=("$LOW_RATE" "$half")
	declare -A p50=() p99=() p999=() got=() late=() failed=() cpu=()
	for rep in $(seq 1 "$REPS"); do
		for r in "${rates[@]}"; do
			n=$(calc "int($r * $SECS)")
			for path in direct moat; do
				port=$SINK_PORT
				[[ $path == moat ]] && port=$MOAT_PORT
				k="$r/$path"
				t0=$(cpu_ticks "$moat_pid")
				out=$(lg "$port" -rate "$r" -n "$n" -c "$CAP" ${POISSON:+-poisson})
				[[ $path == moat ]] && cpu[$k]+=" $(calc "($(cpu_ticks "$moat_pid") - $t0) * 1000000 / $hz / $n")"
				log "latency: rep $rep/$REPS, $r msg/s × ${SECS}s → $path: $out"
				p50[$k]+=" $(field p50_ms "$out")" p99[$k]+=" $(field p99_ms "$out")" p999[$k]+=" $(field p999_ms "$out")"
				got[$k]+=" $(field rate "$out")" late[$k]+=" $(field late "$out")" failed[$k]+=" $(field failed "$out")"
			done
		done
	done
	echo
	arrivals="message due every 1/rate s"
	[[ -n $POISSON ]] && arrivals="Poisson arrivals of mean rate, seed 1"
	echo "## Latency, open loop ($arrivals; latency = due time → reply to the end of data)"
	echo
	echo "Maximum rate of (c), closed loop, $SESSIONS sessions, $MSGS messages: $(printf '%.0f' "$max") msg/s (median of: ${maxr[*]})."
	echo "Open loop: $SECS s of load per run, at most $CAP in flight; each cell the median of $REPS runs, direct and moat interleaved;"
	echo "late and failed are totals over the runs (late: started more than 1 ms after its due time)."
	echo
	echo "| rate msg/s | path | achieved msg/s | p50 ms | p99 ms | p999 ms | late | failed | moat CPU µs/msg |"
	echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	for r in "${rates[@]}"; do
		for path in direct moat; do
			k="$r/$path"
			label="smtp-sink directly" c=
			# shellcheck disable=SC2086 # word splitting of the lists is meant
			[[ $path == moat ]] && label="(c) moat → smtp-sink" c=$(printf '%.0f' "$(median ${cpu[$k]})")
			# shellcheck disable=SC2086
			printf '| %s | %s | %.0f | %.2f | %.2f | %.2f | %s | %s | %s |\n' "$r" "$label" "$(median ${got[$k]})" \
				"$(median ${p50[$k]})" "$(median ${p99[$k]})" "$(median ${p999[$k]})" "$(sum ${late[$k]})" "$(sum ${failed[$k]})" "$c"
		done
	done
	echo
	echo "| rate msg/s | added p50 ms | added p99 ms | target: added p99 ≤ 5 ms at half the maximum rate |"
	echo "| ---: | ---: | ---: | --- |"
	for r in "${rates[@]}"; do
		# shellcheck disable=SC2086
		a50=$(calc "$(median ${p50[$r/moat]}) - $(median ${p50[$r/direct]})")
		# shellcheck disable=SC2086
		a99=$(calc "$(median ${p99[$r/moat]}) - $(median ${p99[$r/direct]})")
		verdict="(unloaded: for reference)"
		if [[ $r == "$half" ]]; then
			verdict=$(awk -v a="$a99" 'BEGIN{print (a <= 5 ? "met" : "missed")}')
		fi
		printf '| %s | %.2f | %.2f | %s |\n' "$r" "$a50" "$a99" "$verdict"
	done
fi

if [[ " $PARTS " == *" idle "* ]]; then
	stop_moat
	ulimit -n "$(ulimit -Hn)"
	(($(ulimit -n) > IDLE + 100)) || die "open-file limit $(ulimit -n): too low for IDLE=$IDLE connections (the client's and moat's)"
	names=(go_goroutines go_memstats_heap_inuse_bytes go_memstats_stack_inuse_bytes)
	declare -A per=()
	moat_files=
	for rep in $(seq 1 "$IDLE_REPS"); do
		for state in greeting ehlo; do
			log "idle: rep $rep/$IDLE_REPS, $IDLE connections after the $state, fresh moat"
			fresh_moat
			moat_files=$(awk '/^Max open files/ {print $4}' "/proc/$moat_pid/limits")
			((moat_files > IDLE + 100)) || die "moat's open-file limit is $moat_files: too low for IDLE=$IDLE"
			# Warm-up, so that pools and lazily built state are in the
			# baseline: a message, and a few idle connections opened and
			# closed (stdin at its end: loadgen closes them at once).
			lg $MOAT_PORT -n 1 -c 1 >/dev/null
			"$work/loadgen" -addr 127.0.0.1:$MOAT_PORT -idle 20 -idle-ehlo </dev/null >/dev/null
			for _ in $(seq 1 100); do
				(($(metric moat_smtp_connections) == 0)) && break
				sleep 0.05
			done
			sleep 1
			gc
			rss0=$(rss_kib "$moat_pid")
			declare -A m0=()
			for m in "${names[@]}"; do m0[$m]=$(metric "$m"); done

			ehlo_flag=()
			[[ $state == ehlo ]] && ehlo_flag=(-idle-ehlo)
			rm -f "$work/idle.fifo" "$work/idle.out"
			mkfifo "$work/idle.fifo"
			"$work/loadgen" -addr 127.0.0.1:$MOAT_PORT -idle "$IDLE" -c 50 "${ehlo_flag[@]}" -timeout 30s -hold 5m \
				<"$work/idle.fifo" >"$work/idle.out" 2>>"$work/loadgen.err" &
			idle_pid=$!
			pids+=("$idle_pid")
			exec 7>"$work/idle.fifo" # loadgen holds the connections until this closes
			for _ in $(seq 1 1200); do
				grep -q '^idle open=' "$work/idle.out" && break
				sleep 0.05
			done
			opened=$(field open "$(cat "$work/idle.out")")
			[[ -n $opened ]] || die "loadgen did not open the idle connections in 60 s"
			# Idle: moat gives a session's read buffer back after 1 s without a command.
			sleep 2
			gc
			rss1=$(rss_kib "$moat_pid")
			open_in_moat=$(metric moat_smtp_connections)
			declare -A m1=()
			for m in "${names[@]}"; do m1[$m]=$(metric "$m"); done
			exec 7>&-
			wait "$idle_pid" || true
			bench_stop "$idle_pid"
			still=$(field still_open "$(tail -n 1 "$work/idle.out")")
			stop_moat

			k=$state
			per[$k/rss]+=" $(calc "($rss1 - $rss0) / $opened")"
			per[$k/heap]+=" $(calc "(${m1[go_memstats_heap_inuse_bytes]} - ${m0[go_memstats_heap_inuse_bytes]}) / 1024 / $opened")"
			per[$k/stack]+=" $(calc "(${m1[go_memstats_stack_inuse_bytes]} - ${m0[go_memstats_stack_inuse_bytes]}) / 1024 / $opened")"
			per[$k/gor]+=" $(calc "(${m1[go_goroutines]} - ${m0[go_goroutines]}) / $opened")"
			per[$k/open]+=" $opened/$open_in_moat/$still"
			per[$k/base]+=" $rss0"
			unset m0 m1
		done
	done
	echo
	echo "## Memory per idle connection"
	echo
	echo "$IDLE connections held on a fresh moat (c) each time, after a warm-up; readings 2 s after the last one opened,"
	echo "each after a forced GC (/debug/pprof/heap?gc=1). Per connection: (with them open − before) / connections,"
	echo "median of $IDLE_REPS fresh moats. moat's open-file limit: $moat_files."
	echo
	echo "| idle after | open: client/moat's gauge/still open at the end | moat VmRSS before, KiB | VmRSS KiB/conn | Go heap in use KiB/conn | goroutine stacks KiB/conn | goroutines/conn | target ≤ 40 KiB |"
	echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"
	for state in greeting ehlo; do
		# shellcheck disable=SC2086
		rss=$(median ${per[$state/rss]})
		# shellcheck disable=SC2086
		printf '| %s | %s | %.0f | %.1f | %.1f | %.1f | %.2f | %s |\n' "$state" "$(printf '%s\n' ${per[$state/open]} | sort -u | paste -sd' ')" "$(median ${per[$state/base]})" "$rss" \
			"$(median ${per[$state/heap]})" "$(median ${per[$state/stack]})" "$(median ${per[$state/gor]})" \
			"$(awk -v a="$rss" 'BEGIN{print (a <= 40 ? "met" : "missed")}')"
	done
fi

echo
echo "Load average (1 min) at the end: $(cut -d' ' -f1 /proc/loadavg)."
loadgen_errors
