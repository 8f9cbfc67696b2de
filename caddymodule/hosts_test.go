package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
)

// Tokens of the host tests: one for any host, and two limited to some.
const (
	anyHostToken = testToken
	bToken       = "b-token-7f3e-91c2-44aa" // hosts b.test
	wToken       = "w-token-1d5c-0b8e-77ee" // hosts *.w.test
)

// loadHostsPool loads pool on a route for every host, with the three
// tokens, and extra handler fields.
func loadHostsPool(t *testing.T, pool string, extra map[string]any) *http.Client {
	t.Helper()
	h := spdyRoute(pool, map[string]any{
		"tokens": []any{
			map[string]any{"value": bToken, "hosts": []string{"b.test"}},
			map[string]any{"value": wToken, "hosts": []string{"*.w.test"}},
		},
	})
	for k, v := range extra {
		h[k] = v
	}
	return loadRoutes(t, "", testRoute{anyHost: true, handlers: []map[string]any{h}}).Client
}

// getHost sends GET path to Caddy with Host host.
func getHost(t *testing.T, c *http.Client, host, path string) (*http.Response, string) {
	t.Helper()
	return get(t, c, path, "Host", host)
}

// servedBy asks for host and returns the agent that answered.
func servedBy(t *testing.T, c *http.Client, host string) string {
	t.Helper()
	resp, body := getHost(t, c, host, "/hello")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Host %s: %d %q", host, resp.StatusCode, body)
	}
	if seen := resp.Header.Get("X-Seen-Host"); seen != host {
		t.Errorf("Host %s reached the agent as %q", host, seen)
	}
	return resp.Header.Get("X-Agent")
}

// Within a pool, a request goes only to sessions whose agent announced its
// host; an agent that announces nothing serves every host. A host nobody
// serves gets 503 with Retry-After and a body naming it, not a random
// agent.
func TestRoutingByHost(t *testing.T) {
	pool := "hosts-routing"
	c := loadHostsPool(t, pool, map[string]any{"retry_after": "7s"})
	startHostsAgent(t, "host-A", anyHostToken, "a.test")
	startHostsAgent(t, "host-B", anyHostToken, "b.test,*.w.test")
	waitSessions(t, pool, 2)

	for host, want := range map[string]string{
		"a.test": "host-A", "A.Test": "host-A", "a.test:" + fmt.Sprint(testHTTPSPort): "host-A",
		"b.test": "host-B", "x.w.test": "host-B", "x.y.w.test": "host-B",
	} {
		for range 3 {
			if got := servedBy(t, c, host); got != want {
				t.Fatalf("Host %s served by %s, want %s", host, got, want)
			}
		}
	}
	for _, host := range []string{"c.test", "w.test", "localhost"} {
		resp, body := getHost(t, c, host, "/hello")
		want := fmt.Sprintf("spdy-origin: no agent serves %q here yet (pool %q); try again later\n", host, pool)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "7" || body != want {
			t.Errorf("Host %s: %d, Retry-After %q, body %q; want 503, 7, %q", host, resp.StatusCode, resp.Header.Get("Retry-After"), body, want)
		}
	}

	// An agent that announces nothing (an Amahi origin, an older agent)
	// serves every host, as before, as a catch-all: a host another agent
	// announced stays with that agent (TestMostSpecificClaimWins).
	startHostsAgent(t, "host-any", anyHostToken, "")
	waitSessions(t, pool, 3)
	if got := servedBy(t, c, "c.test"); got != "host-any" {
		t.Fatalf("c.test served by %s, want host-any", got)
	}
	seen := map[string]bool{}
	for range 8 {
		seen[servedBy(t, c, "a.test")] = true
	}
	if !seen["host-A"] || len(seen) != 1 {
		t.Fatalf("a.test served by %v; want host-A only", seen)
	}
}

