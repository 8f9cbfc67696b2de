package e2e

// Access control in front of a tunnelled site: the recipes of README's "Protecting
// your site", loaded as the README writes them (only the site address and the
// forward_auth gateway's address replaced), with the real agent and an upstream that
// records every request reaching it, so that "the agent never saw it" is a fact
// about the upstream, not a status code.

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/spdy-origin/spdy-origin/agent"
	"github.com/spdy-origin/spdy-origin/internal/handshake"
)

// The headings of README's recipes, each over one Caddyfile block.
const (
	recipeBasicAuth   = "Password: `basic_auth`"
	recipeForwardAuth = "Single sign-on: `forward_auth` to Authelia, Authentik or oauth2-proxy"
	recipeRemoteIP    = "Addresses: a `remote_ip` allowlist"
	recipeAgentIPs    = "Addresses for agents too: a matcher on `spdy_origin_register`"
	recipePerPath     = "An open API, the rest behind a login"
)

// readmeSite is the site address the README's recipes use.
const readmeSite = "home.example.com"

// The credentials of the README's basic_auth recipes, and the gateway's session
// cookie in the forward_auth test.
const (
	aliceUser, alicePassword = "alice", "change me"
	sessionCookie            = "authelia_session=alice-session"
)

// readmeRecipes returns the Caddyfile blocks of README's "Protecting your site"
// section by the ### heading they are under.
func readmeRecipes(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Protecting your site\n")
	if !ok {
		t.Fatal(`README has no "## Protecting your site" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	recipes := map[string]string{}
	var heading string
	var block *strings.Builder
	for line := range strings.Lines(section) {
		switch {
		case block != nil && strings.TrimSpace(line) == "```":
			if heading == "" || recipes[heading] != "" {
				t.Fatalf("README: a Caddyfile block under %q that is not its heading's only recipe", heading)
			}
			recipes[heading] = block.String()
			block = nil
		case block != nil:
			block.WriteString(line)
		case strings.HasPrefix(line, "### "):
			heading = strings.TrimSpace(strings.TrimPrefix(line, "### "))
		case strings.TrimSpace(line) == "```caddyfile":
			block = new(strings.Builder)
		}
	}
	return recipes
}

// recipe returns the README's recipe under heading, its site address as {site}.
func recipe(t *testing.T, heading string) string {
	t.Helper()
	r, ok := readmeRecipes(t)[heading]
	if !ok || !strings.Contains(r, readmeSite+" {") {
		t.Fatalf("README has no recipe for site %s under %q", readmeSite, heading)
	}
	return strings.ReplaceAll(r, readmeSite, "{site}")
}

// Every recipe in the README is one these tests load, and the other way round.
func TestReadmeRecipesAreTested(t *testing.T) {
	tested := map[string]bool{recipeBasicAuth: true, recipeForwardAuth: true, recipeRemoteIP: true, recipeAgentIPs: true, recipePerPath: true}
	for heading := range readmeRecipes(t) {
		if !tested[heading] {
			t.Errorf("README recipe %q has no test in e2e/access_test.go", heading)
		}
		delete(tested, heading)
	}
	for heading := range tested {
		t.Errorf("README has no recipe %q any more", heading)
	}
}

// accessUpstream is the --to server: it records every request, echoes WebSockets
// on paths ending in /ws, and answers anything else with its method and URI.
type accessUpstream struct {
	url  *url.URL
	mu   sync.Mutex
	seen []http.Header // the headers of every request, X-Attempt included
}

func newAccessUpstream(t *testing.T) *accessUpstream {
	t.Helper()
	u := &accessUpstream{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Header.Clone())
		u.mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/ws") {
			c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				typ, msg, err := c.Read(r.Context())
				if err != nil || c.Write(r.Context(), typ, msg) != nil {
					return
				}
			}
		}
		w.Header().Set("X-Seen-Remote-User", r.Header.Get("Remote-User"))
		fmt.Fprintf(w, "app: %s %s", r.Method, r.URL.RequestURI())
	}))
	t.Cleanup(srv.Close)
	u.url, _ = url.Parse(srv.URL)
	return u
}

