package agent

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
)

// endpointGet fetches path from the agent's --metrics-addr server.
func endpointGet(t *testing.T, ta *testAgent, path string) (int, string) {
	t.Helper()
	waitFor(t, func() bool { return ta.endpointAddr() != "" })
	resp, err := http.Get("http://" + ta.endpointAddr() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// sample is one line of the text exposition format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

func parseSamples(t *testing.T, body string) []sample {
	t.Helper()
	var out []sample
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unparsable metrics line %q", line)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		s := sample{name: m[1], labels: map[string]string{}, value: v}
		for _, lp := range labelPair.FindAllStringSubmatch(m[2], -1) {
			s.labels[lp[1]] = lp[2]
		}
		out = append(out, s)
	}
	return out
}

// scrape returns the value of the one series of name whose labels include
// want ("k", "v", ...), and whether it exists.
func scrape(t *testing.T, ta *testAgent, name string, want ...string) (float64, bool) {
	t.Helper()
	code, body := endpointGet(t, ta, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	found, val := 0, 0.0
	for _, s := range parseSamples(t, body) {
		if s.name != name {
			continue
		}
		match := true
		for i := 0; i+1 < len(want); i += 2 {
			if s.labels[want[i]] != want[i+1] {
				match = false
			}
		}
		if match {
			found++
			val = s.value
		}
	}
	if found > 1 {
		t.Fatalf("%s%v: %d series match", name, want, found)
	}
	return val, found == 1
}

func mustScrape(t *testing.T, ta *testAgent, name string, want ...string) float64 {
	t.Helper()
	v, ok := scrape(t, ta, name, want...)
	if !ok {
		_, body := endpointGet(t, ta, "/metrics")
		t.Fatalf("no series %s%v in\n%s", name, want, body)
	}
	return v
}

// gatedProxy is a test proxy that refuses registrations (503) while closed.
func gatedProxy(t *testing.T) (*testProxy, *atomic.Bool) {
	open := &atomic.Bool{}
	p := newTestProxy(t, withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
		if open.Load() {
			return false
		}
		http.Error(w, "no", http.StatusServiceUnavailable)
		return true
	}))
	return p, open
}

// TestHealthFollowsSessions: /healthz and /readyz are 503 (with the reason)
// before the first session, 200 while it is up, and 503 again once it is
// gone and the proxy refuses new ones.
func TestHealthFollowsSessions(t *testing.T) {
	p, open := gatedProxy(t)
	o := baseOpts(p)
	o.To = upstreamMux(t)
	o.MetricsAddr = "127.0.0.1:0"
	ta := newTestAgent(t, o, nil)
	ta.start(t)

	waitFor(t, func() bool { return p.attempts.Load() >= 2 })
	for _, path := range []string{"/healthz", "/readyz"} {
		code, body := endpointGet(t, ta, path)
		if code != 503 || !strings.Contains(body, p.url.Redacted()+": down: connection 0 failed") || !strings.Contains(body, "503") {
			t.Fatalf("%s before any session: %d %q", path, code, body)
		}
	}

	open.Store(true)
	ps := p.next(t)
	waitFor(t, func() bool { c, _ := endpointGet(t, ta, "/healthz"); return c == 200 })
	code, body := endpointGet(t, ta, "/healthz")
	if !strings.HasPrefix(body, "ok: 1 session(s) up") {
		t.Fatalf("/healthz with a session: %d %q", code, body)
	}
	if code, body := endpointGet(t, ta, "/readyz"); code != 200 || !strings.HasPrefix(body, "ready") {
		t.Fatalf("/readyz with a session: %d %q", code, body)
	}

	open.Store(false)
	_ = ps.conn.Close() // the connection drops (no GOAWAY)
	waitFor(t, func() bool { c, _ := endpointGet(t, ta, "/healthz"); return c == 503 })
	if _, body := endpointGet(t, ta, "/healthz"); !strings.Contains(body, "no session up") {
		t.Fatalf("/healthz after the session went away: %q", body)
	}
	if code, _ := endpointGet(t, ta, "/readyz"); code != 503 {
		t.Fatalf("/readyz after the session went away: %d", code)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_reconnects_total", "cause", causeLost); v < 1 {
		t.Errorf("reconnects_total{cause=connection_lost} = %v after the proxy closed the session", v)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_reconnects_total", "cause", causeRefused); v < 2 {
		t.Errorf("reconnects_total{cause=refused} = %v after 503s", v)
	}
}

