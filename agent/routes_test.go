package agent

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
)

// namedRouter is a hostRouter whose routes answer with their own pattern.
func namedRouter(t *testing.T, log *zap.Logger, patterns ...string) *hostRouter {
	t.Helper()
	var routes []Route
	var handlers []http.Handler
	for _, p := range patterns {
		routes = append(routes, Route{Host: p, Root: "/srv"})
		handlers = append(handlers, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, p)
		}))
	}
	o := Options{Routes: routes}
	checked, err := o.routes()
	if err != nil {
		t.Fatal(err)
	}
	return newHostRouter(checked, handlers, log)
}

func serveHost(rt http.Handler, host string) (int, string, http.Header) {
	req := httptest.NewRequest("GET", "/", nil)
	req.Host = host
	w := httptest.NewRecorder()
	rt.ServeHTTP(w, req)
	return w.Code, w.Body.String(), w.Header()
}

// The most specific route wins: an exact host, then the wildcard with the
// longest suffix, then the catch-all. Case, a port and a trailing dot in
// the Host do not matter; *.example.com is not example.com.
func TestRouteMatching(t *testing.T) {
	withAll := namedRouter(t, zap.NewNop(), "media.example.com", "*.example.com", "*.b.example.com", "Nas.LAN", "*")
	noAll := namedRouter(t, zap.NewNop(), "media.example.com", "*.example.com", "*.b.example.com", "Nas.LAN")
	tests := []struct {
		host, want, wantNoAll string // "" wantNoAll: 421
	}{
		{"media.example.com", "media.example.com", "media.example.com"},
		{"MEDIA.Example.Com", "media.example.com", "media.example.com"},
		{"media.example.com:8443", "media.example.com", "media.example.com"},
		{"media.example.com.", "media.example.com", "media.example.com"},
		{"x.example.com", "*.example.com", "*.example.com"},
		{"x.y.example.com", "*.example.com", "*.example.com"},
		{"x.b.example.com", "*.b.example.com", "*.b.example.com"},
		{"b.example.com", "*.example.com", "*.example.com"},
		{"example.com", "*", ""},
		{"nas.lan:80", "Nas.LAN", "Nas.LAN"}, // the pattern as given
		{"xexample.com", "*", ""},
		{"other.test", "*", ""},
		{"127.0.0.1:8080", "*", ""},
		{"[::1]:443", "*", ""},
		{"", "*", ""},
	}
	for _, tt := range tests {
		if code, body, _ := serveHost(withAll, tt.host); code != 200 || body != tt.want {
			t.Errorf("with a catch-all, Host %q: %d %q, want %q", tt.host, code, body, tt.want)
		}
		code, body, _ := serveHost(noAll, tt.host)
		if tt.wantNoAll == "" {
			if code != http.StatusMisdirectedRequest {
				t.Errorf("without a catch-all, Host %q: %d %q, want 421", tt.host, code, body)
			}
		} else if code != 200 || body != tt.wantNoAll {
			t.Errorf("without a catch-all, Host %q: %d %q, want %q", tt.host, code, body, tt.wantNoAll)
		}
	}
}

// A Host no route serves gets a plain-text 421 that names it and what the
// agent serves. Each such host is logged once, and only the first
// maxLoggedHosts of them: a client can send any Host.
func TestUnroutedHost421(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	rt := namedRouter(t, zap.New(core), "a.test", "*.b.test")
	code, body, hdr := serveHost(rt, "C.test:8443")
	if code != http.StatusMisdirectedRequest || hdr.Get("Content-Type") != "text/plain; charset=utf-8" ||
		body != "spdy-origin-agent: no route for host \"c.test\"; this agent serves a.test, *.b.test\n" {
		t.Fatalf("unrouted host: %d %q %q", code, hdr.Get("Content-Type"), body)
	}
	serveHost(rt, "c.test")
	if n := logs.FilterMessageSnippet("no route serves").Len(); n != 1 {
		t.Fatalf("c.test logged %d times, want once", n)
	}
	for i := range maxLoggedHosts + 50 {
		serveHost(rt, fmt.Sprintf("h%d.test", i))
	}
	serveHost(rt, "late.test")
	if n := logs.FilterMessageSnippet("no route serves").Len(); n != maxLoggedHosts {
		t.Errorf("%d hosts logged, want the first %d", n, maxLoggedHosts)
	}
	if n := logs.FilterMessageSnippet("further ones are not").Len(); n != 1 {
		t.Errorf("'no longer logging' said %d times, want once", n)
	}
	if len(rt.logged) != maxLoggedHosts {
		t.Errorf("%d hosts remembered, want at most %d", len(rt.logged), maxLoggedHosts)
	}
	// A huge Host is cut in the answer.
	if _, body, _ := serveHost(rt, strings.Repeat("x", 5000)); len(body) > 600 {
		t.Errorf("421 body for a 5000-byte Host is %d bytes", len(body))
	}
}

