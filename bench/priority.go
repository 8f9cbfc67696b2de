//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// The priority section (-only priority) asks whether a page stays quick while bulk
// downloads fill the agent's thin uplink (issue 17). The agent↔Caddy leg goes
// through a delay relay that makes it a 20 Mbit/s link with 20 ms RTT and a 64 KiB
// queue; the client leg stays on loopback:
//
//	page client  ─┐
//	bulk clients ─┴─ Caddy ══ relay: 2.5 MB/s each way, 10 ms/way, 64 KiB queue ══ agent ── origin
//
// A client fetches a 100 KiB page 20 times, one after another with a short pause,
// first on the idle link, then while four downloads run, and the section reports
// the page's completion times against the idle ones and what the downloads got of
// the link. It does so for four configurations of the tunnel, to show what each
// mechanism contributes: priorities (the page asks u=0, the downloads u=6) or none
// (everything u=3, one level, round-robin), each with the agent's NotSentLowat at
// its default or off (--tcp-notsent-lowat -1). Two agents serve it, one per
// NotSentLowat setting, each on its own pool and relay. Two more, connected
// straight to Caddy, measure what NotSentLowat costs a single download on an
// unlimited link.

const (
	prioLinkRate = 2.5e6 // bytes per second: 20 Mbit/s
	prioOneWay   = 10 * time.Millisecond
	prioQueue    = 64 << 10
	// prioRcvBuf is the relay's SO_RCVBUF (the kernel doubles it). Left to
	// autotuning it would grow to megabytes that the agent's TCP sees
	// acknowledged: a queue in front of the link's own that no real link has.
	prioRcvBuf   = 4 << 10
	prioPage     = 100 << 10
	prioFetches  = 20
	prioPause    = 100 * time.Millisecond
	prioBulkN    = 4
	prioBulkSize = 256 << 20
	// prioWarm is how long the downloads run before the first page fetch: the
	// queues along the way fill within a second.
	prioWarm = 2 * time.Second
	// Targets, for the default configuration: the page beside the downloads
	// against the page alone, and the link's use.
	prioMedianTarget = 1.5
	prioP95Target    = 2.0
	prioLinkTarget   = 0.95
)

// prioLink is the relay's emulated uplink (and downlink).
var prioLink = link{delay: prioOneWay, queue: prioQueue, rate: prioLinkRate, rcvBuf: prioRcvBuf}

// prioSetup is what run prepares before Caddy starts: the four sites' ports and
// the two relays.
type prioSetup struct {
	port       map[string]int // by pool
	relay      map[string]*delayRelay
	lowat      int // -priority-lowat: the agent's --tcp-notsent-lowat for "with NotSentLowat"; 0: its default
	lowatLabel string
}

const (
	poolPrio        = "prio"
	poolPrioNoLow   = "prio-nolowat"
	poolFast        = "prio-fast"
	poolFastNoLow   = "prio-fast-nolowat"
	prioPagePri     = "u=0"
	prioBulkPri     = "u=6"
	prioSamePri     = "u=3"
	notSentLowatOff = "-1"
)

// newPrioSetup picks ports for the section's sites and starts its relays.
func newPrioSetup(lowat int) (*prioSetup, error) {
	ps := &prioSetup{port: map[string]int{}, relay: map[string]*delayRelay{}, lowat: lowat}
	switch {
	case lowat == 0:
		ps.lowatLabel = fmtBytes(spdy.DefaultNotSentLowat)
	case lowat < 0:
		ps.lowatLabel = "off"
	default:
		ps.lowatLabel = fmtBytes(lowat)
	}
	for _, pool := range []string{poolPrio, poolPrioNoLow, poolFast, poolFastNoLow} {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ps.port[pool] = p
	}
	for _, pool := range []string{poolPrio, poolPrioNoLow} {
		r, err := startLinkRelay("127.0.0.1:"+strconv.Itoa(ps.port[pool]), prioLink)
		if err != nil {
			return nil, err
		}
		atCleanup("link relay for "+pool, r.close)
		ps.relay[pool] = r
	}
	return ps, nil
}

