package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
)

// testAliceHash is bcrypt (cost 4, fast under -race) of testAlicePassword.
const (
	testAliceHash     = "$2a$04$xeVo6dNmKEO0wvQGBk9WcucJWHa2q.x1K79FWowSS0/kGC7MF.Qh."
	testAlicePassword = "alice-pw"
)

// loadCaddyfile (re)loads the test Caddy from Caddyfile site blocks, in
// which {site} stands for the test HTTPS address on localhost and {hash}
// for testAliceHash; the global options are those of testConfig.
func loadCaddyfile(t *testing.T, sites string) *caddytest.Tester {
	t.Helper()
	return loadCaddyfileLogging(t, "", sites)
}

// loadCaddyfileLogging is loadCaddyfile with Caddy's warnings and errors
// written to logFile as JSON lines, when it is not empty.
func loadCaddyfileLogging(t *testing.T, logFile, sites string) *caddytest.Tester {
	t.Helper()
	sites = strings.NewReplacer("{site}", fmt.Sprintf("localhost:%d", testHTTPSPort), "{hash}", testAliceHash).Replace(sites)
	logging := "level ERROR"
	if logFile != "" {
		logging = "output file " + logFile + "\n\t\tformat json\n\t\tlevel WARN"
	}
	cfg := fmt.Sprintf(`{
	admin localhost:%d
	persist_config off
	storage file_system %s
	http_port %d
	https_port %d
	local_certs
	skip_install_trust
	grace_period 30s
	auto_https disable_redirects
	log default {
		%s
	}
}
%s`, testAdminPort, testStorageDir, testHTTPPort, testHTTPSPort, logging, sites)
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: testAdminPort})
	tester.InitServer(cfg, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	waitTLS(t)
	return tester
}

// basicAuth is an Authorization header value for alice.
func basicAuth() string {
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth("alice", testAlicePassword)
	return r.Header.Get("Authorization")
}

// registerAt registers with token at the connect path of host (the Host
// header; TLS goes to localhost) and returns Caddy's answer: 200, or the
// refusal. A session it opens is closed once the pool has it.
func registerAt(t *testing.T, host, token, pool string) *handshake.StatusError {
	t.Helper()
	conn, err := dialCaddy()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = handshake.Register(ctx, conn, handshake.Request{
		URL:      &url.URL{Scheme: "https", Host: host, Path: testConnect},
		Token:    token,
		Identity: handshake.Identity{Name: "registrar-test"},
	})
	var refused *handshake.StatusError
	switch {
	case err == nil:
		waitSessions(t, pool, 1)
		conn.Close()
		waitSessions(t, pool, 0)
		return &handshake.StatusError{StatusCode: http.StatusOK}
	case errors.As(err, &refused):
		return refused
	default:
		t.Fatalf("registering at %s: %v", host, err)
		return nil
	}
}

func TestUnmarshalCaddyfileRegistrar(t *testing.T) {
	for _, tc := range []struct{ input, wantErr string }{
		{input: "spdy_origin_register"},
		{input: "spdy_origin_register /.well-known/spdy-origin", wantErr: "takes no arguments besides a matcher"},
		{input: "spdy_origin_register {\n\tpool home\n}", wantErr: "takes no block"},
	} {
		var rg Registrar
		err := rg.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%q: err %v, want %q", tc.input, err, tc.wantErr)
		}
	}
}

// The natural Caddyfile of a site under basic_auth, plus
// spdy_origin_register: agents register, clients still need the login.
// Without spdy_origin_register, basic_auth answers the registration, with
// a 401 the agent tells from spdy_origin's.
func TestRegistrarBeforeBasicAuth(t *testing.T) {
	pool := freshPool("reg-basic")
	site := `{site} {
	spdy_origin_register
	basic_auth {
		alice {hash}
	}
	spdy_origin {
		pool ` + pool + `
		token ` + testToken + `
	}
}`
	loadCaddyfile(t, strings.Replace(site, "\tspdy_origin_register\n", "", 1))
	if r := registerAt(t, "localhost", testToken, pool); r.StatusCode != http.StatusUnauthorized || !r.Blocked() ||
		!strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Basic") {
		t.Fatalf("without spdy_origin_register: %d %q, want basic_auth's 401", r.StatusCode, r.Header.Get("WWW-Authenticate"))
	}

	tester := loadCaddyfile(t, site)
	a := startAgent(t, "reg-basic")
	waitSessions(t, pool, 1)
	resp, _ := get(t, tester.Client, "/hello")
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
		t.Fatalf("client without credentials: %d %q, want basic_auth's 401", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	resp, body := get(t, tester.Client, "/hello", "Authorization", basicAuth())
	if resp.StatusCode != http.StatusOK || body != "hello from reg-basic" {
		t.Fatalf("client with credentials: %d %q", resp.StatusCode, body)
	}
	if n := a.served.Load(); n != 1 {
		t.Fatalf("agent served %d requests, want only the authenticated one", n)
	}
	// A wrong token still gets spdy_origin's own refusal.
	if r := registerAt(t, "localhost", "wrong-token-0123456789", pool); !r.TokenRejected() {
		t.Fatalf("wrong token: %d %q, want spdy_origin's 401", r.StatusCode, r.Header.Get("WWW-Authenticate"))
	}
}

