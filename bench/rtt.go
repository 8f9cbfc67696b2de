//go:build linux

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// The 50 ms RTT measurement puts the far end of the proxied leg in its own network
// namespace behind a veth pair with netem adding 25 ms each way:
//
//	client ── Caddy ══ 50 ms ══╗ far namespace: agent ── origin   (tunnel)
//	client ── Caddy ══ 50 ms ══╣ far namespace: origin            (reverse_proxy)
//	client ═══════════ 50 ms ══╝ far namespace: origin            (direct)
//
// So the slow link is agent↔Caddy for the tunnel — where SPDY's flow-control windows
// decide how much one stream can have in flight — and Caddy↔origin for reverse_proxy,
// where only TCP's windows do. The client↔Caddy leg stays on loopback for both.

const (
	nsHostIP   = "10.213.0.1"
	nsFarIP    = "10.213.0.2"
	nsOriginHP = "18080" // plain HTTP origin port inside the namespace
	nsOriginTP = "18443" // TLS origin port inside the namespace
)

type farNet struct {
	ns      string
	hostIf  string
	delay   bool   // netem is in place
	origin  *proc  // the bench re-executed with -serve-origin inside ns
	refusal string // why there is no delay, if not
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ensureIPTools installs iproute2 when `ip` or `tc` is missing.
func ensureIPTools() error {
	_, errIP := exec.LookPath("ip")
	_, errTC := exec.LookPath("tc")
	if errIP == nil && errTC == nil {
		return nil
	}
	fmt.Println("bench: installing iproute2 (ip, tc) with apt-get")
	if err := run("apt-get", "install", "-y", "-q", "iproute2"); err != nil {
		if err2 := run("apt-get", "update", "-q"); err2 != nil {
			return err2
		}
		return run("apt-get", "install", "-y", "-q", "iproute2")
	}
	return nil
}

// setupFarNet builds the namespace and veth pair and adds the delay. A kernel that
// refuses any step returns an error whose text goes into the table as the reason.
// allowNoDelay (debugging only) keeps a namespace whose qdisc could not be added.
func setupFarNet(dir string, allowNoDelay bool) (*farNet, error) {
	if err := ensureIPTools(); err != nil {
		return nil, fmt.Errorf("no ip/tc and could not install iproute2: %v", err)
	}
	removeStaleNamespaces()
	pid := os.Getpid()
	f := &farNet{ns: fmt.Sprintf("spdybench-%d", pid), hostIf: fmt.Sprintf("sbh%d", pid)}
	farIf := fmt.Sprintf("sbf%d", pid)
	if err := run("ip", "netns", "add", f.ns); err != nil {
		return nil, err
	}
	atCleanup("netns "+f.ns, func() {
		exec.Command("ip", "link", "del", f.hostIf).Run()
		exec.Command("ip", "netns", "del", f.ns).Run()
	})
	steps := [][]string{
		{"ip", "link", "add", f.hostIf, "type", "veth", "peer", "name", farIf},
		{"ip", "link", "set", farIf, "netns", f.ns},
		{"ip", "addr", "add", nsHostIP + "/24", "dev", f.hostIf},
		{"ip", "link", "set", f.hostIf, "up"},
		{"ip", "netns", "exec", f.ns, "ip", "addr", "add", nsFarIP + "/24", "dev", farIf},
		{"ip", "netns", "exec", f.ns, "ip", "link", "set", farIf, "up"},
		{"ip", "netns", "exec", f.ns, "ip", "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	// 25 ms each way; a queue long enough for ~1 Gbit/s x 50 ms, so netem's default
	// 1000-packet limit does not become the bottleneck.
	qd := []string{"root", "netem", "delay", "25ms", "limit", "100000"}
	err := run("tc", append([]string{"qdisc", "add", "dev", f.hostIf}, qd...)...)
	if err == nil {
		err = run("ip", append([]string{"netns", "exec", f.ns, "tc", "qdisc", "add", "dev", farIf}, qd...)...)
	}
	if err != nil {
		f.refusal = "kernel refused netem: " + err.Error()
		if !allowNoDelay {
			return f, fmt.Errorf("%s", f.refusal)
		}
	} else {
		f.delay = true
	}

	// The far origin: this same program, re-executed inside the namespace.
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cert, key := filepath.Join(dir, "far-origin.crt"), filepath.Join(dir, "far-origin.key")
	if err := selfSigned(cert, key, net.ParseIP(nsFarIP)); err != nil {
		return nil, err
	}
	f.origin, err = startProc("far-origin", filepath.Join(dir, "far-origin.log"), nil,
		"ip", "netns", "exec", f.ns, self, "-serve-origin",
		"-origin-plain", "0.0.0.0:"+nsOriginHP, "-origin-tls", "0.0.0.0:"+nsOriginTP,
		"-origin-cert", cert, "-origin-key", key)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + nsFarIP + ":" + nsOriginHP + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if f.origin.exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("origin in namespace not reachable: %v\n%s", err, f.origin.logTail(10))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return f, nil
}

// removeStaleNamespaces deletes namespaces (and their veth) left by a bench that was
// SIGKILLed: spdybench-<pid> where pid no longer runs.
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		rest, ok := strings.CutPrefix(f[0], "spdybench-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(rest)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // still running
		}
		exec.Command("ip", "link", "del", "sbh"+rest).Run()
		exec.Command("ip", "netns", "del", f[0]).Run()
	}
}

// farDirect is the direct target: TLS straight to the origin in the namespace.
func (f *farNet) farDirect(dir string) (*target, error) {
	pemBytes, err := os.ReadFile(filepath.Join(dir, "far-origin.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	return &target{name: "direct", addr: nsFarIP + ":" + nsOriginTP, host: nsFarIP + ":" + nsOriginTP,
		tls: &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"http/1.1"}}}, nil
}

