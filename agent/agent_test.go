package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/spdy"
)

// get sends a GET for agent.test through a proxy-side session and returns
// status and body.
func get(t *testing.T, sess *spdy.Session, path string) (int, string) {
	t.Helper()
	return getHost(t, sess, "agent.test", path)
}

// getHost sends a GET for host through a proxy-side session.
func getHost(t *testing.T, sess *spdy.Session, host, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+host+path, nil)
	resp, err := sess.RoundTrip(req)
	if err != nil {
		t.Fatalf("GET %s%s through the tunnel: %v", host, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s%s: reading body: %v", host, path, err)
	}
	return resp.StatusCode, string(b)
}

func connectOnce(t *testing.T, ta *testAgent, p *url.URL) (*spdy.Session, error) {
	t.Helper()
	sess, err := ta.connect(context.Background(), p, slot{proxy: p.Redacted()}, zap.NewNop())
	if err == nil {
		t.Cleanup(func() { _ = sess.Close(); <-sess.Done() })
	}
	return sess, err
}

func TestHandshakeOK(t *testing.T) {
	to := upstreamMux(t)
	p := newTestProxy(t)
	o := baseOpts(p)
	o.To = to
	ta := newTestAgent(t, o, nil)
	if _, err := connectOnce(t, ta, p.url); err != nil {
		t.Fatalf("connect: %v", err)
	}
	ps := p.next(t)
	if got := ps.hdr.Get(handshake.HeaderName); got != "test-agent" {
		t.Errorf("name header %q", got)
	}
	if ps.hdr.Get(handshake.HeaderVersion) == "" || len(ps.hdr.Get(handshake.HeaderInstance)) != 16 || ps.hdr.Get(handshake.HeaderConnection) != "0" {
		t.Errorf("identity headers: %v", ps.hdr)
	}
	if !strings.HasPrefix(ps.body, "spdy-origin-agent ") {
		t.Errorf("registration body %q", ps.body)
	}
	// The SPDY bytes that arrived with the 200 were not lost: the session works.
	if code, body := get(t, ps.sess, "/headers"); code != 200 || !strings.Contains(body, "path=/headers") {
		t.Fatalf("request through the tunnel: %d %q", code, body)
	}
}

// TestUpstreamCAFile: --upstream-ca-file needs an https upstream and a file
// with a PEM certificate; each mistake is an error naming the flag.
func TestUpstreamCAFile(t *testing.T) {
	dir := t.TempDir()
	noPEM := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(noPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ to, file, wantErr string }{
		{"http://127.0.0.1:1", noPEM, "needs an https:// --to"},
		{"h2c://127.0.0.1:1", noPEM, "needs an https:// --to"},
		{"https://127.0.0.1:1", filepath.Join(dir, "missing.pem"), "--upstream-ca-file: open"},
		{"https://127.0.0.1:1", noPEM, "no PEM certificate found"},
	} {
		o := Options{Proxies: []*url.URL{{Scheme: "https", Host: "proxy.test"}}, Token: "t", Connections: 1, UpstreamCAFile: c.file}
		o.To, _ = url.Parse(c.to)
		_, err := NewAgent(o, nil)
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("--to %s --upstream-ca-file %s: %v, want an error with %q", c.to, filepath.Base(c.file), err, c.wantErr)
		}
	}
}

func TestInsecureAndPlainProxies(t *testing.T) {
	secure, plain := newTestProxy(t), newTestProxy(t, withPlainHTTP())
	o := baseOpts(secure, plain)
	o.CAFile = ""
	o.InsecureSkipVerify = true
	o.Root = t.TempDir()
	if err := os.WriteFile(filepath.Join(o.Root, "f.txt"), []byte("file"), 0o644); err != nil {
		t.Fatal(err)
	}
	ta := newTestAgent(t, o, nil)
	if n := ta.count(zapcore.WarnLevel, "--insecure-skip-verify"); n != 1 {
		t.Errorf("insecure warning logged %d times", n)
	}
	if n := ta.count(zapcore.WarnLevel, "plain http"); n != 1 {
		t.Errorf("plain http warning logged %d times", n)
	}
	ta.start(t)
	for _, p := range []*testProxy{secure, plain} {
		if code, body := get(t, p.next(t).sess, "/f.txt"); code != 200 || body != "file" {
			t.Fatalf("via %s: %d %q", p.url, code, body)
		}
	}
}

