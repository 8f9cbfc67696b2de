package caddymodule

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// This file is a minimal origin agent for tests, built on package spdy
// directly (the real agent is package main in ./agent): TLS with ALPN
// http/1.1, PUT with a bearer token, read the 200 and its body, then serve
// SPDY streams with an http.Handler.

const (
	testConnect = "/.well-known/spdy-origin"
	testToken   = "test-token-8b1d-4e07" // 16+ bytes: shorter ones are warned about at load
)

// registration is the outcome of a registration attempt.
type registration struct {
	status int
	header http.Header
	body   string
	conn   net.Conn
	br     *bufio.Reader
}

// register performs the agent handshake up to and including the response
// body. On 200 the connection is left open for SPDY.
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
// unless the answer is 200.
func registerOn(conn net.Conn, path, auth string, hdr map[string]string) (*registration, error) {
	body := "spdy-origin test agent\n"
	var req strings.Builder
	fmt.Fprintf(&req, "PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n", path, len(body))
	if auth != "" {
		fmt.Fprintf(&req, "Authorization: %s\r\n", auth)
	}
	for k, v := range hdr {
		fmt.Fprintf(&req, "%s: %s\r\n", k, v)
	}
	req.WriteString("\r\n" + body)
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req.String()); err != nil {
		conn.Close()
		return nil, fmt.Errorf("writing registration: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading registration response: %w", err)
	}
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading registration body: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	r := &registration{status: resp.StatusCode, header: resp.Header, body: string(rb), conn: conn, br: br}
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		r.conn = nil
	}
	return r, nil
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
	a := &testAgent{name: name, held: make(chan string, 64), release: make(chan struct{})}
	if h == nil {
		h = a.handler()
	}
	if cfg == nil {
		cfg = spdy.DefaultConfig()
	}
	reg, err := register(t, connect, "Bearer "+testToken, map[string]string{
		"Spdy-Origin-Agent-Name":     name,
		"Spdy-Origin-Agent-Version":  "test",
		"Spdy-Origin-Agent-Instance": "inst-" + name,
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