// The unrouted hosts remembered (to log each once) hold their own bytes,
// not the request's Host they were cut from: a Host with a port of a
// quarter megabyte would otherwise stay in memory, maxLoggedHosts times.
func TestUnroutedHostsHoldNoHostHeader(t *testing.T) {
	rt := namedRouter(t, zap.NewNop(), "a.test")
	host := "c.test:" + strings.Repeat("1", 256<<10)
	serveHost(rt, host)
	if len(rt.logged) != 1 {
		t.Fatalf("%d hosts remembered, want 1", len(rt.logged))
	}
	start := uintptr(unsafe.Pointer(unsafe.StringData(host)))
	for k := range rt.logged {
		if p := uintptr(unsafe.Pointer(unsafe.StringData(k))); start <= p && p < start+uintptr(len(host)) {
			t.Fatalf("remembered host %q points into the %d-byte Host header", k, len(host))
		}
	}
}

func TestSplitRoute(t *testing.T) {
	tests := []struct {
		v            string
		isURL        bool
		host, target string
	}{
		{"http://127.0.0.1:8080", true, "", "http://127.0.0.1:8080"},
		{"http://127.0.0.1:8080/?a=b", true, "", "http://127.0.0.1:8080/?a=b"},
		{"media.example.com=http://127.0.0.1:8096", true, "media.example.com", "http://127.0.0.1:8096"},
		{"*.example.com=h2c://127.0.0.1:50051/?x=y", true, "*.example.com", "h2c://127.0.0.1:50051/?x=y"},
		{"*=http://x:1", true, "*", "http://x:1"},
		{"=http://x:1", true, "", "=http://x:1"},
		{"/srv/www", false, "", "/srv/www"},
		{"www.example.com=/srv/www", false, "www.example.com", "/srv/www"},
		{"./a=b", false, "", "./a=b"},
		{"/srv/a=b", false, "", "/srv/a=b"},
		{`C:\srv=x`, false, "", `C:\srv=x`},
		{"public", false, "", "public"},
	}
	for _, tt := range tests {
		if h, target := splitRoute(tt.v, tt.isURL); h != tt.host || target != tt.target {
			t.Errorf("splitRoute(%q, %v) = %q, %q; want %q, %q", tt.v, tt.isURL, h, target, tt.host, tt.target)
		}
	}
}

// Routes are checked at startup, with errors that name the route.
func TestRoutesChecked(t *testing.T) {
	up, _ := url.Parse("http://127.0.0.1:1")
	ftp, _ := url.Parse("ftp://127.0.0.1:1")
	many := make([]Route, handshake.MaxHosts+1)
	for i := range many {
		many[i] = Route{Host: fmt.Sprintf("h%d.test", i), To: up}
	}
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"none", Options{}, "at least one route is required"},
		{"bad pattern", Options{Routes: []Route{{Host: "a.*.test", To: up}}}, `route a.*.test=http://127.0.0.1:1: host pattern "a.*.test": '*' may only be the whole first label`},
		{"port", Options{Routes: []Route{{Host: "a.test:443", To: up}}}, `no port`},
		{"URL as host", Options{Routes: []Route{{Host: "https://a.test", To: up}}}, "not a URL"},
		{"both targets", Options{Routes: []Route{{Host: "a.test", To: up, Root: "/srv"}}}, "route for a.test: give exactly one"},
		{"no target", Options{Routes: []Route{{Host: "a.test"}}}, "give exactly one"},
		{"bad scheme", Options{Routes: []Route{{Host: "a.test", To: ftp}}}, "want http://host:port"},
		{"same host twice", Options{Routes: []Route{{Host: "a.test", To: up}, {Host: "A.test.", Root: "/srv"}}},
			"two routes for host a.test: a.test=http://127.0.0.1:1 and a.test=/srv"},
		{"two catch-alls", Options{To: up, Routes: []Route{{Host: "*", Root: "/srv"}}}, "two routes for every host"},
		{"To and Root", Options{To: up, Root: "/srv"}, "both the route for every host"},
		{"too many", Options{Routes: many}, "101 routes; at most 100"},
	}
	for _, tt := range tests {
		_, err := tt.o.routes()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}

