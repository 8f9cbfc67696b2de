#!/usr/bin/env bash
# Integration tests: bin/caddy (with the spdy_origin module) and
# bin/spdy-origin-agent, talking over real HTTPS on localhost.
#
# Usage: integration-tests/run.sh            (after `make build`; `make test` does both)
# Env:   ITEST_RUN=regex      run only the tests whose names match
#        ITEST_PORT_BASE=N    ports N+19 (admin), N+80 (http), N+43..N+45 (sites), N+101..N+108
#                             (the HA tests' two Caddy instances and agents, ha.sh), N+111..N+113
#                             (the many-hostnames Caddy, hosts.sh); default 18400
#        ITEST_KEEP=1         keep the work dir (it is kept anyway when a test fails)
#        ITEST_VERBOSE=1      show each test's output, not only a failing one's
#        ITEST_BIG=1G         size of the big download/upload
#
# Test data is generated here, deterministically; nothing binary is committed.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=integration-tests/lib.sh
. integration-tests/lib.sh

CADDY=$REPO/bin/caddy
AGENT=$REPO/bin/spdy-origin-agent
for b in "$CADDY" "$AGENT"; do
	[ -x "$b" ] || {
		echo "missing $b: run 'make build' (or 'make test', which builds)" >&2
		exit 2
	}
done
for tool in curl jq cmp sha256sum openssl; do
	command -v "$tool" >/dev/null || {
		echo "integration tests need '$tool' (apt-get install -y curl jq diffutils coreutils openssl)" >&2
		exit 2
	}
done

BASE=${ITEST_PORT_BASE:-18400}
ADMIN_PORT=$((BASE + 19))
HTTP_PORT=$((BASE + 80))
FILES_PORT=$((BASE + 43)) # pool "files": an agent with --root
UP_PORT=$((BASE + 44))    # pool "up":    an agent with --to the upstream helper
EMPTY_PORT=$((BASE + 45)) # pool "empty": no agent ever
DEMO_PORT_BASE=$((BASE + 50))
FILES=https://localhost:$FILES_PORT
UP=https://localhost:$UP_PORT
EMPTY=https://localhost:$EMPTY_PORT
BIG=${ITEST_BIG:-1G}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/spdy-origin-itest.XXXXXX")
mkdir -p "$WORK"/{pids,logs,tests,bin,data,out,xdg/data,xdg/config}
CA=$WORK/xdg/data/caddy/pki/authorities/local/root.crt
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export SPDY_ORIGIN_TOKEN=$TOKEN

