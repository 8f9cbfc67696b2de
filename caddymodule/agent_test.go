package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/spdy"
)

// This file is a minimal origin agent for tests: the real client half of
// the registration (internal/handshake.Register) over TLS with ALPN
// http/1.1, then SPDY streams served by an http.Handler. The real agent is
// package agent; the e2e package runs it against Caddy.

const (
	testConnect = handshake.DefaultPath
	testToken   = "test-token-8b1d-4e07" // 16+ bytes: shorter ones are warned about at load
)

// registration is the outcome of a registration attempt.
type registration struct {
	status int
	header http.Header
	body   string
	conn   net.Conn      // on 200: the connection, now carrying SPDY
	br     *bufio.Reader // on 200: reads conn from the first SPDY byte on
}

// register dials Caddy and registers with the Authorization header auth
// and the identity headers in hdr. On 200 the connection is left open for
// SPDY.
func register(t testing.TB, path, auth string, hdr map[string]string) (*registration, error) {
	t.Helper()
	conn, err := dialCaddy()
	if err != nil {
		return nil, err
	}
	return registerOn(conn, path, auth, hdr)
}

// dialCaddy opens a TLS connection to the in-process Caddy as an agent
// does: ALPN offers only http/1.1, so the connection can be hijacked.
func dialCaddy() (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", testHTTPSAddr, &tls.Config{
		ServerName:         "localhost",
		InsecureSkipVerify: true, // Caddy's internal CA in tests
		NextProtos:         []string{"http/1.1"},
	})
	if err != nil {
		return nil, fmt.Errorf("dialing caddy: %w", err)
	}
	return conn, nil
}

// registerOn is register on a connection already open; it closes conn
// unless the answer is 200. A bearer token goes through the agent's own
// client half; any other Authorization (none, Basic) is one no agent
// sends, and goes raw. hdr[handshake.HeaderHosts], comma-separated, is
// the hosts announced.
func registerOn(conn net.Conn, path, auth string, hdr map[string]string) (*registration, error) {
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return registerRaw(conn, path, auth)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := handshake.Request{
		URL:   &url.URL{Scheme: "https", Host: "localhost", Path: path},
		Token: token,
		Identity: handshake.Identity{
			Name:     hdr[handshake.HeaderName],
			Version:  hdr[handshake.HeaderVersion],
			Instance: hdr[handshake.HeaderInstance],
		},
	}
	if h := hdr[handshake.HeaderHosts]; h != "" {
		req.Hosts = strings.Split(h, ",")
	}
	res, err := handshake.Register(ctx, conn, req)
	var refused *handshake.StatusError
	switch {
	case err == nil:
		return &registration{status: http.StatusOK, body: string(res.Body), conn: conn, br: res.Reader}, nil
	case errors.As(err, &refused):
		conn.Close()
		return &registration{status: refused.StatusCode, header: refused.Header, body: refused.Body}, nil
	default:
		conn.Close()
		return nil, err
	}
}

