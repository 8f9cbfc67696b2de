#!/usr/bin/env bash
# Checks the systemd units in dist/systemd/ (CI runs it; make verify-units):
#
#   1. systemd-analyze verify: syntax, unknown keys and sections, bad values,
#      executables that do not exist, dependencies on units that do not exist.
#      verify exits 0 on some of these (an unknown key is only a warning), so
#      any output at all fails the check.
#   2. systemd-analyze security --offline: the agent's sandbox must keep its
#      exposure rating at or below AGENT_MAX_EXPOSURE. Caddy's unit follows
#      Caddy's own conventions; its rating is printed, not enforced.
#
# Neither needs a running systemd (PID 1) or root: both read unit files only.
# They run against a scratch root holding this machine's system units, the
# units under test in /etc/systemd/system, and stand-ins for the binaries
# their ExecStart= names.
set -euo pipefail
cd "$(dirname "$0")/.."

AGENT_MAX_EXPOSURE=${AGENT_MAX_EXPOSURE:-1.2} # systemd's 0.0 (best) .. 10.0 scale
UNITS=(spdy-origin-agent.service caddy.service)

command -v systemd-analyze >/dev/null || {
	echo "verify-units: systemd-analyze not found (apt-get install -y systemd)" >&2
	exit 2
}
sysunits=/usr/lib/systemd/system
[ -d "$sysunits" ] || sysunits=/lib/systemd/system

root=$(mktemp -d "${TMPDIR:-/tmp}/verify-units.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
cp -a "$sysunits" "$root/usr/lib/systemd/system"
for u in "${UNITS[@]}"; do
	cp "dist/systemd/$u" "$root/etc/systemd/system/$u"
	# Stand-ins for every absolute executable the unit runs.
	for exe in $(sed -nE 's/^Exec[A-Za-z]*=[-@:+!]*(\/[^ ]+).*/\1/p' "dist/systemd/$u"); do
		mkdir -p "$root$(dirname "$exe")"
		printf '#!/bin/sh\n' >"$root$exe"
		chmod 755 "$root$exe"
	done
done

rc=0
echo "systemd-analyze verify ($(systemd-analyze --version | head -1))"
out=$(systemd-analyze verify --root="$root" --man=no "${UNITS[@]}" 2>&1) || rc=1
if [ -n "$out" ]; then
	echo "$out" | sed 's/^/  /'
	rc=1
fi
[ $rc -eq 0 ] && echo "  ${UNITS[*]}: ok"

# The same as an unprivileged user, when we can switch to one: the check
# needs neither root nor a running systemd.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
	chmod -R a+rX "$root"
	if out=$(setpriv --reuid=65534 --regid=65534 --clear-groups \
		systemd-analyze verify --root="$root" --man=no "${UNITS[@]}" 2>&1) && [ -z "$out" ]; then
		echo "  the same as uid 65534 (no root, no systemd running): ok"
	else
		echo "$out" | sed 's/^/  as uid 65534: /'
		rc=1
	fi
fi

for u in "${UNITS[@]}"; do
	max=10.0
	[ "$u" = spdy-origin-agent.service ] && max=$AGENT_MAX_EXPOSURE
	# --threshold counts tenths: 1.0 is 10.
	sec=$(systemd-analyze security --offline=yes --root="$root" --threshold="$(awk -v m="$max" 'BEGIN { printf "%d", m * 10 + 0.5 }')" "$u" 2>&1) || {
		echo "$sec" | grep -E '✗' | sed 's/^/  /'
		echo "  $u: exposure above $max"
		rc=1
	}
	echo "  $(echo "$sec" | grep -E 'Overall exposure level' | sed 's/→ //') (at most $max allowed)"
done
exit $rc
