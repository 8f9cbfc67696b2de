package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCAFile writes a self-signed CA certificate as PEM and returns its path.
func testCAFile(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "check-config test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkConfig runs the agent's command with --check-config added.
func checkConfig(args []string, env map[string]string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = Main(append([]string{"--check-config"}, args...), envMap(env), &out, &errOut)
	return code, out.String(), errOut.String()
}

// A good configuration from flags, the environment and a file exits 0 with a
// summary that says where each setting and route came from, and hides the
// token. The proxy's name does not resolve: nothing is dialled.
func TestCheckConfigOK(t *testing.T) {
	www := t.TempDir()
	ca := testCAFile(t)
	file := writeConfig(t, `
proxy = ["https://edge.does-not-resolve.invalid"]
name = "nas"
to = ["media.example.com=http://127.0.0.1:8096", "*.apps.example.com=https://nas.lan:8443"]
root = ["www.example.com=`+www+`"]
upstream-ca-file = "`+ca+`"
`, 0o600)
	code, out, errOut := checkConfig(
		[]string{"--config", file, "--connections", "3", "--ca-file", ca, "--debug-addr", ":6060"},
		map[string]string{"SPDY_ORIGIN_TOKEN": "s3cret-token-value", "SPDY_ORIGIN_METRICS_ADDR": "127.0.0.1:9464"})
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	t.Logf("summary:\n%s", out)
	for _, want := range []string{
		"configuration OK",
		"config  ", file + "  ", "(flag)",
		"proxy", "https://edge.does-not-resolve.invalid", "(file " + file + ")",
		"token", "[redacted]", "(env SPDY_ORIGIN_TOKEN)",
		"name", "nas",
		"media.example.com → upstream http://127.0.0.1:8096",
		"*.apps.example.com → upstream https://nas.lan:8443",
		"www.example.com → files from " + www,
		"ca-file", "upstream-ca-file",
		"connections", "3 per proxy",
		"metrics-addr", "127.0.0.1:9464", "(env SPDY_ORIGIN_METRICS_ADDR)",
		"debug-addr", "127.0.0.1:6060",
		"drain-timeout", "30s", "(default)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	if strings.Contains(out+errOut, "s3cret") {
		t.Error("the token is in the output")
	}
	// Each route line names where the routes came from.
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, " → ") && !strings.HasSuffix(line, "(file "+file+")") {
			t.Errorf("route line without its source: %q", line)
		}
	}

	// Routes from the environment and the command line say so.
	_, out, _ = checkConfig([]string{"--proxy", "https://x.invalid", "--token", "t"},
		map[string]string{"SPDY_ORIGIN_TO": "a.example.com=http://127.0.0.1:1"})
	if !strings.Contains(out, "a.example.com → upstream http://127.0.0.1:1  (env SPDY_ORIGIN_TO)") {
		t.Errorf("route from the environment:\n%s", out)
	}
	_, out, _ = checkConfig([]string{"--proxy", "https://x.invalid", "--token", "t", "--root", www}, nil)
	if !strings.Contains(out, "* → files from "+www+"  (flag)") {
		t.Errorf("route from a flag:\n%s", out)
	}
}

// Nothing is dialled or listened on: a listener given as the proxy, the
// upstream and the metrics address sees no connection, and stays bound.
func TestCheckConfigTouchesNoNetwork(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	code, _, errOut := checkConfig([]string{"--proxy", "https://" + addr, "--token", "t", "--to", "http://" + addr,
		"--metrics-addr", addr}, nil)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
	if c, err := ln.Accept(); err == nil {
		c.Close()
		t.Fatal("--check-config connected to the proxy or the upstream")
	}
}