// saw returns the headers of the request tagged X-Attempt: attempt, or nil.
func (u *accessUpstream) saw(attempt string) http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, h := range u.seen {
		if h.Get("X-Attempt") == attempt {
			return h
		}
	}
	return nil
}

// protectedSite is a recipe loaded into Caddy, its upstream and the real agent.
type protectedSite struct {
	t     *testing.T
	up    *accessUpstream
	agent *runningAgent
	name  string // the agent's --name
}

// setupRecipe loads site (a recipe, {site} for its address) with SPDY_ORIGIN_TOKEN
// set, starts an upstream and the real agent (through a forwarder, from 127.0.0.1),
// and, with registers, waits for the agent's session in the recipes' pool.
func setupRecipe(t *testing.T, site string, registers bool) *protectedSite {
	t.Helper()
	t.Setenv("SPDY_ORIGIN_TOKEN", e2eToken)
	up := newAccessUpstream(t)
	loadCaddyfile(t, site)
	fwd := newTCPForwarder(t, fmt.Sprintf("127.0.0.1:%d", ports().https))
	proxy, _ := url.Parse(fmt.Sprintf("https://localhost:%d/.well-known/spdy-origin", fwd.port()))
	s := &protectedSite{t: t, up: up, name: "access-" + strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())}
	s.agent = startAgent(t, agent.Options{
		Proxies: []*url.URL{proxy}, Token: e2eToken, To: up.url, CAFile: caddyRootFile(),
		Connections: 1, Name: s.name, DrainTimeout: time.Second,
	})
	if registers {
		waitUntil(t, 10*time.Second, "the agent's session", s.registered)
	}
	return s
}

// registered reports whether the recipes' pool has exactly one session, this
// site's agent's.
func (s *protectedSite) registered() bool {
	ss := poolState(s.t, "default").Sessions
	return len(ss) == 1 && ss[0].Agent.Name == s.name
}