// A token limited to hosts: an agent announcing a host outside them is
// refused with 403 naming it; one announcing "*" or nothing is accepted
// and gets only the token's hosts.
func TestTokenHosts(t *testing.T) {
	pool := freshPool("hosts-tokens")
	c := loadHostsPool(t, pool, nil)

	for _, tc := range []struct{ token, hosts, refused string }{
		{bToken, "a.test", "a.test"},
		{bToken, "b.test,a.test", "a.test"},
		{bToken, "*.test", "*.test"},
		{wToken, "w.test", "w.test"},
		{wToken, "x.w.test,*.x.w.test,*", ""},
	} {
		reg, err := register(t, testConnect, "Bearer "+tc.token, map[string]string{handshake.HeaderHosts: tc.hosts})
		if err != nil {
			t.Fatal(err)
		}
		if tc.refused == "" {
			if reg.status != http.StatusOK {
				t.Errorf("announcing %s: %d %q, want 200", tc.hosts, reg.status, reg.body)
			} else {
				reg.conn.Close()
			}
			continue
		}
		if reg.status != http.StatusForbidden || reg.header.Get(handshake.HeaderRefusedHost) != tc.refused ||
			!strings.Contains(reg.body, "this token may not serve "+tc.refused) {
			t.Errorf("announcing %s: %d, %s %q, body %q; want 403 naming %s",
				tc.hosts, reg.status, handshake.HeaderRefusedHost, reg.header.Get(handshake.HeaderRefusedHost), reg.body, tc.refused)
		}
	}

	// "*" and nothing both mean the token's hosts.
	startHostsAgent(t, "b-star", bToken, "*")
	startHostsAgent(t, "w-none", wToken, "")
	waitSessions(t, pool, 2)
	if got := servedBy(t, c, "b.test"); got != "b-star" {
		t.Errorf("b.test served by %s", got)
	}
	if got := servedBy(t, c, "x.w.test"); got != "w-none" {
		t.Errorf("x.w.test served by %s", got)
	}
	for _, host := range []string{"a.test", "w.test"} {
		if resp, body := getHost(t, c, host, "/hello"); resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("Host %s: %d %q, want 503: no token of its agents allows it", host, resp.StatusCode, body)
		}
	}

	// The admin API shows what each session announced and may serve.
	snap := allPoolsByName(t)[pool]
	got := map[string]string{}
	for _, s := range snap.Sessions {
		got[s.Agent.Name] = fmt.Sprintf("%v %v", s.Hosts, s.TokenHosts)
	}
	if got["b-star"] != "[*] [b.test]" || got["w-none"] != "[] [*.w.test]" {
		t.Errorf("admin hosts: %v", got)
	}
}

// The hosts an agent announces are bounded and checked: too many, or an
// invalid one, is a 400 that says why.
func TestAnnouncedHostsChecked(t *testing.T) {
	pool := "hosts-checked"
	loadHostsPool(t, pool, nil)
	many := make([]string, handshake.MaxHosts+1)
	for i := range many {
		many[i] = fmt.Sprintf("h%d.test", i)
	}
	for hosts, want := range map[string]string{
		strings.Join(many, ","): "more than 100 host patterns",
		"a.test:443":            "no port",
		"a.*.test":              "whole first label",
	} {
		reg, err := register(t, testConnect, "Bearer "+anyHostToken, map[string]string{handshake.HeaderHosts: hosts})
		if err != nil {
			t.Fatal(err)
		}
		if reg.status != http.StatusBadRequest || !strings.Contains(reg.body, want) {
			t.Errorf("announcing %.40s...: %d %q, want 400 with %q", hosts, reg.status, reg.body, want)
		}
	}
	waitSessions(t, pool, 0)
}

// A request the agent did not process is retried only on another session
// that serves its host: never on an agent that did not announce it.
func TestRetryOnlyOnSessionsForTheHost(t *testing.T) {
	pool := "hosts-retry"
	c := loadHostsPool(t, pool, nil)
	refused := refuseStreams(startHostileAgentHosts(t, "a-refuser", testConnect, "a.test"))
	b := startHostsAgent(t, "b-good", anyHostToken, "b.test")
	waitSessions(t, pool, 2)
	resp, body := getHost(t, c, "a.test", "/hello")
	if resp.StatusCode != http.StatusServiceUnavailable || refused.Load() != 1 || b.served.Load() != 0 {
		t.Fatalf("a.test refused by its only agent: %d %q, refused %d times, b.test's agent served %d; want 503, 1, 0",
			resp.StatusCode, body, refused.Load(), b.served.Load())
	}
	a2 := startHostsAgent(t, "a-good", anyHostToken, "a.test")
	waitSessions(t, pool, 3)
	for range 4 {
		if got := servedBy(t, c, "a.test"); got != "a-good" {
			t.Fatalf("a.test served by %s", got)
		}
	}
	if a2.served.Load() != 4 || b.served.Load() != 0 {
		t.Fatalf("a-good served %d of 4, b-good %d", a2.served.Load(), b.served.Load())
	}
	t.Logf("%d of 4 requests for a.test were refused by a-refuser first and retried on a-good", refused.Load()-1)
}

