package caddymodule

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// TestMetrics: the pool's collectors are in Caddy's metrics registry (the
// admin API's /metrics), with per-agent sessions and per-status requests.
func TestMetrics(t *testing.T) {
	tester := loadConfig(t, spdyRoute("metrics", nil))
	startAgent(t, "metrics-A")
	waitSessions(t, "metrics", 1)
	if resp, _ := get(t, tester.Client, "/hello"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /hello: %d", resp.StatusCode)
	}

	// Metrics are in Caddy's registry.
	mr, err := http.Get(adminBase + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	for _, want := range []string{
		`caddy_spdy_origin_sessions{pool="metrics"} 1`,
		`caddy_spdy_origin_requests_total{code="200",pool="metrics"}`,
		`caddy_spdy_origin_agent_sessions{agent_instance="inst-metrics-A",agent_name="metrics-A",agent_version="test",pool="metrics"} 1`,
		`caddy_spdy_origin_bytes_from_agents_total{pool="metrics"}`,
	} {
		if !bytes.Contains(mb, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
