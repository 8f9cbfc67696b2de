# shellcheck shell=bash
# High availability and upgrades (README: "High availability and upgrades"):
# two Caddy instances sharing one certificate storage, one agent connected to
# both. Sourced by run.sh; the tests start what they need on first use.
#
# Ports: HA_BASE = ITEST_PORT_BASE + 100; +1/+2 admin, +3/+4 HTTPS, +5/+6 HTTP,
# +7/+8 the agents' --metrics-addr.

HA_BASE=$((BASE + 100))
HA_STORAGE=$WORK/ha-storage
HA_CA=$HA_STORAGE/pki/authorities/local/root.crt
HA_METRICS=$((HA_BASE + 7))
HA_METRICS2=$((HA_BASE + 8))

ha_admin() { echo $((HA_BASE + $1)); }     # 1 or 2
ha_https() { echo $((HA_BASE + 2 + $1)); } # 3 or 4
ha_url() { echo "https://localhost:$(ha_https "$1")"; }

# hc ARGS... : curl trusting the HA pair's CA.
hc() { curl -sS --cacert "$HA_CA" --max-time "${CURL_MAX_TIME:-10}" "$@"; }
ha_status() { hc -o /dev/null -w '%{http_code}' "$@" || true; }

# ha_sessions N : sessions in pool "ha" of Caddy N, from its admin API.
ha_sessions() {
	curl -sS --max-time 5 "http://127.0.0.1:$(ha_admin "$1")/spdy_origin/pools" |
		jq '[.[] | select(.pool == "ha") | .sessions[]] | length'
}

ha_write_caddyfile() { # N
	local n=$1
	cat >"$WORK/Caddyfile.ha$n" <<CADDYFILE
{
	admin 127.0.0.1:$(ha_admin "$n")
	http_port $((HA_BASE + 4 + n))
	https_port $(ha_https "$n")
	local_certs
	skip_install_trust
	persist_config off
	# One certificate storage for both instances, as several Caddy servers
	# behind one name share theirs (a storage module; here the file system).
	storage file_system {
		root $HA_STORAGE
	}
}

https://localhost:$(ha_https "$n") {
	tls internal
	spdy_origin {
		pool ha
		token {env.SPDY_ORIGIN_TOKEN}
	}
}
CADDYFILE
}

ha_start_caddy() { # N
	ha_write_caddyfile "$1"
	start_bg "caddy-ha$1" "$CADDY" run --config "$WORK/Caddyfile.ha$1" --adapter caddyfile
	wait_until 30 "Caddy ha$1's local root certificate" test -s "$HA_CA"
	wait_until 30 "Caddy ha$1 serving TLS" bash -c "[ \"\$(curl -sS --cacert '$HA_CA' -o /dev/null -w '%{http_code}' '$(ha_url "$1")/')\" != 000 ]"
}

# ha_start_agent NAME METRICS_PORT : an agent registered with both instances.
ha_start_agent() {
	start_bg "$1" "$AGENT" --proxy "$(ha_url 1)" --proxy "$(ha_url 2)" --to "http://$UPSTREAM_ADDR" \
		--ca-file "$HA_CA" --name "itest-$1" --connections 1 --drain-timeout 5s --metrics-addr "127.0.0.1:$2"
}

# ha_up: both instances and agent-ha, unless they are running already.
ha_up() {
	alive caddy-ha1 || ha_start_caddy 1
	alive caddy-ha2 || ha_start_caddy 2
	if ! alive agent-ha; then
		ha_start_agent agent-ha "$HA_METRICS"
	fi
	wait_until 15 "a session to each instance" ha_one_each
}

ha_one_each() { [ "$(ha_sessions 1)" = 1 ] && [ "$(ha_sessions 2)" = 1 ]; }

# client_loop URL SECONDS OUT : GET URL back to back for SECONDS; writes
# "OK FAILED" to OUT and each failure's time and status to OUT.failures.
client_loop() {
	local url=$1 secs=$2 out=$3 ok=0 bad=0 code end
	end=$(($(now_ms) + secs * 1000))
	: >"$out.failures"
	while (($(now_ms) < end)); do
		code=$(ha_status --max-time 5 "$url")
		if [ "$code" = 200 ]; then
			ok=$((ok + 1))
		else
			bad=$((bad + 1))
			echo "$(now_ms) $code" >>"$out.failures"
		fi
	done
	echo "$ok $bad" >"$out"
}

