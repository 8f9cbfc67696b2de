package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

// checkAllowed asks p about each name: "" wants it allowed, anything else
// refused with an error that says so.
func checkAllowed(t *testing.T, p *Permission, want map[string]string) {
	t.Helper()
	for name, refusal := range want {
		err := p.CertificateAllowed(context.Background(), name)
		switch {
		case refusal == "" && err != nil:
			t.Errorf("%s: refused: %v", name, err)
		case refusal != "" && err == nil:
			t.Errorf("%s: allowed, want refused (%s)", name, refusal)
		case refusal != "" && (!errors.Is(err, caddytls.ErrPermissionDenied) || !strings.Contains(err.Error(), refusal) ||
			!strings.Contains(err.Error(), `"`+strings.ToLower(name)+`"`)):
			t.Errorf("%s: %v; want ErrPermissionDenied naming it and saying %q", name, err, refusal)
		}
	}
}

// A certificate is allowed for a name some token of the pool permits and
// an agent connected now announces; a catch-all counts only as far as its
// token's hosts go; when the agent leaves, new certificates are refused.
func TestPermission(t *testing.T) {
	pool := "perm"
	loadHostsPool(t, pool, nil)
	p := &Permission{Pools: []string{pool}, logger: zap.NewNop()}
	const noAgent = "no agent connected now announces it"
	checkAllowed(t, p, map[string]string{"a.test": noAgent, "b.test": noAgent, "x.w.test": noAgent})

	a := startHostsAgent(t, "perm-a", anyHostToken, "a.test,*")
	startHostsAgent(t, "perm-b", bToken, "*")
	startHostsAgent(t, "perm-w", wToken, "")
	waitSessions(t, pool, 3)
	checkAllowed(t, p, map[string]string{
		"a.test":     "", // by name, under a token without hosts
		"A.TEST.":    "",
		"b.test":     "", // "*" under a token limited to b.test
		"x.w.test":   "", // nothing announced, under a token limited to *.w.test
		"y.x.w.test": "",
		"w.test":     noAgent, // not under *.w.test
		"c.test":     noAgent, // "*" under a token without hosts grants nothing
	})

	a.kill()
	waitSessions(t, pool, 2)
	checkAllowed(t, p, map[string]string{"a.test": noAgent, "b.test": ""})

	// Without require_agent, the tokens' hosts decide.
	off := false
	tokensOnly := &Permission{Pools: []string{pool}, RequireAgent: &off, logger: zap.NewNop()}
	checkAllowed(t, tokensOnly, map[string]string{
		"b.test": "", "q.w.test": "",
		"a.test": "no token's hosts include it",
	})

	// Other pools, or none, allow nothing.
	checkAllowed(t, &Permission{Pools: []string{"no-such-pool"}, logger: zap.NewNop()},
		map[string]string{"b.test": "no such spdy_origin pool is loaded"})
	checkAllowed(t, &Permission{logger: zap.NewNop()}, map[string]string{"b.test": "", "c.test": noAgent})
}

func TestPermissionCaddyfile(t *testing.T) {
	for in, want := range map[string]string{
		"spdy_origin":                               `{}`,
		"spdy_origin home work":                     `{"pools":["home","work"]}`,
		"spdy_origin home {\n require_agent off\n}": `{"pools":["home"],"require_agent":false}`,
		"spdy_origin {\n require_agent on\n}":       `{}`,
		"spdy_origin {\n require_agent maybe\n}":    "want on or off",
		"spdy_origin {\n cache 1m\n}":               "unrecognized",
	} {
		var p Permission
		err := p.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if strings.HasPrefix(want, "{") {
			b, _ := json.Marshal(p)
			raw := string(b)
			if err != nil || raw != want {
				t.Errorf("%q: %s %v, want %s", in, raw, err, want)
			}
		} else if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error with %q", in, err, want)
		}
	}

	// The global option takes it as Caddy's own permission modules.
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(
		"{\n on_demand_tls {\n  permission spdy_origin home\n }\n}\nhttps:// {\n tls internal {\n  on_demand\n }\n respond ok\n}\n"), nil)
	if err != nil || !strings.Contains(string(adapted), `"permission":{"module":"spdy_origin","pools":["home"]}`) {
		t.Fatalf("adapting on_demand_tls: %v\n%s", err, adapted)
	}
}

// A bad pool name is a static config error: Validate reports it, as
// Caddy's convention wants, so that caddy validate and caddy adapt
// --validate say what is wrong.
func TestPermissionValidate(t *testing.T) {
	for _, tc := range []struct {
		pools []string
		want  string // "" for valid
	}{
		{nil, ""},
		{[]string{"home", "office"}, ""},
		{[]string{""}, "empty pool name"},
		{[]string{"home", ""}, "empty pool name"},
	} {
		v, ok := any(&Permission{Pools: tc.pools}).(caddy.Validator)
		if !ok {
			t.Fatal("tls.permission.spdy_origin does not implement caddy.Validator: its config errors are not reported by Validate")
		}
		err := v.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("pools %q: %v, want valid", tc.pools, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) ||
			!strings.Contains(err.Error(), "tls.permission.spdy_origin")):
			t.Errorf("pools %q: %v, want an error of tls.permission.spdy_origin saying %q", tc.pools, err, tc.want)
		}
	}
}

// permissionWithAgent loads a fresh hosts pool with one agent of token
// announcing hosts, and returns the permission for that pool.
func permissionWithAgent(t *testing.T, token, hosts string) *Permission {
	t.Helper()
	pool := freshPool("perm")
	loadHostsPool(t, pool, nil)
	startHostsAgent(t, "perm-agent", token, hosts)
	waitSessions(t, pool, 1)
	return &Permission{Pools: []string{pool}, logger: zap.NewNop()}
}

// A wildcard over a public suffix (*.com, *.co.uk, *.github.io, *.test)
// announced under a token without hosts matches every name of that suffix:
// as a catch-all does, it must grant no certificates, or an agent could
// announce a hundred TLDs and have Caddy ask the CA for any name pointed at
// the server. A wildcard under a registrable name still counts.
func TestPermissionPublicSuffixWildcard(t *testing.T) {
	p := permissionWithAgent(t, anyHostToken, "*.com,*.co.uk,*.github.io,*.test,*.example.org")
	const noAgent = "no agent connected now announces it"
	checkAllowed(t, p, map[string]string{
		"victim.com":        noAgent,
		"www.victim.com":    noAgent,
		"shop.victim.co.uk": noAgent,
		"someone.github.io": noAgent,
		"c.test":            noAgent,
		"app.example.org":   "",
		"a.b.example.org":   "",
	})
}

// Names no CA issues for (a label over 63 bytes, a name over 253, an empty
// label, '_', a wildcard, a port) are refused even where a wildcard
// pattern matches them: certmagic passes such SNI names through to the
// permission, and any client could otherwise make Caddy send the CA an
// order it must reject, or have an internal CA sign it.
func TestPermissionRefusesInvalidNames(t *testing.T) {
	p := permissionWithAgent(t, wToken, "")
	const bad = "not a host name a certificate can be issued for"
	checkAllowed(t, p, map[string]string{
		"ok.w.test":                                 "",
		strings.Repeat("a", 64) + ".w.test":         bad,
		strings.Repeat("abcdefghi.", 30) + "w.test": bad,
		"a..w.test":                                 bad,
		"a_b.w.test":                                bad,
		"*.w.test":                                  bad,
		"x.w.test:443":                              bad,
	})
}
