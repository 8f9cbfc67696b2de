package agent

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestDebugListenAddr(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{in: "", want: ""},
		{in: ":6060", want: "127.0.0.1:6060"},
		{in: "127.0.0.1:6060", want: "127.0.0.1:6060"},
		{in: "[::1]:6060", want: "[::1]:6060"},
		{in: "0.0.0.0:6060", want: "0.0.0.0:6060"}, // written out: allowed, with a warning
		{in: "6060", err: "--debug-addr"},
		{in: "127.0.0.1:", err: "--debug-addr"},
	} {
		got, err := debugListenAddr(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: err = %v, want containing %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: got %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestDebugAddrFromEnvironment(t *testing.T) {
	var out bytes.Buffer
	args := []string{"--proxy", "https://a.example", "--token", "t", "--to", "http://127.0.0.1:1"}
	c, err := parseArgs(args, envMap(map[string]string{"SPDY_ORIGIN_DEBUG_ADDR": ":6061"}), &out)
	if err != nil {
		t.Fatal(err)
	}
	if c.opts.DebugAddr != "127.0.0.1:6061" {
		t.Fatalf("DebugAddr = %q, want 127.0.0.1:6061", c.opts.DebugAddr)
	}
	c, err = parseArgs(args, envMap(nil), &out)
	if err != nil || c.opts.DebugAddr != "" {
		t.Fatalf("DebugAddr = %q, %v; want off by default", c.opts.DebugAddr, err)
	}
}

func TestDebugServesPprof(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	a := &Agent{opts: Options{DebugAddr: addr}, log: zap.NewNop()}
	stop, err := a.startDebug()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "heap profile") {
		t.Fatalf("heap profile: %s\n%.200s", resp.Status, b)
	}
}
