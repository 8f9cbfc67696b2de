package caddymodule

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	mobyspdy "github.com/moby/spdystream/spdy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/spdy"
)

func TestRegistrationErrors(t *testing.T) {
	pool := freshPool("regerr")
	tester := loadConfig(t, spdyRoute(pool, map[string]any{"max_auth_failures": 3}))

	// Other methods on the registration route.
	resp, _ := get(t, tester.Client, testConnect)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "PUT" {
		t.Fatalf("GET %s: %d, Allow %q", testConnect, resp.StatusCode, resp.Header.Get("Allow"))
	}

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

	// 401 for a missing and a wrong token, with the challenge by which the
	// agent tells a refused token from any other 401.
	for _, auth := range []string{"", "Bearer wrong", "Basic dXNlcjpwYXNz"} {
		reg, err := register(t, testConnect, auth, nil)
		if err != nil {
			t.Fatal(err)
		}
		refused := &handshake.StatusError{StatusCode: reg.status, Header: reg.header}
		if reg.status != http.StatusUnauthorized || !refused.TokenRejected() {
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

// Many bad tokens from an address the agent shares (CGNAT, an office NAT,
// the same LAN) must not keep the agent out: a valid token always
// registers, and its success does not lift the lockout for wrong tokens.
func TestValidTokenNeverLockedOut(t *testing.T) {
	pool := freshPool("lockout-valid")
	loadConfig(t, spdyRoute(pool, map[string]any{"max_auth_failures": 3}))
	for i := range 12 {
		reg, err := register(t, testConnect, "Bearer wrong-"+fmt.Sprint(i), nil)
		if err != nil {
			t.Fatal(err)
		}
		want := http.StatusUnauthorized
		if i >= 3 {
			want = http.StatusTooManyRequests
		}
		if reg.status != want {
			t.Fatalf("bad token %d: %d, want %d", i+1, reg.status, want)
		}
		if want == http.StatusTooManyRequests && reg.header.Get("Retry-After") == "" {
			t.Fatalf("bad token %d: 429 without Retry-After", i+1)
		}
	}
	startAgent(t, "lockout-valid-A") // fails the test unless 200
	waitSessions(t, pool, 1)
	reg, err := register(t, testConnect, "Bearer wrong-again", nil)
	if err != nil {
		t.Fatal(err)
	}
	if reg.status != http.StatusTooManyRequests {
		t.Fatalf("bad token after the agent registered: %d, want 429 (a success must not lift the lockout)", reg.status)
	}
}

// Once an IP is locked out, its further attempts are refused with 429 but not
// logged as warnings one by one: the lockout itself was logged, and an
// attacker must not be able to flood the log at request rate.
func TestLockedOutAttemptsLoggedQuietly(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	h := &Handler{
		Pool: "lockout-log", Connect: testConnect, RetryAfter: 1,
		tokens:  testScopes(testToken),
		limiter: newAuthLimiter(2, time.Minute),
		logger:  zap.New(core),
	}
	try := func() int {
		r := httptest.NewRequest(http.MethodPut, testConnect, strings.NewReader("x"))
		r.Header.Set("Authorization", "Bearer wrong")
		w := httptest.NewRecorder()
		if err := h.serveRegistration(w, r); err != nil {
			var he caddyhttp.HandlerError
			if !errors.As(err, &he) {
				t.Fatalf("error without a status: %v", err)
			}
			return he.StatusCode
		}
		return w.Code
	}
	for i := range 2 {
		if code := try(); code != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d, want 401", i+1, code)
		}
	}
	for i := range 50 {
		if code := try(); code != http.StatusTooManyRequests {
			t.Fatalf("locked-out attempt %d: %d, want 429", i+1, code)
		}
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n > 3 {
		t.Fatalf("%d warnings for 2 failures and 50 locked-out attempts; want the failures and the lockout only", n)
	}
}

// A refused registration is answered at once and its connection closed, not
// after the server has waited for (or read) the body the client declared:
// a client that declares a large body and sends none must not hold the
// connection, nor wait for its answer. Caddy wraps the request body (read
// timeouts, and access logs once more), which changes how net/http treats
// it: with and without access logs.
func TestRegistrationRefusalClosesAtOnce(t *testing.T) {
	for _, accessLog := range []bool{false, true} {
		t.Run(fmt.Sprintf("access log %v", accessLog), func(t *testing.T) {
			cfg := testConfig(spdyRoute(freshPool("refusal-close"), map[string]any{"max_auth_failures": 3}))
			if accessLog {
				srv := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv0"].(map[string]any)
				srv["logs"] = map[string]any{}
			}
			loadRawConfig(t, cfg)
			refusalsCloseAtOnce(t)
		})
	}
}

func refusalsCloseAtOnce(t *testing.T) {
	cases := []struct {
		name, method, auth string
		length             int
		want               int
	}{
		{"wrong token, huge body", http.MethodPut, "Bearer wrong", 100_000_000, http.StatusUnauthorized},
		{"missing token, small body", http.MethodPut, "", 1000, http.StatusUnauthorized},
		{"wrong token, starts lockout", http.MethodPut, "Bearer wrong", 1000, http.StatusUnauthorized},
		{"locked out, huge body", http.MethodPut, "Bearer wrong", 100_000_000, http.StatusTooManyRequests},
		{"locked out, small body", http.MethodPut, "Bearer wrong", 1000, http.StatusTooManyRequests},
		{"wrong method, huge body", http.MethodPost, "Bearer " + testToken, 100_000_000, http.StatusMethodNotAllowed},
		{"body over max_registration_body", http.MethodPut, "Bearer " + testToken, 100_000_000, http.StatusRequestEntityTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := dialCaddy()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			hdr := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n", tc.method, testConnect, tc.length)
			if tc.auth != "" {
				hdr += "Authorization: " + tc.auth + "\r\n"
			}
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			start := time.Now()
			if _, err := io.WriteString(conn, hdr+"\r\n"); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer after %v: %v", time.Since(start), err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			answered := time.Since(start)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			n, err := br.Read(make([]byte, 1))
			closed := time.Since(start)
			if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection not closed %v after the answer: read %d, %v", closed, n, err)
			}
			if answered > 2*time.Second || closed > 3*time.Second {
				t.Fatalf("answered after %v, closed after %v; want both at once", answered, closed)
			}
			t.Logf("%d answered after %v, connection closed after %v (%v)", resp.StatusCode, answered.Round(time.Millisecond), closed.Round(time.Millisecond), err)
		})
	}
}

// With max_sessions 1, registrations that arrive together get exactly one
// 200, and every other one a 503 before its connection is taken over: an
// agent that is told 200 must get a session, not a close. Whether a burst
// hits the window is up to the scheduler, so there are several bursts.
func TestMaxSessionsRace(t *testing.T) {
	pool := freshPool("max-race")
	loadConfig(t, spdyRoute(pool, map[string]any{"max_sessions": 1, "retry_after": "4s"}))
	for round := range 5 {
		winner := registrationBurst(t, 20)
		waitSessions(t, pool, 1)
		_ = winner.Close()
		waitSessions(t, pool, 0)
		t.Logf("round %d: one 200 and 19 503s", round+1)
	}
}

// registrationBurst sends n registrations at the same moment, on connections
// already open, to a pool with max_sessions 1. It fails the test unless
// exactly one gets 200, stays a session, and the others get 503 with
// Retry-After. It returns the winner's session.
func registrationBurst(t *testing.T, n int) *spdy.Session {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := dialCaddy()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	regs := make([]*registration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			regs[i], errs[i] = registerOn(conns[i], testConnect, "Bearer "+testToken, nil)
		}()
	}
	close(start)
	wg.Wait()

	var ok []*registration
	for i, reg := range regs {
		if errs[i] != nil {
			t.Fatalf("registration %d: %v", i, errs[i])
		}
		switch reg.status {
		case http.StatusOK:
			ok = append(ok, reg)
		case http.StatusServiceUnavailable:
			if reg.header.Get("Retry-After") != "4" {
				t.Errorf("registration %d: 503 with Retry-After %q, want 4", i, reg.header.Get("Retry-After"))
			}
		default:
			t.Errorf("registration %d: %d %q", i, reg.status, reg.body)
		}
	}
	// Every 200 must be a session that stays: serve SPDY on each and see
	// whether Caddy closes any of them.
	var live []*spdy.Session
	for _, reg := range ok {
		sess, err := spdy.NewServer(spdy.BufferedConn(reg.conn, reg.br), spdy.DefaultConfig(), http.NotFoundHandler())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sess.Close() })
		select {
		case <-sess.Done():
		case <-time.After(300 * time.Millisecond):
			live = append(live, sess)
		}
	}
	if len(ok) != 1 || len(live) != 1 {
		t.Fatalf("%d of %d concurrent registrations got 200 and %d of those were then closed; want exactly one 200 that stays",
			len(ok), n, len(ok)-len(live))
	}
	return live[0]
}

