package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	mobyspdy "github.com/moby/spdystream/spdy"

	"github.com/spdy-origin/spdy-origin/spdy"
)

// Isolation against hostile or careless peers: what one client or one agent
// does must cost that client's request or that agent's session, never
// unrelated requests, other sessions or Caddy's memory. Every test here
// plays the bad peer end to end against the in-process Caddy; helpers are in
// hostile_test.go.

// A client request with more header fields than an agent accepts in one
// block must fail alone. The agent's codec refuses a SYN_STREAM of more than
// 1000 headers; that must not end the session and every response on it.
func TestIsolationManyRequestHeaders(t *testing.T) {
	const pool = "iso-reqhdr"
	tester := loadConfig(t, spdyRoute(pool, nil))
	startAgent(t, "iso-reqhdr-A")
	waitSessions(t, pool, 1)
	survivesBadRequest(t, tester, pool, "a request with 1000 extra headers", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, testBase+"/hello", nil)
		for i := range 1000 {
			req.Header.Set(fmt.Sprintf("x%d", i), "v")
		}
		resp, after, err := doWithin(h1Client(0), req, 10*time.Second)
		if err != nil {
			t.Errorf("request with 1000 extra headers: %v after %v; want an answer (431 or 502)", err, after)
			return
		}
		t.Logf("request with 1000 extra headers: %d after %v", resp.StatusCode, after)
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge && resp.StatusCode != http.StatusBadGateway {
			t.Errorf("request with 1000 extra headers: status %d, want 431 or 502", resp.StatusCode)
		}
	})
}

// An agent's response with more header fields than Caddy accepts in one
// block must fail alone (502), not end Caddy's session with the agent.
func TestIsolationManyResponseHeaders(t *testing.T) {
	const pool = "iso-resphdr"
	tester := loadConfig(t, spdyRoute(pool, nil))
	startAgent(t, "iso-resphdr-A")
	waitSessions(t, pool, 1)
	survivesBadRequest(t, tester, pool, "a response with 2000 headers", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, testBase+"/headers?n=2000", nil)
		resp, after, err := doWithin(h1Client(0), req, 10*time.Second)
		if err != nil {
			t.Errorf("GET /headers?n=2000: %v after %v; want 502", err, after)
			return
		}
		t.Logf("GET /headers?n=2000: %d after %v", resp.StatusCode, after)
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("GET /headers?n=2000: status %d, want 502", resp.StatusCode)
		}
	})
}