func TestHandshakeDefaultPath(t *testing.T) {
	p := newTestProxy(t)
	o := baseOpts(p)
	o.Root = t.TempDir()
	ta := newTestAgent(t, o, nil)
	bare := *p.url
	bare.Path = ""
	if _, err := connectOnce(t, ta, &bare); err != nil {
		t.Fatalf("connect to %s: %v", bare.String(), err)
	}
	if got := handshake.RegisterURL(&bare).Path; got != "/.well-known/spdy-origin" {
		t.Fatalf("default path %q", got)
	}
}

func TestHandshakeFailures(t *testing.T) {
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	tests := []struct {
		name    string
		proxy   []proxyOpt
		opts    func(o *Options, p *testProxy) *url.URL // may return another proxy URL
		want    []string
		is      error
		notIs   error
		timeout time.Duration
	}{
		{
			name:  "401 token rejected",
			opts:  func(o *Options, _ *testProxy) *url.URL { o.Token = "wrong"; return nil },
			want:  []string{"token rejected", "401", "invalid token", "check --token"},
			is:    handshake.ErrTokenRejected,
			notIs: handshake.ErrBlocked,
		},
		{
			name:  "401 from client authentication in front of the registration route",
			proxy: []proxyOpt{answering(http.StatusUnauthorized, "WWW-Authenticate", `Basic realm="restricted"`)},
			want:  []string{"blocked before it reached spdy_origin", `Basic realm="restricted"`, "not spdy_origin's token check", "spdy_origin_register", "Protecting your site"},
			is:    handshake.ErrBlocked,
			notIs: handshake.ErrTokenRejected,
		},
		{
			name:  "403 from an IP rule or a CDN",
			proxy: []proxyOpt{answering(http.StatusForbidden)},
			want:  []string{"blocked before it reached spdy_origin", "403", "never answers 403", "remote_ip", "spdy_origin_register"},
			is:    handshake.ErrBlocked,
			notIs: handshake.ErrTokenRejected,
		},
		{
			name:  "407 from a proxy on the way",
			proxy: []proxyOpt{answering(http.StatusProxyAuthRequired, "Proxy-Authenticate", `Basic realm="corp"`)},
			want:  []string{"407", `Proxy-Authenticate: Basic realm="corp"`, "between this agent and Caddy"},
			is:    handshake.ErrBlocked,
			notIs: handshake.ErrTokenRejected,
		},
		{
			name: "500 with body excerpt",
			proxy: []proxyOpt{withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
				http.Error(w, "database on fire\x00\n"+strings.Repeat("x", 5000), 500)
				return true
			})},
			want:  []string{"500 Internal Server Error", "database on fire"},
			notIs: handshake.ErrTokenRejected,
		},
		{
			name: "HTTP/2 only endpoint answers 505",
			proxy: []proxyOpt{withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
				http.Error(w, "agents must register over HTTP/1.1", http.StatusHTTPVersionNotSupported)
				return true
			})},
			want: []string{"505", "HTTP/1.1"},
		},
		{
			name: "unknown CA",
			opts: func(o *Options, _ *testProxy) *url.URL { o.CAFile = ""; return nil },
			want: []string{"TLS handshake", "certificate", "--ca-file"},
		},
		{
			name: "host name mismatch",
			opts: func(o *Options, p *testProxy) *url.URL {
				u := *p.url
				u.Host = "localhost:" + p.url.Port()
				return &u
			},
			want: []string{"TLS handshake", "must match"},
		},
		{
			name: "TLS ok but no answer",
			proxy: []proxyOpt{withBehave(func(_ int, _ http.ResponseWriter, r *http.Request) bool {
				_, _ = io.Copy(io.Discard, r.Body) // lets net/http notice the agent hanging up
				select {
				case <-r.Context().Done():
				case <-hold:
				}
				return true
			})},
			want:    []string{"timed out"},
			timeout: 300 * time.Millisecond,
		},
		{
			name: "200 without Content-Length",
			proxy: []proxyOpt{withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
				conn, _, _ := http.NewResponseController(w).Hijack()
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nwelcome")
				go func() { <-hold; conn.Close() }()
				return true
			})},
			want: []string{"without Content-Length"},
		},
		{
			name: "200 with huge body",
			proxy: []proxyOpt{withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
				w.Header().Set("Content-Length", "200000")
				_, _ = w.Write(make([]byte, 200000))
				return true
			})},
			want: []string{"exceeds"},
		},
		{
			name: "connection closed without answer",
			proxy: []proxyOpt{withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
				conn, _, _ := http.NewResponseController(w).Hijack()
				conn.Close()
				return true
			})},
			want: []string{"closed the connection without answering", "abort"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestProxy(t, tt.proxy...)
			o := baseOpts(p)
			o.Root = t.TempDir()
			target := p.url
			if tt.opts != nil {
				if u := tt.opts(&o, p); u != nil {
					target = u
				}
			}
			tun := testTuning(nil)
			if tt.timeout > 0 {
				tun.handshakeTimeout = tt.timeout
			}
			ta := newTestAgent(t, o, &tun)
			_, err := connectOnce(t, ta, target)
			if err == nil {
				t.Fatal("connect succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if len(err.Error()) > 1000 {
				t.Errorf("error message not bounded: %d bytes", len(err.Error()))
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			if tt.notIs != nil && errors.Is(err, tt.notIs) {
				t.Errorf("error %v should not be %v", err, tt.notIs)
			}
		})
	}
}