// Each kind of bad input exits 2 with a message on stderr that names the
// problem, and prints no summary.
func TestCheckConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file.txt")
	notPEM := filepath.Join(dir, "not.pem")
	for _, p := range []string{notDir, notPEM} {
		if err := os.WriteFile(p, []byte("hello\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// base and withTo return fresh slices: the cases must not share one.
	base := func(more ...string) []string {
		return append([]string{"--proxy", "https://x.invalid", "--token", "t"}, more...)
	}
	withTo := func(more ...string) []string { return base(append([]string{"--to", "http://127.0.0.1:1"}, more...)...) }
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string // --config file text, if any
		want string
	}{
		{name: "unknown flag", args: []string{"--no-such-flag"}, want: "flag provided but not defined: -no-such-flag"},
		{name: "no proxy", args: []string{"--token", "t", "--to", "http://127.0.0.1:1"}, want: "--proxy is required"},
		{name: "proxy not a URL", args: []string{"--proxy", "edge.example.com", "--token", "t", "--to", "http://127.0.0.1:1"}, want: `--proxy "edge.example.com": want https://host[:port]/path`},
		{name: "proxy scheme", args: []string{"--proxy", "ftp://x", "--token", "t", "--to", "http://127.0.0.1:1"}, want: `--proxy "ftp://x"`},
		{name: "no token", args: []string{"--proxy", "https://x.invalid", "--to", "http://127.0.0.1:1"}, want: "--token is required"},
		{name: "no route", args: base(), want: "at least one --to [HOST=]URL or --root [HOST=]DIR is required"},
		{name: "upstream not a URL", args: base("--to", "127.0.0.1:8080"), want: `--to "127.0.0.1:8080"`},
		{name: "upstream scheme", args: base("--to", "ws://127.0.0.1:1"), want: "want http://host:port, https://host:port or h2c://host:port"},
		{name: "bad host pattern", args: base("--to", "a.*.example.com=http://127.0.0.1:1"), want: `host pattern "a.*.example.com"`},
		{name: "host with a port", args: base("--to", "a.example.com:443=http://127.0.0.1:1"), want: "no port"},
		{name: "two routes for one host", args: base("--to", "a.example.com=http://127.0.0.1:1", "--root", "A.example.com="+dir), want: "two routes for host a.example.com"},
		{name: "root missing", args: base("--root", filepath.Join(dir, "missing")), want: "--root: stat " + filepath.Join(dir, "missing") + ": no such file or directory"},
		{name: "root not a directory", args: base("--root", notDir), want: "--root " + notDir + ": not a directory"},
		{name: "ca-file missing", args: withTo("--ca-file", filepath.Join(dir, "missing.pem")), want: "--ca-file: open " + filepath.Join(dir, "missing.pem")},
		{name: "ca-file not PEM", args: withTo("--ca-file", notPEM), want: "--ca-file " + notPEM + ": no PEM certificate found"},
		{name: "upstream-ca-file not PEM", args: base("--to", "https://nas.lan", "--upstream-ca-file", notPEM), want: "--upstream-ca-file " + notPEM + ": no PEM certificate found"},
		{name: "upstream-ca-file without https upstream", args: withTo("--upstream-ca-file", notPEM), want: "--upstream-ca-file needs an https:// --to upstream"},
		{name: "connections", args: withTo("--connections", "65"), want: "--connections 65: want 1..64"},
		{name: "drain-timeout negative", args: withTo("--drain-timeout", "-1s"), want: "--drain-timeout must not be negative"},
		{name: "drain-timeout not a duration", args: withTo("--drain-timeout", "soon"), want: `invalid value "soon" for flag -drain-timeout`},
		{name: "max-streams", args: withTo("--max-streams", "0"), want: "--max-streams 0: want 1..2147483647"},
		{name: "max-upgrades", args: withTo("--max-upgrades", "0"), want: "--max-upgrades 0: want at least 1"},
		{name: "metrics-addr without port", args: withTo("--metrics-addr", "9464"), want: `--metrics-addr "9464": want host:port`},
		{name: "metrics-addr port out of range", args: withTo("--metrics-addr", "127.0.0.1:70000"), want: `--metrics-addr "127.0.0.1:70000"`},
		{name: "debug-addr port out of range", args: withTo("--debug-addr", "127.0.0.1:70000"), want: `--debug-addr "127.0.0.1:70000": want host:port`},
		{name: "debug-addr port not a number", args: withTo("--debug-addr", ":pprof"), want: `--debug-addr ":pprof": want host:port`},
		{name: "log-level", args: withTo("--log-level", "loud"), want: `--log-level "loud"`},
		{name: "bad environment value", args: withTo(), env: map[string]string{"SPDY_ORIGIN_CONNECTIONS": "many"}, want: `SPDY_ORIGIN_CONNECTIONS="many"`},
		{name: "bad route in the environment", args: base(), env: map[string]string{"SPDY_ORIGIN_TO": "a..example.com=http://127.0.0.1:1"}, want: "--to (from SPDY_ORIGIN_TO)"},
		{name: "config file missing", args: withTo("--config", filepath.Join(dir, "missing.toml")), want: "--config: open "},
		{name: "config file unknown key", args: withTo(), file: "tunnels = 3\n", want: `key "tunnels": unknown setting`},
		{name: "config file bad route", args: []string{"--proxy", "https://x.invalid", "--token", "t"}, file: "root = [\"w.example.com=" + notDir + "\"]\n", want: "not a directory"},
		{name: "check-config in the file", args: withTo(), file: "check-config = true\n", want: `key "check-config": not a setting`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config", writeConfig(t, tt.file, 0o600)}, args...)
			}
			code, out, errOut := checkConfig(args, tt.env)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stdout %q, stderr %q", code, out, errOut)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Fatalf("stderr does not name the problem (%q):\n%s", tt.want, errOut)
			}
			if out != "" {
				t.Fatalf("stdout %q, want nothing", out)
			}
		})
	}
}

// --check-config has no environment variable: one left in a service's
// environment file must not turn every start into a check that exits 0.
func TestCheckConfigNotFromEnvironment(t *testing.T) {
	c, err := parseArgs([]string{"--proxy", "https://x.invalid", "--token", "t", "--to", "http://127.0.0.1:1"},
		envMap(map[string]string{"SPDY_ORIGIN_CHECK_CONFIG": "true"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.checkOnly {
		t.Fatal("SPDY_ORIGIN_CHECK_CONFIG=true made a start a check")
	}
}
