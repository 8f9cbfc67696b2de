package caddymodule

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestUnmarshalCaddyfileHandler(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    string // JSON of the resulting handler, when no error
		wantErr string // substring of the error
		line    int    // the Caddyfile line the error must name, if nonzero
	}{
		{
			name: "minimal",
			input: `spdy_origin {
				token s3cret
			}`,
			want: `{"token":["s3cret"]}`,
		},
		{
			name: "everything",
			input: `spdy_origin {
				pool home
				connect /agents/register
				token {env.TOKEN_A}
				token literal-b
				max_registration_body 4KiB
				max_sessions 8
				max_auth_failures 3
				auth_failure_window 2m
				retry_after 10s
				drain_timeout 30s
				dial_timeout 2s
				response_header_timeout 1m
				flush_interval -1
				trusted_proxies 10.0.0.0/8 192.0.2.1
				header_up X-Origin spdy
				header_up -Cookie
				header_down Server spdy-origin
				header_down X-Powered-By ^(.*)$ hidden
				stream_timeout 24h
				stream_close_delay 5m
				stream_window 16MiB
				session_window 64MiB
				max_concurrent_streams 500
				max_upgraded_streams 200
				ping_interval 20s
				ping_timeout 5s
				write_timeout 45s
			}`,
			want: `{"pool":"home","connect":"/agents/register","token":["{env.TOKEN_A}","literal-b"],` +
				`"max_registration_body":4096,"max_sessions":8,"max_auth_failures":3,"auth_failure_window":120000000000,` +
				`"retry_after":10000000000,"dial_timeout":2000000000,"response_header_timeout":60000000000,"flush_interval":-1,` +
				`"trusted_proxies":["10.0.0.0/8","192.0.2.1"],` +
				`"headers":{"request":{"set":{"X-Origin":["spdy"]},"delete":["Cookie"]},` +
				`"response":{"set":{"Server":["spdy-origin"]},"replace":{"X-Powered-By":[{"search_regexp":"^(.*)$","replace":"hidden"}]}}},` +
				`"stream_timeout":86400000000000,"stream_close_delay":300000000000,"drain_timeout":30000000000,` +
				`"stream_window":16777216,"session_window":67108864,"max_concurrent_streams":500,"max_upgraded_streams":200,` +
				`"ping_interval":20000000000,"ping_timeout":5000000000,"write_timeout":45000000000}`,
		},
		{
			name: "trusted private ranges",
			input: `spdy_origin {
				token x
				trusted_proxies private_ranges
			}`,
			want: `{"token":["x"],"trusted_proxies":["192.168.0.0/16","172.16.0.0/12","10.0.0.0/8","127.0.0.1/8","fd00::/8","::1"]}`,
		},
		{name: "missing token", input: "spdy_origin {\n\tpool home\n}", wantErr: "at least one 'token <secret>' is required"},
		{name: "missing token, no block", input: "spdy_origin", wantErr: "at least one 'token <secret>' is required"},
		{name: "unknown subdirective with line", input: "spdy_origin {\n\ttoken x\n\tupstream 10.0.0.1\n}", line: 3, wantErr: "unrecognized spdy_origin subdirective: upstream"},
		{name: "bad duration with line", input: "spdy_origin {\n\ttoken x\n\n\tdial_timeout soon\n}", line: 4, wantErr: `dial_timeout: bad duration "soon"`},
		{name: "negative duration", input: "spdy_origin {\n\ttoken x\n\tping_timeout -5s\n}", line: 3, wantErr: "ping_timeout: duration must not be negative"},
		{name: "bad flush interval", input: "spdy_origin {\n\ttoken x\n\tflush_interval often\n}", line: 3, wantErr: `flush_interval: bad duration value 'often'`}, // reverse_proxy's message
		{name: "duplicate flush interval", input: "spdy_origin {\n\ttoken x\n\tflush_interval 1s\n\tflush_interval 2s\n}", line: 4, wantErr: "flush_interval specified more than once"},
		{name: "negative stream timeout", input: "spdy_origin {\n\ttoken x\n\tstream_timeout -5s\n}", line: 3, wantErr: `stream_timeout: duration must not be negative, got "-5s"`},
		{name: "trusted_proxies without ranges", input: "spdy_origin {\n\ttoken x\n\ttrusted_proxies\n}", line: 3, wantErr: "wrong argument count"},
		{name: "max_concurrent_streams beyond uint32", input: "spdy_origin {\n\ttoken x\n\tmax_concurrent_streams 4294967296\n}", line: 3, wantErr: `max_concurrent_streams: want a non-negative integer, got "4294967296"`},
		{name: "reverse_proxy subdirective not passed through", input: "spdy_origin {\n\ttoken x\n\tlb_policy first\n}", line: 3, wantErr: "unrecognized spdy_origin subdirective: lb_policy"},
		{name: "bad size", input: "spdy_origin {\n\ttoken x\n\tstream_window lots\n}", line: 3, wantErr: `stream_window: bad size "lots"`},
		{name: "bad integer", input: "spdy_origin {\n\ttoken x\n\tmax_sessions -1\n}", line: 3, wantErr: `max_sessions: want a non-negative integer, got "-1"`},
		{name: "duplicate pool", input: "spdy_origin {\n\ttoken x\n\tpool a\n\tpool b\n}", line: 4, wantErr: "pool specified more than once"},
		{name: "token without value", input: "spdy_origin {\n\ttoken\n}", line: 2, wantErr: "wrong argument count"},
		{name: "pool with two args", input: "spdy_origin {\n\ttoken x\n\tpool a b\n}", line: 3, wantErr: `pool takes one argument; unexpected "b"`},
		{name: "connect must be a path", input: "spdy_origin {\n\ttoken x\n\tconnect agents\n}", line: 3, wantErr: `connect must be a path starting with '/'`},
		{name: "inline argument", input: "spdy_origin localhost:8080 {\n\ttoken x\n}", wantErr: "spdy_origin takes no arguments besides a matcher"},
		{name: "header_up without field", input: "spdy_origin {\n\ttoken x\n\theader_up\n}", line: 3, wantErr: "wrong argument count"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("want error containing %q, got none", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q does not contain %q", err, tc.wantErr)
				}
				if at := fmt.Sprintf("at Testfile:%d", tc.line); tc.line != 0 && !strings.HasSuffix(err.Error(), at) {
					t.Fatalf("error %q does not name the line (%s)", err, at)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			got, err := json.Marshal(&h)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("JSON mismatch\n got: %s\nwant: %s", got, tc.want)
			}
			// The JSON form round-trips to the same handler.
			var back Handler
			if err := json.Unmarshal(got, &back); err != nil {
				t.Fatal(err)
			}
			again, _ := json.Marshal(&back)
			if string(again) != string(got) {
				t.Fatalf("JSON round trip changed the config\n got: %s\nwant: %s", again, got)
			}
		})
	}
}