// registerRaw sends a registration PUT with the Authorization header auth
// (none when empty) and reads the refusal it gets; it closes conn.
func registerRaw(conn net.Conn, path, auth string) (*registration, error) {
	defer conn.Close()
	req := fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n", path)
	if auth != "" {
		req += "Authorization: " + auth + "\r\n"
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		return nil, fmt.Errorf("writing registration: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, fmt.Errorf("reading registration response: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading registration body: %w", err)
	}
	return &registration{status: resp.StatusCode, header: resp.Header, body: string(body)}, nil
}

// testAgent is a connected test origin.
type testAgent struct {
	name   string
	conn   net.Conn
	sess   *spdy.Session
	served atomic.Int64

	held    chan string   // receives "<agent>:<id>" when /hold starts
	release chan struct{} // closing it ends every /hold
}

// startAgent registers and serves origin content. It fails the test on error.
func startAgent(t testing.TB, name string) *testAgent {
	t.Helper()
	return startAgentWithHandler(t, name, nil)
}

// startAgentWithHandler is startAgent with a custom origin handler (nil:
// the standard test content).
func startAgentWithHandler(t testing.TB, name string, h http.Handler) *testAgent {
	t.Helper()
	return startAgentConfig(t, name, testConnect, nil, h)
}

// startAgentConfig is startAgentWithHandler registering on the connect path
// with session settings cfg (nil: spdy.DefaultConfig()).
func startAgentConfig(t testing.TB, name, connect string, cfg *spdy.Config, h http.Handler) *testAgent {
	t.Helper()
	return startAgentRegistering(t, name, connect, testToken, "", cfg, h)
}

// startHostsAgent is startAgent registering with token and announcing
// hosts (comma-separated; "": none).
func startHostsAgent(t testing.TB, name, token, hosts string) *testAgent {
	t.Helper()
	return startAgentRegistering(t, name, testConnect, token, hosts, nil, nil)
}

// startAgentRegistering starts a test agent that registers with token,
// announcing hosts, on the connect path, with session settings cfg (nil:
// spdy.DefaultConfig()) and origin handler h (nil: the standard content).
func startAgentRegistering(t testing.TB, name, connect, token, hosts string, cfg *spdy.Config, h http.Handler) *testAgent {
	t.Helper()
	a := &testAgent{name: name, held: make(chan string, 64), release: make(chan struct{})}
	if h == nil {
		h = a.handler()
	}
	if cfg == nil {
		cfg = spdy.DefaultConfig()
	}
	reg, err := register(t, connect, "Bearer "+token, map[string]string{
		handshake.HeaderName:     name,
		handshake.HeaderVersion:  "test",
		handshake.HeaderInstance: "inst-" + name,
		handshake.HeaderHosts:    hosts,
	})
	if err != nil {
		t.Fatalf("agent %s: %v", name, err)
	}
	if reg.status != http.StatusOK {
		t.Fatalf("agent %s: registration status %d: %s", name, reg.status, reg.body)
	}
	if !strings.Contains(reg.body, "registered") {
		t.Fatalf("agent %s: unexpected registration body %q", name, reg.body)
	}
	sess, err := spdy.NewServer(spdy.BufferedConn(reg.conn, reg.br), cfg, h)
	if err != nil {
		reg.conn.Close()
		t.Fatalf("agent %s: starting SPDY server: %v", name, err)
	}
	a.conn, a.sess = reg.conn, sess
	t.Cleanup(a.kill)
	return a
}

// kill drops the connection abruptly, like a crashed agent.
func (a *testAgent) kill() {
	_ = a.conn.Close()
	_ = a.sess.Close()
}

// alive reports whether the agent's session is still up.
func (a *testAgent) alive() bool {
	select {
	case <-a.sess.Done():
		return false
	default:
		return true
	}
}

var testFile = bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB

var testFileTime = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

func (a *testAgent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		w.Header().Set("X-Agent", a.name)
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-Forwarded-Proto", r.Header.Get("X-Forwarded-Proto"))
		w.Header().Set("X-Seen-Forwarded-For", r.Header.Get("X-Forwarded-For"))
		w.Header().Set("X-Seen-Origin-Header", r.Header.Get("X-Origin"))
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hello from %s", a.name)
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("X-Agent", a.name)
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		_, _ = io.Copy(w, r.Body)
	})
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		w.Header().Set("X-Agent", a.name)
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "file.txt", testFileTime, bytes.NewReader(testFile))
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		size, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		if err != nil {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Agent", a.name)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		_, _ = io.CopyN(w, newTestData(), size)
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Agent", a.name)
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	// /headers?n=N answers with N extra response headers.
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Agent", a.name)
		for i := range n {
			w.Header().Set(fmt.Sprintf("X-H%d", i), "v")
		}
		fmt.Fprintf(w, "%d headers", n)
	})
	// /stall never reads its request body and never answers: it holds its
	// stream until the request or the session ends.
	mux.HandleFunc("/stall", func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		<-r.Context().Done()
	})
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		a.held <- a.name + ":" + r.URL.Query().Get("id")
		select {
		case <-a.release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Agent", a.name)
		fmt.Fprintf(w, "held by %s", a.name)
	})
	return mux
}

// newTestData returns the deterministic byte stream that /big serves and
// uploads send: nothing large is ever held in memory.
func newTestData() io.Reader {
	return rand.NewChaCha8([32]byte{'s', 'p', 'd', 'y', '-', 'o', 'r', 'i', 'g', 'i', 'n'})
}

// testDataDigest is the sha256 of the first n bytes of newTestData.
func testDataDigest(t testing.TB, n int64) string {
	t.Helper()
	h := sha256.New()
	if _, err := io.CopyN(h, newTestData(), n); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
