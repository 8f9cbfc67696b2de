package agent

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/spdy-origin/spdy-origin/spdy"
)

func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseArgs(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, c *cliConfig)
	}{
		{
			name: "flags",
			args: []string{"--proxy", "https://a.example/.well-known/spdy-origin", "--proxy", "https://b.example",
				"--token", "tok", "--to", "http://127.0.0.1:8080", "--connections", "3", "--name", "nas",
				"--drain-timeout", "5s", "--log-level", "debug", "--log-format", "json"},
			check: func(t *testing.T, c *cliConfig) {
				o := c.opts
				if len(o.Proxies) != 2 || o.Proxies[1].Host != "b.example" {
					t.Fatalf("proxies = %v", o.Proxies)
				}
				if o.Token != "tok" || routesOf(o) != "http://127.0.0.1:8080" || o.Connections != 3 ||
					o.Name != "nas" || o.DrainTimeout != 5*time.Second || c.logFormat != "json" || c.logLevel.String() != "debug" {
					t.Fatalf("opts = %+v, c = %+v", o, c)
				}
			},
		},
		{
			name: "stream limits",
			args: []string{"--proxy", "https://a.example", "--token", "t", "--to", "http://127.0.0.1:1",
				"--max-streams", "20000"},
			env: map[string]string{"SPDY_ORIGIN_MAX_UPGRADES": "50"},
			check: func(t *testing.T, c *cliConfig) {
				if c.opts.MaxStreams != 20000 || c.opts.MaxUpgrades != 50 {
					t.Fatalf("max streams/upgrades = %d/%d, want 20000/50", c.opts.MaxStreams, c.opts.MaxUpgrades)
				}
			},
		},
		{
			name: "https upstream with its own CA",
			args: []string{"--proxy", "https://a.example", "--token", "t", "--to", "https://nas.lan:8443"},
			env:  map[string]string{"SPDY_ORIGIN_UPSTREAM_CA_FILE": "/etc/nas-ca.pem"},
			check: func(t *testing.T, c *cliConfig) {
				if routesOf(c.opts) != "https://nas.lan:8443" || c.opts.UpstreamCAFile != "/etc/nas-ca.pem" {
					t.Fatalf("routes %s, upstream CA file %q", routesOf(c.opts), c.opts.UpstreamCAFile)
				}
			},
		},
		{
			name: "tcp-notsent-lowat, flag and env",
			args: []string{"--proxy", "https://a.example", "--token", "t", "--to", "http://127.0.0.1:1", "--tcp-notsent-lowat", "-1"},
			check: func(t *testing.T, c *cliConfig) {
				if c.opts.NotSentLowat != -1 {
					t.Fatalf("NotSentLowat = %d, want -1", c.opts.NotSentLowat)
				}
				cfg, err := sessionConfig(nil, c.opts)
				if err != nil || cfg.NotSentLowat != -1 {
					t.Fatalf("session config NotSentLowat = %d (%v), want -1", cfg.NotSentLowat, err)
				}
			},
		},
		{
			name: "tcp-notsent-lowat from env, default otherwise",
			args: []string{"--proxy", "https://a.example", "--token", "t", "--to", "http://127.0.0.1:1"},
			env:  map[string]string{"SPDY_ORIGIN_TCP_NOTSENT_LOWAT": "16384"},
			check: func(t *testing.T, c *cliConfig) {
				if c.opts.NotSentLowat != 16384 {
					t.Fatalf("NotSentLowat = %d, want 16384", c.opts.NotSentLowat)
				}
				c.opts.NotSentLowat = 0
				cfg, err := sessionConfig(nil, c.opts)
				if err != nil || cfg.NotSentLowat != spdy.DefaultNotSentLowat {
					t.Fatalf("session config NotSentLowat = %d (%v), want spdy's default", cfg.NotSentLowat, err)
				}
			},
		},
		{
			name:    "bad max upgrades",
			args:    []string{"--proxy", "https://a.example", "--token", "t", "--to", "http://127.0.0.1:1", "--max-upgrades", "0"},
			wantErr: "--max-upgrades",
		},
		{
			name: "env only, proxies comma separated",
			env: map[string]string{"SPDY_ORIGIN_PROXY": "https://a.example, https://b.example", "SPDY_ORIGIN_TOKEN": "envtok",
				"SPDY_ORIGIN_ROOT": dir, "SPDY_ORIGIN_INSECURE_SKIP_VERIFY": "true", "SPDY_ORIGIN_CONNECTIONS": "4"},
			check: func(t *testing.T, c *cliConfig) {
				o := c.opts
				if len(o.Proxies) != 2 || o.Token != "envtok" || routesOf(o) != dir || !o.InsecureSkipVerify || o.Connections != 4 {
					t.Fatalf("opts = %+v", o)
				}
				if o.Name == "" {
					t.Fatal("name should default to the host name")
				}
				if o.DrainTimeout != 30*time.Second {
					t.Fatalf("drain timeout default = %v", o.DrainTimeout)
				}
				if o.MaxStreams != 1000 || o.MaxUpgrades != 1000 {
					t.Fatalf("max streams/upgrades defaults = %d/%d", o.MaxStreams, o.MaxUpgrades)
				}
			},
		},
		{
			name: "flag wins over env",
			args: []string{"--token", "flagtok", "--proxy", "https://flag.example"},
			env:  map[string]string{"SPDY_ORIGIN_TOKEN": "envtok", "SPDY_ORIGIN_PROXY": "https://env.example", "SPDY_ORIGIN_TO": "http://127.0.0.1:1"},
			check: func(t *testing.T, c *cliConfig) {
				if c.opts.Token != "flagtok" || len(c.opts.Proxies) != 1 || c.opts.Proxies[0].Host != "flag.example" {
					t.Fatalf("opts = %+v", c.opts)
				}
			},
		},
		{name: "no proxy", args: []string{"--token", "t", "--to", "http://x:1"}, wantErr: "--proxy is required"},
		{name: "no token", args: []string{"--proxy", "https://x", "--to", "http://x:1"}, wantErr: "--token is required"},
		{name: "both to and root for every host", args: []string{"--proxy", "https://x", "--token", "t", "--to", "http://x:1", "--root", "."},
			wantErr: "two routes for every host (a --to or --root without HOST=): http://x:1 and ."},
		{name: "neither to nor root", args: []string{"--proxy", "https://x", "--token", "t"}, wantErr: "at least one --to [HOST=]URL or --root [HOST=]DIR is required"},
		{name: "bad proxy scheme", args: []string{"--proxy", "ftp://x", "--token", "t", "--to", "http://x:1"}, wantErr: "--proxy"},
		{name: "bad to", args: []string{"--proxy", "https://x", "--token", "t", "--to", "127.0.0.1:8080"}, wantErr: "--to"},
		{name: "bad connections", args: []string{"--proxy", "https://x", "--token", "t", "--to", "http://x:1", "--connections", "0"}, wantErr: "--connections"},
		{name: "bad log format", args: []string{"--proxy", "https://x", "--token", "t", "--to", "http://x:1", "--log-format", "xml"}, wantErr: "--log-format"},
		{name: "bad env value", env: map[string]string{"SPDY_ORIGIN_CONNECTIONS": "many"}, wantErr: "SPDY_ORIGIN_CONNECTIONS"},
		{
			// Only real flags come from the environment: --version has none (a
			// SPDY_ORIGIN_VERSION set by a container image must neither break
			// parsing nor turn the agent into "print the version and exit").
			name: "SPDY_ORIGIN_VERSION is not --version",
			env: map[string]string{"SPDY_ORIGIN_VERSION": "1.4.2", "SPDY_ORIGIN_PROXY": "https://a.example",
				"SPDY_ORIGIN_TOKEN": "t", "SPDY_ORIGIN_TO": "http://127.0.0.1:1"},
			check: func(t *testing.T, c *cliConfig) {
				if c.showVersion || c.opts.Token != "t" {
					t.Fatalf("c = %+v", c)
				}
			},
		},
		{
			name: "SPDY_ORIGIN_VERSION=true is not --version",
			env: map[string]string{"SPDY_ORIGIN_VERSION": "true", "SPDY_ORIGIN_PROXY": "https://a.example",
				"SPDY_ORIGIN_TOKEN": "t", "SPDY_ORIGIN_TO": "http://127.0.0.1:1"},
			check: func(t *testing.T, c *cliConfig) {
				if c.showVersion {
					t.Fatal("SPDY_ORIGIN_VERSION=true made the agent print its version instead of running")
				}
			},
		},
		{
			name: "metrics address from the environment",
			args: []string{"--proxy", "https://a.example", "--token", "t", "--to", "http://127.0.0.1:1"},
			env:  map[string]string{"SPDY_ORIGIN_METRICS_ADDR": "127.0.0.1:9464"},
			check: func(t *testing.T, c *cliConfig) {
				if c.opts.MetricsAddr != "127.0.0.1:9464" {
					t.Fatalf("MetricsAddr = %q", c.opts.MetricsAddr)
				}
			},
		},
		{name: "bad metrics address", args: []string{"--proxy", "https://x", "--token", "t", "--to", "http://x:1", "--metrics-addr", "9464"}, wantErr: "--metrics-addr"},
		{name: "stray argument", args: []string{"--proxy", "https://x", "extra"}, wantErr: "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			c, err := parseArgs(tt.args, envMap(tt.env), &out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseArgs: %v", err)
			}
			tt.check(t, c)
		})
	}
}