// measureRTT runs one bulk download per path over the far link.
// warmUp opens each path's connections with a 1 MiB download.
func warmUp(ctx context.Context, ts []*target) error {
	for _, t := range ts {
		if _, err := download(ctx, t, 1<<20); err != nil {
			return fmt.Errorf("rtt warm-up: %w", err)
		}
	}
	return nil
}

// measureRTTRounds runs the slow-link bulk download on each path: two rounds
// in a full run, one in a quick one (each takes seconds at 50 ms RTT).
func (b *bench) measureRTTRounds(ctx context.Context, ts []*target, via string) (map[string]float64, error) {
	rounds := 1
	if !b.quick && b.rounds > 1 {
		rounds = 2
	}
	step("rtt: %d MiB download per path%s, %d round(s)", b.rttSize>>20, via, rounds)
	return measureRTT(ctx, ts, b.rttSize, rounds)
}

func measureRTT(ctx context.Context, ts []*target, size int64, rounds int) (map[string]float64, error) {
	got := map[string][]float64{}
	for r := 0; r < rounds; r++ {
		for i := range ts {
			t := ts[(i+r)%len(ts)]
			v, err := download(ctx, t, size)
			if err != nil {
				return nil, err
			}
			got[t.name] = append(got[t.name], v)
		}
	}
	out := map[string]float64{}
	for k, v := range got {
		out[k] = medianF(v)
	}
	return out, nil
}

// rttOneWay is the delay added in each direction: 50 ms RTT.
const rttOneWay = 25 * time.Millisecond

// rttRelayQueue is each relay direction's queue: like a real link's buffer, big enough
// (about 1.3 GB/s × 25 ms) that the relay is not what limits either path.
const rttRelayQueue = 32 << 20

// rttRelays are the fallback for kernels without netem: one delay relay on the same
// leg the netem set-up slows down.
//
//	client ── Caddy ══ relay.tun ══ agent ── origin      (tunnel: agent dials Caddy through it)
//	client ── Caddy ══ relay.rp ═══════════ origin       (reverse_proxy upstream)
//	client ══════════ relay.direct ═══════ origin (TLS)  (direct)
type rttRelays struct {
	tun, rp, direct *delayRelay
	why             error // why netem was not used
}