func (ps *prioSetup) sites(token string) []site {
	var out []site
	for _, pool := range []string{poolPrio, poolPrioNoLow, poolFast, poolFastNoLow} {
		out = append(out, site{port: ps.port[pool], hosts: []string{"localhost"},
			body: "spdy_origin {\n\tpool " + pool + "\n\ttoken " + token + "\n}"})
	}
	return out
}

func fmtBytes(n int) string {
	if n%1024 == 0 {
		return strconv.Itoa(n>>10) + " KiB"
	}
	return strconv.Itoa(n) + " B"
}

// prioVariant is one configuration of the tunnel the section measures.
type prioVariant struct {
	key              string // as -priority-variants names it
	name             string
	pool             string // which agent: with or without NotSentLowat
	pagePri, bulkPri string // the Priority headers the clients send
}

// pageRun is one series of page fetches.
type pageRun struct {
	times []time.Duration
	ttfb  []time.Duration // request written to first response byte
}

func (p pageRun) median() float64 { return medianF(msOf(p.times)) }
func (p pageRun) p95() float64    { return percentile(msOf(p.times), 0.95) }

func msOf(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, x := range d {
		out[i] = float64(x) / float64(time.Millisecond)
	}
	return out
}

// percentile is the nearest-rank percentile q (0..1] of v.
func percentile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// loadedRun is the page beside the downloads, and what the link carried meanwhile.
type loadedRun struct {
	page      pageRun
	window    time.Duration // first page request to last page byte
	bulkBytes int64         // the downloads' body bytes within window
	// Samples taken every prioSampleEvery within window, in bytes: what waited
	// in the agent's kernel (unsent or unacknowledged: tx_queue), in the relay's
	// receive buffer (its rx_queue) and in the relay's queue towards Caddy.
	agentKernel, relayRcv, relayQueue []float64
}

const prioSampleEvery = 20 * time.Millisecond

func (l loadedRun) bulkRate() float64 { return float64(l.bulkBytes) / l.window.Seconds() }

// linkUse counts every page within window: the timed ones and the uncounted
// fetch before them (fetchPagesOn), which the window also spans.
func (l loadedRun) linkUse() float64 {
	pages := int64(len(l.page.times)+1) * prioPage
	return float64(l.bulkBytes+pages) / l.window.Seconds() / prioLinkRate
}

// runPriority is the section: agents, then each variant, then the unlimited link.
func (b *bench) runPriority(ctx context.Context, ci *caddyInst, ps *prioSetup) error {
	// The agents: two through the relays, two straight to Caddy.
	type agentSpec struct {
		pool, url string
		lowat     string // --tcp-notsent-lowat; "" for the agent's default
	}
	lowat := ""
	if ps.lowat != 0 {
		lowat = strconv.Itoa(ps.lowat)
	}
	specs := []agentSpec{
		{poolPrio, fmt.Sprintf("https://localhost:%s/.well-known/spdy-origin", ps.relay[poolPrio].port()), lowat},
		{poolPrioNoLow, fmt.Sprintf("https://localhost:%s/.well-known/spdy-origin", ps.relay[poolPrioNoLow].port()), notSentLowatOff},
		{poolFast, fmt.Sprintf("https://localhost:%d/.well-known/spdy-origin", ps.port[poolFast]), lowat},
		{poolFastNoLow, fmt.Sprintf("https://localhost:%d/.well-known/spdy-origin", ps.port[poolFastNoLow]), notSentLowatOff},
	}
	targets := map[string]*target{}
	for _, s := range specs {
		var extra []string
		if s.lowat != "" {
			extra = []string{"--tcp-notsent-lowat", s.lowat}
		}
		step("priority: starting agent for pool %s (--connections 1 %s)", s.pool, strings.Join(extra, " "))
		if _, err := b.startAgent(ctx, "agent-"+s.pool, ci, s.pool, s.url, "http://"+b.originPlain, 1, "", extra...); err != nil {
			return err
		}
		t, err := b.caddyTarget(pTunnel, ps.port[s.pool])
		if err != nil {
			return err
		}
		targets[s.pool] = t
	}

	variants := b.prioVariantsFor(ps)
	idle := map[string]pageRun{}
	loaded := map[string]loadedRun{}
	for _, pool := range []string{poolPrio, poolPrioNoLow} {
		var mine []prioVariant
		for _, v := range variants {
			if v.pool == pool {
				mine = append(mine, v)
			}
		}
		if len(mine) == 0 {
			continue
		}
		t := targets[pool]
		step("priority: %d × %d KiB page on the idle 20 Mbit/s link (pool %s)", prioFetches, prioPage>>10, pool)
		run, err := fetchPages(ctx, t, prioPagePri, prioFetches)
		if err != nil {
			return err
		}
		// The relay must be what limits: the page's bytes alone take this long.
		if floor := time.Duration(float64(prioPage) / prioLinkRate * float64(time.Second)); median(run.times) < floor {
			return fmt.Errorf("priority: the page took %s on the idle link, less than %s at 20 Mbit/s: the relay does not limit", median(run.times), floor)
		}
		idle[pool] = run
		for _, v := range mine {
			step("priority: %s: page beside %d downloads", v.name, prioBulkN)
			lr, err := b.loadedPages(ctx, t, ps.relay[pool], v)
			if err != nil {
				return err
			}
			loaded[v.key] = lr
		}
	}

	// The cost on a link nothing limits: one download at a time, alternated, at
	// the default priority (64 KiB frames) and at u=6 (16 KiB frames).
	fast := map[string][]float64{}
	rounds := max(b.rounds, 1)
	for r := 0; r < rounds; r++ {
		for _, k := range rotatePools([]string{poolFast, poolFastNoLow, poolFast + " u=6", poolFastNoLow + " u=6"}, r) {
			pool, pri, _ := strings.Cut(k, " ")
			var hdrs []string
			if pri != "" {
				hdrs = []string{"Priority: " + pri}
			}
			step("priority: %d MiB download on the unlimited link via pool %s %s(round %d/%d)", b.bulkSize>>20, pool, strings.Join(hdrs, "")+" ", r+1, rounds)
			v, err := download(ctx, targets[pool], b.bulkSize, hdrs...)
			if err != nil {
				return err
			}
			fast[k] = append(fast[k], v)
		}
	}
	b.prioReport(ps, variants, idle, loaded, fast)
	return nil
}

