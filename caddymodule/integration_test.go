package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// These tests run Caddy in-process (caddytest: one instance per test
// binary, admin and HTTPS on free ports chosen in TestMain, with Caddy's
// internal CA, so that other packages' caddytest runs and other checkouts
// running at the same time do not collide)
// and connect test agents over TLS. Tests share the instance, so they are
// not parallel and each uses its own pool name.

// The in-process Caddy's ports, chosen free at start (see TestMain).
var (
	testHTTPSPort, testHTTPPort, testAdminPort int
	testBase, adminBase, testHTTPSAddr         string
)

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
// localhost, restricted to paths when it is set.
type testRoute struct {
	paths    []string
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
	var rs []any
	for _, r := range routes {
		m := map[string]any{"host": []string{"localhost"}}
		if len(r.paths) > 0 {
			m["path"] = r.paths
		}
		rs = append(rs, map[string]any{"match": []any{m}, "handle": r.handlers, "terminal": true})
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
			"tls": map[string]any{"automation": map[string]any{"policies": []any{
				map[string]any{"subjects": []string{"localhost"}, "issuers": []any{map[string]any{"module": "internal"}}},
			}}},
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
	return tester
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

func TestProxyBasics(t *testing.T) {
	tester := loadConfig(t, spdyRoute("basics", map[string]any{
		"headers": map[string]any{"request": map[string]any{"set": map[string]any{"X-Origin": []string{"spdy"}}}},
	}))
	a := startAgent(t, "basic-A")
	waitSessions(t, "basics", 1)
	c := tester.Client

	// GET, with reverse_proxy's forwarding headers and header_up.
	resp, body := get(t, c, "/hello")
	if resp.StatusCode != 200 || body != "hello from basic-A" {
		t.Fatalf("GET /hello: %d %q", resp.StatusCode, body)
	}
	for k, want := range map[string]string{
		"X-Seen-Host": fmt.Sprintf("localhost:%d", testHTTPSPort), "X-Seen-Forwarded-Proto": "https",
		"X-Seen-Forwarded-For": "127.0.0.1", "X-Seen-Origin-Header": "spdy",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}

	// POST echoes its body.
	payload := strings.Repeat("ping-", 10000)
	req, _ := http.NewRequest(http.MethodPost, testBase+"/echo", strings.NewReader(payload))
	req.Header.Set("Content-Type", "text/x-test")
	pr, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := io.ReadAll(pr.Body)
	pr.Body.Close()
	if pr.StatusCode != 200 || string(pb) != payload || pr.Header.Get("Content-Type") != "text/x-test" {
		t.Fatalf("POST /echo: %d, %d bytes, content-type %q", pr.StatusCode, len(pb), pr.Header.Get("Content-Type"))
	}

	// HEAD has headers and no body.
	req, _ = http.NewRequest(http.MethodHead, testBase+"/file", nil)
	hr, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	if hr.StatusCode != 200 || len(hb) != 0 || hr.ContentLength != int64(len(testFile)) {
		t.Fatalf("HEAD /file: %d, body %d bytes, content-length %d", hr.StatusCode, len(hb), hr.ContentLength)
	}

	// Range.
	resp, body = get(t, c, "/file", "Range", "bytes=100-199")
	if resp.StatusCode != http.StatusPartialContent || body != string(testFile[100:200]) ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 100-199/%d", len(testFile)) {
		t.Fatalf("Range: %d %q, Content-Range %q", resp.StatusCode, body, resp.Header.Get("Content-Range"))
	}

	// Conditional requests.
	resp, body = get(t, c, "/file", "If-None-Match", `"v1"`)
	if resp.StatusCode != http.StatusNotModified || body != "" {
		t.Fatalf("If-None-Match: %d %q", resp.StatusCode, body)
	}
	resp, _ = get(t, c, "/file", "If-Modified-Since", testFileTime.Add(time.Hour).Format(http.TimeFormat))
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-Modified-Since: %d", resp.StatusCode)
	}

	// 404 from the origin passes through.
	resp, _ = get(t, c, "/nope")
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /nope: %d", resp.StatusCode)
	}

	// Other methods on the registration route.
	resp, _ = get(t, c, testConnect)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "PUT" {
		t.Fatalf("GET %s: %d, Allow %q", testConnect, resp.StatusCode, resp.Header.Get("Allow"))
	}

	// Admin API lists the session with its identity.
	ar, err := http.Get(adminBase + "/spdy_origin/pools")
	if err != nil {
		t.Fatal(err)
	}
	var list []poolSnapshot
	err = json.NewDecoder(ar.Body).Decode(&list)
	ar.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var found *poolSnapshot
	for i := range list {
		if list[i].Name == "basics" {
			found = &list[i]
		}
	}
	if found == nil || len(found.Sessions) != 1 || found.Sessions[0].Agent.Name != "basic-A" ||
		found.Sessions[0].Agent.Instance != "inst-basic-A" || found.Sessions[0].RemoteAddr == "" ||
		found.Sessions[0].ConnectedSince.IsZero() {
		t.Fatalf("admin pools: %+v", list)
	}

	// Metrics are in Caddy's registry.
	mr, err := http.Get(adminBase + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	for _, want := range []string{
		`caddy_spdy_origin_sessions{pool="basics"} 1`,
		`caddy_spdy_origin_requests_total{code="200",pool="basics"}`,
		`caddy_spdy_origin_agent_sessions{agent_instance="inst-basic-A",agent_name="basic-A",agent_version="test",pool="basics"} 1`,
		`caddy_spdy_origin_bytes_from_agents_total{pool="basics"}`,
	} {
		if !bytes.Contains(mb, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if a.served.Load() != 6 {
		t.Fatalf("agent served %d requests", a.served.Load())
	}
}

func TestRegistrationErrors(t *testing.T) {
	pool := freshPool("regerr")
	tester := loadConfig(t, spdyRoute(pool, map[string]any{"max_auth_failures": 3}))

	// 505 over HTTP/2 with a valid token.
	req, _ := http.NewRequest(http.MethodPut, testBase+testConnect, strings.NewReader("x"))
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("test client did not use HTTP/2 (%s)", resp.Proto)
	}
	if resp.StatusCode != http.StatusHTTPVersionNotSupported || !strings.Contains(string(body), "HTTP/1.1") {
		t.Fatalf("HTTP/2 registration: %d %q", resp.StatusCode, body)
	}

	// 401 for a missing and a wrong token.
	for _, auth := range []string{"", "Bearer wrong", "Basic dXNlcjpwYXNz"} {
		reg, err := register(t, testConnect, auth, nil)
		if err != nil {
			t.Fatal(err)
		}
		if reg.status != http.StatusUnauthorized || !strings.HasPrefix(reg.header.Get("WWW-Authenticate"), "Bearer") {
			t.Fatalf("auth %q: %d, WWW-Authenticate %q", auth, reg.status, reg.header.Get("WWW-Authenticate"))
		}
	}
	// The third failure locked this address out: its wrong tokens get 429
	// (a valid token still registers: TestValidTokenNeverLockedOut).
	reg, err := register(t, testConnect, "Bearer wrong", nil)
	if err != nil {
		t.Fatal(err)
	}
	if reg.status != http.StatusTooManyRequests || reg.header.Get("Retry-After") == "" {
		t.Fatalf("after 3 failures: %d, Retry-After %q", reg.status, reg.header.Get("Retry-After"))
	}
	// A config reload does not lift the lockout (the limiter lives with the
	// pool name, not with one config's handler).
	loadConfig(t, spdyRoute(pool, map[string]any{"max_auth_failures": 3, "retry_after": "3s"}))
	reg, err = register(t, testConnect, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if reg.status != http.StatusTooManyRequests {
		t.Fatalf("after a reload, a locked-out address got %d, want 429", reg.status)
	}
	waitSessions(t, pool, 0)
}

func TestNoAgent503(t *testing.T) {
	tester := loadConfig(t, spdyRoute("empty", map[string]any{"retry_after": "7s"}))
	resp, _ := get(t, tester.Client, "/hello")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "7" {
		t.Fatalf("no agent: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestBigTransfers(t *testing.T) {
	loadConfig(t, spdyRoute("big", nil))
	startAgent(t, "big-A")
	waitSessions(t, "big", 1)
	c := bigClient()
	want := testDataDigest(t, bigSize)

	t.Run("download", func(t *testing.T) {
		resp, err := c.Get(fmt.Sprintf("%s/big?size=%d", testBase, bigSize))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatalf("download after %d bytes: %v", n, err)
		}
		if got := fmt.Sprintf("%x", h.Sum(nil)); n != bigSize || got != want {
			t.Fatalf("download: %d bytes, sha256 %s; want %d, %s", n, got, bigSize, want)
		}
		t.Logf("download: %d bytes, sha256 ok", n)
	})
	t.Run("upload", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, testBase+"/upload", io.LimitReader(newTestData(), bigSize))
		req.ContentLength = bigSize
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != fmt.Sprintf("%d %s", bigSize, want) {
			t.Fatalf("upload: %d %q", resp.StatusCode, b)
		}
		t.Logf("upload: %d bytes, sha256 ok", bigSize)
	})
	t.Run("upload chunked", func(t *testing.T) {
		const size = 32 << 20
		req, _ := http.NewRequest(http.MethodPost, testBase+"/upload", io.NopCloser(io.LimitReader(newTestData(), size)))
		req.ContentLength = -1
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != fmt.Sprintf("%d %s", size, testDataDigest(t, size)) {
			t.Fatalf("chunked upload: %d %q", resp.StatusCode, b)
		}
	})
}

func TestLoadBalancing(t *testing.T) {
	tester := loadConfig(t, spdyRoute("lb", nil))
	a := startAgent(t, "lb-A")
	b := startAgent(t, "lb-B")
	waitSessions(t, "lb", 2)
	held := make(chan string, 16)
	for _, ag := range []*testAgent{a, b} {
		go func(ag *testAgent) {
			for s := range ag.held {
				held <- s
			}
		}(ag)
	}

	// Least open streams: start requests one at a time, each after the
	// previous one is being held by an agent; they must alternate.
	c := bigClient()
	var wg sync.WaitGroup
	counts := map[string]int{}
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(fmt.Sprintf("%s/hold?id=%d", testBase, i))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if _, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != 200 {
				errs <- fmt.Errorf("hold %d: %d %v", i, resp.StatusCode, err)
			}
		}()
		select {
		case s := <-held:
			counts[strings.Split(s, ":")[0]]++
		case <-time.After(10 * time.Second):
			t.Fatalf("request %d never reached an agent", i)
		}
	}
	close(a.release)
	close(b.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if counts["lb-A"] != 2 || counts["lb-B"] != 2 {
		t.Fatalf("concurrent requests not spread by open streams: %v", counts)
	}

	// Sequential requests rotate over idle sessions.
	seq := map[string]int{}
	for range 20 {
		resp, _ := get(t, tester.Client, "/hello")
		if resp.StatusCode != 200 {
			t.Fatalf("GET /hello: %d", resp.StatusCode)
		}
		seq[resp.Header.Get("X-Agent")]++
	}
	if seq["lb-A"] < 5 || seq["lb-B"] < 5 {
		t.Fatalf("sequential requests not spread: %v", seq)
	}
	t.Logf("load-balancing: concurrent held requests lb-A=%d lb-B=%d (least open streams); sequential requests lb-A=%d lb-B=%d",
		counts["lb-A"], counts["lb-B"], seq["lb-A"], seq["lb-B"])
}