// TestReadyzWantsEveryProxy: one proxy up of two is healthy but not ready;
// draining is neither.
func TestReadyzWantsEveryProxy(t *testing.T) {
	up := newTestProxy(t)
	down, _ := gatedProxy(t)
	o := baseOpts(up, down)
	o.CAFile = ""
	o.InsecureSkipVerify = true
	o.Root = t.TempDir()
	o.MetricsAddr = "127.0.0.1:0"
	ta := newTestAgent(t, o, nil)
	ta.start(t)
	up.next(t)
	waitFor(t, func() bool { c, _ := endpointGet(t, ta, "/healthz"); return c == 200 })
	code, body := endpointGet(t, ta, "/readyz")
	if code != 503 || !strings.Contains(body, "no session up to "+down.url.Redacted()) {
		t.Fatalf("/readyz with one of two proxies: %d %q", code, body)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_sessions", "proxy", down.url.Redacted(), "state", "up"); v != 0 {
		t.Errorf("sessions{state=up} of the refusing proxy = %v", v)
	}
	ta.sessions.setStopping()
	if code, body := endpointGet(t, ta, "/readyz"); code != 503 || !strings.Contains(body, "shutting down") {
		t.Fatalf("/readyz while draining: %d %q", code, body)
	}
}

// TestMetricsMove: requests through the tunnel move the counters a running
// agent exposes on /metrics.
func TestMetricsMove(t *testing.T) {
	ta, ps, proxy := metricsAgent(t)

	if v := mustScrape(t, ta, "spdy_origin_agent_requests_total", "code", "200"); v != 0 {
		t.Fatalf("requests_total{code=200} = %v before any request", v)
	}
	if code, _ := get(t, ps.sess, "/bytes?n=100000"); code != 200 {
		t.Fatalf("GET /bytes: %d", code)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_requests_total", "code", "200"); v != 1 {
		t.Errorf("requests_total{code=200} = %v after one request", v)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_sent_bytes_total", "proxy", proxy); v < 100000 {
		t.Errorf("sent_bytes_total = %v after a 100000-byte response", v)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_streams_total", "proxy", proxy); v < 1 {
		t.Errorf("streams_total = %v", v)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_sessions", "proxy", proxy, "state", "up"); v != 1 {
		t.Errorf("sessions{state=up} = %v", v)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_sessions_wanted", "proxy", proxy); v != 1 {
		t.Errorf("sessions_wanted = %v", v)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_build_info", "version", agentVersion()); v != 1 {
		t.Errorf("build_info = %v", v)
	}
	mustScrape(t, ta, "go_goroutines")
	mustScrape(t, ta, "process_start_time_seconds")
	waitFor(t, func() bool {
		_, ok := scrape(t, ta, "spdy_origin_agent_ping_rtt_seconds", "proxy", proxy, "conn", "0")
		return ok
	})

	// Upload bytes, a 404 and a body the upstream cuts short.
	req, _ := http.NewRequest("POST", "http://agent.test/sha256", strings.NewReader(strings.Repeat("x", 50000)))
	if resp, err := ps.sess.RoundTrip(req); err != nil {
		t.Fatal(err)
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_received_bytes_total", "proxy", proxy); v < 50000 {
		t.Errorf("received_bytes_total = %v after a 50000-byte upload", v)
	}
	if code, _ := get(t, ps.sess, "/nothing-here"); code != 404 {
		t.Fatalf("GET /nothing-here: %d", code)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_requests_total", "code", "404"); v != 1 {
		t.Errorf("requests_total{code=404} = %v", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ = http.NewRequestWithContext(ctx, "GET", "http://agent.test/truncated", nil)
	if resp, err := ps.sess.RoundTrip(req); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	waitFor(t, func() bool {
		v, _ := scrape(t, ta, "spdy_origin_agent_upstream_errors_total", "reason", upstreamBody)
		return v == 1
	})
	if v := mustScrape(t, ta, "spdy_origin_agent_requests_total", "code", "200"); v != 3 {
		t.Errorf("requests_total{code=200} = %v after /bytes, /sha256 and /truncated", v)
	}
}

// TestUpstreamErrorsCounted: an upstream that is not there is a dial error
// and a 502.
func TestUpstreamErrorsCounted(t *testing.T) {
	p := newTestProxy(t)
	o := baseOpts(p)
	o.To, _ = url.Parse("http://127.0.0.1:1")
	o.MetricsAddr = "127.0.0.1:0"
	ta := newTestAgent(t, o, nil)
	ta.start(t)
	ps := p.next(t)
	if code, _ := get(t, ps.sess, "/"); code != 502 {
		t.Fatalf("GET with the upstream down: %d", code)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_upstream_errors_total", "reason", upstreamDial); v != 1 {
		t.Errorf("upstream_errors_total{reason=dial} = %v", v)
	}
	if v := mustScrape(t, ta, "spdy_origin_agent_requests_total", "code", "502"); v != 1 {
		t.Errorf("requests_total{code=502} = %v", v)
	}
}

func TestConnectCause(t *testing.T) {
	tests := []struct {
		name  string
		proxy []proxyOpt
		opts  func(o *Options, p *testProxy)
		want  string
	}{
		{"token", nil, func(o *Options, _ *testProxy) { o.Token = "wrong" }, causeTokenRejected},
		{"tls", nil, func(o *Options, _ *testProxy) { o.CAFile = "" }, causeTLS},
		{"dial", nil, func(o *Options, p *testProxy) { p.srv.Close() }, causeDial},
		{"refused", []proxyOpt{withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
			http.Error(w, "full", http.StatusServiceUnavailable)
			return true
		})}, nil, causeRefused},
		{"host refused", []proxyOpt{answering(http.StatusForbidden, handshake.HeaderRefusedHost, "a.test")}, nil, causeHostRefused},
		{"blocked", []proxyOpt{withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
			http.Error(w, "no entry", http.StatusForbidden)
			return true
		})}, nil, causeBlocked},
		{"registration", []proxyOpt{withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
			w.Header().Set("Content-Length", "200000")
			_, _ = w.Write(make([]byte, 200000))
			return true
		})}, nil, causeRegistration},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProxy(t, tc.proxy...)
			o := baseOpts(p)
			o.Root = t.TempDir()
			if tc.opts != nil {
				tc.opts(&o, p)
			}
			ta := newTestAgent(t, o, nil)
			_, err := ta.connect(context.Background(), p.url, slot{proxy: p.url.Redacted()}, ta.log)
			if err == nil {
				t.Fatal("connect succeeded")
			}
			if got := connectCause(err); got != tc.want {
				t.Errorf("cause of %v = %q, want %q", err, got, tc.want)
			}
		})
	}
}