// prioVariantNames are -priority-variants' names, in the table's order.
var prioVariantNames = []string{"default", "no-priorities", "no-lowat", "neither"}

// prioVariantsFor is the configurations -priority-variants asks for.
func (b *bench) prioVariantsFor(ps *prioSetup) []prioVariant {
	with, without := "NotSentLowat "+ps.lowatLabel, "NotSentLowat off"
	all := []prioVariant{
		{"default", "priorities, " + with + " (default)", poolPrio, prioPagePri, prioBulkPri},
		{"no-priorities", "no priorities (all u=3), " + with, poolPrio, prioSamePri, prioSamePri},
		{"no-lowat", "priorities, " + without, poolPrioNoLow, prioPagePri, prioBulkPri},
		{"neither", "no priorities, " + without + " (as before)", poolPrioNoLow, prioSamePri, prioSamePri},
	}
	if len(b.prioVariants) == 0 {
		return all
	}
	var out []prioVariant
	for _, v := range all {
		if b.prioVariants[v.key] {
			out = append(out, v)
		}
	}
	return out
}

func rotatePools(p []string, r int) []string {
	out := make([]string, len(p))
	for i := range p {
		out[i] = p[(i+r)%len(p)]
	}
	return out
}

// fetchPages fetches the page n times on one keep-alive connection (after one
// fetch that is not counted), with prioPause between, and returns the completion
// times: request written to last body byte read, every byte checked.
func fetchPages(ctx context.Context, t *target, pri string, n int) (pageRun, error) {
	rc, err := t.dial(ctx)
	if err != nil {
		return pageRun{}, err
	}
	defer rc.close()
	stop := context.AfterFunc(ctx, rc.close)
	defer stop()
	return fetchPagesOn(rc, t, pri, n)
}

func fetchPagesOn(rc *rawConn, t *target, pri string, n int) (pageRun, error) {
	req := t.getReq("/bytes/"+strconv.Itoa(prioPage), "Priority: "+pri)
	buf := make([]byte, 64<<10)
	var run pageRun
	for i := -1; i < n; i++ {
		if i > 0 {
			time.Sleep(prioPause)
		}
		t0 := time.Now()
		ttfb, err := rc.getPattern(req, prioPage, buf)
		el := time.Since(t0)
		if err != nil {
			return run, fmt.Errorf("priority: page fetch %d: %w", i+1, err)
		}
		if i >= 0 {
			run.times = append(run.times, el)
			run.ttfb = append(run.ttfb, ttfb)
		}
	}
	return run, nil
}

