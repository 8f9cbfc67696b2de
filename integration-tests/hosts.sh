# shellcheck shell=bash
# One agent, many services and hostnames (README: "Many services"): a Caddy
# of its own whose catch-all site gets certificates on demand for what agents
# announce (tls.permission.spdy_origin), agents routing by Host, and curl
# reaching each name with --resolve and Caddy's local CA. Sourced by run.sh;
# the tests start what they need on first use.
#
# Ports: HOSTS_BASE = ITEST_PORT_BASE + 110; +1 admin, +2 HTTPS, +3 HTTP.

HOSTS_BASE=$((BASE + 110))
HOSTS_ADMIN=$((HOSTS_BASE + 1))
HOSTS_HTTPS=$((HOSTS_BASE + 2))
HOSTS_STORAGE=$WORK/hosts-storage
HOSTS_CA=$HOSTS_STORAGE/pki/authorities/local/root.crt
# A second token, limited to b.test.
HOSTS_B_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export HOSTS_B_TOKEN

# hcurl NAME ARGS... : curl https://NAME:port/... resolved to our Caddy,
# trusting its CA; URLs are given as paths.
hcurl() {
	local name=$1 path=$2
	shift 2
	curl -sS --cacert "$HOSTS_CA" --max-time "${CURL_MAX_TIME:-10}" \
		--resolve "$name:$HOSTS_HTTPS:127.0.0.1" "$@" "https://$name:$HOSTS_HTTPS$path"
}
hstatus() { hcurl "$@" -o /dev/null -w '%{http_code}' || true; }

# hosts_session_hosts NAME : what the agent NAME announced, from the admin API.
hosts_session_hosts() {
	curl -sS --max-time 5 "http://127.0.0.1:$HOSTS_ADMIN/spdy_origin/pools" |
		jq -r --arg n "$1" '[.[] | select(.pool == "home") | .sessions[] | select(.agent.name == $n) | .hosts | join(",")] | first // ""'
}
hosts_count() {
	curl -sS --max-time 5 "http://127.0.0.1:$HOSTS_ADMIN/spdy_origin/pools" |
		jq '[.[] | select(.pool == "home") | .sessions[]] | length'
}

hosts_start_caddy() {
	alive caddy-hosts && return 0
	# The shape of README's "Many services" Caddyfile, on local ports with
	# Caddy's own CA: agents register on localhost (a certificate of its
	# own), every other name goes to the catch-all site.
	cat >"$WORK/Caddyfile.hosts" <<CADDYFILE
{
	admin 127.0.0.1:$HOSTS_ADMIN
	http_port $((HOSTS_BASE + 3))
	https_port $HOSTS_HTTPS
	local_certs
	skip_install_trust
	persist_config off
	storage file_system {
		root $HOSTS_STORAGE
	}
	on_demand_tls {
		permission spdy_origin home
	}
}

(agent_tokens) {
	token {env.SPDY_ORIGIN_TOKEN}
	token {env.HOSTS_B_TOKEN} hosts b.test
}

https://localhost:$HOSTS_HTTPS {
	spdy_origin {
		pool home
		import agent_tokens
	}
}

https://:$HOSTS_HTTPS {
	tls {
		on_demand
	}
	spdy_origin {
		pool home
		import agent_tokens
	}
}
CADDYFILE
	start_bg caddy-hosts "$CADDY" run --config "$WORK/Caddyfile.hosts" --adapter caddyfile
	wait_until 30 "Caddy hosts' local root certificate" test -s "$HOSTS_CA"
	wait_until 30 "Caddy hosts serving TLS" bash -c "[ \"\$(curl -sS --cacert '$HOSTS_CA' -o /dev/null -w '%{http_code}' 'https://localhost:$HOSTS_HTTPS/')\" != 000 ]"
}

# The first agent: a.test to the upstream helper, b.test to the test site,
# from flags.
hosts_start_agent() {
	alive agent-hosts && return 0
	start_bg agent-hosts "$AGENT" --proxy "https://localhost:$HOSTS_HTTPS" --ca-file "$HOSTS_CA" \
		--to "a.test=http://$UPSTREAM_ADDR" --root "b.test=$D/site" --name itest-hosts --connections 2
	wait_until 15 "the hosts agent's two sessions" bash -c "[ \"\$(curl -sS http://127.0.0.1:$HOSTS_ADMIN/spdy_origin/pools | jq '[.[] | select(.pool==\"home\") | .sessions[] | select(.agent.name==\"itest-hosts\")] | length')\" = 2 ]"
}

