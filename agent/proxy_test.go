package agent

// A test proxy: an httptest TLS server that checks the agent's registration PUT,
// hijacks, answers with the proxy's half of the handshake (handshake.Accept) and runs
// spdy.NewClient on the connection, as the caddymodule does. Tests reach the agent by
// RoundTrip on those sessions; hooks let a test answer an attempt its own way.

import (
	"context"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/spdy"
)

const testToken = "s3cret-token"

type proxySession struct {
	n    int // attempt number, 1-based
	sess *spdy.Session
	hdr  http.Header
	body string
	conn net.Conn
}

type testProxy struct {
	t        *testing.T
	srv      *httptest.Server
	url      *url.URL
	caFile   string
	attempts atomic.Int32
	sessions chan *proxySession

	// behave may answer attempt n itself (return true), e.g. with an error status.
	behave func(n int, w http.ResponseWriter, r *http.Request) bool
	// after may take over the hijacked connection after the 200 was written (return
	// true), e.g. to drop it or to hold it without speaking SPDY.
	after func(n int, conn net.Conn) bool

	plain    bool // serve http:// instead of https://
	trailers bool // announce trailers as the Caddy module does (else an Amahi-style proxy)

	mu    sync.Mutex
	conns []net.Conn
	all   []*spdy.Session
}

type proxyOpt func(*testProxy)

func withBehave(f func(n int, w http.ResponseWriter, r *http.Request) bool) proxyOpt {
	return func(p *testProxy) { p.behave = f }
}

// answering makes a test proxy answer every registration with status, the header
// pairs hdr and the status text as the body.
func answering(status int, hdr ...string) proxyOpt {
	return withBehave(func(_ int, w http.ResponseWriter, _ *http.Request) bool {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		http.Error(w, http.StatusText(status), status)
		return true
	})
}

func withAfter(f func(n int, conn net.Conn) bool) proxyOpt {
	return func(p *testProxy) { p.after = f }
}

func withPlainHTTP() proxyOpt { return func(p *testProxy) { p.plain = true } }

// withTrailers makes the proxy announce the trailers capability and send
// trailers to an agent that announced it, as the Caddy module does.
func withTrailers() proxyOpt { return func(p *testProxy) { p.trailers = true } }

func newTestProxy(t *testing.T, opts ...proxyOpt) *testProxy {
	t.Helper()
	p := &testProxy{t: t, sessions: make(chan *proxySession, 256)}
	for _, o := range opts {
		o(p)
	}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	if p.plain {
		p.srv.Start()
	} else {
		p.srv.StartTLS()
	}
	u, _ := url.Parse(p.srv.URL + "/.well-known/spdy-origin")
	p.url = u
	if p.plain {
		t.Cleanup(p.close)
		return p
	}
	p.caFile = filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	if err := os.WriteFile(p.caFile, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
}

func (p *testProxy) close() {
	p.mu.Lock()
	all, conns := p.all, p.conns
	p.all, p.conns = nil, nil
	p.mu.Unlock()
	for _, s := range all {
		_ = s.Close()
		<-s.Done()
	}
	for _, c := range conns {
		_ = c.Close()
	}
	p.srv.Close()
}

func (p *testProxy) serve(w http.ResponseWriter, r *http.Request) {
	n := int(p.attempts.Add(1))
	if r.Method != http.MethodPut {
		http.Error(w, "registration needs PUT", http.StatusMethodNotAllowed)
		return
	}
	if tok, ok := handshake.BearerToken(r.Header); !ok || tok != testToken {
		w.Header().Set("WWW-Authenticate", handshake.TokenChallenge("invalid_token"))
		http.Error(w, "invalid token", http.StatusUnauthorized)
		return
	}
	if p.behave != nil && p.behave(n, w, r) {
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.t.Errorf("hijack: %v", err)
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, conn)
	p.mu.Unlock()
	var c net.Conn = conn
	if p.after == nil {
		// Send the 200 in the same write as the first SPDY frame, so the agent's
		// bufio.Reader surely holds SPDY bytes behind the body.
		c = &coalesceConn{Conn: conn}
	}
	var caps handshake.Capabilities
	if p.trailers && len(handshake.ReadCapabilities(r.Header)) > 0 {
		caps = handshake.Capabilities{handshake.CapTrailers}
	}
	if err := handshake.Accept(c, "spdy-origin: ok\n", caps); err != nil {
		p.t.Errorf("handshake.Accept: %v", err)
		_ = conn.Close()
		return
	}
	if p.after != nil && p.after(n, conn) {
		return
	}
	cfg := spdy.DefaultConfig()
	cfg.PeerTrailers = p.trailers && handshake.ReadCapabilities(r.Header).Has(handshake.CapTrailers)
	sess, err := spdy.NewClient(spdy.BufferedConn(c, brw.Reader), cfg)
	if err != nil {
		p.t.Errorf("spdy.NewClient: %v", err)
		_ = conn.Close()
		return
	}
	p.mu.Lock()
	p.all = append(p.all, sess)
	p.mu.Unlock()
	p.sessions <- &proxySession{n: n, sess: sess, hdr: r.Header.Clone(), body: string(body), conn: conn}
}

// next waits for the next session the agent opens.
func (p *testProxy) next(t *testing.T) *proxySession {
	t.Helper()
	select {
	case ps := <-p.sessions:
		return ps
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the agent to connect")
		return nil
	}
}

// coalesceConn holds its first Write back until the second (or 50ms), then sends
// both in one write, so that a handshake answer and the first SPDY frames share a
// TLS record.
type coalesceConn struct {
	net.Conn
	mu     sync.Mutex
	held   []byte
	timer  *time.Timer // nil before the first Write
	passed bool        // the held bytes are out: writes pass through
}

func (c *coalesceConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.timer == nil:
		c.held = append([]byte(nil), b...)
		c.timer = time.AfterFunc(50*time.Millisecond, c.flush)
		return len(b), nil
	case !c.passed:
		c.timer.Stop()
		c.passed = true
		if _, err := c.Conn.Write(append(c.held, b...)); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// flush sends the held bytes alone when nothing followed them.
func (c *coalesceConn) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.passed {
		c.passed = true
		_, _ = c.Conn.Write(c.held)
	}
}

// testTuning shortens every delay; sleep records the delays the agent asked for and
// waits at most a few milliseconds.
type delayLog struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (d *delayLog) sleep(ctx context.Context, dur time.Duration) bool {
	d.mu.Lock()
	d.delays = append(d.delays, dur)
	d.mu.Unlock()
	return sleepCtx(ctx, min(dur, 3*time.Millisecond))
}

func (d *delayLog) get() []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Duration(nil), d.delays...)
}