// countingWriter counts what passes through it into n.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// loadedPages starts prioBulkN downloads of prioBulkSize with v.bulkPri, lets them
// fill the link for prioWarm, fetches the page prioFetches times with v.pagePri, and
// cuts the downloads once the last page is in (at 2.5 MB/s, four full downloads
// would take minutes; what matters is that they keep the link full while the page
// is fetched). relay is the link's, for the queue samples.
func (b *bench) loadedPages(ctx context.Context, t *target, relay *delayRelay, v prioVariant) (loadedRun, error) {
	var lr loadedRun
	page, err := t.dial(ctx)
	if err != nil {
		return lr, err
	}
	defer page.close()
	bulk := make([]*rawConn, prioBulkN)
	closeBulk := func() {
		for _, c := range bulk {
			if c != nil {
				c.close()
			}
		}
	}
	defer closeBulk()
	for i := range bulk {
		if bulk[i], err = t.dial(ctx); err != nil {
			return lr, err
		}
	}
	stop := context.AfterFunc(ctx, func() { page.close(); closeBulk() })
	defer stop()

	var (
		got     atomic.Int64 // body bytes of all downloads
		cut     atomic.Bool
		started sync.WaitGroup
		done    sync.WaitGroup
		errMu   sync.Mutex
		bulkErr error
	)
	req := t.getReq("/bytes/"+strconv.Itoa(prioBulkSize), "Priority: "+v.bulkPri)
	for _, c := range bulk {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			var once sync.Once
			begun := func() { once.Do(started.Done) }
			defer begun()
			err := func() error {
				if _, err := c.c.Write(req); err != nil {
					return err
				}
				resp, err := http.ReadResponse(c.br, nil)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				begun()
				var chk patternChecker
				_, err = io.CopyBuffer(countingWriter{&chk, &got}, resp.Body, make([]byte, 64<<10))
				if err == nil {
					err = chk.err(prioBulkSize)
				} else if e := chk.err(-1); e != nil {
					err = e
				}
				return err
			}()
			if err != nil && !cut.Load() {
				errMu.Lock()
				bulkErr = errors.Join(bulkErr, err)
				errMu.Unlock()
			}
		}()
	}
	failed := func() error {
		errMu.Lock()
		defer errMu.Unlock()
		if bulkErr != nil {
			return fmt.Errorf("priority: download: %w", bulkErr)
		}
		return nil
	}
	started.Wait()
	if err := failed(); err != nil {
		return lr, err
	}
	time.Sleep(prioWarm)

	// Sample the queues ahead of the link while the pages are fetched.
	agentPort, relayPort := relay.clientPort(), relay.listenPort()
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(prioSampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-sampling:
				return
			case <-tick.C:
			}
			q := procTCPQueues()
			lr.agentKernel = append(lr.agentKernel, float64(q[[2]int{agentPort, relayPort}].tx))
			lr.relayRcv = append(lr.relayRcv, float64(q[[2]int{relayPort, agentPort}].rx))
			lr.relayQueue = append(lr.relayQueue, float64(relay.queuedToDest.Load()))
		}
	}()
	b0, t0 := got.Load(), time.Now()
	lr.page, err = fetchPagesOn(page, t, v.pagePri, prioFetches)
	lr.window, lr.bulkBytes = time.Since(t0), got.Load()-b0
	close(sampling)
	<-sampled
	cut.Store(true)
	closeBulk()
	done.Wait()
	if err != nil {
		return lr, err
	}
	if err := failed(); err != nil {
		return lr, err
	}
	// Let what the cut downloads left in the queues drain before the next run.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		q := procTCPQueues()
		if relay.queuedToDest.Load() == 0 && q[[2]int{agentPort, relayPort}].tx == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	return lr, ctx.Err()
}

// clientPort is the remote port of a connection the relay accepted (the agent's
// end of its session), or 0.
func (r *delayRelay) clientPort() int {
	lp := r.listenPort()
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		if portOf(c.LocalAddr().String()) == lp {
			return portOf(c.RemoteAddr().String())
		}
	}
	return 0
}