// A registrar answers for the spdy_origin handlers of its own route list
// only: two sites on one server with the same connect path, as subroutes
// (what the Caddyfile makes) and as top-level routes (JSON), each get their
// agents into their own pool.
func TestRegistrarRouteLists(t *testing.T) {
	auth := map[string]any{"handler": "authentication", "providers": map[string]any{"http_basic": map[string]any{
		"accounts": []any{map[string]any{"username": "alice", "password": testAliceHash}},
	}}}
	registrar := map[string]any{"handler": "spdy_origin_register"}
	for _, layout := range []string{"subroutes", "top-level routes"} {
		t.Run(layout, func(t *testing.T) {
			poolA, poolB := freshPool("reg-site-a"), freshPool("reg-site-b")
			site := func(host, pool string) map[string]any {
				handlers := []any{registrar, auth, spdyRoute(pool, nil)}
				if layout == "subroutes" {
					handlers = []any{map[string]any{"handler": "subroute", "routes": []any{map[string]any{"handle": handlers}}}}
				}
				return map[string]any{"match": []any{map[string]any{"host": []string{host}}}, "handle": handlers, "terminal": true}
			}
			cfg := testConfig()
			srv := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv0"].(map[string]any)
			srv["routes"] = []any{site("localhost", poolA), site("b.localhost", poolB)}
			srv["automatic_https"].(map[string]any)["skip_certificates"] = []string{"b.localhost"}
			loadRawConfig(t, cfg)
			for _, reg := range []struct{ host, pool, other string }{{"localhost", poolA, poolB}, {"b.localhost", poolB, poolA}} {
				conn, err := dialCaddy()
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err = handshake.Register(ctx, conn, handshake.Request{
					URL: &url.URL{Scheme: "https", Host: reg.host, Path: testConnect}, Token: testToken,
				})
				cancel()
				if err != nil {
					t.Fatalf("registering at %s: %v", reg.host, err)
				}
				waitSessions(t, reg.pool, 1)
				if n := len(allPoolsByName(t)[reg.other].Sessions); n != 0 {
					t.Fatalf("registration at %s: pool %s has %d sessions", reg.host, reg.other, n)
				}
				conn.Close()
				waitSessions(t, reg.pool, 0)
			}
		})
	}
}

