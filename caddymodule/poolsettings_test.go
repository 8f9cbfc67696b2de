package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// loadFails loads cfg (a testConfig) and returns Caddy's error; it fails the
// test if the load succeeds. The config before stays in force.
func loadFails(t *testing.T, cfg map[string]any) string {
	t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(adminBase+"/load", "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		t.Fatal("config loaded; want it rejected")
	}
	return string(body)
}

// livePool returns the pool of that name, or nil.
func livePool(name string) *pool {
	var found *pool
	pools.Range(func(_, v any) bool {
		if p, ok := v.(*pool); ok && p.name == name {
			found = p
		}
		return found == nil
	})
	return found
}

// wrongTokensUntilLocked sends wrong tokens to the connect route until one
// is answered 429 and returns how many got 401 first (at most 30).
func wrongTokensUntilLocked(t *testing.T) int {
	t.Helper()
	for i := 0; i <= 30; i++ {
		reg, err := register(t, testConnect, "Bearer wrong", nil)
		if err != nil {
			t.Fatal(err)
		}
		switch reg.status {
		case http.StatusTooManyRequests:
			return i
		case http.StatusUnauthorized:
		default:
			t.Fatalf("wrong token %d: %d %q", i+1, reg.status, reg.body)
		}
	}
	return 30
}

// A config that fails to load after one of its spdy_origin handlers was
// provisioned must leave what the live config's handlers of that pool use
// as it was: the lockout limits, the pool's logger and its drain timeout.
func TestFailedProvisionLeavesPoolSettings(t *testing.T) {
	pool := freshPool("settings-failed")
	loadConfig(t, spdyRoute(pool, map[string]any{"max_auth_failures": 3, "drain_timeout": "7s"}))
	p := livePool(pool)
	logger := p.log()

	// The reverse proxy's Provision, the handler's last step, fails.
	msg := loadFails(t, testConfig(spdyRoute(pool, map[string]any{
		"max_auth_failures": 50, "drain_timeout": "1m", "trusted_proxies": []string{"not-an-address"},
	})))
	t.Logf("rejected: %s", msg)
	if p.log() != logger {
		t.Error("the pool logs to the rejected config's logger")
	}
	if d := p.drainTimeout(); d != 7*time.Second {
		t.Errorf("drain timeout %v, want the live config's 7s", d)
	}
	if n := wrongTokensUntilLocked(t); n != 3 {
		t.Errorf("locked out after %d wrong tokens, want the live config's max_auth_failures 3", n)
	}
}

// Two handlers of one config on one pool must agree on what the pool
// shares: a difference is a config error that names both handlers and the
// setting, and the live config's settings stay in force.
func TestPoolSettingsConflict(t *testing.T) {
	for _, tc := range []struct {
		field  string
		a, b   map[string]any
		values string
	}{
		{"max_auth_failures", map[string]any{"max_auth_failures": 5}, map[string]any{"max_auth_failures": 7}, "5 and 7"},
		{"auth_failure_window", map[string]any{"auth_failure_window": "1m"}, map[string]any{"auth_failure_window": "1h"}, "1m0s and 1h0m0s"},
		{"drain_timeout", map[string]any{}, map[string]any{"drain_timeout": "30s"}, "10s and 30s"},
		{"max_sessions", map[string]any{"max_sessions": 2}, map[string]any{}, "2 and 0"},
	} {
		t.Run(tc.field, func(t *testing.T) {
			pool := freshPool("settings-conflict")
			loadConfig(t, spdyRoute(pool, map[string]any{"max_auth_failures": 3, "drain_timeout": "7s"}))
			p := livePool(pool)
			logger := p.log()

			tc.a["connect"], tc.b["connect"] = "/site-a/connect", "/site-b/connect"
			msg := loadFails(t, routesConfig("",
				testRoute{paths: []string{"/site-a/*"}, handlers: []map[string]any{spdyRoute(pool, tc.a)}},
				testRoute{paths: []string{"/site-b/*"}, handlers: []map[string]any{spdyRoute(pool, tc.b)}},
			))
			t.Logf("rejected: %s", msg)
			for _, want := range []string{fmt.Sprintf("%q", pool), tc.field + " " + tc.values,
				"path /site-a/*", "path /site-b/*", "/site-a/connect", "/site-b/connect"} {
				if !strings.Contains(msg, strings.ReplaceAll(want, `"`, `\"`)) {
					t.Errorf("error lacks %s", want)
				}
			}
			if p.log() != logger || p.drainTimeout() != 7*time.Second {
				t.Error("the rejected config changed the live pool's logger or drain timeout")
			}
			if n := wrongTokensUntilLocked(t); n != 3 {
				t.Errorf("locked out after %d wrong tokens, want the live config's 3", n)
			}
		})
	}
}

// Handlers of one config on one pool with the same shared settings load,
// also when one spells out a default the other leaves out; settings of
// their own (retry_after here) may differ.
func TestPoolSettingsAgree(t *testing.T) {
	pool := freshPool("settings-agree")
	loadRoutes(t, "",
		testRoute{paths: []string{"/a/*"}, handlers: []map[string]any{spdyRoute(pool, map[string]any{
			"connect": "/a/connect", "max_auth_failures": defaultMaxAuthFailures, "drain_timeout": "10s", "retry_after": "1s",
		})}},
		testRoute{paths: []string{"/b/*"}, handlers: []map[string]any{spdyRoute(pool, map[string]any{
			"connect": "/b/connect", "retry_after": "9s",
		})}},
	)
}

// A reload that changes the pool's settings: the new config's values are
// in force once it is loaded, and the drain timeout of the last config
// that had the pool applies when the pool goes.
func TestPoolSettingsReload(t *testing.T) {
	pool := freshPool("settings-reload")
	loadConfig(t, spdyRoute(pool, map[string]any{"max_auth_failures": 3, "drain_timeout": "7s"}))
	p := livePool(pool)
	old := p.log()
	loadConfig(t, spdyRoute(pool, map[string]any{"max_auth_failures": 5, "drain_timeout": "9s"}))
	if p.log() == old || p.drainTimeout() != 9*time.Second {
		t.Fatalf("after the reload: drain timeout %v, want 9s; logger of the new config: %v", p.drainTimeout(), p.log() != old)
	}
	if n := wrongTokensUntilLocked(t); n != 5 {
		t.Fatalf("after the reload, locked out after %d wrong tokens, want the new max_auth_failures 5", n)
	}
	loadConfig(t, map[string]any{"handler": "static_response", "body": "no spdy here"})
	if livePool(pool) != nil || p.drainTimeout() != 9*time.Second {
		t.Fatalf("pool removed: still live %v, drain timeout %v, want 9s", livePool(pool) != nil, p.drainTimeout())
	}
}