func (r *delayRelay) listenPort() int { return portOf(r.addr()) }

func portOf(hostport string) int {
	i := strings.LastIndexByte(hostport, ':')
	p, _ := strconv.Atoi(hostport[i+1:])
	return p
}

type tcpQueue struct{ tx, rx int64 }

// procTCPQueues reads /proc/net/tcp: each IPv4 TCP socket's send queue (bytes
// not yet acknowledged: unsent, or in flight) and receive queue (bytes not yet
// read), by local and remote port.
func procTCPQueues() map[[2]int]tcpQueue {
	out := map[[2]int]tcpQueue{}
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 5 {
			continue
		}
		lp, ok1 := hexPort(fl[1])
		rp, ok2 := hexPort(fl[2])
		tx, rx, ok3 := strings.Cut(fl[4], ":")
		if !ok1 || !ok2 || !ok3 {
			continue
		}
		txn, err1 := strconv.ParseInt(tx, 16, 64)
		rxn, err2 := strconv.ParseInt(rx, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		out[[2]int{lp, rp}] = tcpQueue{tx: txn, rx: rxn}
	}
	return out
}

// hexPort reads the port of /proc/net/tcp's "0100007F:1F90".
func hexPort(a string) (int, bool) {
	_, p, ok := strings.Cut(a, ":")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(p, 16, 32)
	return int(n), err == nil
}

