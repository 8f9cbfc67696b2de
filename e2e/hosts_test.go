package e2e

// One agent, many services and hostnames, each with its certificate on
// demand: Caddy's catch-all site (`https:// { tls { on_demand } spdy_origin
// }`) with tls.permission.spdy_origin, the real agent routing by Host, and
// clients that reach Caddy by name as curl --resolve does.

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spdy-origin/spdy-origin/agent"
	"github.com/spdy-origin/spdy-origin/caddymodule"
)

// bOnlyToken may serve b.test only.
const bOnlyToken = "e2e-b-only-token-38c1"

// hostsConfig is a config whose only route sends every host to pool
// (registrations come in on localhost), with on-demand certificates from
// Caddy's internal CA allowed by tls.permission.spdy_origin for pool.
// retryAfter changes between loads, to tell a reload happened.
func hostsConfig(pool, retryAfter string) string {
	p := ports()
	cfg := e2eConfigMap(p, pool, map[string]any{
		"retry_after": retryAfter,
		"tokens":      []any{map[string]any{"value": bOnlyToken, "hosts": []string{"b.test"}}},
	}, nil)
	apps := cfg["apps"].(map[string]any)
	srv := apps["http"].(map[string]any)["servers"].(map[string]any)["e2e"].(map[string]any)
	delete(srv["routes"].([]any)[0].(map[string]any), "match") // every host
	internal := []any{map[string]any{"module": "internal"}}
	apps["tls"] = map[string]any{
		// No host matcher names localhost for automatic HTTPS.
		"certificates": map[string]any{"automate": []string{"localhost"}},
		"automation": map[string]any{
			"policies": []any{
				map[string]any{"subjects": []string{"localhost"}, "issuers": internal},
				map[string]any{"issuers": internal, "on_demand": true},
			},
			"on_demand": map[string]any{"permission": map[string]any{"module": "spdy_origin", "pools": []string{pool}}},
		},
	}
	return mustJSON(cfg)
}

// hostClient reaches Caddy's HTTPS port whatever the URL's host, as curl
// --resolve does: the URL's host is the TLS server name (SNI) and the Host,
// and Caddy's certificate is verified with its local CA. Close its
// connections (CloseIdleConnections) before Caddy reloads: a connection
// the old server sent GOAWAY on leaves the client's pool, and would stay
// open until Caddy's grace period ends.
func hostClient(t *testing.T) *http.Client {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", ports().https)
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: caddyRoots(t, true)},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// hostURL is https://host:<Caddy's port>path.
func hostURL(host, path string) string {
	return fmt.Sprintf("https://%s:%d%s", host, ports().https, path)
}

// fetch GETs url (with Host host when not empty) and returns status and
// body; err is a failure before any answer (a refused certificate).
func fetch(c *http.Client, u, host string) (int, string, error) {
	return fetchCtx(context.Background(), c, u, host)
}

func fetchCtx(ctx context.Context, c *http.Client, u, host string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, "", err
	}
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// namedUpstream answers "<name> <Host>" to every request.
func namedUpstream(t *testing.T, name string) *url.URL {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", name, r.Host)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return u
}

// hostsAgent starts the real agent with routes, through its own forwarder.
func hostsAgent(t *testing.T, name, token string, routes ...agent.Route) (*runningAgent, *tcpForwarder) {
	t.Helper()
	fwd := newTCPForwarder(t, fmt.Sprintf("127.0.0.1:%d", ports().https))
	proxy, _ := url.Parse(fmt.Sprintf("https://localhost:%d/.well-known/spdy-origin", fwd.port()))
	return startAgent(t, agent.Options{
		Proxies:      []*url.URL{proxy},
		Token:        token,
		Routes:       routes,
		CAFile:       caddyRootFile(),
		Connections:  1,
		Name:         name,
		DrainTimeout: time.Second,
	}), fwd
}