// A proxy address that accepts TCP but never speaks: TLS and plain HTTP both time out.
func TestHandshakeProxyNeverAnswers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	for _, scheme := range []string{"https", "http"} {
		t.Run(scheme, func(t *testing.T) {
			u, _ := url.Parse(scheme + "://" + l.Addr().String() + "/.well-known/spdy-origin")
			o := Options{Proxies: []*url.URL{u}, Token: testToken, Root: t.TempDir(), Connections: 1, DrainTimeout: time.Second}
			tun := testTuning(nil)
			tun.handshakeTimeout = 200 * time.Millisecond
			ta := newTestAgent(t, o, &tun)
			start := time.Now()
			_, err := connectOnce(t, ta, u)
			if err == nil || !strings.Contains(err.Error(), "timed out") {
				t.Fatalf("err = %v, want a timeout", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("handshake timeout not applied: took %v", d)
			}
		})
	}
}

// Failing attempts back off exponentially; a proxy that is down produces one warning,
// not one per attempt; recovery is logged with the number of failed attempts.
func TestReconnectBackoffAndQuietLogs(t *testing.T) {
	const failures = 6
	p := newTestProxy(t, withBehave(func(n int, w http.ResponseWriter, _ *http.Request) bool {
		if n <= failures {
			http.Error(w, "no upstream pool", http.StatusBadGateway)
			return true
		}
		return false
	}))
	o := baseOpts(p)
	o.Root = t.TempDir()
	ta := newTestAgent(t, o, nil)
	ta.start(t)
	ps := p.next(t)
	if ps.n != failures+1 {
		t.Fatalf("connected on attempt %d, want %d", ps.n, failures+1)
	}
	want := []time.Duration{10, 20, 40, 80, 160, 160}
	got := ta.delays.get()
	if len(got) < len(want) {
		t.Fatalf("delays %v", got)
	}
	for i, w := range want {
		if d := got[i]; d < w*time.Millisecond*99/100 || d > w*time.Millisecond {
			t.Errorf("delay %d = %v, want ≈%v (all %v)", i, d, w*time.Millisecond, got)
		}
	}
	if n := ta.count(zapcore.WarnLevel, "cannot connect"); n != 1 {
		t.Errorf("%d warnings while the proxy was failing, want exactly 1", n)
	}
	if n := ta.count(zapcore.DebugLevel, "cannot connect"); n != failures-1 {
		t.Errorf("%d debug repeats, want %d", n, failures-1)
	}
	waitFor(t, func() bool { return ta.count(zapcore.InfoLevel, "connected to proxy") == 1 })
	for _, e := range ta.logs.FilterMessage("connected to proxy").All() {
		if e.ContextMap()["after_failed_attempts"] != int64(failures) {
			t.Errorf("recovery log fields %v", e.ContextMap())
		}
	}
}