// survivesBadRequest runs bad while a checksummed download is in flight on
// pool's only session, then checks that the download completed intact, that
// the next request succeeds, and that it is still the same session.
func survivesBadRequest(t *testing.T, tester *caddytest.Tester, pool, what string, bad func(t *testing.T)) {
	t.Helper()
	id := onlySession(t, pool).ID
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/big?size=%d", testBase, bigSize), nil)
	resp, err := bigClient().Do(req)
	if err != nil {
		t.Fatalf("starting the download: %v", err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.CopyN(h, resp.Body, 1<<20)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("download: %d, %v after %d bytes", resp.StatusCode, err, n)
	}

	bad(t)

	rest, err := io.Copy(h, resp.Body)
	n += rest
	want := testDataDigest(t, bigSize)
	if got := fmt.Sprintf("%x", h.Sum(nil)); err != nil || n != bigSize || got != want {
		t.Errorf("download on the same session broken by %s: %d of %d bytes, error %v, sha256 ok %v", what, n, bigSize, err, got == want)
	} else {
		t.Logf("download on the same session: %d bytes, sha256 ok", n)
	}

	r, after, err := doWithin(tester.Client, mustRequest(t, http.MethodGet, "/hello", nil), 5*time.Second)
	switch {
	case err != nil:
		t.Errorf("next request after %s: %v after %v; want 200", what, err, after.Round(time.Millisecond))
	case r.StatusCode != http.StatusOK:
		t.Errorf("next request after %s: status %d; want 200", what, r.StatusCode)
	}
	if ids := poolSessionIDs(pool); len(ids) != 1 || ids[0] != id {
		t.Errorf("pool %q sessions after %s: %v; want the same session %d (it must survive)", pool, what, ids, id)
	}
}

// Clients that stop reading their downloads must not freeze the session:
// each stalled stream may hold its stream window (16 MiB) of the session
// window (64 MiB), so a few of them leave the agent no credit to send
// anything else on it.
func TestIsolationStalledDownloads(t *testing.T) {
	const pool, stalled, size = "iso-stall-down", 6, 256 << 20
	loadConfig(t, spdyRoute(pool, nil))
	startAgent(t, "iso-stall-down-A")
	waitSessions(t, pool, 1)

	for i := range stalled {
		conn, br := rawHTTP1(t, fmt.Sprintf("GET /big?size=%d HTTP/1.1\r\nHost: localhost\r\n\r\n", size))
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("stalled download %d: %v", i, err)
		}
		if n, err := io.CopyN(io.Discard, resp.Body, 4<<10); err != nil || resp.StatusCode != 200 {
			t.Fatalf("stalled download %d: %d, %v after %d bytes", i, resp.StatusCode, err, n)
		}
		// From here on nobody reads this connection; the test's cleanup closes it.
	}
	fromAgent, took := waitSteady(sessionCounter(pool, func(s sessionSnapshot) uint64 { return s.BytesFromAgent }), 500*time.Millisecond, 10*time.Second)
	t.Logf("%d clients stopped reading %d MiB downloads; the agent sent %s on the session, then stopped (steady after %v)",
		stalled, size>>20, mib(fromAgent), took.Round(time.Millisecond))

	const fresh = 1 << 20
	req := mustRequest(t, http.MethodGet, fmt.Sprintf("/big?size=%d", fresh), nil)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := h1Client(0).Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("GET of %d bytes while %d downloads stall: no response within 2s (%v after %v): nothing else moves on the session while they stall",
			fresh, stalled, err, time.Since(start).Round(time.Millisecond))
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	took = time.Since(start)
	if err != nil || n != fresh || resp.StatusCode != 200 {
		t.Fatalf("GET of %d bytes while %d downloads stall: status %d, %d bytes in %v, then %v (limit 2s): nothing else moves on the session while they stall",
			fresh, stalled, resp.StatusCode, n, took.Round(time.Millisecond), err)
	}
	if got := fmt.Sprintf("%x", h.Sum(nil)); got != testDataDigest(t, fresh) {
		t.Fatalf("GET of %d bytes while %d downloads stall: wrong body (sha256 %s)", fresh, stalled, got)
	}
	t.Logf("GET of %d bytes while %d downloads stall: complete in %v", fresh, stalled, took.Round(time.Millisecond))
}

