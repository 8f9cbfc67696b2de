package e2e

// One test's setup: an upstream, Caddy, and the real agent connected to it through
// a TCP relay the test can cut.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/spdy-origin/spdy-origin/agent"
)

// tcpForwarder relays TCP connections from a local port to Caddy. kill cuts every
// relayed connection with a reset, as the death of the agent's process would.
type tcpForwarder struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	killed bool // no connection may be relayed any more
	conns  []*net.TCPConn
	wg     sync.WaitGroup
}

func newTCPForwarder(t *testing.T, target string) *tcpForwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &tcpForwarder{ln: ln, target: target}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *tcpForwarder) port() int { return f.ln.Addr().(*net.TCPAddr).Port }

func (f *tcpForwarder) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		a, b := c.(*net.TCPConn), up.(*net.TCPConn)
		f.mu.Lock()
		if f.killed { // accepted before kill closed the listener, dialled after
			f.mu.Unlock()
			reset(a)
			reset(b)
			return
		}
		f.conns = append(f.conns, a, b)
		f.wg.Add(2)
		f.mu.Unlock()
		relay := func(dst, src *net.TCPConn) {
			defer f.wg.Done()
			_, _ = io.Copy(dst, src)
			_ = dst.CloseWrite()
		}
		go relay(a, b)
		go relay(b, a)
	}
}

// kill stops accepting and resets every relayed connection (both sides), and any
// that the accept loop was still dialling: the agent can neither keep nor reopen one.
func (f *tcpForwarder) kill() {
	f.ln.Close()
	f.mu.Lock()
	f.killed = true
	conns := f.conns
	f.conns = nil
	f.mu.Unlock()
	for _, c := range conns {
		reset(c)
	}
}

func reset(c *net.TCPConn) {
	_ = c.SetLinger(0) // RST, not FIN: the peer learns nothing orderly
	_ = c.Close()
}

func (f *tcpForwarder) close() {
	f.kill()
	f.wg.Wait()
}

// e2e is one test's setup: Caddy config loaded, upstream running, agent connected.
type e2e struct {
	t     *testing.T
	pool  string
	up    *wsUpstream
	fwd   *tcpForwarder
	agent *runningAgent
}

// setupE2E loads a config for pool, starts an upstream and the real agent (through a
// forwarder) and waits until Caddy has the agent's session.
func setupE2E(t *testing.T, pool string, handler, server map[string]any) *e2e {
	t.Helper()
	return setupE2EWith(t, pool, handler, server, nil)
}

// setupE2EWith is setupE2E with a hook that may change the agent's options.
func setupE2EWith(t *testing.T, pool string, handler, server map[string]any, edit func(*agent.Options)) *e2e {
	t.Helper()
	p := ports()
	// Cleanups run in reverse: clients (registered later by the test) close first,
	// then the agent stops, then the upstream server shuts down.
	up := newWSUpstream(t)
	loadCaddy(t, e2eConfig(p, pool, handler, server))
	fwd := newTCPForwarder(t, fmt.Sprintf("127.0.0.1:%d", p.https))
	proxy, _ := url.Parse(fmt.Sprintf("https://localhost:%d/.well-known/spdy-origin", fwd.port()))
	opts := agent.Options{
		Proxies:      []*url.URL{proxy},
		Token:        e2eToken,
		To:           up.url,
		CAFile:       caddyRootFile(),
		Connections:  1,
		Name:         "e2e-" + pool,
		DrainTimeout: time.Second,
	}
	if edit != nil {
		edit(&opts)
	}
	e := &e2e{t: t, pool: pool, up: up, fwd: fwd, agent: startAgent(t, opts)}
	waitUntil(t, 10*time.Second, "the agent's session in pool "+pool, func() bool { return len(poolState(t, pool).Sessions) == 1 })
	return e
}

// runningAgent is the real agent, running until cancel or the end of the test.
type runningAgent struct {
	cancel context.CancelFunc
	done   chan struct{}
	logs   *observer.ObservedLogs // everything it logged, debug included
}

// startAgent runs agent.NewAgent(opts).Run until the test ends; its log is shown
// when the test fails.
func startAgent(t *testing.T, opts agent.Options) *runningAgent {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	a, err := agent.NewAgent(opts, zap.New(core))
	if err != nil {
		t.Fatalf("agent.NewAgent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{cancel: cancel, done: make(chan struct{}), logs: logs}
	go func() {
		defer close(ra.done)
		_ = a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ra.done:
		case <-time.After(15 * time.Second):
			t.Error("agent did not stop")
		}
		if t.Failed() {
			for _, e := range logs.All() {
				t.Logf("agent log: %s %s %v", e.Level, e.Message, e.ContextMap())
			}
		}
	})
	return ra
}
