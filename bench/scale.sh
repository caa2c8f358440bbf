#!/usr/bin/env bash
# Issue 10, part 4, "scale past one machine", on one machine: several
# gateways share greylisting and rate limits through Redis. It measures
#   1. one moat with every check on (case (c) of bench/matrix.sh, bolt
#      greylist store) at GOMAXPROCS=1 and 2, against loadgen -> smtp-sink
#      directly (a);
#   2. the same policy on two moats sharing one Redis (greylist store and
#      smtp.limits rates there, limits too high to refuse), the load split
#      across both listeners (two loadgen processes at once, half of the
#      messages and sessions each), beside one of them alone;
#   3. consistency under concurrent load (bench/cmd/consistency): every
#      greylist triplet "new" once across both gateways, and the rates
#      messages_per_sender, messages_per_network, recipients_per_network
#      held across both;
#   4. Redis round trips per accepted transaction (moat's
#      moat_redis_roundtrips_total{client} on the admin /metrics) in step 2.
# and prints one markdown report on stdout; the exit status is 1 when a
# consistency check fails.
#
#   bash bench/scale.sh
#   MSGS=4000 REPS=5 KEEP=1 bash bench/scale.sh
#
# Loopback only: DNS answers come from bench/cmd/benchdns, Redis is a
# redis-server started here (no persistence) on BASE_PORT+2. Every load is
# bounded by a message count and per-session timeouts; only the processes
# started here are stopped. Throughput figures are medians of REPS runs,
# the cases interleaved so that a noisy moment hits them alike.
# shellcheck disable=SC2154 # start_moat and bench_bg set moat_*, pair_*, redis_pid
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

MSGS=${MSGS:-3000}         # messages per throughput case and repetition
REPS=${REPS:-5}            # repetitions of the throughput cases
SIZE=${SIZE:-10240}        # message size, bytes
SESSIONS=${SESSIONS:-20}   # concurrent sessions (split in two for the pair)
TRIPLETS=${TRIPLETS:-300}  # greylist consistency: new triplets
GL_SESSIONS=${GL_SESSIONS:-40}
GL_DELAY=${GL_DELAY:-2s}
RATE_MSGS=${RATE_MSGS:-1000}
RATE_LIMIT=${RATE_LIMIT:-200/1h}
RATE_SESSIONS=${RATE_SESSIONS:-20}
BASE_PORT=${BASE_PORT:-12540} # this port and the next 18 (matrix.sh takes 12530-12535)

SINK_PORT=$BASE_PORT
DNS_PORT=$((BASE_PORT + 1))
REDIS_PORT=$((BASE_PORT + 2))
# moat listeners and their admin ports: c1 c2 r1 r2 g1 g2 s1 s2
port_of() {
	local i
	case $1 in c1) i=3 ;; c2) i=5 ;; r1) i=7 ;; r2) i=9 ;; g1) i=11 ;; g2) i=13 ;; s1) i=15 ;; s2) i=17 ;; esac
	echo $((BASE_PORT + i + ${2:-0}))
}
admin_of() { port_of "$1" 1; }

bench_tools redis-server
bench_init
bench_build ./bench/cmd/consistency
start_dns "$DNS_PORT"
start_sink "$SINK_PORT"
bench_bg redis_pid "$work/redis.err" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work"
wait_port "$REDIS_PORT"
redis() { redis-cli -p "$REDIS_PORT" "$@"; }

REDIS_YAML="redis: { addr: \"127.0.0.1:$REDIS_PORT\" }"
# High enough never to refuse the throughput load, so that each check
# still goes to Redis.
HIGH_LIMITS=", messages_per_network: 100000000/1h, recipients_per_network: 100000000/1h, messages_per_sender: 100000000/1h"

policy_checks "$work/checks.yaml"
policy_none "$work/none.yaml"
# Greylisting alone, a short delay, no auto-allow (every triplet of the
# check comes from 127.0.0.0/24 and must stay a triplet decision).
cat >"$work/greylist.yaml" <<YAML
policy: default
checks:
  gtube: false
  greylist: { enabled: true, delay: $GL_DELAY, retry_window: 1h, lifetime: 36d, auto_allow_after: 0, min_score: 0 }
actions: { tag: 5, quarantine: 8, reject: 12 }
YAML

for m in c1 c2; do
	moat_config $m "$(port_of $m)" "$(admin_of $m)" "$work/checks.yaml"
	allow_bench_triplet $m