func TestUnmarshalCaddyfileTransport(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    Transport
		wantErr string
		line    int
	}{
		{name: "empty", input: "spdy_origin"},
		{name: "all", input: "spdy_origin {\n pool home\n dial_timeout 3s\n response_header_timeout 30s\n}",
			want: Transport{Pool: "home", DialTimeout: caddy.Duration(3 * time.Second), ResponseHeaderTimeout: caddy.Duration(30 * time.Second)}},
		{name: "unknown", input: "spdy_origin {\n pool home\n token x\n}", line: 3, wantErr: "unrecognized spdy_origin transport subdirective: token"},
		{name: "bad duration", input: "spdy_origin {\n dial_timeout x\n}", line: 2, wantErr: `dial_timeout: bad duration "x"`},
		{name: "argument", input: "spdy_origin home", wantErr: "transport spdy_origin takes no arguments"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tr Transport
			err := tr.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
				}
				if at := fmt.Sprintf("at Testfile:%d", tc.line); tc.line != 0 && !strings.HasSuffix(err.Error(), at) {
					t.Fatalf("error %q does not name the line (%s)", err, at)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tr.Pool != tc.want.Pool || tr.DialTimeout != tc.want.DialTimeout || tr.ResponseHeaderTimeout != tc.want.ResponseHeaderTimeout {
				t.Fatalf("got %+v, want %+v", tr, tc.want)
			}
		})
	}
}

