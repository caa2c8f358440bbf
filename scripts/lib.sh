# shellcheck shell=bash
# Shared helpers for the scripts in this folder. Source it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

set -euo pipefail

# The Go the module needs (go.mod says go 1.26), and the toolchain to fetch
# from the Go module proxy when the machine has an older one.
MOAT_GO_MIN_MINOR=26
MOAT_GO_TOOLCHAIN=go1.26.8

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# repo_root prints the repository root (the parent of scripts/).
repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); }

# go_minor GO prints the minor version of Go 1.x that GO runs as, read from
# `go version` outside any module (so that no go.mod can switch toolchains).
# With a second argument "switch", the GOTOOLCHAIN in the environment
# applies (the version printed is then the toolchain it selects).
go_minor() {
	local out
	if [[ ${2:-} == switch ]]; then
		out=$(cd / && "$1" version 2>/dev/null) || return 1
	else
		out=$(cd / && GOTOOLCHAIN=local "$1" version 2>/dev/null) || return 1
	fi
	# "go version go1.26.8 linux/amd64", "go version go1.19.8 ...", "go version go1.27rc1 ..."
	[[ $out =~ go1\.([0-9]+) ]] || return 1
	printf '%s\n' "${BASH_REMATCH[1]}"
}

go_new_enough() {
	local minor
	minor=$(go_minor "$1" "${2:-}") || return 1
	((minor >= MOAT_GO_MIN_MINOR))
}

APT_UPDATED=${APT_UPDATED:-}
apt_update_once() {
	if [[ -z $APT_UPDATED ]]; then
		log "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		APT_UPDATED=1
	fi
}

# apt_install PKG... installs the Debian packages that are missing, without
# starting any service (a policy-rc.d that denies starts is in place during
# the install, unless the machine already has one).
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	[[ $(id -u) == 0 ]] || die "missing Debian packages (${missing[*]}) and not root: install them, or run as root"
	apt_update_once
	local made_policy=
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\n# scripts/lib.sh: no service starts while installing test dependencies\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	log "apt-get install ${missing[*]}"
	local rc=0
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null || rc=$?
	if [[ -n $made_policy ]]; then
		rm -f /usr/sbin/policy-rc.d
	fi
	((rc == 0)) || die "apt-get install ${missing[*]} failed ($rc)"
}

# ensure_go makes `go` on PATH a Go >= 1.26 and sets GO to it: the go on
# PATH or /usr/local/go/bin/go when new enough; otherwise Debian's
# golang-go with GOTOOLCHAIN=go1.26.8, which makes the go command fetch that
# toolchain from the Go module proxy. A go older than 1.21 knows nothing of
# GOTOOLCHAIN; then the same toolchain module is fetched with
# `go mod download` and used directly.
ensure_go() {
	local cand
	for cand in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go; do
		if [[ -n $cand && -x $cand ]] && go_new_enough "$cand"; then
			GO=$cand
			PATH="$(dirname "$cand"):$PATH"
			export PATH
			return 0
		fi
	done
	if ! command -v go >/dev/null 2>&1; then
		apt_install golang-go
	fi
	local base minor
	base=$(command -v go) || die "no go command after installing golang-go"
	minor=$(go_minor "$base") || die "cannot tell the version of $base"
	export GOTOOLCHAIN=$MOAT_GO_TOOLCHAIN
	if ((minor >= 21)); then
		log "Go 1.$minor on PATH: GOTOOLCHAIN=$GOTOOLCHAIN (fetched through the Go module proxy)"
		GO=$base
		(cd / && "$GO" version) >/dev/null || die "could not get toolchain $GOTOOLCHAIN"
	else
		local goos goarch mod dir
		goos=$(cd / && "$base" env GOOS)
		goarch=$(cd / && "$base" env GOARCH)
		mod="golang.org/toolchain@v0.0.1-$MOAT_GO_TOOLCHAIN.$goos-$goarch"
		log "Go 1.$minor predates GOTOOLCHAIN: fetching $mod through the Go module proxy"
		dir=$(cd / && GO111MODULE=on GOFLAGS=-mod=mod "$base" mod download -json "$mod" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p') || true
		[[ -n $dir && -x $dir/bin/go ]] || die "could not fetch $mod"
		GO=$dir/bin/go
		unset GOTOOLCHAIN
	fi
	PATH="$(dirname "$GO"):$PATH"
	export PATH
	go_new_enough "$GO" switch || die "$GO is not Go 1.$MOAT_GO_MIN_MINOR or later"
}

# gobin prints where `go install` puts binaries.
gobin() {
	local d
	d=$("$GO" env GOBIN)
	[[ -n $d ]] || d=$("$GO" env GOPATH)/bin
	printf '%s\n' "$d"
}