// Sessions the proxy drops right away grow the delay; a session that lived longer
// than the healthy period resets it.
func TestReconnectDroppedSessionsAndReset(t *testing.T) {
	p := newTestProxy(t, withAfter(func(n int, conn net.Conn) bool {
		switch {
		case n <= 3:
			conn.Close() // dropped right after the handshake
			return true
		case n == 4:
			time.AfterFunc(700*time.Millisecond, func() { conn.Close() }) // healthy, then lost
		}
		return false
	}))
	o := baseOpts(p)
	o.Root = t.TempDir()
	tun := testTuning(nil)
	tun.healthyAfter = 400 * time.Millisecond
	ta := newTestAgent(t, o, &tun)
	ta.start(t)
	first := p.next(t)
	if first.n != 4 {
		t.Fatalf("first session on attempt %d", first.n)
	}
	if ps := p.next(t); ps.n != 5 {
		t.Fatalf("reconnected on attempt %d, want 5", ps.n)
	}
	got := ta.delays.get()
	want := []time.Duration{10, 20, 40, 10}
	if len(got) != len(want) {
		t.Fatalf("delays %v, want ≈%v ms", got, want)
	}
	for i, w := range want {
		if d := got[i]; d < w*time.Millisecond*99/100 || d > w*time.Millisecond {
			t.Errorf("delay %d = %v, want ≈%v (all %v)", i, d, w*time.Millisecond, got)
		}
	}
	if n := ta.count(zapcore.WarnLevel, "session to proxy ended"); n != 4 {
		t.Errorf("%d 'session ended' warnings, want one per lost session (4)", n)
	}
}

// threeRetries runs an agent with token against p until it has waited three times
// and checks those delays against want; it returns the error of the one warning it
// logged.
func threeRetries(t *testing.T, p *testProxy, token string, want [3]time.Duration) string {
	t.Helper()
	o := baseOpts(p)
	o.Token = token
	o.Root = t.TempDir()
	ta := newTestAgent(t, o, nil)
	ta.start(t)
	waitFor(t, func() bool { return len(ta.delays.get()) >= 3 })
	ta.stop(t)
	got := ta.delays.get()
	for i, w := range want {
		if d := got[i]; d < w*99/100 || d > w {
			t.Errorf("delay %d = %v, want ≈%v", i, d, w)
		}
	}
	warns := ta.logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("cannot connect").All()
	if len(warns) != 1 {
		t.Fatalf("warnings: %v", warns)
	}
	return fmt.Sprint(warns[0].ContextMap()["error"])
}

// 401 waits long (and longer each time) instead of hammering the proxy; the message says why.
func TestTokenRejectedBacksOffLong(t *testing.T) {
	msg := threeRetries(t, newTestProxy(t), "wrong", [3]time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second})
	if !strings.Contains(msg, "token rejected") {
		t.Errorf("warning: %s", msg)
	}
}

// A 401 that is not spdy_origin's (client authentication on the site, here
// basic_auth's Basic challenge) or a 403 (an IP rule, a CDN) says what it is
// and what to check, and is retried at the ordinary backoff: the token was
// never checked, and the fix is in the proxy's config, which can change at
// any time.
func TestBlockedRegistrationBacksOffNormally(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer proxyOpt
		says   string
	}{
		{"foreign 401", answering(http.StatusUnauthorized, "WWW-Authenticate", `Basic realm="restricted"`), "not spdy_origin's token check"},
		{"403", answering(http.StatusForbidden), "never answers 403"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := threeRetries(t, newTestProxy(t, tc.answer), testToken, [3]time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond})
			if !strings.Contains(msg, tc.says) || strings.Contains(msg, "token rejected") || strings.Contains(msg, "check --token") {
				t.Errorf("warning says %q; want %q and nothing about the token", msg, tc.says)
			}
		})
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	p := newTestProxy(t, withBehave(func(n int, w http.ResponseWriter, _ *http.Request) bool {
		if n == 1 {
			w.Header().Set("Retry-After", "7")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return true
		}
		return false
	}))
	o := baseOpts(p)
	o.Root = t.TempDir()
	ta := newTestAgent(t, o, nil)
	ta.start(t)
	p.next(t)
	if got := ta.delays.get(); len(got) != 1 || got[0] != 7*time.Second {
		t.Fatalf("delays %v, want [7s]", got)
	}
}