// An agent may send its first SPDY frames right behind the registration
// body, before it has read the 200 (Amahi origins pipeline like this). Those
// bytes sit in the server's buffer at hijack time and must reach the session:
// here a PING the session has to answer.
func TestRegistrationPipelinedFrames(t *testing.T) {
	loadConfig(t, spdyRoute("pipelined", nil))
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", testHTTPSAddr, &tls.Config{
		ServerName: "localhost", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var ping bytes.Buffer
	fr, err := mobyspdy.NewFramer(&ping, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteFrame(&mobyspdy.PingFrame{Id: 2}); err != nil {
		t.Fatal(err)
	}
	body := "pipelined agent\n"
	msg := fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s%s",
		testConnect, testToken, len(body), body, ping.Bytes())
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("registration: %d %v", resp.StatusCode, err)
	}
	in, err := mobyspdy.NewFramer(io.Discard, br)
	if err != nil {
		t.Fatal(err)
	}
	for {
		f, err := in.ReadFrame()
		if err != nil {
			t.Fatalf("no PING reply (the pipelined frame was lost?): %v", err)
		}
		if p, ok := f.(*mobyspdy.PingFrame); ok && p.Id == 2 {
			return
		}
	}
}

// Every refused or failed registration is logged with its cause (an
// "error" field) and the client's IP, whatever the level.
func TestRegistrationFailuresLogged(t *testing.T) {
	open, closed := newPool("log-open"), newPool("log-closed")
	_ = closed.Destruct()
	req := func(method, auth, body string) *http.Request {
		r := httptest.NewRequest(method, testConnect, strings.NewReader(body))
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		return r
	}
	valid := "Bearer " + testToken
	cases := []struct {
		name   string
		r      *http.Request
		pool   *pool
		locked bool // the client's address is locked out first
		want   int
	}{
		{name: "wrong method", r: req(http.MethodGet, valid, ""), want: http.StatusMethodNotAllowed},
		{name: "HTTP/2", r: func() *http.Request {
			r := req(http.MethodPut, valid, "x")
			r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
			return r
		}(), want: http.StatusHTTPVersionNotSupported},
		{name: "missing token", r: req(http.MethodPut, "", "x"), want: http.StatusUnauthorized},
		{name: "wrong token", r: req(http.MethodPut, "Bearer wrong", "x"), want: http.StatusUnauthorized},
		{name: "locked out", r: req(http.MethodPut, "Bearer wrong", "x"), locked: true, want: http.StatusTooManyRequests},
		{name: "declared body too large", r: req(http.MethodPut, valid, strings.Repeat("x", 100)), want: http.StatusRequestEntityTooLarge},
		{name: "chunked body too large", r: func() *http.Request {
			r := req(http.MethodPut, valid, strings.Repeat("x", 100))
			r.ContentLength = -1
			return r
		}(), want: http.StatusRequestEntityTooLarge},
		{name: "body read error", r: func() *http.Request {
			r := req(http.MethodPut, valid, "")
			r.Body, r.ContentLength = io.NopCloser(iotest.ErrReader(errors.New("connection reset"))), -1
			return r
		}(), want: http.StatusBadRequest},
		{name: "pool closed", r: req(http.MethodPut, valid, "x"), pool: closed, want: http.StatusServiceUnavailable},
		{name: "hijack unsupported", r: req(http.MethodPut, valid, "x"), want: http.StatusHTTPVersionNotSupported},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			p := tc.pool
			if p == nil {
				p = open
			}
			h := &Handler{
				Pool: p.name, Connect: testConnect, RetryAfter: 1, MaxRegistrationBody: 10,
				tokens:    testScopes(testToken),
				limiter:   newAuthLimiter(1, time.Minute),
				logger:    zap.New(core),
				transport: &Transport{pool: p},
			}
			ip := clientIP(tc.r)
			if tc.locked {
				h.limiter.fail(ip)
			}
			w := httptest.NewRecorder()
			err := h.serveRegistration(w, tc.r)
			code := w.Code
			if err != nil {
				var he caddyhttp.HandlerError
				if !errors.As(err, &he) {
					t.Fatalf("error without a status: %v", err)
				}
				code = he.StatusCode
			}
			if code != tc.want {
				t.Fatalf("status %d, want %d", code, tc.want)
			}
			for _, e := range logs.All() {
				m := e.ContextMap()
				if m["client_ip"] == ip && m["error"] != nil {
					t.Logf("%s %q: error=%q", e.Level, e.Message, m["error"])
					return
				}
			}
			t.Fatalf("no log entry with the cause (error) and client_ip %s; logged: %+v", ip, logs.All())
		})
	}
}

func TestMatchToken(t *testing.T) {
	h := Handler{tokens: testScopes("one", "two-longer", "three")}
	for tok, want := range map[string]int{"one": 1, "two-longer": 2, "three": 3, "two": 0, "": 0, "one ": 0} {
		got := 0
		if s := h.matchToken(tok); s != nil {
			got = s.n
		}
		if got != want {
			t.Errorf("matchToken(%q) = token %d, want %d", tok, got, want)
		}
	}
}

// testScopes are tokens without hosts, as Provision resolves them.
func testScopes(secrets ...string) []*tokenScope {
	var out []*tokenScope
	for i, s := range secrets {
		out = append(out, &tokenScope{n: i + 1, secret: sha256.Sum256([]byte(s))})
	}
	return out
}