// TestSeenStatusIsCached: once a status has been seen, counting it
// allocates nothing and does not go through the CounterVec (which locks).
func TestSeenStatusIsCached(t *testing.T) {
	m := newMetrics(newSessionTable(nil), 1)
	m.counter(201)
	if n := testing.AllocsPerRun(100, func() { m.counter(201).Inc() }); n != 0 {
		t.Errorf("counting a seen status allocates %v times", n)
	}
	if m.counter(201) != m.counter(201) {
		t.Error("counter(201) is not one counter")
	}
}

// A client that leaves in the middle of a body (Caddy resets the stream) is
// not an upstream failure: upstream_errors_total{reason="body"} stays 0.
func TestClientLeavingIsNotAnUpstreamError(t *testing.T) {
	ta, ps, proxy := metricsAgent(t)

	for range 5 {
		req, _ := http.NewRequest("GET", "http://agent.test/bytes?n=50000000", nil)
		resp, err := ps.sess.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 100000)); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close() // RST_STREAM CANCEL mid-body
	}
	waitFor(t, func() bool {
		return mustScrape(t, ta, "spdy_origin_agent_open_streams", "proxy", proxy) == 0
	})
	if v := mustScrape(t, ta, "spdy_origin_agent_upstream_errors_total", "reason", upstreamBody); v != 0 {
		t.Errorf("upstream_errors_total{reason=body} = %v after clients left mid-body; want 0", v)
	}
}

// metricsAgent is an agent with --metrics-addr, serving upstreamMux through a
// test proxy, its session up; proxy is the proxy label its metrics carry.
func metricsAgent(t *testing.T) (ta *testAgent, ps *proxySession, proxy string) {
	t.Helper()
	p := newTestProxy(t)
	o := baseOpts(p)
	o.To = upstreamMux(t)
	o.MetricsAddr = "127.0.0.1:0"
	ta = newTestAgent(t, o, nil)
	ta.start(t)
	return ta, p.next(t), p.url.Redacted()
}
