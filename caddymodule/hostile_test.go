package caddymodule

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mobyspdy "github.com/moby/spdystream/spdy"
	"github.com/spdy-origin/spdy-origin/internal/handshake"
)

// Helpers for the hostile-peer tests (isolation_test.go): an agent that
// speaks SPDY frame by frame, a probe of the process's heap (the test process
// is Caddy), a prober that keeps a pool busy, and raw HTTP/1.1 clients.

// hostileTimeout bounds every wait of a hostile agent; it only detects a
// hung test.
const hostileTimeout = 15 * time.Second

// hostileAgent registers with a valid token and then speaks SPDY with moby's
// codec, so a test decides exactly what Caddy reads. It answers PINGs (until
// muted) and hands every other frame Caddy sends to the test.
type hostileAgent struct {
	t    testing.TB
	conn net.Conn

	// Header blocks share one compression context per direction, so they
	// are encoded one at a time, in the order they go on the wire.
	encMu sync.Mutex
	out   bytes.Buffer
	enc   *mobyspdy.Framer

	wmu    sync.Mutex // one frame on the wire at a time
	muted  atomic.Bool
	frames chan mobyspdy.Frame
	stop   chan struct{}
	done   chan struct{}
	rerr   error // why the reader stopped; read after done is closed
	once   sync.Once
}

// startHostileAgent registers on the connect path and starts reading
// Caddy's frames. It fails the test if registration fails.
func startHostileAgent(t testing.TB, name, connect string) *hostileAgent {
	t.Helper()
	return startHostileAgentHosts(t, name, connect, "")
}

// startHostileAgentHosts is startHostileAgent announcing hosts
// (comma-separated; "": none).
func startHostileAgentHosts(t testing.TB, name, connect, hosts string) *hostileAgent {
	t.Helper()
	reg, err := register(t, connect, "Bearer "+testToken, map[string]string{
		handshake.HeaderName:     name,
		handshake.HeaderVersion:  "hostile",
		handshake.HeaderInstance: "inst-" + name,
		handshake.HeaderHosts:    hosts,
	})
	if err != nil {
		t.Fatalf("hostile agent %s: %v", name, err)
	}
	if reg.status != http.StatusOK {
		t.Fatalf("hostile agent %s: registration status %d: %s", name, reg.status, reg.body)
	}
	h := &hostileAgent{
		t:      t,
		conn:   reg.conn,
		frames: make(chan mobyspdy.Frame, 1024),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	if h.enc, err = mobyspdy.NewFramer(&h.out, nil); err != nil {
		t.Fatal(err)
	}
	dec, err := mobyspdy.NewFramer(io.Discard, reg.br)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(h.done)
		defer close(h.frames)
		for {
			f, err := dec.ReadFrame()
			if err != nil {
				h.rerr = err
				return
			}
			if p, ok := f.(*mobyspdy.PingFrame); ok {
				if !h.muted.Load() {
					// Encoded by hand: a PING has no header block, so it
					// must not wait for a bomb being compressed (encMu),
					// which takes longer than Caddy's ping timeout.
					_ = h.send(pingFrame(p.Id))
				}
				continue
			}
			select {
			case h.frames <- f:
			case <-h.stop:
				h.rerr = errors.New("hostile agent closed")
				return
			}
		}
	}()
	t.Cleanup(h.close)
	return h
}

// pingFrame is a PING frame (SPDY/3: control bit, version 3, type 6,
// length 4, the id).
func pingFrame(id uint32) []byte {
	b := []byte{0x80, 3, 0, 6, 0, 0, 0, 4}
	return binary.BigEndian.AppendUint32(b, id)
}

func (h *hostileAgent) close() {
	h.once.Do(func() {
		close(h.stop)
		h.conn.Close()
		<-h.done
	})
}