finish() {
	local rc=$?
	set +e
	trap '' INT TERM
	stop_all
	if [ "$FAILED" -gt 0 ] || [ $rc -ne 0 ]; then
		for log in "$WORK"/logs/*.log; do
			[ -s "$log" ] || continue
			echo "---- last lines of $(basename "$log")"
			tail -n 15 "$log"
		done
		echo "work dir kept: $WORK"
	elif [ -n "${ITEST_KEEP:-}" ]; then
		echo "work dir kept: $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for p in $ADMIN_PORT $HTTP_PORT $FILES_PORT $UP_PORT $EMPTY_PORT; do
	port_free "$p" || {
		echo "port $p is in use; set ITEST_PORT_BASE to use other ports" >&2
		exit 2
	}
done

echo "== setup (work dir $WORK)"
go build -o "$WORK/bin/upstream" ./integration-tests/upstream
UPSTREAM=$WORK/bin/upstream

# ---- test data (deterministic) ----
D=$WORK/data
mkdir -p "$D/site/img" "$D/site/video" "$D/site/data" "$D/site/many" "$D/site/sub dir"
printf 'hello from spdy-origin\n' >"$D/site/hello.txt"
printf '<!doctype html><title>sub</title><p>a page in a directory with a space\n' >"$D/site/sub dir/page.html"
"$UPSTREAM" png -o "$D/site/img/test.png"
"$UPSTREAM" gen -n 3M -seed avi -o "$D/site/video/sample.avi"
"$UPSTREAM" gen -n 2M -seed mkv -o "$D/site/video/sample.mkv"
"$UPSTREAM" gen -n 4M -seed mp4 -o "$D/site/video/sample.mp4"
"$UPSTREAM" gen -n 4M -seed blob -o "$D/site/data/blob-4M.bin"
"$UPSTREAM" gen -n 16M -seed blob16 -o "$D/site/data/blob-16M.bin"
"$UPSTREAM" gen -n 24M -seed slow -o "$D/site/data/slow-24M.bin"
for i in $(seq 0 19); do
	"$UPSTREAM" gen -n $((16 + i * 37))K -seed "many-$i" -o "$D/site/many/f$i.bin"
done
# A fixed mtime, so If-Modified-Since has something stable to compare against.
touch -d '2024-01-02 03:04:05 UTC' "$D/site/hello.txt"
"$UPSTREAM" gen -n 10M -seed post -o "$D/post-10M.bin"

# ---- Caddy ----
write_caddyfile() { # GENERATION
	cat >"$WORK/Caddyfile" <<CADDYFILE
{
	admin 127.0.0.1:$ADMIN_PORT
	http_port $HTTP_PORT
	https_port $FILES_PORT
	local_certs
	skip_install_trust
	persist_config off
}

https://localhost:$FILES_PORT {
	tls internal
	header X-Config-Generation $1
	spdy_origin {
		pool files
		token {env.SPDY_ORIGIN_TOKEN}
	}
}

https://localhost:$UP_PORT {
	tls internal
	spdy_origin {
		pool up
		token {env.SPDY_ORIGIN_TOKEN}
	}
}

https://localhost:$EMPTY_PORT {
	tls internal
	spdy_origin {
		pool empty
		token {env.SPDY_ORIGIN_TOKEN}
	}
}
CADDYFILE
}
write_caddyfile 1
export XDG_DATA_HOME=$WORK/xdg/data XDG_CONFIG_HOME=$WORK/xdg/config
start_bg caddy "$CADDY" run --config "$WORK/Caddyfile" --adapter caddyfile
wait_until 30 "Caddy's local root certificate" test -s "$CA"
wait_until 30 "Caddy serving TLS on $EMPTY_PORT" \
	bash -c "[ \"\$(curl -sS --cacert '$CA' -o /dev/null -w '%{http_code}' '$EMPTY/')\" != 000 ]"

# ---- upstream and agents ----
start_bg upstream "$UPSTREAM" serve -addr 127.0.0.1:0 -addr-file "$WORK/upstream.addr"
wait_until 10 "the upstream helper" test -s "$WORK/upstream.addr"
UPSTREAM_ADDR=$(cat "$WORK/upstream.addr")

start_files_agent() {
	start_bg agent-files "$AGENT" --proxy "$FILES/.well-known/spdy-origin" --token "$TOKEN" \
		--root "$D/site" --ca-file "$CA" --name itest-files --connections 2 --drain-timeout 5s
}
start_up_agent() {
	# The token from the environment (SPDY_ORIGIN_TOKEN), as documented.
	start_bg agent-up "$AGENT" --proxy "$UP/.well-known/spdy-origin" \
		--to "http://$UPSTREAM_ADDR" --ca-file "$CA" --name itest-up --connections 2 --drain-timeout 5s
}
start_files_agent
start_up_agent
wait_until 15 "two sessions in pool files" bash -c "[ \"\$(curl -sS http://127.0.0.1:$ADMIN_PORT/spdy_origin/pools | jq '[.[] | select(.pool==\"files\") | .sessions[]] | length')\" = 2 ]"
wait_until 15 "two sessions in pool up" bash -c "[ \"\$(curl -sS http://127.0.0.1:$ADMIN_PORT/spdy_origin/pools | jq '[.[] | select(.pool==\"up\") | .sessions[]] | length')\" = 2 ]"
echo "== running tests"

# ---- tests -----------------------------------------------------------------
O=$WORK/out

t_dir_listing() {
	c -D "$O/ls.h" -o "$O/ls.html" -w '%{http_code}\n' "$FILES/" >"$O/ls.code"
	expect_eq "$(cat "$O/ls.code")" 200 "GET / status"
	expect_match "$(header "$O/ls.h" content-type)" '^text/html' "listing Content-Type"
	for name in hello.txt img/ video/ data/ many/; do
		expect_contains "$O/ls.html" "href=\"$name\"" "root listing"
	done
	c -o "$O/ls2.html" "$FILES/video/"
	for name in sample.avi sample.mkv sample.mp4; do
		expect_contains "$O/ls2.html" "$name" "video/ listing"
	done
	c -o "$O/sub.html" "$FILES/sub%20dir/page.html"
	expect_same_file "$O/sub.html" "$D/site/sub dir/page.html" "file in a directory with a space"
}

t_image() {
	c -D "$O/img.h" -o "$O/test.png" "$FILES/img/test.png"
	expect_eq "$(header "$O/img.h" content-type)" image/png "Content-Type"
	expect_same_file "$O/test.png" "$D/site/img/test.png" "image body"
	# and over HTTP/1.1 from the client too
	c --http1.1 -o "$O/test1.png" "$FILES/img/test.png"
	expect_same_file "$O/test1.png" "$D/site/img/test.png" "image body over HTTP/1.1"
}

t_video_types() {
	local ext want ct
	for ext in avi mkv mp4; do
		case $ext in
		avi) want='^video/(x-msvideo|avi|vnd\.avi|msvideo)$' ;;
		mkv) want='^video/(x-matroska|matroska)$' ;;
		mp4) want='^video/mp4$' ;;
		esac
		c -D "$O/v.h" -o "$O/v.$ext" "$FILES/video/sample.$ext"
		ct=$(header "$O/v.h" content-type)
		expect_match "$ct" "$want" "Content-Type of .$ext"
		expect_same_file "$O/v.$ext" "$D/site/video/sample.$ext" ".$ext body"
	done
}

t_if_modified_since() {
	local lm code
	c -I -D "$O/ims.h" -o /dev/null "$FILES/hello.txt"
	lm=$(header "$O/ims.h" last-modified)
	expect_eq "$lm" "Tue, 02 Jan 2024 03:04:05 GMT" "Last-Modified"
	code=$(c -o /dev/null -w '%{http_code} %{size_download}' -H "If-Modified-Since: $lm" "$FILES/hello.txt")
	expect_eq "$code" "304 0" "If-Modified-Since = Last-Modified (status, body bytes)"
	code=$(c -o "$O/ims.body" -w '%{http_code}' -H "If-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT" "$FILES/hello.txt")
	expect_eq "$code" 200 "If-Modified-Since before Last-Modified"
	expect_same_file "$O/ims.body" "$D/site/hello.txt" "200 body"
}

t_range() {
	local f=$D/site/data/blob-4M.bin code
	code=$(c -D "$O/r.h" -o "$O/r.bin" -w '%{http_code}' -r 1000-1999 "$FILES/data/blob-4M.bin")
	expect_eq "$code" 206 "Range 1000-1999 status"
	expect_eq "$(header "$O/r.h" content-range)" "bytes 1000-1999/4194304" "Content-Range"
	slice "$f" 1000 1000 >"$O/r.want"
	expect_same_file "$O/r.bin" "$O/r.want" "bytes 1000-1999"
	# suffix range, and a range crossing a SPDY frame and window boundary
	code=$(c -o "$O/r2.bin" -w '%{http_code}' -r -512 "$FILES/data/blob-4M.bin")
	expect_eq "$code" 206 "suffix Range status"
	slice "$f" $((4194304 - 512)) 512 >"$O/r2.want"
	expect_same_file "$O/r2.bin" "$O/r2.want" "last 512 bytes"
	code=$(c --http1.1 -o "$O/r3.bin" -w '%{http_code}' -r 65000-3000000 "$FILES/data/blob-4M.bin")
	expect_eq "$code" 206 "large Range status"
	slice "$f" 65000 2935001 >"$O/r3.want"
	expect_same_file "$O/r3.bin" "$O/r3.want" "bytes 65000-3000000"
	code=$(c -o /dev/null -w '%{http_code}' -r 99999999- "$FILES/data/blob-4M.bin")
	expect_eq "$code" 416 "unsatisfiable Range"
}

t_post_exact() {
	local want got
	want=$("$UPSTREAM" sum <"$D/post-10M.bin")
	got=$(c --data-binary "@$D/post-10M.bin" -H 'Content-Type: application/octet-stream' "$UP/upload")
	expect_eq "$got" "$want" "10 MiB POST (Content-Length, HTTP/2) as received upstream"
	got=$(c --http1.1 --data-binary "@$D/post-10M.bin" "$UP/upload")
	expect_eq "$got" "$want" "10 MiB POST over HTTP/1.1"
	got=$(c -T - "$UP/upload" <"$D/post-10M.bin")
	expect_eq "$got" "$want" "10 MiB chunked PUT (no Content-Length)"
	# Small binary body with NULs, CR/LF: echoed back byte for byte.
	head -c 100000 "$D/site/data/blob-4M.bin" >"$O/echo.in"
	printf '\0\r\n\r\n\0' >>"$O/echo.in"
	c -D "$O/echo.h" -o "$O/echo.out" --data-binary "@$O/echo.in" -H 'Content-Type: application/x-test' "$UP/echo"
	expect_same_file "$O/echo.out" "$O/echo.in" "echoed body"
	expect_eq "$(header "$O/echo.h" x-echo-method)" POST "method seen upstream"
	expect_eq "$(header "$O/echo.h" x-echo-content-type)" application/x-test "Content-Type seen upstream"
	expect_eq "$(header "$O/echo.h" x-echo-content-length)" 100006 "Content-Length seen upstream"
	# An empty POST is still a POST with an empty body.
	c -D "$O/echo0.h" -o "$O/echo0.out" -X POST "$UP/echo"
	expect_eq "$(stat -c %s "$O/echo0.out")" 0 "empty POST echo"
	expect_eq "$(header "$O/echo0.h" x-echo-method)" POST "empty POST method"
}

t_head() {
	local code size
	code=$(c -I -D "$O/head.h" -o /dev/null -w '%{http_code} %{size_download}' "$FILES/video/sample.mp4")
	expect_eq "$code" "200 0" "HEAD status and body bytes"
	expect_eq "$(header "$O/head.h" content-length)" 4194304 "HEAD Content-Length"
	expect_eq "$(header "$O/head.h" content-type)" video/mp4 "HEAD Content-Type"
	# HEAD through --to as well
	code=$(c -I -D "$O/head2.h" -o /dev/null -w '%{http_code}' "$UP/bytes?n=1M")
	expect_eq "$code" 200 "HEAD via --to status"
	expect_eq "$(header "$O/head2.h" content-length)" 1048576 "HEAD via --to Content-Length"
	# the connection is still good afterwards (HEAD left no stray body)
	size=$(c -o /dev/null -w '%{size_download}' "$FILES/video/sample.mp4")
	expect_eq "$size" 4194304 "GET after HEAD"
}

t_forwarded_headers() {
	c -o "$O/hdr.txt" -H 'X-Test: 42' "$UP/headers?q=1"
	expect_contains "$O/hdr.txt" "Method: GET" "method"
	expect_contains "$O/hdr.txt" "URI: /headers?q=1" "request URI"
	expect_contains "$O/hdr.txt" "X-Test: 42" "a client header"
	expect_contains "$O/hdr.txt" "X-Forwarded-Proto: https" "X-Forwarded-Proto"
	expect_contains "$O/hdr.txt" "X-Forwarded-For: 127.0.0.1" "X-Forwarded-For"
	expect_contains "$O/hdr.txt" "Host: localhost:$UP_PORT" "Host"
}

t_slow_client_others_proceed() {
	local slow i code
	# 24 MiB at 4 MiB/s: ~6 s, far more than the stream window, so the agent
	# must hold this stream back without stalling the others.
	curl -sS --cacert "$CA" --max-time 120 --limit-rate 4M -o "$O/slow.bin" "$FILES/data/slow-24M.bin" &
	slow=$!
	sleep 0.5
	for i in $(seq 1 10); do
		code=$(status "$FILES/hello.txt")
		expect_eq "$code" 200 "small request $i during the slow download"
	done
	c -o "$O/fast16.bin" "$FILES/data/blob-16M.bin"
	expect_same_file "$O/fast16.bin" "$D/site/data/blob-16M.bin" "16 MiB download during the slow one"
	c --data-binary "@$D/post-10M.bin" "$UP/upload" >/dev/null
	kill -0 "$slow" 2>/dev/null || fail "the slow download had already finished: the other requests did not run alongside it"
	wait "$slow" || fail "slow download failed"
	expect_same_file "$O/slow.bin" "$D/site/data/slow-24M.bin" "slow download body"
}

t_200_concurrent_downloads() {
	local i pids=() bad=0
	mkdir -p "$O/conc"
	for i in $(seq 0 199); do
		local proto=--http2
		((i % 2)) && proto=--http1.1
		curl -sS -f --cacert "$CA" --max-time 120 $proto -o "$O/conc/$i" "$FILES/many/f$((i % 20)).bin" &
		pids+=($!)
	done
	for i in "${!pids[@]}"; do
		wait "${pids[$i]}" || {
			echo "download $i failed" >&2
			bad=$((bad + 1))
		}
	done
	[ $bad -eq 0 ] || fail "$bad of 200 downloads failed"
	for i in $(seq 0 199); do
		cmp -s "$O/conc/$i" "$D/site/many/f$((i % 20)).bin" || {
			echo "download $i differs" >&2
			bad=$((bad + 1))
		}
	done
	[ $bad -eq 0 ] || fail "$bad of 200 downloads had wrong bytes"
	echo "200 downloads, all bytes checked"
}

big_file() {
	if [ ! -s "$D/site/data/big.bin" ]; then
		"$UPSTREAM" gen -n "$BIG" -seed big -o "$D/site/data/big.bin"
	fi
	"$UPSTREAM" sum <"$D/site/data/big.bin"
}

t_big_download() {
	local want got
	want=$(big_file)
	got=$(CURL_MAX_TIME=600 c "$FILES/data/big.bin" | "$UPSTREAM" sum)
	expect_eq "$got" "$want" "$BIG download"
}

t_big_upload() {
	local want got
	want=$(big_file)
	got=$(CURL_MAX_TIME=600 c -T "$D/site/data/big.bin" "$UP/upload")
	expect_eq "$got" "$want" "$BIG upload (PUT with Content-Length)"
}


# ---- isolation: one client or one response never costs the others ----------

# sessions_of POOL: the pool's session ids, one line (to compare before/after).
sessions_of() { pool_sessions "$1" | tr '\n' ' '; }

t_many_request_headers() {
	local dl before code i
	printf 'x%d: v\n' {0..999} >"$O/1000h"
	before=$(sessions_of files)
	curl -sS --cacert "$CA" --max-time 120 --limit-rate 8M -o "$O/mh.bin" "$FILES/data/slow-24M.bin" &
	dl=$!
	sleep 0.5
	code=$(c --http1.1 -o "$O/mh.body" -w '%{http_code}' -H "@$O/1000h" "$FILES/hello.txt")
	expect_eq "$code" 431 "request with 1000 headers (over the tunnel's header limit)"
	for i in 1 2 3; do
		expect_eq "$(status "$FILES/hello.txt")" 200 "ordinary request $i afterwards"
	done
	wait "$dl" || fail "the download beside it failed"
	expect_same_file "$O/mh.bin" "$D/site/data/slow-24M.bin" "download beside the 1000-header request"
	expect_eq "$(sessions_of files)" "$before" "agent sessions (none may be lost)"
}

t_many_response_headers() {
	local dl before code
	before=$(sessions_of up)
	curl -sS --cacert "$CA" --max-time 120 --limit-rate 8M -o "$O/mrh.bin" "$UP/bytes?n=16M&seed=mrh" &
	dl=$!
	sleep 0.5
	code=$(status "$UP/manyheaders?n=2000")
	expect_eq "$code" 502 "upstream answer with 2000 headers"
	expect_eq "$(status "$UP/manyheaders?n=10")" 200 "upstream answer with 10 headers"
	wait "$dl" || fail "the download beside it failed"
	expect_eq "$("$UPSTREAM" sum <"$O/mrh.bin")" "$("$UPSTREAM" gen -n 16M -seed mrh -o - | "$UPSTREAM" sum)" "download beside it"
	expect_eq "$(sessions_of up)" "$before" "agent sessions (none may be lost)"
	grep -q 'response headers over the limit' "$WORK/logs/agent-up.log" || fail "the agent did not log why it refused the answer"
}

t_stalled_readers_and_uploads() {
	local i pids=() t0 took
	# 8 clients that (almost) stop reading 24 MiB downloads, 8 uploads to an
	# endpoint that never reads: each holds its own stream's window, and
	# nothing else.
	for i in $(seq 1 8); do
		curl -sS --cacert "$CA" --max-time 30 --limit-rate 1K -o /dev/null "$FILES/data/slow-24M.bin" 2>/dev/null &
		pids+=($!)
		curl -sS --cacert "$CA" --max-time 30 --data-binary "@$D/post-10M.bin" -o /dev/null "$UP/stall" 2>/dev/null &
		pids+=($!)
	done
	# A failed check exits this test's subshell: the stalled clients go too,
	# instead of holding their streams for up to 30 s into the next tests.
	# shellcheck disable=SC2064 # the pids as they are now
	trap "kill ${pids[*]} 2>/dev/null || true" EXIT
	sleep 2
	t0=$(now_ms)
	c -o "$O/st.bin" "$FILES/data/blob-4M.bin"
	took=$(($(now_ms) - t0))
	expect_same_file "$O/st.bin" "$D/site/data/blob-4M.bin" "download beside 8 stalled readers"
	((took < 2000)) || fail "a 4 MiB download beside 8 stalled readers took ${took} ms (want < 2 s)"
	echo "4 MiB download beside 8 stalled readers and 8 stalled uploads: ${took} ms"
	t0=$(now_ms)
	expect_eq "$(c --data-binary "@$D/post-10M.bin" "$UP/upload")" "$("$UPSTREAM" sum <"$D/post-10M.bin")" "upload beside 8 stalled uploads"
	took=$(($(now_ms) - t0))
	((took < 2000)) || fail "a 10 MiB upload beside 8 stalled uploads took ${took} ms (want < 2 s)"
	echo "10 MiB upload beside them: ${took} ms"
	trap - EXIT
	kill "${pids[@]}" 2>/dev/null || true
	wait "${pids[@]}" 2>/dev/null || true
}

t_lockout_spares_the_right_token() {
	local i code n0
	# Wrong tokens from 127.0.0.1 until it is locked out (429) ...
	for i in $(seq 1 12); do
		code=$(c --http1.1 -X PUT -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer wrong' "$EMPTY/.well-known/spdy-origin")
	done
	expect_eq "$code" 429 "wrong token after 12 attempts"
	# ... and a real agent with the right token from the same address still registers.
	n0=$(pool_count empty)
	start_bg agent-lockout "$AGENT" --proxy "$EMPTY/.well-known/spdy-origin" --root "$D/site" --ca-file "$CA" --name itest-lockout --connections 1
	wait_until 10 "the right token to register despite the lockout" bash -c "[ \"\$(curl -sS http://127.0.0.1:$ADMIN_PORT/spdy_origin/pools | jq '[.[] | select(.pool==\"empty\") | .sessions[]] | length')\" = $((n0 + 1)) ]"
	expect_eq "$(status "$EMPTY/hello.txt")" 200 "served by the agent that registered"
	stop_bg agent-lockout
	wait_until 10 "pool empty to be empty again" bash -c "[ \"\$(curl -sS --cacert '$CA' -o /dev/null -w '%{http_code}' '$EMPTY/hello.txt')\" = 503 ]"
}

t_agent_killed_and_restarted() {
	local t0 took
	[ "$(status "$FILES/hello.txt")" = 200 ] || fail "not served before the kill"
	stop_bg agent-files KILL
	wait_until 10 "Caddy to notice the dead agent (503)" \
		bash -c "[ \"\$(curl -sS --cacert '$CA' -o /dev/null -w '%{http_code}' '$FILES/hello.txt')\" = 503 ]"
	t0=$(now_ms)
	start_files_agent
	took=$(ms_until_200 "$t0" 2000 "hello.txt, from the agent's restart," status "$FILES/hello.txt" --max-time 2)
	echo "served again ${took} ms after the agent restarted"
	c -o "$O/after.bin" "$FILES/data/blob-4M.bin"
	expect_same_file "$O/after.bin" "$D/site/data/blob-4M.bin" "download after the restart"
}

t_reload_during_download() {
	local dl before after
	wait_until 10 "both files sessions back" bash -c "[ \"\$(curl -sS http://127.0.0.1:$ADMIN_PORT/spdy_origin/pools | jq '[.[] | select(.pool==\"files\") | .sessions[]] | length')\" = 2 ]"
	before=$(pool_sessions files | tr '\n' ' ')
	[ -n "$before" ] || fail "no sessions listed for pool files by the admin API"
	curl -sS --cacert "$CA" --max-time 120 --limit-rate 8M -o "$O/reload.bin" "$FILES/data/slow-24M.bin" &
	dl=$!
	sleep 0.7
	kill -0 "$dl" 2>/dev/null || fail "download finished before the reload could happen"
	write_caddyfile 2
	"$CADDY" reload --config "$WORK/Caddyfile" --adapter caddyfile --address "127.0.0.1:$ADMIN_PORT"
	kill -0 "$dl" 2>/dev/null || fail "download finished before the reload completed; nothing was tested"
	wait "$dl" || fail "the download failed across the reload"
	expect_same_file "$O/reload.bin" "$D/site/data/slow-24M.bin" "download across the reload"
	c -D "$O/gen.h" -o /dev/null "$FILES/hello.txt"
	expect_eq "$(header "$O/gen.h" x-config-generation)" 2 "new config active"
	after=$(pool_sessions files | tr '\n' ' ')
	expect_eq "$after" "$before" "agent sessions across the reload (they must survive it)"
}

t_bad_token() {
	local code
	code=$(c --http1.1 -X PUT -D "$O/bad.h" -o "$O/bad.body" -w '%{http_code}' \
		-H 'Authorization: Bearer not-the-token' "$FILES/.well-known/spdy-origin")
	expect_eq "$code" 401 "PUT with a wrong token"
	[ -n "$(header "$O/bad.h" www-authenticate)" ] || fail "401 without WWW-Authenticate"
	code=$(c --http1.1 -X PUT -o /dev/null -w '%{http_code}' "$FILES/.well-known/spdy-origin")
	expect_eq "$code" 401 "PUT without a token"
	# A real agent with a wrong token is refused and joins no pool.
	local n0
	n0=$(pool_count empty)
	start_bg agent-badtoken "$AGENT" --proxy "$EMPTY/.well-known/spdy-origin" --token wrong-token \
		--root "$D/site" --ca-file "$CA" --name itest-bad
	wait_until 10 "the agent to report the rejected token" grep -qiE 'token rejected|401' "$WORK/logs/agent-badtoken.log"
	expect_eq "$(pool_count empty)" "$n0" "sessions in pool empty after a bad-token agent"
	expect_eq "$(status "$EMPTY/hello.txt")" 503 "still no agent behind pool empty"
	stop_bg agent-badtoken
}

t_no_agent_503() {
	local code
	code=$(c -D "$O/503.h" -o "$O/503.body" -w '%{http_code}' "$EMPTY/")
	expect_eq "$code" 503 "no agent"
	[ -n "$(header "$O/503.h" retry-after)" ] || fail "503 without Retry-After"
}

# shellcheck source=integration-tests/ha.sh
. integration-tests/ha.sh
# shellcheck source=integration-tests/hosts.sh
. integration-tests/hosts.sh

t_demo_script() {
	# README's first command, non-interactively: start, fetch with --cacert, stop.
	DEMO_PORT_BASE=$DEMO_PORT_BASE DEMO_DIR=$WORK/demo bash "$REPO/scripts/demo.sh" --check
}

run_test dir_listing t_dir_listing
run_test image t_image
run_test video_content_types t_video_types
run_test if_modified_since_304 t_if_modified_since
run_test range_206 t_range
run_test post_body_exact t_post_exact
run_test head t_head
run_test forwarded_headers t_forwarded_headers
run_test slow_client_others_proceed t_slow_client_others_proceed
run_test concurrent_200_downloads t_200_concurrent_downloads
run_test many_request_headers_431 t_many_request_headers
run_test many_response_headers_502 t_many_response_headers
run_test stalled_readers_and_uploads t_stalled_readers_and_uploads
run_test big_download_"$BIG" t_big_download
run_test big_upload_"$BIG" t_big_upload
run_test agent_killed_and_restarted t_agent_killed_and_restarted
run_test reload_during_download t_reload_during_download
run_test bad_token_401 t_bad_token
run_test lockout_spares_the_right_token t_lockout_spares_the_right_token
run_test no_agent_503 t_no_agent_503
run_test demo_script t_demo_script
run_test ha_two_caddies_one_agent t_ha_two_caddies_one_agent
run_test agent_upgrade_zero_downtime t_agent_upgrade_zero_downtime
run_test hosts_many_services t_hosts_many_services
run_test hosts_config_file_on_demand t_hosts_config_file_on_demand
run_test hosts_token_limited_403 t_hosts_token_limited_403

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
