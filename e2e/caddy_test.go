package e2e

// The in-process Caddy: free ports, a JSON config with the spdy_origin handler for
// one pool, loading and reloading it, and what its admin API says.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/spdy-origin/spdy-origin/caddymodule"
)

// e2ePorts are the ports of one in-process Caddy.
type e2ePorts struct{ admin, https, http int }

// ports are chosen free once per test process (the HTTP/2 child process picks
// its own), so runs from other checkouts or packages never collide.
var ports = sync.OnceValue(func() e2ePorts {
	free := func() int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}
	return e2ePorts{admin: free(), https: free(), http: free()}
})

// e2eCaddyStarted is set once a test loaded a config; TestMain then stops Caddy.
var e2eCaddyStarted atomic.Bool

// stopE2ECaddy stops the in-process Caddy (if a test started one), admin endpoint
// included, so its servers and background goroutines end before the goroutine leak
// check.
func stopE2ECaddy() {
	if !e2eCaddyStarted.Load() {
		return
	}
	if err := caddy.Load([]byte(`{"admin":{"disabled":true}}`), true); err != nil {
		fmt.Fprintf(os.Stderr, "stopping the in-process Caddy: %v\n", err)
		_ = caddy.Stop()
	}
}

// e2eLeakIgnores are goroutines an in-process Caddy leaves running for the life of
// the process even after it is stopped: the `caddy run` command that caddytest starts
// waits forever, the signal handlers it installs, and certmagic's lock file refresher
// that ends a few seconds after the lock is released.
var e2eLeakIgnores = []string{
	"github.com/caddyserver/caddy/v2/cmd.cmdRun",
	"github.com/caddyserver/caddy/v2.trapSignalsPosix.func1",
	"github.com/caddyserver/caddy/v2.trapSignalsCrossPlatform.func1",
	"github.com/caddyserver/certmagic.keepLockfileFresh",
	// spdy keeps stream handler goroutines for later streams.
	"github.com/spdy-origin/spdy-origin/spdy.(*workerPool).work",
}

const e2eToken = "e2e-token-5c0f"

// loadCaddyfile (re)loads the in-process Caddy with the routes that Caddyfile site
// blocks adapt to (Caddy's own adapter), {site} in them standing for localhost on the
// HTTPS port, in e2eConfig's server, and waits for TLS.
func loadCaddyfile(t *testing.T, sites string) {
	t.Helper()
	p := ports()
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(strings.ReplaceAll(sites, "{site}", fmt.Sprintf("localhost:%d", p.https))), nil)
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err == nil {
		err = json.Unmarshal(adapted, &cfg)
	}
	if err != nil || len(cfg.Apps.HTTP.Servers) != 1 {
		t.Fatalf("adapting the Caddyfile: %v\n%s", err, adapted)
	}
	for _, srv := range cfg.Apps.HTTP.Servers {
		loadCaddy(t, e2eConfig(p, "", nil, map[string]any{"routes": srv.Routes}))
	}
}

// e2eConfig is a Caddy JSON config: the spdy_origin handler for pool on
// https://localhost:<https>, with extra handler fields and extra server fields.
func e2eConfig(p e2ePorts, pool string, handler, server map[string]any) string {
	return mustJSON(e2eConfigMap(p, pool, handler, server))
}

func mustJSON(v any) string {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(raw)
}

// e2eConfigMap is e2eConfig before it is encoded, for tests that change more.
func e2eConfigMap(p e2ePorts, pool string, handler, server map[string]any) map[string]any {
	h := map[string]any{"handler": "spdy_origin", "pool": pool, "token": []string{e2eToken}}
	for k, v := range handler {
		h[k] = v
	}
	srv := map[string]any{
		"listen":          []string{":" + strconv.Itoa(p.https)},
		"automatic_https": map[string]any{"disable_redirects": true},
		"routes": []any{map[string]any{
			"match":    []any{map[string]any{"host": []string{"localhost"}}},
			"handle":   []any{h},
			"terminal": true,
		}},
	}
	for k, v := range server {
		srv[k] = v
	}
	cfg := map[string]any{
		"admin":   map[string]any{"listen": "localhost:" + strconv.Itoa(p.admin), "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": e2eStorageDir()},
		"logging": map[string]any{"logs": map[string]any{
			"default": map[string]any{"level": "ERROR"},
		}},
		"apps": map[string]any{
			"pki": map[string]any{"certificate_authorities": map[string]any{"local": map[string]any{"install_trust": false}}},
			"tls": map[string]any{"automation": map[string]any{"policies": []any{
				map[string]any{"subjects": []string{"localhost"}, "issuers": []any{map[string]any{"module": "internal"}}},
			}}},
			"http": map[string]any{
				"http_port":    p.http,
				"https_port":   p.https,
				"grace_period": "5s",
				"servers":      map[string]any{"e2e": srv},
			},
		},
	}
	return cfg
}