# ready PORT : the agent with --metrics-addr 127.0.0.1:PORT answers /readyz with 200.
ready() { [ "$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ]; }

# metric NAME LABELS PORT : a sample's value from an agent's /metrics.
metric() {
	curl -sS --max-time 5 "http://127.0.0.1:$3/metrics" | awk -v s="$1{$2}" 'index($0, s " ") == 1 { print $2 }'
}

t_ha_two_caddies_one_agent() {
	local loop t0 t1 took ok bad p1 p2 s1 s2
	ha_up
	# Both serve, with one certificate: the second instance found the
	# first one's in the shared storage.
	expect_eq "$(ha_status "$(ha_url 1)/headers")" 200 "GET via instance 1"
	expect_eq "$(ha_status "$(ha_url 2)/headers")" 200 "GET via instance 2"
	s1=$(echo | openssl s_client -connect "localhost:$(ha_https 1)" -servername localhost 2>/dev/null | openssl x509 -noout -fingerprint -sha256)
	s2=$(echo | openssl s_client -connect "localhost:$(ha_https 2)" -servername localhost 2>/dev/null | openssl x509 -noout -fingerprint -sha256)
	[ -n "$s1" ] || fail "no certificate from instance 1"
	expect_eq "$s2" "$s1" "certificate of instance 2 (shared storage)"
	echo "both instances serve, with one certificate ($s1)"

	# Instance 1 dies while a client keeps asking instance 2.
	client_loop "$(ha_url 2)/headers" 3 "$O/ha-loop" &
	loop=$!
	sleep 0.5
	stop_bg caddy-ha1 KILL
	expect_eq "$(ha_status --max-time 2 "$(ha_url 1)/headers" 2>/dev/null)" 000 "instance 1 after the kill"
	# Restarted as a service manager would, after a moment. The 2 s count
	# from the moment it accepts connections again: how long Caddy takes to
	# start is not the agent's doing (the total is printed too).
	sleep 0.3
	t0=$(now_ms)
	ha_start_caddy 1
	t1=$(now_ms)
	took=$(ms_until_200 "$t1" 2000 "instance 1, from accepting connections again," ha_status --max-time 2 "$(ha_url 1)/headers")
	echo "instance 1 restarted: it took $((t1 - t0)) ms to accept connections, and the agent served through it $took ms later"
	wait "$loop"
	read -r ok bad <"$O/ha-loop"
	echo "client loop on instance 2 across the kill and restart: $ok requests, $bad failed"
	((bad == 0)) || fail "$bad requests to the surviving instance failed: $(head -5 "$O/ha-loop.failures")"
	((ok >= 10)) || fail "only $ok requests in 3 s"

	# The agent's metrics and health saw it.
	p1=$(ha_url 1) # the label is the --proxy URL as given
	p2=$(ha_url 2)
	expect_eq "$(metric spdy_origin_agent_sessions "proxy=\"$p1\",state=\"up\"" "$HA_METRICS")" 1 "sessions up to instance 1"
	expect_eq "$(metric spdy_origin_agent_sessions "proxy=\"$p2\",state=\"up\"" "$HA_METRICS")" 1 "sessions up to instance 2"
	expect_eq "$(metric spdy_origin_agent_reconnects_total "cause=\"connection_lost\",proxy=\"$p1\"" "$HA_METRICS")" 1 "reconnects to instance 1 after its kill"
	expect_match "$(metric spdy_origin_agent_requests_total 'code="200"' "$HA_METRICS")" '^[0-9]+$' "requests_total{code=200}"
	expect_eq "$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HA_METRICS/healthz")" 200 "agent /healthz"
	expect_eq "$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HA_METRICS/readyz")" 200 "agent /readyz"
	echo "--- curl 127.0.0.1:$HA_METRICS/metrics (spdy_origin_agent_*)"
	curl -sS "http://127.0.0.1:$HA_METRICS/metrics" | grep -E '^(# (HELP|TYPE) )?spdy_origin_agent_'
}

# A new agent takes over from the old one: start it, wait for its /readyz,
# SIGTERM the old one (it sends GOAWAY and drains); clients see no failure.
t_agent_upgrade_zero_downtime() {
	local loop1 loop2 ok bad ok2 bad2
	ha_up
	ha_start_agent agent-ha-new "$HA_METRICS2"
	wait_until 10 "the new agent's /readyz" ready "$HA_METRICS2"
	expect_eq "$(ha_sessions 1)" 2 "sessions on instance 1 with both agents"
	client_loop "$(ha_url 1)/headers" 3 "$O/up-loop1" &
	loop1=$!
	client_loop "$(ha_url 2)/headers" 3 "$O/up-loop2" &
	loop2=$!
	sleep 0.7
	stop_bg agent-ha TERM
	echo "old agent stopped (SIGTERM, drained) while two client loops ran"
	wait "$loop1" "$loop2"
	read -r ok bad <"$O/up-loop1"
	read -r ok2 bad2 <"$O/up-loop2"
	echo "client loops across the upgrade: instance 1 $ok requests, $bad failed; instance 2 $ok2 requests, $bad2 failed"
	((bad == 0 && bad2 == 0)) || fail "requests failed during the upgrade: $(cat "$O"/up-loop*.failures | head -5)"
	((ok >= 10 && ok2 >= 10)) || fail "too few requests: $ok, $ok2"
	wait_until 5 "one session per instance after the old agent left" ha_one_each
	grep -q 'session drained' "$WORK/logs/agent-ha.log" || fail "the old agent did not drain its sessions"
	# The new agent is the agent now.
	stop_bg agent-ha-new
	stop_bg caddy-ha1
	stop_bg caddy-ha2
}