func TestAgentKilledMidDownload(t *testing.T) {
	tester := loadConfig(t, spdyRoute("kill", nil))
	agents := map[string]*testAgent{}
	for _, n := range []string{"kill-A", "kill-B"} {
		agents[n] = startAgent(t, n)
	}
	waitSessions(t, "kill", 2)

	const size = 128 << 20
	c := bigClient()
	resp, err := c.Get(fmt.Sprintf("%s/big?size=%d", testBase, size))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	victim := agents[resp.Header.Get("X-Agent")]
	if victim == nil || resp.StatusCode != 200 {
		t.Fatalf("download: %d from %q", resp.StatusCode, resp.Header.Get("X-Agent"))
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	victim.kill()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil {
		t.Fatalf("download ended cleanly after the agent died (%d more bytes): a truncated body looked complete", n)
	}
	t.Logf("client saw the agent's death: %v (after %d+%d of %d bytes)", err, 1<<20, n, size)

	waitSessions(t, "kill", 1)
	var survivor string
	for name, a := range agents {
		if a != victim {
			survivor = name
		}
	}
	for range 5 {
		r, body := get(t, tester.Client, "/hello")
		if r.StatusCode != 200 || r.Header.Get("X-Agent") != survivor {
			t.Fatalf("after kill: %d %q from %q, want %s", r.StatusCode, body, r.Header.Get("X-Agent"), survivor)
		}
	}
}

func TestReloadDuringDownload(t *testing.T) {
	loadConfig(t, spdyRoute("reload", nil))
	a := startAgent(t, "reload-A")
	waitSessions(t, "reload", 1)
	sessionID := allPoolsByName(t)["reload"].Sessions[0].ID

	c := bigClient()
	resp, err := c.Get(fmt.Sprintf("%s/big?size=%d", testBase, bigSize))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, resp.Body, 4<<20); err != nil {
		t.Fatal(err)
	}

	// Reload with a changed config while the download is mid-stream.
	tester := loadConfig(t, spdyRoute("reload", map[string]any{
		"headers": map[string]any{"response": map[string]any{"set": map[string]any{"X-Config": []string{"v2"}}}},
	}))

	rest, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Fatalf("download broken by reload after %d more bytes: %v", rest, err)
	}
	n := int64(4<<20) + rest
	if got, want := fmt.Sprintf("%x", h.Sum(nil)), testDataDigest(t, bigSize); n != bigSize || got != want {
		t.Fatalf("download across reload: %d bytes, sha256 %s; want %d, %s", n, got, bigSize, want)
	}
	if !a.alive() {
		t.Fatal("agent session closed by the reload")
	}
	p := allPoolsByName(t)["reload"]
	if len(p.Sessions) != 1 || p.Sessions[0].ID != sessionID {
		t.Fatalf("pool after reload: %+v, want session %d", p.Sessions, sessionID)
	}
	r, _ := get(t, tester.Client, "/hello")
	if r.StatusCode != 200 || r.Header.Get("X-Config") != "v2" || r.Header.Get("X-Agent") != "reload-A" {
		t.Fatalf("after reload: %d, X-Config %q, X-Agent %q", r.StatusCode, r.Header.Get("X-Config"), r.Header.Get("X-Agent"))
	}
	t.Logf("reload: %d-byte download completed across the config reload with sha256 ok; agent session %d stayed connected; new config active (X-Config: %s)",
		n, sessionID, r.Header.Get("X-Config"))

	// Removing the directive sends GOAWAY and the agent's session ends.
	loadConfig(t, map[string]any{"handler": "static_response", "body": "no spdy here"})
	select {
	case <-a.sess.Done():
		t.Logf("removing spdy_origin closed the agent session: %v", a.sess.Err())
	case <-time.After(15 * time.Second):
		t.Fatal("agent still connected after its pool was removed from the config")
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

// TestClientCancel: a client hanging up resets the agent's stream at once.
func TestClientCancel(t *testing.T) {
	loadConfig(t, spdyRoute("cancel", nil))
	a := startAgent(t, "cancel-A")
	waitSessions(t, "cancel", 1)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, testBase+"/hold?id=c", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := bigClient().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case <-a.held:
	case <-time.After(10 * time.Second):
		t.Fatal("request never reached the agent")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("client error %v", err)
	}
	// The agent's handler sees its request context end (stream reset).
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := allPoolsByName(t)["cancel"]
		if len(p.Sessions) == 1 && p.Sessions[0].OpenStreams == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream still open after client cancel: %+v", p.Sessions)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