// routesOf is o's routes as their flags' values, space-separated.
func routesOf(o Options) string {
	var s []string
	for _, r := range o.Routes {
		s = append(s, r.String())
	}
	return strings.Join(s, " ")
}

func TestRunExitCodes(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main([]string{"--version"}, envMap(nil), &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "spdy-origin-agent ") {
		t.Fatalf("--version: code %d, out %q", code, out.String())
	}
	version, commit = "v9.8.7", "0123456789abcdef"
	t.Cleanup(func() { version, commit = "", "" })
	out.Reset()
	if Main([]string{"--version"}, envMap(nil), &out, &errOut); !strings.HasPrefix(out.String(), "spdy-origin-agent v9.8.7 (commit 0123456789abcdef, go") {
		t.Fatalf("--version with -X version and commit: %q", out.String())
	}
	errOut.Reset()
	if code := Main([]string{"--no-such-flag"}, envMap(nil), &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "Usage:") {
		t.Fatalf("unknown flag: code %d, stderr %q", code, errOut.String())
	}
	if strings.Contains(errOut.String(), "notsent") {
		t.Fatalf("usage shows the hidden --tcp-notsent-lowat:\n%s", errOut.String())
	}
	errOut.Reset()
	if code := Main([]string{"--proxy", "https://x", "--token", "t"}, envMap(nil), &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "--to") {
		t.Fatalf("missing --to: code %d, stderr %q", code, errOut.String())
	}
	errOut.Reset()
	code := Main([]string{"--proxy", "https://x", "--token", "t", "--root", "/definitely/not/here"}, envMap(nil), &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "--root") {
		t.Fatalf("missing root dir: code %d, stderr %q", code, errOut.String())
	}
}