// encode serializes f (compressing its header block in the connection's
// context) without sending it: bombs are built before memory is measured.
func (h *hostileAgent) encode(f mobyspdy.Frame) []byte {
	h.t.Helper()
	h.encMu.Lock()
	defer h.encMu.Unlock()
	h.out.Reset()
	if err := h.enc.WriteFrame(f); err != nil {
		h.t.Fatalf("hostile agent: encoding %T: %v", f, err)
	}
	return bytes.Clone(h.out.Bytes())
}

// send puts bytes on the wire as they are.
func (h *hostileAgent) send(b []byte) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	_ = h.conn.SetWriteDeadline(time.Now().Add(hostileTimeout))
	_, err := h.conn.Write(b)
	return err
}

// mute stops PING answers: after a truncated frame every byte we send would
// be read as part of it.
func (h *hostileAgent) mute() { h.muted.Store(true) }

// expectSynStream waits for Caddy to open a stream.
func (h *hostileAgent) expectSynStream() *mobyspdy.SynStreamFrame {
	h.t.Helper()
	timer := time.NewTimer(hostileTimeout)
	defer timer.Stop()
	for {
		select {
		case f, ok := <-h.frames:
			if !ok {
				h.t.Fatalf("hostile agent: connection ended (%v) while waiting for SYN_STREAM", h.rerr)
			}
			if s, ok := f.(*mobyspdy.SynStreamFrame); ok {
				return s
			}
		case <-timer.C:
			h.t.Fatalf("hostile agent: no SYN_STREAM within %v", hostileTimeout)
		}
	}
}

// replyHeaders is a SYN_REPLY header block with extra fields.
func replyHeaders(status string, extra http.Header) http.Header {
	h := http.Header{":status": {status}, ":version": {"HTTP/1.1"}}
	for k, v := range extra {
		h[k] = v
	}
	return h
}

// dataFrameHeader is the 8-byte header of a DATA frame claiming length bytes.
func dataFrameHeader(id uint32, length uint32) []byte {
	return []byte{
		byte(id >> 24 & 0x7f), byte(id >> 16), byte(id >> 8), byte(id),
		0, byte(length >> 16), byte(length >> 8), byte(length),
	}
}

// memProbe measures the process's heap over a window: cumulative bytes
// allocated, and the peak of heap object bytes above a baseline taken after
// a GC, sampled every 2 ms.
type memProbe struct {
	baseHeap, baseAllocs uint64
	peak                 atomic.Uint64
	stop, done           chan struct{}
}

// memUse is what a memProbe measured.
type memUse struct {
	PeakGrowth int64  // peak heap object bytes above the baseline
	Allocated  uint64 // bytes allocated during the window
	Baseline   uint64 // heap object bytes after the GC that opened the window
}

func (m memUse) String() string {
	return fmt.Sprintf("peak heap growth %.1f MiB, allocated %.1f MiB (baseline heap %.1f MiB)",
		float64(m.PeakGrowth)/(1<<20), float64(m.Allocated)/(1<<20), float64(m.Baseline)/(1<<20))
}

const (
	metricHeapObjects = "/memory/classes/heap/objects:bytes"
	metricAllocs      = "/gc/heap/allocs:bytes"
)

func readHeap() (objects, allocs uint64) {
	s := []rtmetrics.Sample{{Name: metricHeapObjects}, {Name: metricAllocs}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

func startMemProbe() *memProbe {
	runtime.GC()
	runtime.GC()
	p := &memProbe{stop: make(chan struct{}), done: make(chan struct{})}
	p.baseHeap, p.baseAllocs = readHeap()
	p.peak.Store(p.baseHeap)
	go func() {
		defer close(p.done)
		s := []rtmetrics.Sample{{Name: metricHeapObjects}}
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			rtmetrics.Read(s)
			if v := s[0].Value.Uint64(); v > p.peak.Load() {
				p.peak.Store(v)
			}
			select {
			case <-tick.C:
			case <-p.stop:
				return
			}
		}
	}()
	return p
}

func (p *memProbe) finish() memUse {
	close(p.stop)
	<-p.done
	heap, allocs := readHeap()
	peak := max(p.peak.Load(), heap)
	return memUse{PeakGrowth: int64(peak) - int64(p.baseHeap), Allocated: allocs - p.baseAllocs, Baseline: p.baseHeap}
}

// prober requests a URL every interval until stopped, recording failures
// and the worst latency: it tells whether a pool stayed usable throughout.
type prober struct {
	stop, done chan struct{}
	mu         sync.Mutex
	ok         int
	failures   []string
	worst      time.Duration
}

func startProber(c *http.Client, url string, every time.Duration) *prober {
	p := &prober{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			start := time.Now()
			err := probeOnce(c, url)
			d := time.Since(start)
			p.mu.Lock()
			if err != nil {
				p.failures = append(p.failures, fmt.Sprintf("after %v: %v", d.Round(time.Millisecond), err))
			} else {
				p.ok++
			}
			p.worst = max(p.worst, d)
			p.mu.Unlock()
			select {
			case <-tick.C:
			case <-p.stop:
				return
			}
		}
	}()
	return p
}

