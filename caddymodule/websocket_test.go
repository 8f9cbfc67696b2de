package caddymodule

import (
	"bytes"
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestWebSocketThroughTunnel checks that reverse_proxy's upgrade handling
// works with our transport: the 101 response body is the stream's
// io.ReadWriteCloser.
func TestWebSocketThroughTunnel(t *testing.T) {
	loadConfig(t, spdyRoute("ws", nil))
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(16 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})
	startAgentWithHandler(t, "ws-A", mux)
	waitSessions(t, "ws", 1)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{ServerName: "localhost", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
	}}
	c, resp, err := websocket.Dial(ctx, "wss"+strings.TrimPrefix(testBase, "https")+"/ws", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("dial: %v (response %+v)", err, resp)
	}
	defer c.CloseNow()
	c.SetReadLimit(16 << 20)
	big := bytes.Repeat([]byte("0123456789abcdef"), 512<<10) // 8 MiB
	for _, m := range []struct {
		typ  websocket.MessageType
		data []byte
	}{{websocket.MessageText, []byte("hello")}, {websocket.MessageBinary, big}} {
		if err := c.Write(ctx, m.typ, m.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Fatalf("echo mismatch: type %v, %d bytes", typ, len(got))
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
}