// caddy_spdy_origin_announced_hosts counts a pool's distinct patterns.
func TestAnnouncedHostsMetric(t *testing.T) {
	pool := "hosts-metric"
	loadHostsPool(t, pool, nil)
	startHostsAgent(t, "m1", anyHostToken, "a.test,b.test")
	startHostsAgent(t, "m2", anyHostToken, "b.test,*")
	startHostsAgent(t, "m3", anyHostToken, "")
	waitSessions(t, pool, 3)
	mr, err := http.Get(adminBase + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	if want := fmt.Sprintf("caddy_spdy_origin_announced_hosts{pool=%q} 3", pool); !bytes.Contains(mb, []byte(want)) {
		t.Errorf("metrics lack %s", want)
	}
}

// Token hosts in JSON: resolved, checked, and one secret cannot have two
// scopes.
func TestResolveTokens(t *testing.T) {
	for _, tc := range []struct {
		name   string
		h      Handler
		want   string // scopes as "n:hosts", or the error
		errors bool
	}{
		{name: "plain and limited", h: Handler{Token: []string{"plain-token-0123456789"},
			Tokens: []TokenConfig{{Value: "limited-token-0123456", Hosts: []string{"A.test", "*.b.test"}}}},
			want: "1:[] 2:[*.b.test a.test]"},
		{name: "same secret, hosts in another order", h: Handler{Tokens: []TokenConfig{
			{Value: "dup-token-0123456789ab", Hosts: []string{"a.test", "*.b.test"}},
			{Value: "dup-token-0123456789ab", Hosts: []string{"*.b.test", "A.test", "a.test"}}}},
			want: "1:[*.b.test a.test]"},
		{name: "hosts * is any host", h: Handler{Tokens: []TokenConfig{{Value: "star-token-0123456789", Hosts: []string{"*"}}}},
			want: "1:[]"},
		{name: "same secret, same hosts", h: Handler{Token: []string{"dup-token-0123456789ab", "dup-token-0123456789ab"}},
			want: "1:[]"},
		{name: "same secret, other hosts", errors: true,
			h:    Handler{Token: []string{"dup-token-0123456789ab"}, Tokens: []TokenConfig{{Value: "dup-token-0123456789ab", Hosts: []string{"a.test"}}}},
			want: "tokens 1 and 2 are the same secret with different hosts"},
		{name: "bad pattern", errors: true, h: Handler{Tokens: []TokenConfig{{Value: "x-token-0123456789abcd", Hosts: []string{"a.test:80"}}}},
			want: "token 1: host pattern"},
		{name: "empty value", errors: true, h: Handler{Tokens: []TokenConfig{{Value: " ", Hosts: []string{"a.test"}}}},
			want: "token 1"},
		{name: "none", errors: true, h: Handler{}, want: "at least one token"},
	} {
		tc.h.logger = zap.NewNop()
		scopes, err := tc.h.resolveTokens()
		if tc.errors {
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
			}
			continue
		}
		var got []string
		for _, s := range scopes {
			got = append(got, fmt.Sprintf("%d:%v", s.n, s.hostList()))
		}
		if err != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("%s: %v %v, want %s", tc.name, got, err, tc.want)
		}
	}
}

// A reload that only lists a token's hosts in another order (or twice)
// leaves the token as it was: its agents keep their sessions, rather than
// all getting GOAWAY and their hosts 503 until they register again.
func TestTokenHostsOrderIsNotARevocation(t *testing.T) {
	resolve := func(hosts ...string) []*tokenScope {
		t.Helper()
		h := Handler{logger: zap.NewNop(), Tokens: []TokenConfig{{Value: "order-token-0123456789", Hosts: hosts}}}
		scopes, err := h.resolveTokens()
		if err != nil {
			t.Fatal(err)
		}
		return scopes
	}
	before := resolve("a.test", "*.b.test")[0]
	p := newPool("token-hosts-order")
	p.users = []*poolUser{{tokens: resolve("*.b.test", "a.test", "A.test")}}
	if !p.currentLocked(before) {
		t.Errorf("token with hosts %v is revoked by a config listing %v", before.hosts, p.users[0].tokens[0].hosts)
	}
	p.users = []*poolUser{{tokens: resolve("*.b.test")}}
	if p.currentLocked(before) {
		t.Errorf("token with hosts %v is still current under a config giving it only *.b.test", before.hosts)
	}
}

// `token <secret> hosts <pattern...>` goes to tokens; a plain token stays
// in token, so existing configs adapt as before.
func TestCaddyfileTokenHosts(t *testing.T) {
	h, err := parseHandler("spdy_origin {\n token plain-secret\n token {env.B} hosts b.example.com *.w.example.com\n}")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(h)
	want := `"token":["plain-secret"],"tokens":[{"value":"{env.B}","hosts":["b.example.com","*.w.example.com"]}]`
	if !strings.Contains(string(raw), want) {
		t.Errorf("adapted to %s, want %s", raw, want)
	}
	for in, wantErr := range map[string]string{
		"spdy_origin {\n token s hosts\n}":           "give at least one host pattern",
		"spdy_origin {\n token s b.example.com\n}":   "unexpected \"b.example.com\"",
		"spdy_origin {\n token s hosts a.test:80\n}": "no port",
		"spdy_origin {\n token\n}":                   "wrong argument count",
	} {
		if _, err := parseHandler(in); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%q: %v, want an error with %q", in, err, wantErr)
		}
	}
}

