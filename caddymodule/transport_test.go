package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	mobyspdy "github.com/moby/spdystream/spdy"

	"github.com/spdy-origin/spdy-origin/spdy"
)

func TestNoAgent503(t *testing.T) {
	tester := loadConfig(t, spdyRoute("empty", map[string]any{"retry_after": "7s"}))
	resp, _ := get(t, tester.Client, "/hello")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "7" {
		t.Fatalf("no agent: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// TestClientCancel: a client hanging up resets the agent's stream at once.
func TestClientCancel(t *testing.T) {
	loadConfig(t, spdyRoute("cancel", nil))
	a := startAgent(t, "cancel-A")
	waitSessions(t, "cancel", 1)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, testBase+"/hold?id=c", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := bigClient().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case <-a.held:
	case <-time.After(10 * time.Second):
		t.Fatal("request never reached the agent")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("client error %v", err)
	}
	// The agent's handler sees its request context end (stream reset).
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := allPoolsByName(t)["cancel"]
		if len(p.Sessions) == 1 && p.Sessions[0].OpenStreams == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream still open after client cancel: %+v", p.Sessions)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// refuseStreams answers every stream Caddy opens to h with RST_STREAM
// REFUSED_STREAM, as an agent at its stream limit does, and counts them.
func refuseStreams(h *hostileAgent) *atomic.Int64 {
	var n atomic.Int64
	go func() {
		for f := range h.frames {
			if syn, ok := f.(*mobyspdy.SynStreamFrame); ok {
				n.Add(1)
				_ = h.send(h.encode(&mobyspdy.RstStreamFrame{StreamId: syn.StreamId, Status: mobyspdy.RefusedStream}))
			}
		}
	}()
	return &n
}

// A stream the agent refuses (REFUSED_STREAM: it did not process the
// request) is sent again on another session of the pool; the refusing
// session stays. (A request whose body was already being sent is not
// retried: the body cannot be read twice.)
func TestRefusedStreamRetriedOnAnotherSession(t *testing.T) {
	pool := "refused-retry"
	tester := loadConfig(t, spdyRoute(pool, nil))
	refused := refuseStreams(startHostileAgent(t, "refuser", testConnect))
	startAgent(t, "good")
	waitSessions(t, pool, 2)

	for i := range 6 {
		resp, body := get(t, tester.Client, "/hello")
		if resp.StatusCode != http.StatusOK || body != "hello from good" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if refused.Load() == 0 {
		t.Fatal("no request went to the refusing session first; the retry was not exercised")
	}
	t.Logf("%d of 6 requests refused by one session and answered by the other", refused.Load())
	waitSessions(t, pool, 2)
}

// When the only session refuses the stream, nothing can take the request:
// 503 with Retry-After, and no second try on the same session.
func TestOnlySessionRefused503(t *testing.T) {
	pool := "refused-only"
	tester := loadConfig(t, spdyRoute(pool, map[string]any{"retry_after": "3s"}))
	refused := refuseStreams(startHostileAgent(t, "refuser-only", testConnect))
	waitSessions(t, pool, 1)

	resp, _ := get(t, tester.Client, "/hello")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "3" {
		t.Fatalf("only session refused: %d, Retry-After %q; want 503, 3", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := refused.Load(); n != 1 {
		t.Fatalf("the session was asked %d times, want once", n)
	}
}

// An agent that sends no response headers within response_header_timeout:
// the client gets 504, the stream is reset, the session serves on.
func TestResponseHeaderTimeout504(t *testing.T) {
	pool := "header-timeout"
	tester := loadConfig(t, spdyRoute(pool, map[string]any{"response_header_timeout": "300ms"}))
	startAgent(t, "slow")
	waitSessions(t, pool, 1)

	start := time.Now()
	resp, _ := get(t, tester.Client, "/stall")
	if took := time.Since(start); resp.StatusCode != http.StatusGatewayTimeout || took > 3*time.Second {
		t.Fatalf("GET /stall: %d after %v; want 504 after about 300ms", resp.StatusCode, took)
	}
	waitUntil(t, "the timed-out stream to close", 5*time.Second, func() bool {
		return onlySession(t, pool).OpenStreams == 0
	})
	if resp, _ := get(t, tester.Client, "/hello"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /hello after the timeout: %d", resp.StatusCode)
	}
}

// Every stream the agent allows is busy for stream_queue_timeout: 503 with
// Retry-After; the request was never sent, and the pool serves again once
// a stream is free.
func TestStreamQueueTimeout503(t *testing.T) {
	pool := "queue-timeout"
	tester := loadConfig(t, spdyRoute(pool, map[string]any{"stream_queue_timeout": "300ms", "retry_after": "2s"}))
	a := startAgentConfig(t, "one-stream", testConnect, &spdy.Config{MaxConcurrentStreams: 1}, nil)
	waitSessions(t, pool, 1)

	held := make(chan int, 1)
	go func() {
		resp, _ := get(t, bigClient(), "/hold?id=q")
		held <- resp.StatusCode
	}()
	select {
	case <-a.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the holding request never reached the agent")
	}
	start := time.Now()
	resp, _ := get(t, tester.Client, "/hello")
	if took := time.Since(start); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "2" || took > 3*time.Second {
		t.Fatalf("GET with the only stream busy: %d, Retry-After %q after %v; want 503, 2 after about 300ms",
			resp.StatusCode, resp.Header.Get("Retry-After"), took)
	}
	close(a.release)
	if code := <-held; code != http.StatusOK {
		t.Fatalf("held request: %d", code)
	}
	if resp, _ := get(t, tester.Client, "/hello"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /hello once the stream is free: %d", resp.StatusCode)
	}
}
