package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"
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