// tlsRefused reports whether Caddy refuses a TLS handshake for name.
func tlsRefused(t *testing.T, name string) error {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", ports().https),
		&tls.Config{ServerName: name, RootCAs: caddyRoots(t, true)})
	if err == nil {
		conn.Close()
		return fmt.Errorf("TLS handshake for %s succeeded (certificate %v)", name, conn.ConnectionState().PeerCertificates[0].DNSNames)
	}
	return nil
}

func sessionHosts(t *testing.T, pool string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, s := range poolState(t, pool).Sessions {
		out[s.Agent.Name] = s.Hosts
	}
	return out
}

// One agent announcing a.test, b.test and *.w.test, routed to two
// upstreams; certificates on demand for what it announces, and for nothing
// else; a token limited to b.test cannot take a.test; a later agent's
// hostname is online over HTTPS at once, and only while it is connected;
// a config reload keeps the announcements.
func TestHostsOnDemandCertificates(t *testing.T) {
	pool := "hosts-e2e"
	loadCaddy(t, hostsConfig(pool, "5s"))
	upA, upB := namedUpstream(t, "upstream-a"), namedUpstream(t, "upstream-b")
	hostsAgent(t, "home", e2eToken,
		agent.Route{Host: "a.test", To: upA}, agent.Route{Host: "b.test", To: upB}, agent.Route{Host: "*.w.test", To: upB})
	waitUntil(t, 10*time.Second, "the agent's session", func() bool { return len(poolState(t, pool).Sessions) == 1 })
	if got := sessionHosts(t, pool)["home"]; !slices.Equal(got, []string{"a.test", "b.test", "*.w.test"}) {
		t.Fatalf("admin API: the agent announced %v", got)
	}

	c := hostClient(t)
	for host, want := range map[string]string{"a.test": "upstream-a a.test", "b.test": "upstream-b b.test", "x.w.test": "upstream-b x.w.test"} {
		code, body, err := fetch(c, hostURL(host, "/"), "")
		if err != nil || code != 200 || !strings.HasPrefix(body, want) {
			t.Fatalf("https://%s/: %d %q %v; want 200 %q", host, code, body, err, want)
		}
	}

	// Nobody announces c.test: no certificate, and on the connection made
	// for a.test, a request for c.test gets a 503 that names it.
	if err := tlsRefused(t, "c.test"); err != nil {
		t.Fatal(err)
	}
	reused := false
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
	code, body, err := fetchCtx(ctx, c, hostURL("a.test", "/"), "c.test")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, `no agent serves "c.test"`) || !reused {
		t.Fatalf("Host c.test on the a.test connection (reused: %v): %d %q %v; want 503 naming c.test", reused, code, body, err)
	}
	c.CloseIdleConnections()

	// A token limited to b.test cannot announce a.test: 403 naming it.
	intruder, _ := hostsAgent(t, "intruder", bOnlyToken, agent.Route{Host: "a.test", To: upB})
	waitUntil(t, 10*time.Second, "the intruder's refusal", func() bool {
		return intruder.logs.FilterMessageSnippet("cannot connect").FilterFieldKey("error").Len() > 0
	})
	refusal := fmt.Sprint(intruder.logs.FilterMessageSnippet("cannot connect").All()[0].ContextMap()["error"])
	if !strings.Contains(refusal, "403") || !strings.Contains(refusal, "the token may not serve a.test") {
		t.Fatalf("the intruder was told %q; want a 403 naming a.test", refusal)
	}
	intruder.cancel()
	<-intruder.done
	if n := len(poolState(t, pool).Sessions); n != 1 {
		t.Fatalf("%d sessions after the intruder; want the first agent's only", n)
	}

	// A later agent's hostname: online over HTTPS as soon as it connects.
	upD := namedUpstream(t, "upstream-d")
	start := time.Now()
	later, _ := hostsAgent(t, "later", e2eToken, agent.Route{Host: "d.test", To: upD}, agent.Route{Host: "*.d.test", To: upD})
	var took time.Duration
	for {
		dc := hostClient(t)
		code, body, err := fetch(dc, hostURL("d.test", "/"), "")
		dc.CloseIdleConnections()
		if err == nil && code == 200 && strings.HasPrefix(body, "upstream-d") {
			took = time.Since(start)
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("d.test not served within 10 s: %d %q %v", code, body, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	connected := later.logs.FilterMessage("connected to proxy").All()
	if len(connected) == 0 {
		t.Fatal("the later agent did not log its connection")
	}
	t.Logf("d.test: agent started → first HTTPS 200 (fresh on-demand certificate) in %v; agent registered after %v, first 200 %v after that",
		took.Round(time.Millisecond), connected[0].Time.Sub(start).Round(time.Millisecond), start.Add(took).Sub(connected[0].Time).Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("d.test took %v from the agent's start to the first HTTPS 200; want under 2 s", took)
	}

	// The agent leaves: new certificates for its names are refused.
	later.cancel()
	<-later.done
	waitUntil(t, 10*time.Second, "the later agent's session to leave", func() bool { return len(poolState(t, pool).Sessions) == 1 })
	if err := tlsRefused(t, "x.d.test"); err != nil {
		t.Fatalf("after the agent left: %v", err)
	}
	perm := &caddymodule.Permission{Pools: []string{pool}}
	if err := perm.CertificateAllowed(context.Background(), "d.test"); err == nil || !strings.Contains(err.Error(), `"d.test"`) {
		t.Fatalf("a new certificate for d.test after its agent left: %v; want refused", err)
	}

	// A reload keeps the sessions and what they announced, and the
	// permission its index: a new name under *.w.test gets its certificate.
	before := poolState(t, pool).Sessions[0].ID
	loadCaddy(t, hostsConfig(pool, "6s"))
	c = hostClient(t)
	code, _, err = fetch(c, hostURL("a.test", "/"), "c.test")
	if err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("after the reload, Host c.test: %d %v", code, err)
	}
	st := poolState(t, pool)
	if len(st.Sessions) != 1 || st.Sessions[0].ID != before || !slices.Equal(st.Sessions[0].Hosts, []string{"a.test", "b.test", "*.w.test"}) {
		t.Fatalf("after the reload: %+v; want session %d with its hosts", st.Sessions, before)
	}
	if code, body, err := fetch(c, hostURL("new.w.test", "/"), ""); err != nil || code != 200 || !strings.HasPrefix(body, "upstream-b new.w.test") {
		t.Fatalf("after the reload, https://new.w.test/: %d %q %v", code, body, err)
	}
}

// Two agents announcing the same host share its requests; when one dies,
// the other takes them all.
func TestHostsSharedByTwoAgents(t *testing.T) {
	pool := "hosts-shared"
	loadCaddy(t, hostsConfig(pool, "5s"))
	up1, up2 := namedUpstream(t, "one"), namedUpstream(t, "two")
	_, fwd1 := hostsAgent(t, "one", e2eToken, agent.Route{Host: "shared.test", To: up1})
	hostsAgent(t, "two", e2eToken, agent.Route{Host: "shared.test", To: up2}, agent.Route{Host: "two.test", To: up2})
	waitUntil(t, 10*time.Second, "both sessions", func() bool { return len(poolState(t, pool).Sessions) == 2 })

	c := hostClient(t)
	count := func(n int) map[string]int {
		seen := map[string]int{}
		for range n {
			code, body, err := fetch(c, hostURL("shared.test", "/"), "")
			if err != nil || code != 200 {
				t.Fatalf("https://shared.test/: %d %q %v", code, body, err)
			}
			seen[strings.Fields(body)[0]]++
		}
		return seen
	}
	if seen := count(20); seen["one"] < 5 || seen["two"] < 5 {
		t.Fatalf("20 requests for shared.test: %v; want both agents to take a share", seen)
	}
	fwd1.close() // its connection reset and no way back: the agent's process died
	waitUntil(t, 10*time.Second, "agent one's session to leave", func() bool { return len(poolState(t, pool).Sessions) == 1 })
	if seen := count(20); seen["two"] != 20 {
		t.Fatalf("after agent one died: %v; want all 20 on two", seen)
	}
}