func probeOnce(c *http.Client, url string) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("status %d, reading body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// finish stops the prober and reports successes, failures and the worst latency.
func (p *prober) finish() (ok int, failures []string, worst time.Duration) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ok, p.failures, p.worst
}

// h1Client is an HTTP/1.1 client with its own connections, so one test
// client's stalled connection cannot stall another's (as streams sharing an
// HTTP/2 connection would). maxHeader caps response headers (0: Go's default).
func h1Client(maxHeader int64) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:        &tls.Config{ServerName: "localhost", InsecureSkipVerify: true},
		MaxResponseHeaderBytes: maxHeader,
		DisableKeepAlives:      true,
	}}
}

// rawHTTP1 dials Caddy with TLS (ALPN http/1.1) and writes msg as it is.
func rawHTTP1(t testing.TB, msg string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", testHTTPSAddr, &tls.Config{
		ServerName: "localhost", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"},
	})
	if err != nil {
		t.Fatalf("dialing caddy: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatalf("writing request: %v", err)
	}
	return conn, bufio.NewReader(conn)
}

// onlySession returns the one session of pool, failing the test otherwise.
func onlySession(t *testing.T, pool string) sessionSnapshot {
	t.Helper()
	p := allPoolsByName(t)[pool]
	if len(p.Sessions) != 1 {
		t.Fatalf("pool %q has %d sessions, want 1: %+v", pool, len(p.Sessions), p.Sessions)
	}
	return p.Sessions[0]
}

// poolSessionIDs lists the ids of pool's sessions.
func poolSessionIDs(pool string) []uint64 {
	var ids []uint64
	for _, p := range allPools() {
		if p.Name == pool {
			for _, s := range p.Sessions {
				ids = append(ids, s.ID)
			}
		}
	}
	return ids
}

// waitSteady polls a counter until it has not moved for quiet (or limit has
// passed) and returns its last value and how long that took.
func waitSteady(counter func() uint64, quiet, limit time.Duration) (uint64, time.Duration) {
	start := time.Now()
	last, since := counter(), time.Now()
	for time.Since(start) < limit {
		time.Sleep(50 * time.Millisecond)
		if v := counter(); v != last {
			last, since = v, time.Now()
		} else if time.Since(since) >= quiet {
			break
		}
	}
	return last, time.Since(start)
}

// sessionCounter reads one counter of pool's first session (0 if none).
func sessionCounter(pool string, f func(sessionSnapshot) uint64) func() uint64 {
	return func() uint64 {
		for _, p := range allPools() {
			if p.Name == pool && len(p.Sessions) > 0 {
				return f(p.Sessions[0])
			}
		}
		return 0
	}
}

// waitLogEntry waits until the JSON-lines log at path has an entry that
// match accepts.
func waitLogEntry(t testing.TB, path string, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(hostileTimeout)
	for {
		b, _ := os.ReadFile(path)
		for line := range strings.SplitSeq(string(b), "\n") {
			var e map[string]any
			if json.Unmarshal([]byte(line), &e) == nil && match(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log entry %s within %v; log:\n%s", what, hostileTimeout, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mib formats a byte count.
func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