func parseHandler(input string) (*Handler, error) {
	h := new(Handler)
	return h, h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
}

// A reload that takes a hostname away from a token (its hosts changed) or
// removes the token must apply to the agents connected with it too: they
// get GOAWAY (and register again under the new config, or are refused),
// and meanwhile get no requests and no certificates for the old hosts.
// Agents whose token is unchanged stay connected.
func TestReloadAppliesTokenHosts(t *testing.T) {
	pool := freshPool("hosts-reload-tokens")
	c := loadHostsPool(t, pool, nil)
	startHostsAgent(t, "b-agent", bToken, "*")
	startHostsAgent(t, "w-agent", wToken, "")
	startHostsAgent(t, "any-agent", anyHostToken, "a.test")
	waitSessions(t, pool, 3)
	p := &Permission{Pools: []string{pool}, logger: zap.NewNop()}
	checkAllowed(t, p, map[string]string{"b.test": "", "x.w.test": ""})
	if resp, body := getHost(t, c, "b.test", "/hello"); resp.StatusCode != http.StatusOK || resp.Header.Get("X-Agent") != "b-agent" {
		t.Fatalf("b.test before the reload: %d from %q %q, want 200 from b-agent", resp.StatusCode, resp.Header.Get("X-Agent"), body)
	}

	// b.test moves to the w token; the b token is revoked.
	h := spdyRoute(pool, map[string]any{
		"tokens": []any{map[string]any{"value": wToken, "hosts": []string{"*.w.test", "b.test"}}},
	})
	c = loadRoutes(t, "", testRoute{anyHost: true, handlers: []map[string]any{h}}).Client
	waitSessions(t, pool, 1)
	snap := allPoolsByName(t)[pool]
	if len(snap.Sessions) != 1 || snap.Sessions[0].Agent.Name != "any-agent" {
		t.Fatalf("after the reload: sessions %+v; want only any-agent (its token unchanged)", snap.Sessions)
	}
	if resp, body := getHost(t, c, "b.test", "/hello"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("b.test after its token was revoked: %d %q, want 503", resp.StatusCode, body)
	}
	const noAgent = "no agent connected now announces it"
	checkAllowed(t, p, map[string]string{"b.test": noAgent, "x.w.test": noAgent, "a.test": ""})
}

// Among the sessions that serve a host, the most specific claim wins, as in
// the agent's own routes: an agent that announced media.test gets every
// media.test request, not half of them beside an agent that announced "*"
// (which would answer them from its catch-all route); the broader one
// takes over when the specific one goes. And a token the config limits to
// a host outranks a token without hosts that announces it, so a pool's
// unrestricted agent cannot draw another household's traffic.
func TestMostSpecificClaimWins(t *testing.T) {
	pool := freshPool("hosts-specific")
	c := loadHostsPool(t, pool, nil)
	all := startHostsAgent(t, "catch-all", anyHostToken, "*")
	media := startHostsAgent(t, "media", anyHostToken, "media.test")
	wild := startHostsAgent(t, "wild", anyHostToken, "*.apps.test")
	deep := startHostsAgent(t, "deep", anyHostToken, "*.x.apps.test")
	household := startHostsAgent(t, "household", bToken, "*")
	intruder := startHostsAgent(t, "intruder", anyHostToken, "b.test")
	waitSessions(t, pool, 6)
	_, _, _, _ = all, wild, deep, intruder

	for host, want := range map[string]string{
		"media.test":    "media",
		"other.test":    "catch-all",
		"a.apps.test":   "wild",
		"y.x.apps.test": "deep",
		"b.test":        "household",
	} {
		for range 6 {
			if got := servedBy(t, c, host); got != want {
				t.Fatalf("Host %s served by %s, want %s", host, got, want)
			}
		}
	}
	media.kill()
	household.kill()
	waitSessions(t, pool, 4)
	if got := servedBy(t, c, "media.test"); got != "catch-all" {
		t.Errorf("media.test after its agent left: served by %s, want catch-all", got)
	}
	if got := servedBy(t, c, "b.test"); got != "intruder" {
		t.Errorf("b.test after its household left: served by %s, want intruder (exact beats catch-all)", got)
	}
}
