package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	mobyspdy "github.com/moby/spdystream/spdy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A request waiting for an agent (dial_timeout) must not keep waiting on a
// pool that was removed from the config: no agent can join it any more.
func TestPoolDestructWakesWaiters(t *testing.T) {
	p := newPool("destruct-wait")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan *session, 1)
	go func() { done <- p.waitForSession(ctx) }()
	time.Sleep(20 * time.Millisecond) // let it block on p.changed
	if err := p.Destruct(); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-done:
		if s != nil {
			t.Fatalf("got a session from a closed pool")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("waitForSession still waiting after the pool was destructed (until dial_timeout)")
	}
}

// Once an IP is locked out, its further attempts are refused with 429 but not
// logged as warnings one by one: the lockout itself was logged, and an
// attacker must not be able to flood the log at request rate.
func TestLockedOutAttemptsLoggedQuietly(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	h := &Handler{
		Pool: "lockout-log", Connect: testConnect, RetryAfter: 1,
		tokens:  [][]byte{[]byte(testToken)},
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

// Tokens from the environment or a secrets file often carry a trailing
// newline. A bearer token in a header can never have surrounding whitespace,
// so such a configured token must be trimmed, not silently unusable.
func TestTokenWhitespaceTrimmed(t *testing.T) {
	t.Setenv("SPDY_ORIGIN_TEST_TOKEN_NL", " "+testToken+"\n")
	loadConfig(t, map[string]any{"handler": "spdy_origin", "pool": "token-nl", "token": []string{"{env.SPDY_ORIGIN_TEST_TOKEN_NL}"}})
	reg, err := register(t, testConnect, "Bearer "+testToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	if reg.status != http.StatusOK {
		t.Fatalf("registration with the token from a newline-terminated env var: %d %q", reg.status, reg.body)
	}
	reg.conn.Close()
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

// A token whose placeholder is unknown or resolves to nothing must fail the
// config: dropping the placeholder would leave a weaker token than the one
// the user wrote.
func TestTokenPlaceholderErrors(t *testing.T) {
	for _, tok := range []string{"{env.SPDY_ORIGIN_SURELY_UNSET_VAR}", "prefix-{no.such.placeholder}"} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		h := &Handler{Token: []string{tok}}
		err := h.Provision(ctx)
		_ = h.Cleanup()
		cancel()
		if err == nil {
			t.Errorf("token %q: Provision succeeded, want an error", tok)
		} else {
			t.Logf("token %q: %v", tok, err)
		}
	}
}

// A registration holds its max_sessions slot from before its 200 until its
// session joins or it fails, so two registrations cannot both take the last
// slot.
func TestPoolReserve(t *testing.T) {
	p := newPool("reserve")
	a, err := p.reserve(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.reserve(1); !errors.Is(err, errPoolFull) {
		t.Fatalf("second reservation of max_sessions 1: %v, want errPoolFull", err)
	}
	a.release()
	a.release() // a second release gives back nothing more
	b, err := p.reserve(1)
	if err != nil {
		t.Fatalf("after a release: %v", err)
	}
	c, err := p.reserve(0) // unlimited
	if err != nil {
		t.Fatalf("unlimited: %v", err)
	}
	c.release()
	_ = p.Destruct()
	if err := b.join(&session{}); !errors.Is(err, errPoolClosed) {
		t.Fatalf("join after the pool closed: %v, want errPoolClosed", err)
	}
	b.release() // no-op after join
	if _, err := p.reserve(0); !errors.Is(err, errPoolClosed) {
		t.Fatalf("reserve on a closed pool: %v, want errPoolClosed", err)
	}
	if p.reserved != 0 {
		t.Fatalf("%d slots still reserved", p.reserved)
	}
}