done
for m in r1 r2; do
	moat_config $m "$(port_of $m)" "$(admin_of $m)" "$work/checks.yaml" redis "$HIGH_LIMITS" "$REDIS_YAML"
done
allow_bench_triplet r1 # in Redis: for both
start_moat moat_c1 c1 GOMAXPROCS=1
start_moat moat_c2 c2 GOMAXPROCS=2
start_moat moat_r1 r1 GOMAXPROCS=2
start_moat moat_r2 r2 GOMAXPROCS=2
for m in c1 c2 r1 r2; do wait_port "$(port_of $m)"; done
for m in c1 c2 r2 r1; do probe=$(probe_accept "$(port_of $m)" $m); done # the probe of r1 is printed

# roundtrips ADMIN_PORT: "client count" lines of moat_redis_roundtrips_total,
# nothing when moat has no such metric.
roundtrips() {
	curl -sf "http://127.0.0.1:$1/metrics" |
		sed -n 's/^moat_redis_roundtrips_total{client="\([a-z]*\)"} \([0-9.e+]*\)$/\1 \2/p' || true
}
declare -A rt_one=() rt_two=() # round trips by client, summed over the reps
rt_add() { # rt_add ARRAY BEFORE AFTER
	local -n acc=$1
	local c v b
	while read -r c v; do
		[[ -n $c ]] || continue
		b=$(awk -v c="$c" '$1 == c {print $2}' <<<"$2")
		acc["$c"]=$(calc "${acc["$c"]:-0} + $v - ${b:-0}")
	done <<<"$3"
}

echo "# moat scale-out benchmark (issue 10, part 4)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
machine_line
echo "- moat: $(moat_rev); $(redis-server --version | cut -d' ' -f1-3); throughput: $MSGS messages of $SIZE bytes per case and repetition, $SESSIONS sessions, one connection per message, DKIM-signed (RSA-2048), median of $REPS"
echo "- everything (loadgen, smtp-sink, benchdns, Redis and the moats) shares these $(nproc) CPUs: the two-moat rows measure sharing state, not more hardware"
echo

# Warm-up of each path, not measured.
for p in "$SINK_PORT" "$(port_of c1)" "$(port_of c2)" "$(port_of r1)" "$(port_of r2)"; do loadgen "$p" $((SESSIONS * 2)) "$SESSIONS" "$SIZE" >/dev/null; done

half=$((MSGS / 2)) hsess=$(((SESSIONS + 1) / 2))
declare -A rate=() cpu=() p50=() p99=() fail=()
ok_one=0 ok_two=0
for _ in $(seq 1 "$REPS"); do
	a=$(loadgen "$SINK_PORT" "$MSGS" "$SESSIONS" "$SIZE")
	rate[a]+=" $(field rate "$a")" p50[a]+=" $(field p50_ms "$a")" p99[a]+=" $(field p99_ms "$a")" fail[a]+=" $(field failed "$a")"
	for m in c1 c2 r1; do
		pid=moat_$m
		[[ $m == r1 ]] && before=$(roundtrips "$(admin_of r1)")
		t0=$(cpu_ticks "${!pid}")
		r=$(loadgen "$(port_of $m)" "$MSGS" "$SESSIONS" "$SIZE")
		t1=$(cpu_ticks "${!pid}")
		ok=$(field ok "$r")
		if [[ $m == r1 ]]; then
			rt_add rt_one "$before" "$(roundtrips "$(admin_of r1)")"
			ok_one=$((ok_one + ok))
		fi
		rate[$m]+=" $(field rate "$r")"
		cpu[$m]+=" $(calc "($t1 - $t0) * 1000000 / $hz / ($ok > 0 ? $ok : 1)")"
		p50[$m]+=" $(field p50_ms "$r")" p99[$m]+=" $(field p99_ms "$r")" fail[$m]+=" $(field failed "$r")"
	done
	# The pair: two loadgens at once, half of the load each.
	b1=$(roundtrips "$(admin_of r1)") b2=$(roundtrips "$(admin_of r2)")
	t1a=$(cpu_ticks "$moat_r1") t2a=$(cpu_ticks "$moat_r2") tra=$(cpu_ticks "$redis_pid")
	loadgen "$(port_of r1)" "$half" "$hsess" "$SIZE" >"$work/pair1.out" &
	l1=$!
	loadgen "$(port_of r2)" "$((MSGS - half))" "$hsess" "$SIZE" >"$work/pair2.out" &
	l2=$!
	wait $l1
	wait $l2
	t1b=$(cpu_ticks "$moat_r1") t2b=$(cpu_ticks "$moat_r2") trb=$(cpu_ticks "$redis_pid")
	rt_add rt_two "$b1" "$(roundtrips "$(admin_of r1)")"
	rt_add rt_two "$b2" "$(roundtrips "$(admin_of r2)")"
	o1=$(<"$work/pair1.out") o2=$(<"$work/pair2.out")
	k1=$(field ok "$o1") k2=$(field ok "$o2")
	ok_two=$((ok_two + k1 + k2))
	# Combined: all accepted over the longer of the two runs (both start together).
	rate[pair]+=" $(calc "($k1 + $k2) / ($(field secs "$o1") > $(field secs "$o2") ? $(field secs "$o1") : $(field secs "$o2"))")"
	cpu[pair1]+=" $(calc "($t1b - $t1a) * 1000000 / $hz / ($k1 > 0 ? $k1 : 1)")"
	cpu[pair2]+=" $(calc "($t2b - $t2a) * 1000000 / $hz / ($k2 > 0 ? $k2 : 1)")"
	cpu[redis]+=" $(calc "($trb - $tra) * 1000000 / $hz / ($k1 + $k2 > 0 ? $k1 + $k2 : 1)")"
	p50[pair1]+=" $(field p50_ms "$o1")" p99[pair1]+=" $(field p99_ms "$o1")"
	p50[pair2]+=" $(field p50_ms "$o2")" p99[pair2]+=" $(field p99_ms "$o2")"
	fail[pair]+=" $(field failed "$o1") $(field failed "$o2")"
