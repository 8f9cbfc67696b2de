package caddymodule

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// The shared in-process Caddy of this package's tests: caddytest runs one
// instance per test binary, with admin and HTTPS on free ports chosen in
// TestMain and Caddy's internal CA, so that other packages' caddytest runs
// and other checkouts running at the same time do not collide. Test agents
// (agent_test.go, hostile_test.go) connect to it over TLS. Tests share the
// instance, so they are not parallel and each uses its own pool name.

// testStorageDir holds the in-process Caddy's storage (internal CA,
// certificates); test configs name it explicitly because Caddy fixes its
// default storage path before TestMain runs.
var testStorageDir string

// The in-process Caddy's ports, chosen free at start (see TestMain).
var (
	testHTTPSPort, testHTTPPort, testAdminPort int
	testBase, adminBase, testHTTPSAddr         string
)

// TestMain keeps the in-process Caddy's storage (internal CA, certificates,
// autosave) out of the user's home directory.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "caddymodule-test-")
	if err != nil {
		panic(err)
	}
	testStorageDir = dir + "/storage"
	testHTTPSPort, testHTTPPort, testAdminPort = freePort(), freePort(), freePort()
	testBase = fmt.Sprintf("https://localhost:%d", testHTTPSPort)
	adminBase = fmt.Sprintf("http://localhost:%d", testAdminPort)
	testHTTPSAddr = fmt.Sprintf("127.0.0.1:%d", testHTTPSPort)
	os.Setenv("XDG_DATA_HOME", dir+"/data")
	os.Setenv("XDG_CONFIG_HOME", dir+"/config")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a TCP port that was free a moment ago. The window in
// which another process could take it is small, and far better than fixed
// ports, which collide with any other checkout testing at the same time.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// bigSize is the size of the checksummed download and upload: 256 MiB, or
// 64 MiB under the race detector unless SPDY_ORIGIN_TEST_FULL_SIZE=1.
var bigSize int64 = func() int64 {
	if raceEnabled && os.Getenv("SPDY_ORIGIN_TEST_FULL_SIZE") != "1" {
		return 64 << 20
	}
	return 256 << 20
}()

// spdyRoute returns an spdy_origin handler config for pool with extra fields.
func spdyRoute(pool string, extra map[string]any) map[string]any {
	h := map[string]any{"handler": "spdy_origin", "pool": pool, "token": []string{testToken}}
	for k, v := range extra {
		h[k] = v
	}
	return h
}

// loadConfig (re)loads Caddy with the given handlers on testBase.
func loadConfig(t *testing.T, handlers ...map[string]any) *caddytest.Tester {
	t.Helper()
	return loadRawConfig(t, testConfig(handlers...))
}

// testConfig is the Caddy config loadConfig loads, for tests that change
// more than the handlers (logging, say).
func testConfig(handlers ...map[string]any) map[string]any {
	return routesConfig("", testRoute{handlers: handlers})
}

// testRoute is one route of the test server: handlers for requests to
// localhost (any host with anyHost), restricted to paths when it is set.
type testRoute struct {
	paths    []string
	anyHost  bool
	handlers []map[string]any
}

// loadRoutes (re)loads Caddy with routes, tried in order. With logFile, the
// spdy_origin logs go to that file as JSON lines instead of stderr.
func loadRoutes(t *testing.T, logFile string, routes ...testRoute) *caddytest.Tester {
	t.Helper()
	return loadRawConfig(t, routesConfig(logFile, routes...))
}

func routesConfig(logFile string, routes ...testRoute) map[string]any {
	spdyLog := map[string]any{"level": "INFO", "include": []string{"http.handlers.spdy_origin", "http.reverse_proxy.transport.spdy_origin"}}
	if logFile != "" {
		spdyLog["writer"] = map[string]any{"output": "file", "filename": logFile, "roll": false}
		spdyLog["encoder"] = map[string]any{"format": "json"}
	}
	// The marker route says which config serves a connection (waitConfig).
	rs := []any{map[string]any{
		"match":    []any{map[string]any{"host": []string{"localhost"}, "path": []string{configMarkerPath}}},
		"handle":   []any{map[string]any{"handler": "static_response", "body": strconv.FormatInt(configGen.Add(1), 10)}},
		"terminal": true,
	}}
	tlsApp := map[string]any{"automation": map[string]any{"policies": []any{
		map[string]any{"subjects": []string{"localhost"}, "issuers": []any{map[string]any{"module": "internal"}}},
	}}}
	for _, r := range routes {
		if r.anyHost {
			// No host matcher names localhost for automatic HTTPS.
			tlsApp["certificates"] = map[string]any{"automate": []string{"localhost"}}
		}
		m := map[string]any{"host": []string{"localhost"}}
		if r.anyHost {
			delete(m, "host")
		}
		if len(r.paths) > 0 {
			m["path"] = r.paths
		}
		route := map[string]any{"handle": r.handlers, "terminal": true}
		if len(m) > 0 {
			route["match"] = []any{m}
		}
		rs = append(rs, route)
	}
	return map[string]any{
		"admin":   map[string]any{"listen": fmt.Sprintf("localhost:%d", testAdminPort), "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": testStorageDir},
		"logging": map[string]any{"logs": map[string]any{
			"default": map[string]any{"level": "ERROR", "exclude": []string{"http.handlers.spdy_origin", "http.reverse_proxy.transport.spdy_origin"}},
			"spdy":    spdyLog,
		}},
		"apps": map[string]any{
			"pki": map[string]any{"certificate_authorities": map[string]any{"local": map[string]any{"install_trust": false}}},
			"tls": tlsApp,
			"http": map[string]any{
				"http_port":    testHTTPPort,
				"https_port":   testHTTPSPort,
				"grace_period": "30s",
				"servers": map[string]any{"srv0": map[string]any{
					"listen":          []string{fmt.Sprintf(":%d", testHTTPSPort)},
					"automatic_https": map[string]any{"disable_redirects": true},
					"routes":          rs,
				}},
			},
		},
	}
}