// One agent, several services: it announces its routes' host patterns at
// registration and sends each request to its host's upstream or directory,
// with the Host unchanged.
func TestAgentRoutesByHost(t *testing.T) {
	upstream := func(name string) *url.URL {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s host=%s", name, r.Host)
		}))
		t.Cleanup(srv.Close)
		u, _ := url.Parse(srv.URL)
		return u
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f.txt"), []byte("file"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t)
	o := baseOpts(p)
	o.Routes = []Route{
		{Host: "Media.test", To: upstream("media")},
		{Host: "*.apps.test", To: upstream("apps")},
		{Host: "files.test", Root: dir},
	}
	ta := newTestAgent(t, o, nil)
	if _, err := connectOnce(t, ta, p.url); err != nil {
		t.Fatal(err)
	}
	ps := p.next(t)
	if got := ps.hdr.Get(handshake.HeaderHosts); got != "media.test, *.apps.test, files.test" {
		t.Errorf("announced %q", got)
	}
	for _, c := range []struct{ host, path, want string }{
		{"media.test", "/", "media host=media.test"},
		{"MEDIA.test:443", "/", "media host=MEDIA.test:443"},
		{"ha.apps.test", "/", "apps host=ha.apps.test"},
		{"files.test", "/f.txt", "file"},
	} {
		if code, body := getHost(t, ps.sess, c.host, c.path); code != 200 || body != c.want {
			t.Errorf("Host %s: %d %q, want %q", c.host, code, body, c.want)
		}
	}
	if code, body := getHost(t, ps.sess, "apps.test", "/"); code != http.StatusMisdirectedRequest || !strings.Contains(body, `"apps.test"`) {
		t.Errorf("Host apps.test: %d %q, want 421 naming it", code, body)
	}
	if v := gathered(t, ta, "spdy_origin_agent_requests_total", "code", "421"); v != 1 {
		t.Errorf("requests_total{code=421} = %v", v)
	}
}

// A catch-all route is announced as "*".
func TestAgentAnnouncesCatchAll(t *testing.T) {
	p := newTestProxy(t)
	o := baseOpts(p)
	o.Root = t.TempDir()
	ta := newTestAgent(t, o, nil)
	if _, err := connectOnce(t, ta, p.url); err != nil {
		t.Fatal(err)
	}
	if got := p.next(t).hdr.Get(handshake.HeaderHosts); got != "*" {
		t.Errorf("announced %q, want *", got)
	}
}

// spdy_origin's 403 naming a host the token may not serve says so and what
// to change, and waits long before trying again, as a refused token does:
// only a config change fixes it.
func TestHostRefusedBacksOffLong(t *testing.T) {
	p := newTestProxy(t, answering(http.StatusForbidden, handshake.HeaderRefusedHost, "a.test"))
	msg := threeRetries(t, p, testToken, [3]time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second})
	for _, want := range []string{"the token may not serve a.test", "hosts <pattern...>", "403"} {
		if !strings.Contains(msg, want) {
			t.Errorf("warning %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "blocked") || strings.Contains(msg, "never answers 403") {
		t.Errorf("warning %q takes spdy_origin's own 403 for access control in front of it", msg)
	}
}

// gathered reads a counter from the agent's registry, without the metrics
// endpoint.
func gathered(t *testing.T, ta *testAgent, name, label, value string) float64 {
	t.Helper()
	mfs, err := ta.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, value)
	return 0
}
