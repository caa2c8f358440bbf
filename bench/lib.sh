# shellcheck shell=bash
# The setup the benchmark scripts share (bench/matrix.sh, bench/scale.sh):
# tools, the binaries, benchdns and smtp-sink on loopback, moat configs and
# the two benchmark policies, processes started in the background and
# stopped again (only the PIDs started here), and the small number
# helpers. Source it from the repository root:
#
#   cd "$(dirname "$0")/.." && . bench/lib.sh
#   bench_tools; bench_init; bench_build
#
# Globals: work (the work directory), pids (what cleanup stops), FROM and
# RCPT (the envelope of the bench traffic), hz (clock ticks per second).
. scripts/lib.sh

FROM=sender@bench.example
RCPT=rcpt@example.com
# shellcheck disable=SC2034 # used by the scripts that source this
hz=$(getconf CLK_TCK)
work=
pids=()

# bench_tools [DEBIAN_PACKAGE...]: Go, Postfix's smtp-source/smtp-sink, jq
# and the packages named, installed when missing.
bench_tools() {
	ensure_go
	if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null; then
		# Only the load tools are wanted: no mail system is configured or started.
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		apt_install postfix
	fi
	command -v jq >/dev/null || apt_install jq
	(($# == 0)) || apt_install "$@"
}

# bench_init makes the work directory and stops what was started at exit
# (the directory is removed unless KEEP is set).
bench_init() {
	work=$(mktemp -d)
	trap bench_cleanup EXIT
}

bench_cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	[[ -n ${KEEP:-} ]] && { log "kept $work"; return; }
	rm -rf "$work"
}

# bench_build [GO_PACKAGE...]: moat (or a copy of $MOAT_BIN), loadgen, benchdns and the packages
# named into $work (each binary named after its last path element), and a
# DKIM key pair for loadgen and benchdns ($work/dkim.pem, $work/dkim.txt).
# shellcheck disable=SC2120 # scale.sh passes packages; the others none
bench_build() {
	local p
	log "building moat, loadgen, benchdns${*:+, ${*##*/}}"
	if [[ -n ${MOAT_BIN:-} ]]; then
		# A moat built elsewhere (another commit, to compare): MOAT_BIN=/path.
		cp "$MOAT_BIN" "$work/moat"
	else
		go build -o "$work/moat" ./cmd/moat
	fi
	for p in ./bench/cmd/loadgen ./bench/cmd/benchdns "$@"; do
		go build -o "$work/${p##*/}" "$p"
	done
	"$work/loadgen" -genkey "$work"
}

# bench_bg VAR LOG CMD...: runs CMD in the background, stderr to LOG,
# stdout discarded; its PID goes into pids and into the variable VAR
# (none when VAR is -).
bench_bg() {
	local var=$1 errlog=$2
	shift 2
	"$@" >/dev/null 2>"$errlog" &
	pids+=($!)
	[[ $var == - ]] || printf -v "$var" '%s' $!
}

# bench_stop PID: stops one process this script started and waits for it.
bench_stop() {
	local p keep=()
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	pids=("${keep[@]}")
}

# start_dns PORT: bench/cmd/benchdns on 127.0.0.1:PORT (UDP and TCP).
start_dns() {
	bench_bg - "$work/dns.err" "$work/benchdns" -addr "127.0.0.1:$1" -domain bench.example -selector bench -dkim-txt "$work/dkim.txt"
}

# start_sink PORT: Postfix's smtp-sink on 127.0.0.1:PORT, backlog 1024.
# -u nobody: smtp-sink refuses to keep root privileges.
start_sink() {
	bench_bg - /dev/null smtp-sink -u nobody -c "127.0.0.1:$1" 1024
}

# moat_config NAME PORT ADMIN_PORT POLICY_GLOB [STORE [LIMITS [YAML]]]:
# one gateway's config, $work/NAME/moat.yaml, relaying example.com to the
# sink on SINK_PORT and asking benchdns on DNS_PORT. The connection limits
# are off: every session comes from 127.0.0.1. STORE is greylist.store
# (bolt); LIMITS more smtp.limits keys (", messages_per_sender: 200/1h");
# YAML more top-level lines (redis: { addr: ... }).
moat_config() {
	mkdir -p "$work/$1"
	cat >"$work/$1/moat.yaml" <<YAML
hostname: bench.moat.test
data_dir: $work/$1/data
smtp:
  listeners: [ { addr: "127.0.0.1:$2", mode: mx } ]
  trusted_networks: [ 192.0.2.0/24 ]   # loopback is not trusted: the full pipeline runs
  max_message_size: 25MiB
  limits: { connections: 5000, connections_per_ip: 0, connection_rate_per_ip: "0", errors_per_session: 10${6:-} }
routes:
  example.com: { upstream: "127.0.0.1:$SINK_PORT" }
dns: { servers: ["127.0.0.1:$DNS_PORT"], timeout: 2s }   # the bench DNS, never /etc/resolv.conf
greylist: { store: ${5:-bolt} }
policies: [ "$4" ]
log: { format: json, output: $work/$1/events.log }
admin: { addr: "127.0.0.1:$3" }
YAML
	[[ -z ${7:-} ]] || printf '%s\n' "$7" >>"$work/$1/moat.yaml"
}

# moat_pprof NAME: gateway NAME's admin listener serves /debug/pprof/.
moat_pprof() {
	sed -i 's/^admin: { addr: \("[^"]*"\) }$/admin: { addr: \1, pprof: true }/' "$work/$1/moat.yaml"
	grep -q 'pprof: true' "$work/$1/moat.yaml" || die "moat_pprof: no admin line in $work/$1/moat.yaml"
}

# policy_none FILE: case (b), no checks at all (gtube off too).
policy_none() {
	cat >"$1" <<'YAML'
policy: default
checks: { gtube: false }
actions: { tag: 5, quarantine: 8, reject: 12 }
YAML
}

# policy_checks FILE: case (c), every check of issue 10 on; none of them
# fails for the bench traffic once the triplet FROM, RCPT passed greylisting.
policy_checks() {
	cat >"$1" <<'YAML'
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
}

# allow_bench_triplet NAME: the one triplet of the load passes greylisting
# in gateway NAME's store (with bolt, before moat starts: the command opens
# the store itself).
allow_bench_triplet() {
	mkdir -p "$work/$1/data"
	"$work/moat" greylist allow --config "$work/$1/moat.yaml" --triplet "127.0.0.1,$FROM,$RCPT" >/dev/null
}

# start_moat VAR NAME [ENV=VALUE...]: `moat serve` of $work/NAME/moat.yaml
# in the background (with the environment assignments given, e.g.
# GOMAXPROCS=1); its PID goes into VAR.
start_moat() {
	local var=$1 name=$2
	shift 2
	bench_bg "$var" "$work/$name/moat.err" env "$@" "$work/moat" serve --config "$work/$name/moat.yaml"
}

# wait_port PORT: until 127.0.0.1:PORT accepts (10 s), else the moats'
# errors and exit.
wait_port() {
	for _ in $(seq 1 200); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.05
	done
	echo "port $1 did not open" >&2
	cat "$work"/*/moat.err >&2 || true
	exit 1
}

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

# probe_accept PORT NAME: one message through gateway NAME on PORT must come
# out accepted (every check passing); prints its event.
probe_accept() {
	loadgen "$1" 1 1 1024 >/dev/null
	# The event is written as the transaction ends: wait for it (5 s at most).
	for _ in $(seq 1 100); do
		grep -q '"moat.action":"accept"' "$work/$2/events.log" 2>/dev/null && break
		sleep 0.05
	done
	if ! grep -q '"moat.action":"accept"' "$work/$2/events.log"; then
		echo "case (c) did not accept the probe message:" >&2
		tail -n 3 "$work/$2/events.log" >&2
		exit 1
	fi
	grep '"moat.action"' "$work/$2/events.log" | tail -n 1
}

# single_case_c: the setup of the one-gateway scripts (latency.sh,
# profile.sh): benchdns, smtp-sink and gateway "c" with every check on
# (case (c) of matrix.sh), admin.pprof on, the load's triplet released; it
# is not started. Ports: SINK_PORT, MOAT_PORT, DNS_PORT, ADMIN_PORT.
single_case_c() {
	bench_tools curl
	bench_init
	# shellcheck disable=SC2119 # no extra packages to build
	bench_build
	start_dns "$DNS_PORT"
	start_sink "$SINK_PORT"
	policy_checks "$work/checks.yaml"
	moat_config c "$MOAT_PORT" "$ADMIN_PORT" "$work/checks.yaml"
	moat_pprof c
	allow_bench_triplet c
}

# loadgen_errors: the commonest loadgen errors of the run, if any.
loadgen_errors() {
	[[ -s $work/loadgen.err ]] || return 0
	echo
	echo "loadgen errors:"
	sort "$work/loadgen.err" | uniq -c | sort -rn | head -n 5 | sed 's/^/    /'
}

# machine_line: the "- machine:" line of a report.
machine_line() {
	local cpu_model
	cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
	echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, $(uname -sr), $(go version | cut -d' ' -f3)"
}

# moat_rev: the commit, +dirty when the tree has changes.
moat_rev() {
	echo "$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
}