// loadRawConfig (re)loads Caddy with cfg, a testConfig.
func loadRawConfig(t *testing.T, cfg map[string]any) *caddytest.Tester {
	t.Helper()
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: testAdminPort})
	tester.InitServer(string(raw), "json")
	if t.Failed() {
		t.FailNow()
	}
	waitTLS(t)
	waitConfig(t, cfg)
	return tester
}

// configMarkerPath answers, on every test config, the config's generation.
const configMarkerPath = "/__test_config_generation"

var configGen atomic.Int64

// waitConfig waits until new connections are served by cfg, not by the
// config it replaced. Caddy returns from a reload once the old servers'
// shutdowns have started, and says itself that one may not yet have
// stopped accepting; a connection it takes then is served by the old
// routes (a test's request answered by the previous test's pool).
func waitConfig(t *testing.T, cfg map[string]any) {
	t.Helper()
	want := configMarker(cfg)
	if want == "" {
		return
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{ServerName: "localhost", InsecureSkipVerify: true},
	}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(15 * time.Second)
	for inRow := 0; inRow < 3; {
		got := ""
		req, _ := http.NewRequest(http.MethodGet, "https://"+testHTTPSAddr+configMarkerPath, nil)
		req.Host = "localhost"
		if resp, err := client.Do(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got = string(b)
		}
		if got == want {
			inRow++
			continue
		}
		inRow = 0
		if time.Now().After(deadline) {
			t.Fatalf("config generation %s not served after reload (got %q)", want, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// configMarker is the generation routesConfig put in cfg, or "".
func configMarker(cfg map[string]any) string {
	apps, _ := cfg["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, _ := httpApp["servers"].(map[string]any)
	srv, _ := servers["srv0"].(map[string]any)
	routes, _ := srv["routes"].([]any)
	if len(routes) == 0 {
		return ""
	}
	first, _ := routes[0].(map[string]any)
	handle, _ := first["handle"].([]any)
	if len(handle) == 0 {
		return ""
	}
	h, _ := handle[0].(map[string]any)
	if h["handler"] != "static_response" {
		return ""
	}
	body, _ := h["body"].(string)
	return body
}

// waitTLS waits for Caddy's internal CA to have issued the localhost
// certificate (issuance is asynchronous after a config load).
func waitTLS(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", testHTTPSAddr,
			&tls.Config{ServerName: "localhost", InsecureSkipVerify: true})
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("TLS on %s not ready: %v", testHTTPSAddr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// bigClient talks to Caddy over HTTP/2 with no overall timeout.
func bigClient() *http.Client {
	return &http.Client{Transport: caddytest.CreateTestingTransport()}
}

func get(t *testing.T, c *http.Client, path string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, testBase+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1] // net/http sends req.Host, not a Host header field
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", path, err)
	}
	return resp, string(b)
}

// waitSessions waits until pool has n sessions.
func waitSessions(t *testing.T, pool string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := -1
		for _, p := range allPools() {
			if p.Name == pool {
				got = len(p.Sessions)
			}
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %q has %d sessions, want %d", pool, got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func allPoolsByName(t *testing.T) map[string]poolSnapshot {
	t.Helper()
	m := map[string]poolSnapshot{}
	for _, p := range allPools() {
		m[p.Name] = p
	}
	return m
}

var poolRuns atomic.Int64

// freshPool returns name with a number no other call returned. Lockouts
// live as long as the process, per pool name, so tests that lock out an
// address need a new pool under -count=N.
func freshPool(name string) string {
	return fmt.Sprintf("%s-%d", name, poolRuns.Add(1))
}