done

# shellcheck disable=SC2086 # word splitting of the lists is meant
{
	med() { median ${rate[$1]}; }
	ra=$(med a) rc2=$(med c2)
	echo "## One moat, every check on (case (c)), GOMAXPROCS"
	echo
	echo "| case | msg/s | ratio to (a) | moat CPU µs/msg | p50 ms | p99 ms | failed |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
	printf '| (a) loadgen → smtp-sink | %.0f | 1.00 | | %.2f | %.2f | %s |\n' "$ra" "$(median ${p50[a]})" "$(median ${p99[a]})" "$(sum ${fail[a]})"
	for m in c1 c2; do
		printf '| (c) moat, GOMAXPROCS=%s, bolt greylist store | %.0f | %.2f | %.0f | %.2f | %.2f | %s |\n' "${m#c}" "$(med $m)" \
			"$(calc "$(med $m) / $ra")" "$(median ${cpu[$m]})" "$(median ${p50[$m]})" "$(median ${p99[$m]})" "$(sum ${fail[$m]})"
	done
	echo
	echo "## Two moats sharing one Redis (greylist store and smtp.limits rates in Redis, GOMAXPROCS=2 each)"
	echo
	echo "| case | msg/s | ratio to (a) | ratio to one moat, GOMAXPROCS=2 (bolt) | moat CPU µs/msg | Redis CPU µs/msg | p50 ms | p99 ms | failed |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	printf '| one moat on Redis (r1 alone, %d sessions) | %.0f | %.2f | %.2f | %.0f | | %.2f | %.2f | %s |\n' "$SESSIONS" "$(med r1)" \
		"$(calc "$(med r1) / $ra")" "$(calc "$(med r1) / $rc2")" "$(median ${cpu[r1]})" "$(median ${p50[r1]})" "$(median ${p99[r1]})" "$(sum ${fail[r1]})"
	printf '| two moats on Redis, combined (%d + %d sessions) | %.0f | %.2f | %.2f | %.0f / %.0f | %.0f | %.2f / %.2f | %.2f / %.2f | %s |\n' \
		"$hsess" "$hsess" "$(med pair)" "$(calc "$(med pair) / $ra")" "$(calc "$(med pair) / $rc2")" \
		"$(median ${cpu[pair1]})" "$(median ${cpu[pair2]})" "$(median ${cpu[redis]})" \
		"$(median ${p50[pair1]})" "$(median ${p50[pair2]})" "$(median ${p99[pair1]})" "$(median ${p99[pair2]})" "$(sum ${fail[pair]})"
	echo
	echo "Combined msg/s: both loadgens' accepted messages over the longer of their two runs (they start together)."
	echo "CPU and latency of the pair: r1 / r2. Case (c) probe through r1: $(jq -r '."moat.checks" | to_entries | map("\(.key) \(.value.result)") | join(", ")' <<<"$probe")."
	echo "Actions logged (warm-ups and probes included): $(for m in c1 c2 r1 r2; do
		printf '%s: %s; ' $m "$(jq -r '."moat.action" // empty' "$work/$m/events.log" | sort | uniq -c | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1}')"
	done | sed 's/; $//')."
}

