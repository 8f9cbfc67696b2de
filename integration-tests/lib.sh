# shellcheck shell=bash
# Helpers for integration-tests/run.sh: process registry, waiting, curl,
# assertions. Sourced, not run.

# ---- processes -------------------------------------------------------------
# Every process the suite starts is recorded in $WORK/pids/<name>, so tests
# that run in subshells can start and stop processes too, and cleanup finds
# them all.

# start_bg NAME CMD... : run CMD in the background, output to $WORK/logs/NAME.log.
start_bg() {
	local name=$1
	shift
	"$@" >>"$WORK/logs/$name.log" 2>&1 &
	echo $! >"$WORK/pids/$name"
	disown $! # stop_bg reaps it; no job-status noise from bash
}

pid_of() { cat "$WORK/pids/$1" 2>/dev/null; }

alive() {
	local pid
	pid=$(pid_of "$1") || return 1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# stop_bg NAME [SIGNAL] : signal the process (TERM by default), wait up to
# 10 s for it to exit, then SIGKILL it.
stop_bg() {
	local name=$1 sig=${2:-TERM} pid i
	pid=$(pid_of "$name") || return 0
	rm -f "$WORK/pids/$name"
	[ -n "$pid" ] || return 0
	kill "-$sig" "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	echo "  $name (pid $pid) did not exit after SIG$sig; killing it" >&2
	kill -KILL "$pid" 2>/dev/null || true
}

stop_all() {
	local f
	# Agents first (they would reconnect otherwise), then the rest.
	for f in "$WORK"/pids/agent-*; do
		[ -e "$f" ] && stop_bg "$(basename "$f")"
	done
	for f in "$WORK"/pids/*; do
		[ -e "$f" ] && stop_bg "$(basename "$f")"
	done
	return 0
}

# ---- waiting ---------------------------------------------------------------

now_ms() { date +%s%3N; }

# wait_until SECONDS DESCRIPTION CMD... : run CMD every 50 ms until it
# succeeds; fail with DESCRIPTION after SECONDS.
wait_until() {
	local secs=$1 what=$2
	shift 2
	local deadline=$(($(now_ms) + secs * 1000))
	while ! "$@" >/dev/null 2>&1; do
		if (($(now_ms) > deadline)); then
			echo "timed out after ${secs}s waiting for $what" >&2
			return 1
		fi
		sleep 0.05
	done
}

# ms_until_200 T0 LIMIT_MS WHAT STATUS_CMD... : run STATUS_CMD (it prints an
# HTTP status) every 50 ms until it prints 200, then print the milliseconds
# since T0 (a now_ms value); fail naming WHAT once LIMIT_MS have passed.
ms_until_200() {
	local t0=$1 limit=$2 what=$3 code took
	shift 3
	while :; do
		code=$("$@" 2>/dev/null)
		took=$(($(now_ms) - t0))
		[ "$code" = 200 ] && break
		((took < limit)) || fail "$what not served within $limit ms (last status $code)"
		sleep 0.05
	done
	echo "$took"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- HTTP ------------------------------------------------------------------

# c ARGS... : curl against our Caddy, trusting its local CA (never -k).
c() { curl -sS --cacert "$CA" --max-time "${CURL_MAX_TIME:-60}" "$@"; }

# status URL [CURL ARGS...] : print the HTTP status code of a GET.
status() {
	local url=$1
	shift
	c -o /dev/null -w '%{http_code}' "$@" "$url" || true
}

# header FILE NAME : a header's value from a curl -D dump (last one wins).
header() {
	tr -d '\r' <"$1" | awk -v n="$2" '
		BEGIN { n = tolower(n) }
		{ i = index($0, ":"); if (i && tolower(substr($0, 1, i - 1)) == n) { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); val = v } }
		END { print val }'
}

# pool_sessions POOL : session ids of a pool, from the admin API.
pool_sessions() {
	curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/spdy_origin/pools" |
		jq -r --arg p "$1" '.[] | select(.pool == $p) | .sessions[].id' | sort
}

pool_count() { pool_sessions "$1" | grep -c . || true; }

# ---- assertions ------------------------------------------------------------
# Tests run in subshells with errexit; a failed check prints why and exits.

fail() {
	echo "FAILED: $*" >&2
	exit 1
}

expect_eq() { # GOT WANT WHAT
	[ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"
}

expect_match() { # GOT REGEX WHAT
	[[ $1 =~ $2 ]] || fail "$3: got '$1', want a match for /$2/"
}

expect_contains() { # FILE STRING WHAT
	grep -qF -- "$2" "$1" || fail "$3: '$2' not found in $(head -c 300 "$1")"
}

expect_same_file() { # GOT WANT WHAT
	cmp -s "$1" "$2" || fail "$3: $(cmp "$1" "$2" 2>&1 | head -1) (sizes $(stat -c %s "$1") vs $(stat -c %s "$2"))"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# slice FILE OFFSET LENGTH : those bytes of FILE on stdout.
slice() { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none; }

# ---- running tests ---------------------------------------------------------

PASSED=0
FAILED=0
FAILED_NAMES=()

# run_test NAME FUNC : run FUNC in a subshell with errexit; print PASS/FAIL.
run_test() {
	local name=$1 fn=$2 out t0 rc
	if [ -n "${ITEST_RUN:-}" ] && ! [[ $name =~ $ITEST_RUN ]]; then
		return 0
	fi
	out="$WORK/tests/$name.out"
	t0=$(now_ms)
	set +e
	(
		set -Eeuo pipefail
		trap 'echo "FAILED: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
		"$fn"
	) >"$out" 2>&1
	rc=$?
	set -e
	local took=$(($(now_ms) - t0))
	if [ $rc -eq 0 ]; then
		PASSED=$((PASSED + 1))
		printf 'PASS %-34s %6d ms\n' "$name" "$took"
		if [ -n "${ITEST_VERBOSE:-}" ]; then sed 's/^/    /' "$out"; fi
	else
		FAILED=$((FAILED + 1))
		FAILED_NAMES+=("$name")
		printf 'FAIL %-34s %6d ms\n' "$name" "$took"
		tail -n 25 "$out" | sed 's/^/    /'
	fi
}
