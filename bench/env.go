//go:build linux

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// site is one Caddy site block: an HTTPS listener on port, answering for hosts, with
// the given handler directive(s).
type site struct {
	port  int
	hosts []string
	body  string
}

// caddyfile renders the config. Choices, all the same for both proxied paths:
//   - HTTPS with `tls internal` (Caddy's own CA; clients and the agent trust its root
//     from the data dir), so both paths pay the same, real TLS front.
//   - admin on a private port, no HTTP->HTTPS redirect listener, no HTTP/3, no attempt
//     to install the root into the system trust store, logs at WARN.
func caddyfile(adminPort, httpPort int, sites []site) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{
	admin 127.0.0.1:%d
	http_port %d
	skip_install_trust
	auto_https disable_redirects
	persist_config off
	log {
		level WARN
	}
	servers {
		protocols h1 h2
	}
}
`, adminPort, httpPort)
	for _, s := range sites {
		var addrs []string
		for _, h := range s.hosts {
			addrs = append(addrs, fmt.Sprintf("https://%s:%d", h, s.port))
		}
		fmt.Fprintf(&b, "\n%s {\n\ttls internal\n%s\n}\n", strings.Join(addrs, ", "), indent(s.body))
	}
	return b.String()
}

func indent(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i, l := range lines {
		lines[i] = "\t" + l
	}
	return strings.Join(lines, "\n")
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

type caddyInst struct {
	p         *proc
	adminPort int
}

// caddyEnv is the environment of every Caddy the bench runs: one data dir (so one
// local CA, whose root the clients and agents trust), one config dir.
func (b *bench) caddyEnv() []string {
	return []string{
		"XDG_DATA_HOME=" + filepath.Join(b.dir, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(b.dir, "config"),
	}
}

func (b *bench) caRootPath() string {
	return filepath.Join(b.dir, "data", "caddy", "pki", "authorities", "local", "root.crt")
}

// startCaddy writes a Caddyfile for sites and runs bin/caddy on it, returning once
// every site completes a TLS handshake trusted by Caddy's local root.
func (b *bench) startCaddy(ctx context.Context, name string, sites []site) (*caddyInst, error) {
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	httpPort, err := freePort()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(b.dir, name+".Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(caddyfile(adminPort, httpPort, sites)), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc(name, filepath.Join(b.dir, name+".log"), b.caddyEnv(),
		b.caddyBin, "run", "--config", cfgPath, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	ci := &caddyInst{p: p, adminPort: adminPort}
	deadline := time.Now().Add(60 * time.Second)
	for _, s := range sites {
		for {
			if p.exited() {
				return nil, fmt.Errorf("caddy exited at start-up: %v\n%s", p.err, p.logTail(30))
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			tc, err := b.caddyTLS(s.hosts[0], nil)
			if err == nil {
				var c *tls.Conn
				c, err = tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)), tc)
				if err == nil {
					c.Close()
					break
				}
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("caddy site on port %d not ready after 60 s: %v\n%s", s.port, err, p.logTail(30))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return ci, nil
}

// caddyTLS is the client TLS config for Caddy's sites: trust only Caddy's local root.
func (b *bench) caddyTLS(serverName string, alpn []string) (*tls.Config, error) {
	pemBytes, err := os.ReadFile(b.caRootPath())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("no certificate in %s", b.caRootPath())
	}
	if alpn == nil {
		alpn = []string{"http/1.1"}
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, NextProtos: alpn}, nil
}

// poolSessions asks Caddy's admin API how many agent sessions pool has.
func (ci *caddyInst) poolSessions(pool string) (int, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/spdy_origin/pools", ci.adminPort))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("admin /spdy_origin/pools: %s: %s", resp.Status, body)
	}
	var pools []struct {
		Pool     string            `json:"pool"`
		Sessions []json.RawMessage `json:"sessions"`
	}
	if err := json.Unmarshal(body, &pools); err != nil {
		return 0, fmt.Errorf("admin /spdy_origin/pools: %v", err)
	}
	for _, p := range pools {
		if p.Pool == pool {
			return len(p.Sessions), nil
		}
	}
	return 0, nil
}

// startAgent runs bin/spdy-origin-agent against the registration URL and waits until
// Caddy's pool shows conns sessions. netns, if set, runs it in that network namespace;
// extra are more agent flags.
func (b *bench) startAgent(ctx context.Context, name string, ci *caddyInst, pool, proxyURL, to string, conns int, netns string, extra ...string) (*proc, error) {
	argv := []string{b.agentBin,
		"--proxy", proxyURL,
		"--to", to,
		"--ca-file", b.caRootPath(),
		"--connections", strconv.Itoa(conns),
		// Enough streams per session for the open-streams measurement.
		"--max-streams", strconv.Itoa(max(b.streams, 1000) + 100),
		"--name", name,
		"--log-level", "warn",
	}
	argv = append(argv, extra...)
	if netns != "" {
		argv = append([]string{"ip", "netns", "exec", netns}, argv...)
	}
	p, err := startProc(name, filepath.Join(b.dir, name+".log"), []string{"SPDY_ORIGIN_TOKEN=" + b.token}, argv...)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := ci.poolSessions(pool)
		if err == nil && n >= conns {
			return p, nil
		}
		if p.exited() {
			return nil, fmt.Errorf("agent %s exited: %v\n%s", name, p.err, p.logTail(30))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("agent %s: pool %q has %d of %d sessions after 30 s (%v)\n%s\n%s",
				name, pool, n, conns, err, p.logTail(20), ci.p.logTail(20))
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