echo
echo "## Redis round trips per accepted transaction (step 2, moat_redis_roundtrips_total)"
echo
if ((${#rt_one[@]} == 0 && ${#rt_two[@]} == 0)); then
	echo "not available: moat's admin /metrics has no moat_redis_roundtrips_total"
else
	echo "| client | one moat on Redis | two moats on Redis |"
	echo "| --- | ---: | ---: |"
	tot1=0 tot2=0
	for c in greylist rate auth; do
		printf '| %s | %.2f | %.2f |\n' $c "$(calc "${rt_one[$c]:-0} / ($ok_one > 0 ? $ok_one : 1)")" "$(calc "${rt_two[$c]:-0} / ($ok_two > 0 ? $ok_two : 1)")"
		tot1=$(calc "$tot1 + ${rt_one[$c]:-0}") tot2=$(calc "$tot2 + ${rt_two[$c]:-0}")
	done
	printf '| **total** | **%.2f** | **%.2f** |\n' "$(calc "$tot1 / ($ok_one > 0 ? $ok_one : 1)")" "$(calc "$tot2 / ($ok_two > 0 ? $ok_two : 1)")"
	echo
	echo "Over $ok_one and $ok_two accepted transactions (the measured runs, warm-ups excluded); target: at most 2 on the hot path."
fi

# Step 3: consistency. Each part gets an empty Redis and its own pair of
# gateways (started for it, stopped after).
failed=0
start_pair() { # start_pair A B POLICY LIMITS
	local m
	redis flushall >/dev/null
	for m in "$1" "$2"; do
		rm -rf "${work:?}/$m"
		moat_config "$m" "$(port_of "$m")" "$(admin_of "$m")" "$3" redis "$4" "$REDIS_YAML"
	done
	start_moat pair_a "$1"
	start_moat pair_b "$2"
	wait_port "$(port_of "$1")"
	wait_port "$(port_of "$2")"
}
stop_pair() {
	bench_stop "$pair_a"
	bench_stop "$pair_b"
}
check() { # check CMD...: its output, indented; a FAIL is remembered
	local out line rc=0
	out=$("$@" 2>&1) || rc=$?
	while IFS= read -r line; do printf '    %s\n' "$line"; done <<<"$out"
	((rc == 0)) || failed=1
}

echo
echo "## Consistency under load, two moats on one Redis"
echo
echo "Greylisting (delay $GL_DELAY): $TRIPLETS new triplets, each first attempt sent to both gateways at once"
echo "($GL_SESSIONS sessions), then retried at one gateway and the other; the verdicts read back from both event logs:"
echo
start_pair g1 g2 "$work/greylist.yaml" ""
check "$work/consistency" greylist -a "127.0.0.1:$(port_of g1)" -b "127.0.0.1:$(port_of g2)" -n "$TRIPLETS" -c "$GL_SESSIONS" \
	-delay "$GL_DELAY" -events "$work/g1/events.log,$work/g2/events.log"
stop_pair

echo
echo "Rates ($RATE_LIMIT each, alone): $RATE_MSGS messages split across both gateways, $RATE_SESSIONS sessions in all;"
echo "accepted must be at least the limit and at most the limit plus the refill during the run:"
echo
for lim in messages_per_sender messages_per_network recipients_per_network; do
	distinct=()
	[[ $lim == messages_per_sender ]] || distinct=(-distinct-senders)
	start_pair s1 s2 "$work/none.yaml" ", $lim: $RATE_LIMIT"
	check "$work/consistency" rate -addrs "127.0.0.1:$(port_of s1),127.0.0.1:$(port_of s2)" -n "$RATE_MSGS" -c "$RATE_SESSIONS" \
		-limit "$RATE_LIMIT" -name "$lim" "${distinct[@]}"
	stop_pair
done

echo
if ((failed)); then
	echo "**Consistency: FAIL** (see above)"
else
	echo "**Consistency: PASS**"
fi
loadgen_errors
exit "$failed"