// A proxy that stops answering (no FIN, no RST) is detected by PING timeout.
func TestDeadConnectionDetectedByPing(t *testing.T) {
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	p := newTestProxy(t, withAfter(func(n int, conn net.Conn) bool {
		if n == 1 {
			return true // keep the connection open and never read or write again
		}
		return false
	}))
	o := baseOpts(p)
	o.Root = t.TempDir()
	tun := testTuning(nil)
	tun.spdy = spdy.DefaultConfig()
	tun.spdy.PingInterval = 50 * time.Millisecond
	tun.spdy.PingTimeout = 200 * time.Millisecond
	ta := newTestAgent(t, o, &tun)
	ta.start(t)
	if ps := p.next(t); ps.n != 2 {
		t.Fatalf("reconnected on attempt %d", ps.n)
	}
	ended := ta.logs.FilterMessageSnippet("session to proxy ended").All()
	if len(ended) != 1 || !strings.Contains(fmt.Sprint(ended[0].ContextMap()["cause"]), "ping") {
		t.Fatalf("session end logs: %v", ended)
	}
}

func TestSeveralConnectionsAndProxies(t *testing.T) {
	to := upstreamMux(t)
	p1, p2 := newTestProxy(t), newTestProxy(t)
	o := baseOpts(p1, p2)
	o.To = to
	o.Connections = 3
	// One CA file trusting both test proxies.
	both := filepath.Join(t.TempDir(), "both.pem")
	b1, _ := os.ReadFile(p1.caFile)
	b2, _ := os.ReadFile(p2.caFile)
	if err := os.WriteFile(both, append(b1, b2...), 0o644); err != nil {
		t.Fatal(err)
	}
	o.CAFile = both
	ta := newTestAgent(t, o, nil)
	ta.start(t)
	instances := map[string]bool{}
	for _, p := range []*testProxy{p1, p2} {
		var idx []string
		for i := 0; i < 3; i++ {
			ps := p.next(t)
			idx = append(idx, ps.hdr.Get(handshake.HeaderConnection))
			instances[ps.hdr.Get(handshake.HeaderInstance)] = true
			if code, body := get(t, ps.sess, "/headers"); code != 200 || !strings.Contains(body, "path=/headers") {
				t.Fatalf("request via %s: %d %q", p.url.Host, code, body)
			}
		}
		sort.Strings(idx)
		if strings.Join(idx, ",") != "0,1,2" {
			t.Errorf("proxy %s got connection indexes %v", p.url.Host, idx)
		}
	}
	if len(instances) != 1 {
		t.Errorf("instance ids %v, want one per process", instances)
	}
	waitFor(t, func() bool { return ta.activeSessions() == 6 })
	select {
	case ps := <-p1.sessions:
		t.Fatalf("unexpected extra session %d", ps.n)
	case ps := <-p2.sessions:
		t.Fatalf("unexpected extra session %d", ps.n)
	default:
	}
}

// blockingUpstream serves /block: it sends headers and "partial;", then waits for release
// (then "done"). Other paths answer "ok".
func blockingUpstream(t *testing.T) (to *url.URL, started <-chan struct{}, release chan struct{}) {
	t.Helper()
	st := make(chan struct{}, 10)
	rel := make(chan struct{})
	srv := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/block" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "partial;")
		w.(http.Flusher).Flush()
		st <- struct{}{}
		select {
		case <-rel:
			_, _ = io.WriteString(w, "done")
		case <-r.Context().Done():
		}
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	u, _ := url.Parse("http://" + l.Addr().String())
	return u, st, rel
}