func startRTTRelays(caddyFarTunPort int, originPlain, originTLS string, why error) (*rttRelays, error) {
	rs := &rttRelays{why: why}
	for _, x := range []struct {
		r  **delayRelay
		to string
	}{
		{&rs.tun, "127.0.0.1:" + strconv.Itoa(caddyFarTunPort)},
		{&rs.rp, originPlain},
		{&rs.direct, originTLS},
	} {
		r, err := startDelayRelay(x.to, rttOneWay, rttRelayQueue)
		if err != nil {
			return nil, err
		}
		atCleanup("delay relay to "+x.to, r.close)
		*x.r = r
	}
	return rs, nil
}

// label names the relay in the table, with why netem was not used.
func (rs *rttRelays) label() string {
	why := "netem not usable here"
	if strings.Contains(rs.why.Error(), "qdisc kind is unknown") {
		why = "kernel lacks netem"
	}
	return fmt.Sprintf("userspace %s/way delay relay (%s)", fmtMS(rttOneWay), why)
}

func fmtMS(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', -1, 64) + " ms"
}

// runRTTRelay measures the 50 ms RTT row through the delay relays.
func (b *bench) runRTTRelay(ctx context.Context, ci *caddyInst, rs *rttRelays, ports map[string]int, r *row) error {
	r.metric = fmt.Sprintf("%d MiB download, one stream, 50 ms RTT via %s", b.rttSize>>20, rs.label())
	step("rtt: starting agent whose connection to Caddy goes through the delay relay (%s)", rs.tun.addr())
	// Same host name as Caddy's site (SNI and certificate match); only the port is
	// the relay's. TLS passes through the relay untouched.
	if _, err := b.startAgent(ctx, "agent-far", ci, "far",
		fmt.Sprintf("https://localhost:%s/.well-known/spdy-origin", rs.tun.port()),
		"http://"+b.originPlain, 1, ""); err != nil {
		return err
	}
	tun, err := b.caddyTarget(pTunnel, ports["fartun"])
	if err != nil {
		return err
	}
	rp, err := b.caddyTarget(pRP, ports["farrp"])
	if err != nil {
		return err
	}
	direct, err := b.directTarget()
	if err != nil {
		return err
	}
	direct.addr = rs.direct.addr()
	direct.host = "localhost:" + rs.direct.port()
	ts := b.selectPaths(tun, rp, direct)
	if err := warmUp(ctx, ts); err != nil {
		return err
	}
	// Check that the delay is there: a 1 KiB GET on a warm keep-alive connection must
	// take one round trip of the slow link.
	lat, err := measureTTFB(ctx, ts, 0, 10)
	if err != nil {
		return err
	}
	var seen []string
	for _, t := range ts {
		w := lat[t.name].warm
		if w < 2*rttOneWay*9/10 {
			return fmt.Errorf("rtt: the delay relay does not delay: a keep-alive GET via %s took %s, want ≥ %s", t.name, w, 2*rttOneWay)
		}
		seen = append(seen, fmt.Sprintf("%s %.1f", t.name, float64(w)/float64(time.Millisecond)))
	}
	got, err := b.measureRTTRounds(ctx, ts, " through the delay relays")
	if err != nil {
		return err
	}
	r.vals = got
	if v, ok := r.ratio(pRP); ok {
		r.targetMet = boolp(v >= 0.8)
	}
	win := float64(spdy.DefaultStreamWindow) / (2 * rttOneWay).Seconds() / mb
	r.note = fmt.Sprintf("NOT netem (%v). Instead a TCP relay in the bench process delays each direction by %s, "+
		"%d MiB queue per direction, on the leg netem would slow: agent↔Caddy (tunnel), Caddy↔origin (reverse_proxy), client↔origin (direct); "+
		"keep-alive 1 KiB GET through it, median ms: %s. Both TCP connections a relay joins run on loopback, so TCP congestion control and TCP windows see loopback RTT: "+
		"this exposes only application-level windows — the tunnel's SPDY flow control (defaults %d MiB per stream, %d MiB per session: one stream ≤ %d MiB ÷ 50 ms ≈ %.0f MB/s); "+
		"reverse_proxy and direct have none",
		rs.why, fmtMS(rttOneWay), rttRelayQueue>>20, strings.Join(seen, ", "),
		spdy.DefaultStreamWindow>>20, spdy.DefaultSessionWindow>>20, spdy.DefaultStreamWindow>>20, win)
	return nil
}