func testTuning(d *delayLog) tuning {
	tun := defaultTuning()
	tun.backoffMin = 10 * time.Millisecond
	tun.backoffMax = 160 * time.Millisecond
	tun.rejectedMin = 5 * time.Second
	tun.rejectedMax = 20 * time.Second
	tun.maxRetryAfter = 30 * time.Second
	tun.healthyAfter = 10 * time.Second
	tun.handshakeTimeout = 5 * time.Second
	tun.upstreamDialTimeout = 2 * time.Second
	tun.upgradeHeaderTimeout = 5 * time.Second
	tun.pipeLinger = 2 * time.Second
	tun.rnd = func() float64 { return 0.999999 }
	tun.sleep = nil // newTestAgent records delays
	if d != nil {
		tun.sleep = d.sleep
	}
	return tun
}

type testAgent struct {
	*Agent
	logs   *observer.ObservedLogs
	delays *delayLog
	cancel context.CancelFunc
	done   chan struct{}
}

func baseOpts(proxies ...*testProxy) Options {
	o := Options{Token: testToken, Connections: 1, Name: "test-agent", DrainTimeout: 5 * time.Second}
	for _, p := range proxies {
		o.Proxies = append(o.Proxies, p.url)
		o.CAFile = p.caFile // every test proxy has its own cert; tests with several set CAFile themselves
	}
	return o
}

func newTestAgent(t *testing.T, opts Options, tun *tuning) *testAgent {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	d := &delayLog{}
	tt := testTuning(d)
	if tun != nil {
		tt = *tun
		if tt.sleep == nil {
			tt.sleep = d.sleep
		}
	}
	a, err := newAgent(opts, tt, zap.New(core))
	if err != nil {
		t.Fatalf("newAgent: %v", err)
	}
	ta := &testAgent{Agent: a, logs: logs, delays: d, done: make(chan struct{})}
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range logs.All() {
				t.Logf("agent log: %s %s %v", e.Level, e.Message, e.ContextMap())
			}
		}
	})
	return ta
}

// start runs the agent until the test ends (or stop is called).
func (ta *testAgent) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ta.cancel = cancel
	go func() {
		defer close(ta.done)
		_ = ta.Run(ctx)
	}()
	t.Cleanup(func() { ta.stop(t) })
}

func (ta *testAgent) stop(t *testing.T) {
	ta.cancel()
	select {
	case <-ta.done:
	case <-time.After(15 * time.Second):
		t.Error("agent did not stop")
	}
}

// count returns how many messages at level lvl contain substr.
func (ta *testAgent) count(lvl zapcore.Level, substr string) int {
	n := 0
	for _, e := range ta.logs.All() {
		if e.Level == lvl && strings.Contains(e.Message, substr) {
			n++
		}
	}
	return n
}

// front exposes an agent handler to test clients, either over plain net/http or
// through the real path: test proxy → SPDY session → agent.
type front struct {
	client *http.Client
	base   string
}

type frontFunc func(t *testing.T, to *url.URL, root string) front

func httpFront(t *testing.T, to *url.URL, root string) front {
	t.Helper()
	var h http.Handler
	if to != nil {
		u, err := newUpstreamHandler(to, nil, testTuning(nil), zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(u.closeIdle)
		h = u
	} else {
		f, err := newFileHandler(root, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.close)
		h = f
	}
	// net/http servers are half duplex unless asked; SPDY streams always are full duplex.
	duplex := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		h.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(duplex)
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return front{client: &http.Client{Transport: tr}, base: srv.URL}
}

func spdyFront(t *testing.T, to *url.URL, root string) front {
	t.Helper()
	p := newTestProxy(t, withTrailers())
	o := baseOpts(p)
	o.To, o.Root = to, root
	ta := newTestAgent(t, o, nil)
	ta.start(t)
	ps := p.next(t)
	return front{client: &http.Client{Transport: ps.sess}, base: "http://agent.test"}
}

var fronts = []struct {
	name string
	fn   frontFunc
}{
	{"http", httpFront},
	{"spdy", spdyFront},
}