// The other direction: agents that do not read request bodies must not
// freeze uploads to the session. Each stalled upload may fill its stream
// window at the agent, and a few of them exhaust the session's send window.
func TestIsolationStalledUploads(t *testing.T) {
	const pool, stalled, size = "iso-stall-up", 6, 64 << 20
	loadConfig(t, spdyRoute(pool, nil))
	a := startAgent(t, "iso-stall-up-A")
	waitSessions(t, pool, 1)

	for range stalled {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		req := mustRequest(t, http.MethodPost, "/stall", io.LimitReader(zeros{}, size)).WithContext(ctx)
		req.ContentLength = size
		go func() {
			// The request ends when the test's cleanup cancels it.
			if resp, err := h1Client(0).Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	waitUntil(t, fmt.Sprintf("%d uploads reach the agent", stalled), 10*time.Second, func() bool { return a.served.Load() >= stalled })
	toAgent, took := waitSteady(sessionCounter(pool, func(s sessionSnapshot) uint64 { return s.BytesToAgent }), 500*time.Millisecond, 10*time.Second)
	t.Logf("%d clients upload %d MiB each to an agent that does not read them; Caddy sent %s on the session, then stopped (steady after %v)",
		stalled, size>>20, mib(toAgent), took.Round(time.Millisecond))

	payload := make([]byte, 1<<20)
	_, _ = io.ReadFull(newTestData(), payload)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := h1Client(0).Do(mustRequest(t, http.MethodPost, "/echo", bytes.NewReader(payload)).WithContext(ctx))
	if err != nil {
		t.Fatalf("POST /echo of %d bytes while %d uploads stall: no response within 2s (%v after %v): nothing else moves on the session while they stall",
			len(payload), stalled, err, time.Since(start).Round(time.Millisecond))
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	took = time.Since(start)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, payload) {
		t.Fatalf("POST /echo of %d bytes while %d uploads stall: status %d, %d bytes back (equal %v) in %v, error %v (limit 2s)",
			len(payload), stalled, resp.StatusCode, len(got), bytes.Equal(got, payload), took.Round(time.Millisecond), err)
	}
	t.Logf("POST /echo of %d bytes while %d uploads stall: echoed correctly in %v", len(payload), stalled, took.Round(time.Millisecond))
}

// zeros is an endless body.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// bombValues is how many 1 MiB header values a header bomb carries: enough
// to show an unbounded header block clearly (hundreds of MiB allocated
// today), few enough not to endanger the test machine. Encoding them is the
// slow part of the test (seconds under the race detector).
const bombValues = 100

// An agent with a valid token must not be able to exhaust Caddy's memory,
// nor disturb another pool. A hostile agent in pool A answers a request with
// one bomb per subtest while pool B is requested every 20 ms.
func TestIsolationHostileAgentBombs(t *testing.T) {
	const poolA, poolB = "iso-bomb-a", "iso-bomb-b"
	const maxPeak, maxAllocated = 16 << 20, 32 << 20
	// answerWithin: how soon the pool A client must get its 5xx;
	// stallWindow: how long a bomb that leaves the response hanging is watched.
	const answerWithin, stallWindow = 5 * time.Second, time.Second
	tester := loadRoutes(t, "",
		testRoute{paths: []string{"/b/*"}, handlers: []map[string]any{spdyRoute(poolB, map[string]any{"connect": "/b/connect"})}},
		testRoute{handlers: []map[string]any{spdyRoute(poolA, nil)}},
	)
	startAgentConfig(t, "iso-bomb-good", "/b/connect", nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	waitSessions(t, poolB, 1)

	value := strings.Repeat("a", 1<<20) // a run of one byte: ~1 KiB compressed
	hugeValues := func(n int) http.Header {
		h := make(http.Header, n)
		for i := range n {
			h[fmt.Sprintf("x-bomb-%03d", i)] = []string{value}
		}
		return h
	}
	// Bombs are encoded before Caddy opens the stream (compressing them
	// takes seconds) for stream 1, and patched with the real stream id.
	reply := func(h http.Header) *mobyspdy.SynReplyFrame {
		return &mobyspdy.SynReplyFrame{StreamId: 1, Headers: replyHeaders("200 OK", h)}
	}
	cases := []struct {
		name  string
		bomb  func(h *hostileAgent) []bombFrame
		stall bool // the bomb leaves the response hanging: only memory is judged, over stallWindow
	}{
		// The control: a plain 502 from the agent. It passes today and
		// shows the measurement's floor (pool B's traffic, the probes).
		{"control_plain_502_reply", func(h *hostileAgent) []bombFrame {
			return []bombFrame{{h.encode(&mobyspdy.SynReplyFrame{StreamId: 1, Headers: replyHeaders("502 Bad Gateway", http.Header{"content-length": {"0"}}),
				CFHeader: mobyspdy.ControlFrameHeader{Flags: mobyspdy.ControlFlagFin}}), true}}
		}, false},
		{"a_huge_values_in_SYN_REPLY", func(h *hostileAgent) []bombFrame {
			return []bombFrame{{h.encode(reply(hugeValues(bombValues))), true}}
		}, false},
		{"b_million_NUL_separated_values", func(h *hostileAgent) []bombFrame {
			return []bombFrame{{h.encode(reply(http.Header{"x-nul": {strings.Repeat("\x00", 1<<20)}})), true}}
		}, false},
		{"c_huge_values_in_HEADERS_for_unopened_stream_and_SYN_REPLY", func(h *hostileAgent) []bombFrame {
			return []bombFrame{
				{h.encode(&mobyspdy.HeadersFrame{StreamId: 99999, Headers: hugeValues(bombValues / 2)}), false},
				{h.encode(reply(hugeValues(bombValues / 2))), true},
			}
		}, false},
		{"d_DATA_frame_claiming_16MiB", func(h *hostileAgent) []bombFrame {
			return []bombFrame{
				{h.encode(reply(nil)), true},
				{append(dataFrameHeader(1, 0xFFFFFF), "abc"...), true},
			}
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := startHostileAgent(t, "iso-bomb-hostile", testConnect)
			waitSessions(t, poolA, 1)
			encStart := time.Now()
			bomb := tc.bomb(h)
			size := 0
			for _, f := range bomb {
				size += len(f.b)
			}
			t.Logf("bomb %s: %d bytes on the wire, encoded in %v", tc.name, size, time.Since(encStart).Round(time.Millisecond))

			type outcome struct {
				status int
				err    error
				after  time.Duration
			}
			answered := make(chan outcome, 1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req := mustRequest(t, http.MethodGet, "/a/bomb", nil).WithContext(ctx)
			go func() {
				// A small header limit keeps this client's own allocations
				// out of the figures if Caddy forwards the bomb.
				resp, after, err := doWithin(h1Client(64<<10), req, 2*hostileTimeout)
				answered <- outcome{status: statusOf(resp), err: err, after: after}
			}()
			id := uint32(h.expectSynStream().StreamId)

			probeB := startProber(tester.Client, testBase+"/b/ping", 20*time.Millisecond)
			mem := startMemProbe()
			sent := time.Now()
			for _, f := range bomb {
				if f.onStream {
					patchStreamID(f.b, id)
				}
				if err := h.send(f.b); err != nil {
					t.Logf("hostile agent: sending the bomb: %v (Caddy closed the connection)", err)
					break
				}
			}
			if tc.stall {
				h.mute()
			}
			wait := hostileTimeout
			if tc.stall {
				wait = stallWindow
			}
			var o outcome
			got := false
			select {
			case o = <-answered:
				got = true
			case <-time.After(wait):
			}
			reaction := time.Since(sent)
			time.Sleep(200 * time.Millisecond) // let Caddy finish what the bomb set off
			use := mem.finish()
			okB, failuresB, worstB := probeB.finish()

			t.Logf("bomb %s: Caddy: %s", tc.name, use)
			switch {
			case got && o.err != nil:
				t.Logf("pool A client: %v, %v after the bomb", o.err, reaction.Round(time.Millisecond))
			case got:
				t.Logf("pool A client: %d, %v after the bomb", o.status, reaction.Round(time.Millisecond))
			default:
				t.Logf("pool A client: no complete answer within %v of the bomb", wait)
			}
			t.Logf("pool B during the bomb: %d requests ok, %d failed, worst latency %v", okB, len(failuresB), worstB.Round(time.Millisecond))

			if use.PeakGrowth >= maxPeak {
				t.Errorf("bomb %s: Caddy's heap grew by %s above its baseline; want < %s", tc.name, mib(uint64(use.PeakGrowth)), mib(maxPeak))
			}
			if use.Allocated >= maxAllocated {
				t.Errorf("bomb %s: Caddy allocated %s while handling it; want < %s", tc.name, mib(use.Allocated), mib(maxAllocated))
			}
			if !tc.stall {
				switch {
				case !got:
					t.Errorf("bomb %s: pool A client got no answer within %v; want a 5xx within %v", tc.name, wait, answerWithin)
				case o.err != nil:
					t.Errorf("bomb %s: pool A client failed %v after the bomb: %v; want a 5xx", tc.name, reaction.Round(time.Millisecond), o.err)
				case o.status < 500:
					t.Errorf("bomb %s: pool A client got %d %v after the bomb; want a 5xx", tc.name, o.status, reaction.Round(time.Millisecond))
				case reaction > answerWithin:
					t.Errorf("bomb %s: pool A client got %d only %v after the bomb; want it within %v", tc.name, o.status, reaction.Round(time.Millisecond), answerWithin)
				}
			}
			if len(failuresB) > 0 || okB == 0 {
				t.Errorf("bomb %s: pool B failed %d of %d requests during the bomb: %v", tc.name, len(failuresB), okB+len(failuresB), failuresB)
			}

			h.close()
			waitSessions(t, poolA, 0)
			if err := probeOnce(tester.Client, testBase+"/b/ping"); err != nil {
				t.Errorf("bomb %s: pool B after the bomb: %v", tc.name, err)
			}
		})
	}
}

// bombFrame is one encoded frame of a bomb; onStream: it belongs to the
// stream Caddy opens, whose id is patched in before it is sent.
type bombFrame struct {
	b        []byte
	onStream bool
}

// patchStreamID sets the stream id of an encoded SYN_REPLY, HEADERS or
// DATA frame (the id is outside the compressed header block).
func patchStreamID(frame []byte, id uint32) {
	at := 0
	if frame[0]&0x80 != 0 { // control frame: the id follows the 8-byte header
		at = 8
	}
	frame[at] = frame[at]&0x80 | byte(id>>24&0x7f)
	frame[at+1], frame[at+2], frame[at+3] = byte(id>>16), byte(id>>8), byte(id)
}

// Streams that sit idle (a client that announced a body and sends none)
// must not hold every stream slot of a session forever, and requests
// waiting for a slot must get an answer in bounded time.
func TestIsolationIdleStreams(t *testing.T) {
	const pool, slots = "iso-idle", 8
	tester := loadConfig(t, spdyRoute(pool, map[string]any{"stream_idle_timeout": "1s", "stream_queue_timeout": "1s"}))
	cfg := spdy.DefaultConfig()
	cfg.MaxConcurrentStreams = slots
	startAgentConfig(t, "iso-idle-A", testConnect, cfg, nil)
	waitSessions(t, pool, 1)

	// Each idle POST's outcome is read as it happens, so its time is exact.
	const resetWithin = 3 * time.Second // stream_idle_timeout 1s, with room for a coarse idle check
	type postEnd struct {
		after  time.Duration
		status int
		err    error
	}
	start := time.Now()
	ends := make(chan postEnd, slots)
	for range slots {
		// /upload reads its body; this one never comes.
		conn, br := rawHTTP1(t, "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n")
		_ = conn.SetReadDeadline(start.Add(resetWithin + 2*time.Second))
		go func() {
			resp, err := http.ReadResponse(br, nil)
			ends <- postEnd{after: time.Since(start), status: statusOf(resp), err: err}
		}()
	}
	waitUntil(t, fmt.Sprintf("%d idle POSTs hold the session's %d stream slots", slots, slots), 10*time.Second, func() bool {
		return sessionCounter(pool, func(s sessionSnapshot) uint64 { return uint64(s.OpenStreams) })() == slots
	})

	resp, after, err := doWithin(h1Client(0), mustRequest(t, http.MethodGet, "/hello", nil), 3*time.Second)
	switch {
	case err != nil:
		t.Errorf("GET while %d idle POSTs hold every stream slot: %v after %v; want 200 or 503 within 3s (stream_queue_timeout 1s)",
			slots, err, after.Round(time.Millisecond))
	case resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable:
		t.Errorf("GET while %d idle POSTs hold every stream slot: status %d after %v; want 200 or 503", slots, resp.StatusCode, after.Round(time.Millisecond))
	default:
		t.Logf("GET while %d idle POSTs hold every stream slot: %d after %v", slots, resp.StatusCode, after.Round(time.Millisecond))
	}

	for n := 1; n <= slots; n++ {
		e := <-ends // in the order they end; every read has a deadline
		var ne net.Error
		switch {
		case errors.As(e.err, &ne) && ne.Timeout():
			t.Errorf("idle POST (%d of %d to end): still open %v after it was sent; want it reset (408, 5xx or closed) within %v (stream_idle_timeout 1s)",
				n, slots, e.after.Round(time.Millisecond), resetWithin)
		case e.after > resetWithin:
			t.Errorf("idle POST (%d of %d to end): ended only %v after it was sent (status %d, error %v); want within %v (stream_idle_timeout 1s)",
				n, slots, e.after.Round(time.Millisecond), e.status, e.err, resetWithin)
		case e.err != nil:
			t.Logf("idle POST (%d of %d to end): connection ended %v after it was sent (%v)", n, slots, e.after.Round(time.Millisecond), e.err)
		case e.status == http.StatusRequestTimeout || e.status >= 500:
			t.Logf("idle POST (%d of %d to end): %d, %v after it was sent", n, slots, e.status, e.after.Round(time.Millisecond))
		default:
			t.Errorf("idle POST (%d of %d to end): status %d %v after it was sent; want 408 or 5xx", n, slots, e.status, e.after.Round(time.Millisecond))
		}
	}

	resp, after, err = doWithin(tester.Client, mustRequest(t, http.MethodGet, "/hello", nil), time.Second)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET after the idle POSTs were reset: status %d (error %v) after %v; want 200 within 1s", statusOf(resp), err, after.Round(time.Millisecond))
	} else {
		t.Logf("GET after the idle POSTs were reset: 200 after %v", after.Round(time.Millisecond))
	}
}

// When an agent breaks the protocol, the log line that reports its
// disconnection must say what it did wrong: "spdy: protocol error: spdy:
// protocol error" tells an operator nothing.
func TestIsolationProtocolErrorCause(t *testing.T) {
	const pool = "iso-cause"
	logFile := filepath.Join(t.TempDir(), "spdy.log")
	loadRoutes(t, logFile, testRoute{handlers: []map[string]any{spdyRoute(pool, nil)}})
	cases := []struct {
		name  string
		frame func(h *hostileAgent) []byte
		want  []string // the cause must name one of these
	}{
		{"SYN_STREAM_with_the_client_parity", func(h *hostileAgent) []byte {
			// Caddy is the SPDY client: odd stream ids are its own.
			return h.encode(&mobyspdy.SynStreamFrame{StreamId: 1, Headers: http.Header{
				":method": {"GET"}, ":path": {"/"}, ":version": {"HTTP/1.1"}, ":host": {"localhost"}, ":scheme": {"https"},
			}})
		}, []string{"parity", "stream 1"}},
		{"WINDOW_UPDATE_with_zero_delta", func(h *hostileAgent) []byte {
			return h.encode(&mobyspdy.WindowUpdateFrame{StreamId: 0, DeltaWindowSize: 0})
		}, []string{"WINDOW_UPDATE", "delta"}},
		{"DATA_on_stream_0", func(h *hostileAgent) []byte {
			return append(dataFrameHeader(0, 4), "abcd"...)
		}, []string{"stream 0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := "iso-cause-" + tc.name
			h := startHostileAgent(t, name, testConnect)
			waitSessions(t, pool, 1)
			if err := h.send(tc.frame(h)); err != nil {
				t.Fatalf("sending the malformed frame: %v", err)
			}
			e := waitLogEntry(t, logFile, `"agent disconnected" for `+name, func(e map[string]any) bool {
				return e["msg"] == "agent disconnected" && e["agent_name"] == name
			})
			cause, _ := e["cause"].(string)
			t.Logf("%s: logged cause %q", tc.name, cause)
			named := false
			for _, w := range tc.want {
				named = named || strings.Contains(cause, w)
			}
			if !named || cause == "spdy: protocol error: spdy: protocol error" {
				t.Errorf("%s: logged cause %q does not say what was wrong; want it to name one of %q", tc.name, cause, tc.want)
			}
			waitSessions(t, pool, 0)
		})
	}
}

// doWithin sends req and reads the whole response body, all within limit.
// It returns the response (body consumed and closed) and how long it took.
func doWithin(c *http.Client, req *http.Request, limit time.Duration) (*http.Response, time.Duration, error) {
	ctx, cancel := context.WithTimeout(req.Context(), limit)
	defer cancel()
	start := time.Now()
	resp, err := c.Do(req.WithContext(ctx))
	if err != nil {
		return nil, time.Since(start), err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return resp, time.Since(start), fmt.Errorf("status %d, reading body: %w", resp.StatusCode, err)
	}
	return resp, time.Since(start), nil
}

func mustRequest(t testing.TB, method, path string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, testBase+path, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}

// waitUntil polls cond until it holds, failing the test after limit.
func waitUntil(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