t_hosts_many_services() {
	hosts_start_caddy
	hosts_start_agent
	expect_eq "$(hosts_session_hosts itest-hosts)" "a.test,b.test" "hosts the agent announced (admin API)"
	hcurl a.test /headers -o "$O/hosts-a.txt"
	expect_contains "$O/hosts-a.txt" "Host: a.test:$HOSTS_HTTPS" "a.test reaches the upstream with its Host"
	hcurl b.test /hello.txt -o "$O/hosts-b.txt"
	expect_same_file "$O/hosts-b.txt" "$D/site/hello.txt" "b.test serves the directory"
	# Each name got a certificate of its own, from Caddy's CA.
	hcurl a.test /headers -o /dev/null -w '%{ssl_verify_result}\n' >"$O/hosts-verify"
	expect_eq "$(cat "$O/hosts-verify")" 0 "a.test certificate verified with --cacert"
	# Nobody announces c.test: no certificate (curl exit 35, a TLS alert)...
	local rc=0
	hcurl c.test / -o /dev/null 2>"$O/hosts-c.err" || rc=$?
	[ "$rc" -ne 0 ] || fail "a TLS handshake for c.test succeeded"
	echo "c.test: curl exit $rc: $(cat "$O/hosts-c.err")"
	# ...and a request for it on a.test's connection gets a 503 naming it.
	local code
	code=$(hcurl a.test / -H 'Host: c.test' -D "$O/hosts-c.h" -o "$O/hosts-c.body" -w '%{http_code}')
	expect_eq "$code" 503 "Host c.test on a.test's connection"
	expect_contains "$O/hosts-c.body" 'no agent serves "c.test"' "503 body"
	[ -n "$(header "$O/hosts-c.h" retry-after)" ] || fail "503 without Retry-After"
}

t_hosts_config_file_on_demand() {
	hosts_start_caddy
	# An agent with its routes in a file: a hostname it adds is online over
	# HTTPS at once, with no change on the public server.
	cat >"$WORK/agent-hosts.toml" <<TOML
proxy = ["https://localhost:$HOSTS_HTTPS"]
ca-file = "$HOSTS_CA"
name = "itest-hosts-file"
to = ["*.w.test=http://$UPSTREAM_ADDR"]
TOML
	local t0 took
	t0=$(now_ms)
	start_bg agent-hosts-file "$AGENT" --config "$WORK/agent-hosts.toml"
	took=$(ms_until_200 "$t0" 5000 "x.w.test, from the agent's start," hstatus x.w.test /headers --max-time 2)
	echo "x.w.test: agent started → first HTTPS 200 with a fresh certificate in ${took} ms"
	expect_eq "$(hosts_session_hosts itest-hosts-file)" "*.w.test" "hosts the file's agent announced"
	# The agent leaves: no new certificate for a name under it.
	stop_bg agent-hosts-file
	wait_until 10 "the file agent's session to leave" bash -c "! curl -sS http://127.0.0.1:$HOSTS_ADMIN/spdy_origin/pools | grep -q itest-hosts-file"
	local rc=0
	hcurl y.w.test / -o /dev/null 2>/dev/null || rc=$?
	[ "$rc" -ne 0 ] || fail "a new certificate for y.w.test after its agent left"
}

t_hosts_token_limited_403() {
	hosts_start_caddy
	hosts_start_agent
	local n0
	n0=$(hosts_count)
	# A token limited to b.test cannot take over a.test.
	SPDY_ORIGIN_TOKEN=$HOSTS_B_TOKEN start_bg agent-hosts-intruder "$AGENT" --proxy "https://localhost:$HOSTS_HTTPS" \
		--ca-file "$HOSTS_CA" --to "a.test=http://127.0.0.1:9" --name itest-intruder
	wait_until 10 "the intruder's refusal" grep -q 'may not serve a.test' "$WORK/logs/agent-hosts-intruder.log"
	grep -q '403' "$WORK/logs/agent-hosts-intruder.log" || fail "the refusal is not a 403"
	stop_bg agent-hosts-intruder
	expect_eq "$(hosts_count)" "$n0" "sessions in pool home after the refused agent"
	hcurl a.test /headers -o "$O/hosts-a2.txt"
	expect_contains "$O/hosts-a2.txt" "Host: a.test" "a.test still reaches its own upstream"
}