// In handle blocks, the site's registrar answers for the spdy_origin
// handlers inside them: two handlers of one pool (which must agree on the
// pool's settings, and do) and two pools sharing the connect path, where
// the token chooses. In a route block, directives run as written, so the
// registrar must come before client authentication there.
func TestRegistrarHandleAndRouteBlocks(t *testing.T) {
	t.Run("handle blocks, one pool", func(t *testing.T) {
		pool := freshPool("reg-handle")
		tester := loadCaddyfile(t, `{site} {
	spdy_origin_register
	handle_path /api/* {
		spdy_origin {
			pool `+pool+`
			token `+testToken+`
			max_sessions 4
		}
	}
	handle {
		basic_auth {
			alice {hash}
		}
		spdy_origin {
			pool `+pool+`
			token `+testToken+`
			max_sessions 4
		}
	}
}`)
		startAgent(t, "reg-handle")
		waitSessions(t, pool, 1)
		for _, tc := range []struct {
			path, auth string
			status     int
		}{
			{"/api/hello", "", http.StatusOK},
			{"/hello", "", http.StatusUnauthorized},
			{"/hello", basicAuth(), http.StatusOK},
		} {
			resp, body := get(t, tester.Client, tc.path, "Authorization", tc.auth)
			if resp.StatusCode != tc.status {
				t.Errorf("GET %s (auth %v): %d %q, want %d", tc.path, tc.auth != "", resp.StatusCode, body, tc.status)
			}
		}
	})

	t.Run("handle blocks, two pools on one connect path", func(t *testing.T) {
		poolA, poolB := freshPool("reg-two-a"), freshPool("reg-two-b")
		tokenA, tokenB := "token-of-pool-a-0123456789", "token-of-pool-b-0123456789"
		loadCaddyfile(t, `{site} {
	spdy_origin_register
	basic_auth {
		alice {hash}
	}
	handle /a/* {
		spdy_origin {
			pool `+poolA+`
			token `+tokenA+`
		}
	}
	handle {
		spdy_origin {
			pool `+poolB+`
			token `+tokenB+`
		}
	}
}`)
		if r := registerAt(t, "localhost", tokenA, poolA); r.StatusCode != http.StatusOK {
			t.Errorf("token of pool A: %d", r.StatusCode)
		}
		if r := registerAt(t, "localhost", tokenB, poolB); r.StatusCode != http.StatusOK {
			t.Errorf("token of pool B: %d", r.StatusCode)
		}
		if r := registerAt(t, "localhost", "neither-token-0123456789", poolA); !r.TokenRejected() {
			t.Errorf("wrong token: %d %q, want spdy_origin's 401", r.StatusCode, r.Header.Get("WWW-Authenticate"))
		}
	})

	for _, tc := range []struct {
		name, block string
		registers   bool
	}{
		{"route block, registrar first", "spdy_origin_register\n\t\tbasic_auth {\n\t\t\talice {hash}\n\t\t}", true},
		{"route block, registrar after basic_auth", "basic_auth {\n\t\t\talice {hash}\n\t\t}\n\t\tspdy_origin_register", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := freshPool("reg-route")
			loadCaddyfile(t, `{site} {
	route {
		`+tc.block+`
		spdy_origin {
			pool `+pool+`
			token `+testToken+`
		}
	}
}`)
			r := registerAt(t, "localhost", testToken, pool)
			if got := r.StatusCode == http.StatusOK; got != tc.registers || (!got && !r.Blocked()) {
				t.Fatalf("registration: %d %q", r.StatusCode, r.Header.Get("WWW-Authenticate"))
			}
		})
	}
}

// A site whose client authentication runs before spdy_origin's registration
// route, with no spdy_origin_register, gets a warning at load that says
// what to add; one whose registrations are answered first, or whose
// authentication has a matcher (which may exclude the connect path), does
// not.
func TestShadowingAuthWarning(t *testing.T) {
	const warning = "runs before this handler's registration route"
	for _, tc := range []struct {
		name, site, warns string
	}{
		{"basic_auth", "basic_auth {\n\t\talice {hash}\n\t}", "basic_auth"},
		{"forward_auth", "forward_auth 127.0.0.1:9 {\n\t\turi /auth\n\t}", "forward_auth"},
		{"basic_auth in a handle block", "handle {\n\t\tbasic_auth {\n\t\t\talice {hash}\n\t\t}\n\t\tspdy_origin {\n\t\t\tpool {pool}\n\t\t\ttoken " + testToken + "\n\t\t}\n\t}", "basic_auth"},
		{"spdy_origin_register", "spdy_origin_register\n\tbasic_auth {\n\t\talice {hash}\n\t}", ""},
		{"spdy_origin_register and a handle block", "spdy_origin_register\n\thandle {\n\t\tbasic_auth {\n\t\t\talice {hash}\n\t\t}\n\t\tspdy_origin {\n\t\t\tpool {pool}\n\t\t\ttoken " + testToken + "\n\t\t}\n\t}", ""},
		{"basic_auth with a matcher", "@ui not path /api/*\n\tbasic_auth @ui {\n\t\talice {hash}\n\t}", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := freshPool("shadowed")
			logFile := t.TempDir() + "/caddy.log"
			site := "{site} {\n\t" + tc.site + "\n"
			if !strings.Contains(tc.site, "spdy_origin {") {
				site += "\tspdy_origin {\n\t\tpool {pool}\n\t\ttoken " + testToken + "\n\t}\n"
			}
			loadCaddyfileLogging(t, logFile, strings.ReplaceAll(site+"}\n", "{pool}", pool))
			var logged string
			for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				b, _ := os.ReadFile(logFile)
				logged = string(b)
				if strings.Contains(logged, warning) || time.Now().After(deadline) {
					break
				}
			}
			if tc.warns == "" {
				if strings.Contains(logged, warning) {
					t.Fatalf("unexpected warning: %s", logged)
				}
				return
			}
			if !strings.Contains(logged, `"spdy_origin: `+tc.warns+" "+warning) || !strings.Contains(logged, "add spdy_origin_register") {
				t.Fatalf("no warning naming %s in the log: %s", tc.warns, logged)
			}
		})
	}
}