// loadCaddy (re)loads the in-process Caddy with the given config and waits for TLS.
func loadCaddy(t *testing.T, cfg string) {
	t.Helper()
	p := ports()
	if !e2eCaddyStarted.Load() {
		// caddytest would silently use any Caddy already answering on the admin port,
		// e.g. another concurrent run of these tests; refuse instead of interfering.
		l, err := net.Listen("tcp", fmt.Sprintf("localhost:%d", p.admin))
		if err != nil {
			t.Fatalf("admin port %d is taken (another run of these tests?): %v", p.admin, err)
		}
		l.Close()
		e2eCaddyStarted.Store(true)
	}
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: p.admin})
	tester.InitServer(cfg, "json")
	if t.Failed() {
		t.FailNow()
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", p.https),
			&tls.Config{ServerName: "localhost", RootCAs: caddyRoots(t, false)})
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("TLS on :%d not ready: %v", p.https, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// e2eStorageDir is Caddy's storage (internal CA, certificates) in the tests' configs:
// under XDG_DATA_HOME, which TestMain points at a temporary directory. (Caddy's
// default storage path is fixed at package init, before TestMain runs.)
func e2eStorageDir() string {
	return filepath.Join(os.Getenv("XDG_DATA_HOME"), "caddy-e2e")
}

// caddyRootFile is where Caddy's internal CA keeps its root certificate.
func caddyRootFile() string {
	return filepath.Join(e2eStorageDir(), "pki", "authorities", "local", "root.crt")
}

// caddyRoots returns a pool with Caddy's root; with must, a missing root fails the
// test, otherwise an empty pool is returned (before the CA exists).
func caddyRoots(t *testing.T, must bool) *x509.CertPool {
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(caddyRootFile())
	if err != nil && must {
		t.Fatalf("reading Caddy's root certificate: %v", err)
	}
	pool.AppendCertsFromPEM(pem)
	return pool
}

// adminGet fetches path from Caddy's admin API.
func adminGet(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://localhost:%d%s", ports().admin, path))
	if err != nil {
		t.Fatalf("admin GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("admin GET %s: %d %v %s", path, resp.StatusCode, err, b)
	}
	return b
}

type poolView struct {
	Pool     string `json:"pool"`
	Sessions []struct {
		ID    uint64 `json:"id"`
		Agent struct {
			Name string `json:"name"`
		} `json:"agent"`
		OpenStreams     int      `json:"open_streams"`
		UpgradedStreams int      `json:"upgraded_streams"`
		Hosts           []string `json:"hosts"`
	} `json:"sessions"`
}

// poolState returns the pool's sessions as the admin API reports them.
func poolState(t *testing.T, pool string) poolView {
	t.Helper()
	var pools []poolView
	if err := json.Unmarshal(adminGet(t, "/spdy_origin/pools"), &pools); err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		if p.Pool == pool {
			return p
		}
	}
	return poolView{Pool: pool}
}

// waitUntil polls cond every 10ms until it is true or timeout passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// upgradedGauge reads caddy_spdy_origin_upgraded_streams{pool} from the admin /metrics.
func upgradedGauge(t *testing.T, pool string) int {
	t.Helper()
	prefix := `caddy_spdy_origin_upgraded_streams{pool="` + pool + `"} `
	for _, line := range strings.Split(string(adminGet(t, "/metrics")), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return int(n)
		}
	}
	t.Fatalf("metric %s... not exported", prefix)
	return 0
}