// prioReport adds the section's table: a column per configuration, targets on the
// default one.
func (b *bench) prioReport(ps *prioSetup, variants []prioVariant, idle map[string]pageRun, loaded map[string]loadedRun, fast map[string][]float64) {
	g := &grid{title: "Priorities: a 100 KiB page beside 4 downloads on a 20 Mbit/s, 20 ms RTT uplink"}
	g.cols = []string{"measurement"}
	for _, v := range variants {
		g.cols = append(g.cols, v.name)
	}
	g.cols = append(g.cols, "target (default column)")
	var def *prioVariant
	for i := range variants {
		if variants[i].key == "default" {
			def = &variants[i]
		}
	}
	row := func(metric, note string, target func(v prioVariant) (string, bool), f func(v prioVariant) string) {
		cells := []string{metric}
		for _, v := range variants {
			cells = append(cells, f(v))
		}
		t := ""
		if target != nil && def != nil {
			var ok bool
			t, ok = target(*def)
			if ok {
				t += " ✔ met"
			} else {
				t += " ✘ missed"
			}
		}
		g.add(note, append(cells, t)...)
	}
	ms := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	ratio := func(x float64) string { return fmt.Sprintf("%.2f×", x) }
	pct := func(x float64) string { return fmt.Sprintf("%.0f%%", 100*x) }
	kib := func(x []float64, q float64) string { return fmt.Sprintf("%.0f", percentile(x, q)/1024) }
	idleMed := func(v prioVariant) float64 { return idle[v.pool].median() }
	medRatio := func(v prioVariant) float64 { return loaded[v.key].page.median() / idleMed(v) }
	p95Ratio := func(v prioVariant) float64 { return loaded[v.key].page.p95() / idleMed(v) }

	row("page alone on the idle link, median (ms)", "an agent's idle figures serve both of its columns", nil,
		func(v prioVariant) string { return ms(idleMed(v)) })
	row("page alone on the idle link, p95 (ms)", "", nil, func(v prioVariant) string { return ms(idle[v.pool].p95()) })
	row("page beside the downloads, median (ms)", "", nil, func(v prioVariant) string { return ms(loaded[v.key].page.median()) })
	row("page beside the downloads, p95 (ms)", "", nil, func(v prioVariant) string { return ms(loaded[v.key].page.p95()) })
	row("median beside ÷ median alone", "",
		func(v prioVariant) (string, bool) {
			return fmt.Sprintf("≤ %.1f×", prioMedianTarget), medRatio(v) <= prioMedianTarget
		},
		func(v prioVariant) string { return ratio(medRatio(v)) })
	row("p95 beside ÷ median alone", "",
		func(v prioVariant) (string, bool) {
			return fmt.Sprintf("≤ %.1f×", prioP95Target), p95Ratio(v) <= prioP95Target
		},
		func(v prioVariant) string { return ratio(p95Ratio(v)) })
	row("page's first byte, alone / beside, median (ms)", "what waits ahead of the page shows in its first byte; the rest is the page's share of the link while it is sent", nil,
		func(v prioVariant) string {
			return ms(medianF(msOf(idle[v.pool].ttfb))) + " / " + ms(medianF(msOf(loaded[v.key].page.ttfb)))
		})
	row("downloads' aggregate while the page is fetched (MB/s)", "", nil,
		func(v prioVariant) string { return fmt.Sprintf("%.2f", loaded[v.key].bulkRate()/mb) })
	row("downloads ÷ link (2.5 MB/s)", "less than the link by what the page takes, its share by design", nil,
		func(v prioVariant) string { return pct(loaded[v.key].bulkRate() / prioLinkRate) })
	row("link used: downloads + page ÷ link", "payload bytes; TLS and SPDY framing take about 0.3% more",
		func(v prioVariant) (string, bool) {
			return fmt.Sprintf("≥ %.0f%%", 100*prioLinkTarget), loaded[v.key].linkUse() >= prioLinkTarget
		},
		func(v prioVariant) string { return pct(loaded[v.key].linkUse()) })
	row("agent's kernel send queue, median / max (KiB)", "tx_queue of the agent's socket (/proc/net/tcp), sampled every 20 ms while the page is fetched", nil,
		func(v prioVariant) string {
			l := loaded[v.key]
			return kib(l.agentKernel, 0.5) + " / " + kib(l.agentKernel, 1)
		})
	row("relay's receive buffer / queue, median (KiB)", "the link's own queue: what the agent's TCP has handed over and the relay has not yet put on the link", nil,
		func(v prioVariant) string {
			l := loaded[v.key]
			return kib(l.relayRcv, 0.5) + " / " + kib(l.relayQueue, 0.5)
		})
	for _, pri := range []string{"", " u=6"} {
		with, without := medianF(fast[poolFast+pri]), medianF(fast[poolFastNoLow+pri])
		what := "default priority, 64 KiB frames"
		if pri != "" {
			what = "`Priority:" + pri + "`, 16 KiB frames"
		}
		row(fmt.Sprintf("%d MiB download alone, unlimited link, %s (MB/s)", b.bulkSize>>20, what),
			fmt.Sprintf("agents connected straight to Caddy, no relay; median of %d, alternated; NotSentLowat on ÷ off = %.2f×", len(fast[poolFast+pri]), with/without), nil,
			func(v prioVariant) string {
				switch v.key {
				case "default":
					return fmt.Sprintf("%.0f", with)
				case "no-lowat":
					return fmt.Sprintf("%.0f", without)
				}
				return "—"
			})
	}
	g.notes = append(g.notes,
		fmt.Sprintf("link: the agent↔Caddy leg goes through a relay in the bench process: %.1f MB/s (20 Mbit/s) each way, paced by a token bucket (%d KiB deep, %d KiB writes), %s each way (20 ms RTT), a %d KiB queue per direction that stops reading while full, %d KiB SO_RCVBUF on its sockets; the clients' leg to Caddy is loopback",
			prioLinkRate/mb, relayBurst>>10, relayPiece>>10, fmtMS(prioOneWay), prioQueue>>10, prioRcvBuf>>10),
		fmt.Sprintf("page: GET of %d KiB with `Priority: u=0` (u=3 in the no-priorities columns), %d times on one keep-alive connection, %s apart, after one uncounted fetch; time = request written to last byte read; both ratios are against the median alone",
			prioPage>>10, prioFetches, prioPause),
		fmt.Sprintf("downloads: %d GETs of %d MiB with `Priority: u=6` (u=3 in the no-priorities columns), each on its own connection, running %s before the first page fetch and cut after the last one (whole, they would take minutes at 2.5 MB/s); every byte received is checked",
			prioBulkN, prioBulkSize>>20, prioWarm),
		"NotSentLowat: spdy.Config.NotSentLowat of the agent's session (TCP_NOTSENT_LOWAT), set with the agent's --tcp-notsent-lowat (-1: off, the kernel's setting); Caddy's side keeps its default",
	)
	b.rep.grids = append(b.rep.grids, g)
}
