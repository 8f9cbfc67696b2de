#!/usr/bin/env bash
# Release binaries (make dist): the agent for linux/amd64, linux/arm64,
# linux/arm (GOARM=7), darwin/arm64 and windows/amd64, and Caddy with the
# spdy_origin module for linux/amd64 and linux/arm64, into dist/out/ with a
# SHA256SUMS file.
#
# Usage: scripts/dist.sh           build into dist/out/
#        scripts/dist.sh --check   build, then build again from a fresh clone of
#                                  HEAD at another path and require the same
#                                  SHA256SUMS (DIST_CHECK_COLD=1: with an empty
#                                  Go build cache too)
#
# Reproducible: static (CGO_ENABLED=0), -trimpath, no VCS stamping, and the
# version and commit come from git through -ldflags, so the same commit and Go
# version give the same bytes wherever it is built. VERSION and COMMIT in the
# environment override git (e.g. building from a source archive).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

AGENT_TARGETS="linux/amd64 linux/arm64 linux/arm/7 darwin/arm64 windows/amd64"
CADDY_TARGETS="linux/amd64 linux/arm64"

OUT=${DIST_OUT:-$REPO/dist/out}
# buildcaddy's outputs (and their stamps, which dist does not trust).
CACHE=${DIST_CACHE:-$REPO/dist/cache}

VERSION=${VERSION:-$(git describe --tags --always --dirty --match 'v*' 2>/dev/null || echo devel)}
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

log() { echo "dist: [${SECONDS}s] $*" >&2; }

# name OS ARCH [ARM] : the file name part for a target, e.g. linux-armv7.
name() {
	local n=$1-$2
	[ -n "${3:-}" ] && n+=v$3
	echo "$n"
}

build_agent() { # OS ARCH [ARM]
	local os=$1 arch=$2 arm=${3:-} out
	out=$OUT/spdy-origin-agent-$(name "$os" "$arch" "$arm")
	[ "$os" = windows ] && out+=.exe
	log "agent $os/$arch${arm:+/v$arm}"
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch GOARM=$arm GOFLAGS= \
		go build -trimpath -buildvcs=false \
		-ldflags "-s -w -X github.com/spdy-origin/spdy-origin/agent.version=$VERSION -X github.com/spdy-origin/spdy-origin/agent.commit=$COMMIT" \
		-o "$out" ./cmd/spdy-origin-agent
}

build_caddy() { # OS ARCH
	local os=$1 arch=$2 n
	n=caddy-spdy-origin-$(name "$os" "$arch")
	log "caddy $os/$arch"
	# xcaddy's defaults: -trimpath, -ldflags "-w -s", CGO_ENABLED=0; it builds
	# in a temporary module outside any repository, so nothing VCS is stamped.
	# -force: a release is built from this source whatever the stamps say
	# (relinking from the build cache takes seconds).
	go run ./internal/buildcaddy -config xcaddy.json -force -os "$os" -arch "$arch" -o "$CACHE/$n"
	cp "$CACHE/$n" "$OUT/$n"
}

build_all() {
	rm -rf "$OUT"
	mkdir -p "$OUT" "$CACHE"
	log "version $VERSION, commit $COMMIT, $(go env GOVERSION)"
	local t
	for t in $AGENT_TARGETS; do
		# shellcheck disable=SC2086 # split os/arch/arm on purpose
		build_agent ${t//\// }
	done
	for t in $CADDY_TARGETS; do
		# shellcheck disable=SC2086
		build_caddy ${t//\// }
	done
	(cd "$OUT" && LC_ALL=C sha256sum -- * >SHA256SUMS)
	log "wrote $OUT:"
	(cd "$OUT" && stat -c '  %10s  %n' -- *) >&2
}

# check: the same commit built again from a fresh clone at another path must
# give the same SHA256SUMS.
check() {
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/spdy-origin-dist-check.XXXXXX") # global: the EXIT trap uses it
	trap 'rm -rf "$tmp"' EXIT
	if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
		log "the work tree has uncommitted changes: the check rebuilds HEAD, which is not what dist/out holds"
		exit 1
	fi
	git clone -q --no-hardlinks "$REPO" "$tmp/src"
	local env=(VERSION="$VERSION" COMMIT="$COMMIT" DIST_OUT="$tmp/out" DIST_CACHE="$tmp/cache")
	if [ -n "${DIST_CHECK_COLD:-}" ]; then
		env+=(GOCACHE="$tmp/gocache")
		log "rebuilding in $tmp/src with an empty Go build cache"
	else
		log "rebuilding in $tmp/src"
	fi
	env "${env[@]}" bash "$tmp/src/scripts/dist.sh"
	if diff -u "$OUT/SHA256SUMS" "$tmp/out/SHA256SUMS"; then
		log "reproducible: the rebuild at another path has the same SHA256SUMS"
	else
		trap - EXIT
		log "NOT reproducible: SHA256SUMS differ (above); the rebuild is kept in $tmp/out"
		exit 1
	fi
}

build_all
if [ "${1:-}" = --check ]; then
	check
fi