func TestGracefulDrain(t *testing.T) {
	to, started, release := blockingUpstream(t)
	p := newTestProxy(t)
	o := baseOpts(p)
	o.To = to
	ta := newTestAgent(t, o, nil)
	ta.start(t)
	ps := p.next(t)

	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://agent.test/block", nil)
		resp, err := ps.sess.RoundTrip(req)
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{string(b), err}
	}()
	<-started
	ta.cancel() // what SIGINT/SIGTERM does in main
	waitFor(t, ps.sess.GoingAway)
	// No new streams after GOAWAY...
	req, _ := http.NewRequest("GET", "http://agent.test/block", nil)
	if resp, err := ps.sess.RoundTrip(req); err == nil {
		resp.Body.Close()
		t.Fatal("new request accepted after GOAWAY")
	}
	// ...but the in-flight one completes, and only then does the agent stop.
	select {
	case <-ta.done:
		t.Fatal("agent stopped before the in-flight request finished")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	r := <-res
	if r.err != nil || r.body != "partial;done" {
		t.Fatalf("in-flight request: %q, %v", r.body, r.err)
	}
	select {
	case <-ta.done:
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop after draining")
	}
	if n := ta.count(zapcore.InfoLevel, "session drained"); n != 1 {
		t.Errorf("'session drained' logged %d times", n)
	}
}

func TestDrainTimeoutCutsStreams(t *testing.T) {
	to, started, release := blockingUpstream(t)
	t.Cleanup(func() { close(release) })
	p := newTestProxy(t)
	o := baseOpts(p)
	o.To = to
	o.DrainTimeout = 200 * time.Millisecond
	ta := newTestAgent(t, o, nil)
	ta.start(t)
	ps := p.next(t)
	req, _ := http.NewRequest("GET", "http://agent.test/block", nil)
	resp, err := ps.sess.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-started
	ta.cancel()
	select {
	case <-ta.done:
	case <-time.After(10 * time.Second):
		t.Fatal("agent ignored the drain timeout")
	}
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("cut stream ended cleanly with %q; want an error, never a silent truncation", b)
	}
	if n := ta.count(zapcore.WarnLevel, "drain timeout"); n != 1 {
		t.Errorf("'drain timeout' warnings: %d", n)
	}
}

// A GOAWAY from the proxy (reload, shutdown) with a stream still open: the agent opens
// a replacement session at once and lets the old stream finish.
func TestProxyGoAwayReplacesSession(t *testing.T) {
	to, started, release := blockingUpstream(t)
	p := newTestProxy(t)
	o := baseOpts(p)
	o.To = to
	tun := testTuning(nil)
	ta := newTestAgent(t, o, &tun)
	ta.start(t)
	old := p.next(t)
	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://agent.test/block", nil)
		resp, err := old.sess.RoundTrip(req)
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{string(b), err}
	}()
	<-started
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- old.sess.Shutdown(ctx)
	}()
	repl := p.next(t) // replacement while the old stream is still open
	if code, body := get(t, repl.sess, "/"); code != 200 || body != "ok" {
		t.Fatalf("replacement session: %d %q", code, body)
	}
	close(release)
	if r := <-res; r.err != nil || r.body != "partial;done" {
		t.Fatalf("stream on the old session: %q, %v", r.body, r.err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("proxy-side shutdown: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A proxy that resets every connection: each error names a fresh local port
// ("read tcp 127.0.0.1:54321->..."), yet it is the same failure and must be
// warned about once, not on every attempt.
func TestReconnectResetsLoggedOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// Read the request (TLS ClientHello or PUT), then reset.
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, _ = c.Read(make([]byte, 4096))
			_ = c.(*net.TCPConn).SetLinger(0)
			_ = c.Close()
		}
	}()
	for _, scheme := range []string{"https", "http"} {
		t.Run(scheme, func(t *testing.T) {
			u, _ := url.Parse(scheme + "://" + l.Addr().String() + "/.well-known/spdy-origin")
			o := Options{Proxies: []*url.URL{u}, Token: testToken, Root: t.TempDir(), Connections: 1, DrainTimeout: time.Second}
			ta := newTestAgent(t, o, nil)
			ta.start(t)
			waitFor(t, func() bool { return len(ta.delays.get()) >= 5 })
			ta.stop(t)
			if n := ta.count(zapcore.WarnLevel, "cannot connect"); n != 1 {
				var msgs []string
				for _, e := range ta.logs.FilterMessageSnippet("cannot connect").All() {
					msgs = append(msgs, fmt.Sprint(e.ContextMap()["error"]))
				}
				t.Errorf("%d warnings for one repeated failure, want 1: %q", n, msgs)
			}
		})
	}
}