// request sends method path (tagged X-Attempt: attempt) with hdr over HTTP/1.1 and
// fails the test if the upstream saw it and want is not 200.
func (s *protectedSite) request(method, path, attempt string, want int, hdr ...string) *http.Response {
	s.t.Helper()
	req, err := http.NewRequest(method, fmt.Sprintf("https://localhost:%d%s", ports().https, path), nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("X-Attempt", attempt)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := h1Client(s.t, 0).Do(req)
	if err != nil {
		s.t.Fatalf("%s: %v", attempt, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		s.t.Errorf("%s: %d %q, want %d", attempt, resp.StatusCode, body, want)
	}
	if seen := s.up.saw(attempt) != nil; seen != (want == http.StatusOK) {
		s.t.Errorf("%s: the upstream saw it: %v", attempt, seen)
	}
	return resp
}

// webSocket opens a WebSocket to path with hdr (tagged X-Attempt: attempt) and
// echoes a message on it; with want other than 101 it checks that the upgrade got
// that status and never reached the upstream.
func (s *protectedSite) webSocket(path, attempt string, want int, hdr ...string) {
	s.t.Helper()
	h := http.Header{"X-Attempt": {attempt}}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, fmt.Sprintf("wss://localhost:%d%s", ports().https, path),
		&websocket.DialOptions{HTTPClient: h1Client(s.t, 0), HTTPHeader: h, CompressionMode: websocket.CompressionDisabled})
	if want != http.StatusSwitchingProtocols {
		if err == nil || resp == nil || resp.StatusCode != want {
			s.t.Errorf("WebSocket %s: %v, want status %d", attempt, err, want)
		}
		if err == nil {
			c.CloseNow()
		}
		if s.up.saw(attempt) != nil {
			s.t.Errorf("WebSocket %s reached the upstream", attempt)
		}
		return
	}
	if err != nil {
		s.t.Fatalf("WebSocket %s: %v", attempt, err)
	}
	defer c.CloseNow()
	if err := echo(ctx, c, websocket.MessageText, []byte("through the login")); err != nil {
		s.t.Fatalf("WebSocket %s: %v", attempt, err)
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// aliceAuth is the Authorization header of the README's basic_auth credentials.
func aliceAuth() string {
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth(aliceUser, alicePassword)
	return r.Header.Get("Authorization")
}

// basic_auth in front of a tunnelled site: the agent registers; a client without
// (or with wrong) credentials gets basic_auth's 401 and the upstream never sees the
// request; with credentials, requests and WebSockets go through.
func TestProtectBasicAuth(t *testing.T) {
	s := setupRecipe(t, recipe(t, recipeBasicAuth), true)
	resp := s.request(http.MethodGet, "/", "no credentials", http.StatusUnauthorized)
	if c := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(c, "Basic") {
		t.Errorf("challenge %q, want basic_auth's", c)
	}
	s.request(http.MethodGet, "/", "wrong password", http.StatusUnauthorized, "Authorization", "Basic YWxpY2U6bm9wZQ==")
	s.request(http.MethodGet, "/", "alice", http.StatusOK, "Authorization", aliceAuth())
	s.request(http.MethodPost, "/form", "alice posts", http.StatusOK, "Authorization", aliceAuth())
	s.webSocket("/ws", "websocket without credentials", http.StatusUnauthorized)
	s.webSocket("/ws", "websocket of alice", http.StatusSwitchingProtocols, "Authorization", aliceAuth())
}

// No spelling of the connect path, no other method or protocol on it, and no
// request riding on a registration gets past basic_auth: each gets basic_auth's
// challenge, or, when it is a registration (a PUT over HTTP/1.1 to the exact path),
// spdy_origin's refusal (401, or 429 once this address is locked out); none reaches
// the upstream.
func TestProtectBypassAttempts(t *testing.T) {
	s := setupRecipe(t, recipe(t, recipeBasicAuth), true)
	const (
		challenge = "basic_auth's 401"
		refusal   = "spdy_origin's registration refusal"
	)
	bearer := "Authorization: Bearer " + e2eToken + "\r\n"
	cases := []struct {
		name    string
		request string // raw HTTP/1.1: request line and headers; Host and X-Attempt are added
		h2      string // instead: method and path over HTTP/2, with the agent's token
		want    string
		// keepAlive: the request does not ask Caddy to close the connection
		// after its answer (the pipelined request must not be served anyway).
		keepAlive bool
	}{
		{name: "trailing slash", request: "PUT /.well-known/spdy-origin/ HTTP/1.1\r\n" + bearer, want: challenge},
		{name: "double slash", request: "PUT //.well-known/spdy-origin HTTP/1.1\r\n" + bearer, want: challenge},
		{name: "encoded dot", request: "PUT /%2ewell-known/spdy-origin HTTP/1.1\r\n" + bearer, want: challenge},
		{name: "encoded slash", request: "PUT /.well-known%2Fspdy-origin HTTP/1.1\r\n" + bearer, want: challenge},
		{name: "dot segment", request: "PUT /.well-known/./spdy-origin HTTP/1.1\r\n" + bearer, want: challenge},
		{name: "dot-dot segment", request: "PUT /x/../.well-known/spdy-origin HTTP/1.1\r\n" + bearer, want: challenge},
		{name: "upper case", request: "PUT /.WELL-KNOWN/SPDY-ORIGIN HTTP/1.1\r\n" + bearer, want: challenge},
		{name: "GET", request: "GET /.well-known/spdy-origin HTTP/1.1\r\n" + bearer, want: challenge},
		{name: "HEAD", request: "HEAD /.well-known/spdy-origin HTTP/1.1\r\n", want: challenge},
		{name: "OPTIONS", request: "OPTIONS /.well-known/spdy-origin HTTP/1.1\r\n", want: challenge},
		{name: "POST with a body", request: "POST /.well-known/spdy-origin HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", want: challenge},
		{name: "HTTP/2 PUT", h2: "PUT /.well-known/spdy-origin", want: challenge},
		{name: "HTTP/2 GET", h2: "GET /.well-known/spdy-origin", want: challenge},
		{name: "registration without a token", request: "PUT /.well-known/spdy-origin HTTP/1.1\r\n", want: refusal},
		{name: "registration with a query", request: "PUT /.well-known/spdy-origin?x=1 HTTP/1.1\r\nAuthorization: Bearer wrong\r\n", want: refusal},
		{name: "registration with the client's login", request: "PUT /.well-known/spdy-origin HTTP/1.1\r\nAuthorization: " + aliceAuth() + "\r\n", want: refusal},
		{name: "registration with a body", request: "PUT /.well-known/spdy-origin HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello agent", want: refusal},
		{name: "registration in absolute form", request: fmt.Sprintf("PUT https://localhost:%d/.well-known/spdy-origin HTTP/1.1\r\n", ports().https), want: refusal},
		{name: "request pipelined behind a registration",
			request:   "PUT /.well-known/spdy-origin HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\nX-Attempt: request pipelined behind a registration\r\nAuthorization: " + aliceAuth() + "\r\n\r\n",
			want:      refusal,
			keepAlive: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var resp *http.Response
			if tc.h2 != "" {
				method, path, _ := strings.Cut(tc.h2, " ")
				resp = h2Request(t, method, path, http.Header{"X-Attempt": {tc.name}, "Authorization": {"Bearer " + e2eToken}})
			} else {
				resp = rawRequest(t, tc.request, tc.name, tc.keepAlive)
			}
			got := resp.Header.Get("WWW-Authenticate")
			switch tc.want {
			case challenge:
				if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(got, "Basic") {
					t.Errorf("%d, WWW-Authenticate %q; want basic_auth's 401", resp.StatusCode, got)
				}
			case refusal:
				// spdy_origin's 401, or its 429 once this address has sent
				// too many wrong tokens (under -count=N).
				refused := &handshake.StatusError{StatusCode: resp.StatusCode, Header: resp.Header}
				locked := resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") != ""
				if !refused.TokenRejected() && !locked {
					t.Errorf("%d, WWW-Authenticate %q; want spdy_origin's 401 (or 429)", resp.StatusCode, got)
				}
			default:
				t.Fatalf("case wants %q", tc.want)
			}
			if s.up.saw(tc.name) != nil {
				t.Errorf("the upstream saw %s", tc.name)
			}
		})
	}
	// Once authenticated, the same requests are ordinary ones, except on the
	// connect path itself, which is never proxied.
	s.request(http.MethodGet, "/.well-known/spdy-origin", "alice on the connect path", http.StatusMethodNotAllowed, "Authorization", aliceAuth())
	s.request(http.MethodPut, "/.well-known/spdy-origin/", "alice with a trailing slash", http.StatusOK, "Authorization", aliceAuth())
}

// rawRequest writes request (with Host, X-Attempt: attempt and, unless keepAlive,
// Connection: close added after its request line) on a new HTTP/1.1 TLS connection
// to Caddy and reads the answer. The connection must then be closed by Caddy
// without another answer.
func rawRequest(t *testing.T, request, attempt string, keepAlive bool) *http.Response {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", ports().https),
		&tls.Config{ServerName: "localhost", RootCAs: caddyRoots(t, true), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	line, rest, _ := strings.Cut(request, "\r\n")
	if !strings.Contains(rest, "\r\n\r\n") {
		rest += "\r\n"
	}
	added := "Host: localhost\r\nX-Attempt: " + attempt + "\r\n"
	if !keepAlive {
		added += "Connection: close\r\n"
	}
	if _, err := io.WriteString(conn, line+"\r\n"+added+rest); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(line, " ")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if extra, err := http.ReadResponse(br, nil); err == nil {
		t.Errorf("a second answer on the connection: %d", extra.StatusCode)
	}
	return resp
}

// h2Request sends method path with hdr to Caddy over HTTP/2, on a connection of its
// own that it closes.
func h2Request(t *testing.T, method, path string, hdr http.Header) *http.Response {
	t.Helper()
	var conn net.Conn
	tr := &http.Transport{
		ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := &tls.Dialer{Config: &tls.Config{ServerName: "localhost", RootCAs: caddyRoots(t, true), NextProtos: []string{"h2"}}}
			c, err := d.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", ports().https))
			conn = c
			return c, err
		},
	}
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	req, err := http.NewRequest(method, fmt.Sprintf("https://localhost:%d%s", ports().https, path), strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = hdr
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
	}
	return resp
}

// forwardAuthGateway stands in for Authelia's forward-auth endpoint: a request
// whose cookies hold alice's session is allowed (200 with Remote-* headers), any
// other gets 401. It records every request it sees.
type forwardAuthGateway struct {
	addr string
	mu   sync.Mutex
	seen []*http.Request
}

func newForwardAuthGateway(t *testing.T) *forwardAuthGateway {
	t.Helper()
	g := &forwardAuthGateway{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		g.seen = append(g.seen, r.Clone(context.Background()))
		g.mu.Unlock()
		if r.URL.Path != "/api/authz/forward-auth" || !strings.Contains(r.Header.Get("Cookie"), sessionCookie) {
			http.Error(w, "log in at https://auth.example.com/", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Remote-User", "alice")
		w.Header().Set("Remote-Groups", "admins")
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	g.addr = srv.Listener.Addr().String()
	return g
}

// forward_auth to a single sign-on gateway: the agent registers without the
// gateway ever seeing its registration; clients without a session are refused by
// the gateway and never reach the upstream; with a session, requests and
// WebSockets go through, carrying the gateway's Remote-User.
func TestProtectForwardAuth(t *testing.T) {
	gw := newForwardAuthGateway(t)
	site := recipe(t, recipeForwardAuth)
	if !strings.Contains(site, "127.0.0.1:9091") {
		t.Fatal("the forward_auth recipe no longer names 127.0.0.1:9091")
	}
	s := setupRecipe(t, strings.ReplaceAll(site, "127.0.0.1:9091", gw.addr), true)

	s.request(http.MethodGet, "/", "no session", http.StatusUnauthorized)
	s.request(http.MethodGet, "/", "stale session", http.StatusUnauthorized, "Cookie", "authelia_session=expired")
	s.request(http.MethodGet, "/photos?id=7", "alice", http.StatusOK, "Cookie", sessionCookie)
	if user := s.up.saw("alice").Get("Remote-User"); user != "alice" {
		t.Errorf("the upstream got Remote-User %q, want the gateway's alice", user)
	}
	s.webSocket("/ws", "websocket without a session", http.StatusUnauthorized)
	s.webSocket("/ws", "websocket of alice", http.StatusSwitchingProtocols, "Cookie", sessionCookie)
	if user := s.up.saw("websocket of alice").Get("Remote-User"); user != "alice" {
		t.Errorf("the WebSocket upgrade reached the upstream with Remote-User %q, want alice", user)
	}

	gw.mu.Lock()
	defer gw.mu.Unlock()
	var alice bool
	for _, r := range gw.seen {
		if r.Header.Get("X-Forwarded-Uri") == "/.well-known/spdy-origin" || r.Header.Get("X-Forwarded-Method") == http.MethodPut ||
			strings.HasPrefix(r.Header.Get("Authorization"), "Bearer") {
			t.Errorf("the gateway saw the agent's registration: %s %v", r.Method, r.Header)
		}
		alice = alice || r.Header.Get("X-Forwarded-Uri") == "/photos?id=7"
	}
	if !alice {
		t.Errorf("the gateway never saw alice's request (%d requests)", len(gw.seen))
	}
}

// A remote_ip allowlist that leaves out 127.0.0.1, where the clients and the agent
// both are: clients are aborted (or get 403), and the agent registers anyway,
// because spdy_origin_register answers it before the rule.
func TestProtectRemoteIP(t *testing.T) {
	site := recipe(t, recipeRemoteIP)
	t.Run("abort", func(t *testing.T) {
		s := setupRecipe(t, site, true)
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://localhost:%d/", ports().https), nil)
		req.Header.Set("X-Attempt", "outsider")
		if resp, err := h1Client(t, 0).Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("outsider got %d, want the connection aborted", resp.StatusCode)
		}
		if s.up.saw("outsider") != nil {
			t.Error("the upstream saw the outsider")
		}
	})
	t.Run("respond 403", func(t *testing.T) {
		if !strings.Contains(site, "abort @outside") {
			t.Fatal("the remote_ip recipe no longer has `abort @outside`")
		}
		s := setupRecipe(t, strings.Replace(site, "abort @outside", "respond @outside 403", 1), true)
		s.request(http.MethodGet, "/", "outsider", http.StatusForbidden)
		s.webSocket("/ws", "outsider's websocket", http.StatusForbidden)
	})
}

// With a matcher, spdy_origin_register answers only the agents it matches ahead of
// the rules: an agent elsewhere is aborted like a client, and says so.
func TestProtectAgentAddresses(t *testing.T) {
	site := recipe(t, recipeAgentIPs)
	if !strings.Contains(site, "@agents remote_ip 203.0.113.7") {
		t.Fatal("the recipe no longer matches agents at 203.0.113.7")
	}
	t.Run("agent elsewhere", func(t *testing.T) {
		s := setupRecipe(t, site, false)
		waitUntil(t, 10*time.Second, "the agent's warning", func() bool {
			return s.agent.logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("cannot connect").Len() > 0
		})
		warn := s.agent.logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("cannot connect").All()[0]
		if msg := fmt.Sprint(warn.ContextMap()["error"]); !strings.Contains(msg, "closed the connection without answering") || !strings.Contains(msg, "abort") {
			t.Errorf("agent says %q", msg)
		}
		if s.registered() {
			t.Error("the agent registered from outside @agents")
		}
	})
	t.Run("agent at a matched address", func(t *testing.T) {
		setupRecipe(t, strings.Replace(site, "203.0.113.7", "127.0.0.1", 1), true)
	})
}

// Per path: the API is open, requests and WebSockets alike; everything else needs
// the login.
func TestProtectPerPath(t *testing.T) {
	s := setupRecipe(t, recipe(t, recipePerPath), true)
	s.request(http.MethodGet, "/api/status", "api", http.StatusOK)
	s.request(http.MethodGet, "/", "ui", http.StatusUnauthorized)
	s.request(http.MethodGet, "/", "ui of alice", http.StatusOK, "Authorization", aliceAuth())
	s.webSocket("/api/ws", "api websocket", http.StatusSwitchingProtocols)
	s.webSocket("/ws", "ui websocket", http.StatusUnauthorized)
	s.webSocket("/ws", "ui websocket of alice", http.StatusSwitchingProtocols, "Authorization", aliceAuth())
}

// The Caddyfile a new user writes first (the basic_auth recipe without
// spdy_origin_register): basic_auth answers the agent's registration. The agent
// must say that its registration was blocked before it reached spdy_origin, point
// at spdy_origin_register, not at its (good) token, and keep retrying at the
// ordinary backoff rather than the minute-long one for a refused token.
func TestAgentBehindForeignAuth(t *testing.T) {
	site := recipe(t, recipeBasicAuth)
	natural := strings.Replace(site, "\tspdy_origin_register\n", "", 1)
	if natural == site {
		t.Fatal("the basic_auth recipe has no spdy_origin_register line")
	}
	s := setupRecipe(t, natural, false)
	attempts := func() []observer.LoggedEntry {
		return s.agent.logs.FilterMessageSnippet("cannot connect to proxy").All()
	}
	waitUntil(t, 15*time.Second, "three registration attempts", func() bool { return len(attempts()) >= 3 })
	for i, e := range attempts()[:3] {
		fields := e.ContextMap()
		msg := fmt.Sprint(fields["error"])
		for _, want := range []string{"blocked before it reached spdy_origin", `WWW-Authenticate: Basic`, "not spdy_origin's token check", "spdy_origin_register"} {
			if !strings.Contains(msg, want) {
				t.Errorf("attempt %d: agent says %q, without %q", i+1, msg, want)
			}
		}
		if strings.Contains(msg, "token rejected") || strings.Contains(msg, "check --token") {
			t.Errorf("attempt %d: agent blames the token: %q", i+1, msg)
		}
		if d, ok := fields["retry_in"].(time.Duration); !ok || d > 5*time.Second {
			t.Errorf("attempt %d: retry in %v, want the ordinary backoff (well under the minute of a refused token)", i+1, fields["retry_in"])
		}
	}
	if e := attempts()[0]; e.Level != zapcore.WarnLevel {
		t.Errorf("the first failure is logged at %s, want warn", e.Level)
	}
	if s.registered() {
		t.Error("the agent registered through basic_auth")
	}
	s.up.mu.Lock()
	defer s.up.mu.Unlock()
	if len(s.up.seen) != 0 {
		t.Errorf("the upstream saw %d requests", len(s.up.seen))
	}
}