var updateGolden = flag.Bool("update", false, "rewrite testdata/adapt.json from the adapter's output")

// TestAdaptGolden checks the Caddyfile adapter's output for spdy_origin: the
// directive is ordered before reverse_proxy without a global order option,
// matchers work, and the transport and upstream source adapt;
// spdy_origin_register is ordered before basic_auth, wherever it is written.
func TestAdaptGolden(t *testing.T) {
	in, err := os.ReadFile("testdata/adapt.caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	if *updateGolden {
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(in, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("testdata/adapt.json.tmp", out, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Skip("wrote testdata/adapt.json.tmp; indent it into testdata/adapt.json after review")
	}
	want, err := os.ReadFile("testdata/adapt.json")
	if err != nil {
		t.Fatal(err)
	}
	caddytest.AssertAdapt(t, string(in), "caddyfile", string(want))
}

// reverse_proxy's own subdirectives go through reverse_proxy's parser:
// private_ranges is Caddy's list, repeated subdirectives add up, and tokens
// from an imported snippet parse as they do in place.
func TestCaddyfileProxySubdirectives(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`spdy_origin {
		token x
		trusted_proxies private_ranges 192.0.2.0/24
		trusted_proxies 198.51.100.1
		header_up X-A a
		header_up X-B b
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := append(caddyhttp.PrivateRangesCIDR(), "192.0.2.0/24", "198.51.100.1")
	if !slices.Equal(h.TrustedProxies, want) {
		t.Fatalf("trusted_proxies %q, want %q", h.TrustedProxies, want)
	}
	if got := h.Headers.Request.Set; got.Get("X-A") != "a" || got.Get("X-B") != "b" {
		t.Fatalf("header_up: %v", got)
	}

	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`
(proxying) {
	header_up X-From-Snippet yes
	flush_interval -1
}
example.com {
	spdy_origin {
		import proxying
		token x
		trusted_proxies 10.0.0.0/8
	}
}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := findHandler(t, out, "spdy_origin")
	wantJSON := `{"flush_interval":-1,"handler":"spdy_origin","headers":{"request":{"set":{"X-From-Snippet":["yes"]}}},"token":["x"],"trusted_proxies":["10.0.0.0/8"]}`
	if got != wantJSON {
		t.Fatalf("handler from a Caddyfile with a snippet:\n got: %s\nwant: %s", got, wantJSON)
	}
}

// findHandler returns the JSON (keys sorted) of the first handler named
// name in an adapted config.
func findHandler(t *testing.T, config []byte, name string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(config, &v); err != nil {
		t.Fatal(err)
	}
	var found any
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == name && found == nil {
				found = v
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(v)
	if found == nil {
		t.Fatalf("no %s handler in %s", name, config)
	}
	b, err := json.Marshal(found)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestTimeoutsOff(t *testing.T) {
	h := new(Handler)
	d := caddyfile.NewTestDispenser("spdy_origin {\n token t\n stream_idle_timeout off\n stream_queue_timeout 3s\n}")
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if h.StreamIdleTimeout != -1 || h.StreamQueueTimeout != caddy.Duration(3*time.Second) {
		t.Fatalf("idle %v, queue %v", h.StreamIdleTimeout, h.StreamQueueTimeout)
	}
	h.Connect = DefaultConnect // Provision's default
	if err := h.Validate(); err != nil {
		t.Fatalf("off must validate: %v", err)
	}
	for _, bad := range []string{"stream_idle_timeout -1s", "stream_idle_timeout never", "stream_queue_timeout off 3s"} {
		if err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser("spdy_origin {\n token t\n " + bad + "\n}")); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
