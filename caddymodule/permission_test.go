package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

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
