//go:build linux

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func TestPatternRoundTrip(t *testing.T) {
	for _, n := range []int64{0, 1, patternSize - 1, patternSize, 3*patternSize + 17} {
		var c patternChecker
		if _, err := io.CopyBuffer(&c, &patternReader{n: n}, make([]byte, 4093)); err != nil {
			t.Fatal(err)
		}
		if err := c.err(n); err != nil {
			t.Errorf("n=%d: %v", n, err)
		}
		if n > 0 {
			if err := c.err(n + 1); err == nil {
				t.Errorf("n=%d: a short body passed the check", n)
			}
		}
	}
}

func TestPatternCheckerFindsCorruption(t *testing.T) {
	b, _ := io.ReadAll(&patternReader{n: 2*patternSize + 100})
	b[patternSize+5] ^= 1
	var c patternChecker
	c.Write(b[:1000])
	c.Write(b[1000:])
	err := c.err(int64(len(b)))
	if err == nil || !strings.Contains(err.Error(), "1048581") {
		t.Fatalf("err = %v, want a mismatch at byte 1048581", err)
	}
}

func TestProcReaders(t *testing.T) {
	kb, err := rssKiB(os.Getpid())
	if err != nil || kb <= 0 {
		t.Fatalf("rssKiB = %d, %v", kb, err)
	}
	if _, err := cpuTime(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}

func TestCaddyfile(t *testing.T) {
	got := caddyfile(2019, 8080, []site{{port: 8443, hosts: []string{"localhost", "10.0.0.1"}, body: "spdy_origin {\n\ttoken x\n}"}})
	for _, want := range []string{"admin 127.0.0.1:2019", "http_port 8080", "https://localhost:8443, https://10.0.0.1:8443 {", "\ttls internal", "\tspdy_origin {\n\t\ttoken x\n\t}"} {
		if !strings.Contains(got, want) {
			t.Errorf("Caddyfile lacks %q:\n%s", want, got)
		}
	}
}

// echoServer echoes every connection until EOF, then half-closes its side.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

func TestDelayRelayDelaysEachDirection(t *testing.T) {
	const delay = 20 * time.Millisecond
	r, err := startDelayRelay(echoServer(t), delay, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4)
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		// One round trip is two delays; the first also pays the connect's round trip.
		if el := time.Since(t0); el < 2*delay {
			t.Fatalf("round trip %d took %s, want ≥ %s", i, el, 2*delay)
		}
		if string(buf) != "ping" {
			t.Fatalf("got %q", buf)
		}
	}
}

func TestDelayRelayForwardsBulkAndHalfClose(t *testing.T) {
	// A queue smaller than the transfer, so the bound is exercised.
	r, err := startDelayRelay(echoServer(t), 5*time.Millisecond, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoPattern(t, c, 6*patternSize+12345, c.(*net.TCPConn).CloseWrite)
}

// echoPattern sends n bytes of the pattern on c to an echo server (through a
// relay), then closeWrite, and checks that the n bytes come back followed by
// EOF: the echo server saw our end of stream through the relay and sent its own
// back.
func echoPattern(t *testing.T, c net.Conn, n int64, closeWrite func() error) {
	t.Helper()
	werr := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(c, &patternReader{n: n}, make([]byte, 7000))
		if err == nil {
			err = closeWrite()
		}
		werr <- err
	}()
	var chk patternChecker
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(&chk, c); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if err := chk.err(n); err != nil {
		t.Fatal(err)
	}
}

func TestRelayQueueBlocksWhenFull(t *testing.T) {
	q := &relayQueue{limit: 100}
	q.cond.L = &q.mu
	if room, ok := q.waitRoom(60); !ok || room != 100 {
		t.Fatalf("empty queue: room %d, %v; want 100, true", room, ok)
	}
	q.push(relayChunk{data: make([]byte, 60), at: time.Now()})
	if room, ok := q.waitRoom(30); !ok || room != 40 {
		t.Fatalf("60 of 100 bytes queued: room %d, %v; want 40, true", room, ok)
	}
	got := make(chan bool, 1)
	go func() { _, ok := q.waitRoom(60); got <- ok }()
	select {
	case <-got:
		t.Fatal("waitRoom returned with 60 of 100 bytes queued and 60 more wanted")
	case <-time.After(50 * time.Millisecond):
	}
	c, _ := q.front()
	if len(q.popDue(c.at)) != 1 {
		t.Fatal("popDue did not return the due chunk")
	}
	q.release(60)
	if ok := <-got; !ok {
		t.Fatal("waitRoom reported a dead writer")
	}
	q.fail()
	if _, ok := q.waitRoom(1 << 20); ok {
		t.Fatal("waitRoom after fail reported room")
	}
	if _, ok := q.front(); ok {
		t.Fatal("front after fail returned a chunk")
	}
}

func TestDelayRelayCloseEndsConnections(t *testing.T) {
	r, err := startDelayRelay(echoServer(t), time.Millisecond, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	r.close() // waits for every pump
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(b); err == nil {
		t.Fatal("read after close succeeded")
	}
}

// TestTokenBucketRate runs senders against a fake clock: whatever they overshoot
// their waits by (up to a few ms, as a loaded machine's timers do), the bytes sent
// over a few hundred ms beyond the bucket's first fill stay within 5% of the rate,
// and never above rate × time + depth.
func TestTokenBucketRate(t *testing.T) {
	const rate = 2.5e6 // 20 Mbit/s
	for _, tc := range []struct {
		name      string
		senders   int
		piece     int
		overshoot time.Duration // the largest; each wait overshoots by a varying part of it
	}{
		{"one sender, exact waits", 1, 8 << 10, 0},
		{"one sender, late wake-ups", 1, 8 << 10, 3 * time.Millisecond},
		{"four senders share the link", 4, 8 << 10, 2 * time.Millisecond},
		{"small pieces", 2, 1500, time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Unix(1000, 0)
			now := start
			tb := newTokenBucket(rate, relayBurst, func() time.Time { return now })
			// Each sender's next send time; the earliest goes next (a tiny
			// event loop standing in for goroutines that sleep).
			next := make([]time.Time, tc.senders)
			for i := range next {
				next[i] = start
			}
			var sent int64
			const span = 400 * time.Millisecond
			for k := 0; ; k++ {
				i := 0
				for j := range next {
					if next[j].Before(next[i]) {
						i = j
					}
				}
				now = next[i]
				if now.Sub(start) >= span {
					break
				}
				wait := tb.reserve(tc.piece)
				if tc.overshoot > 0 {
					wait += tc.overshoot * time.Duration(k%7) / 6
				}
				// The bytes go out when the wait is over.
				sent += int64(tc.piece)
				next[i] = now.Add(wait)
				if lim := rate*next[i].Sub(start).Seconds() + relayBurst + float64(tc.piece); float64(sent) > lim {
					t.Fatalf("%d bytes out by %s: more than rate × time + depth (%.0f)", sent, next[i].Sub(start), lim)
				}
			}
			// Less the full bucket a fresh link starts with.
			got := float64(sent-relayBurst) / span.Seconds()
			if got < rate*0.95 || got > rate*1.05 {
				t.Fatalf("%.0f bytes/s over %s, want %.0f ± 5%%", got, span, rate)
			}
		})
	}
}

func TestTokenBucketIdleBurst(t *testing.T) {
	now := time.Unix(1000, 0)
	tb := newTokenBucket(1e6, 16<<10, func() time.Time { return now })
	if w := tb.reserve(16 << 10); w != 0 {
		t.Fatalf("a full bucket made the first %d bytes wait %s", 16<<10, w)
	}
	if w := tb.reserve(10000); w != 10*time.Millisecond {
		t.Fatalf("an empty bucket at 1 MB/s: 10000 bytes wait %s, want 10ms", w)
	}
	now = now.Add(time.Hour) // idle: the bucket refills to its depth, no further
	if w := tb.reserve(16 << 10); w != 0 {
		t.Fatalf("after an idle hour the first %d bytes wait %s", 16<<10, w)
	}
	if w := tb.reserve(1000); w != time.Millisecond {
		t.Fatalf("past the depth, 1000 bytes wait %s, want 1ms", w)
	}
}

// TestLinkRelayRate sends through a rate-limited relay in real time. The rate can
// only be undershot on a loaded machine (a late timer), never overshot by more than
// the bucket's depth, so the upper bound is tight and the lower one generous.
func TestLinkRelayRate(t *testing.T) {
	const rate = 2e6
	r, err := startLinkRelay(echoServer(t), link{delay: 2 * time.Millisecond, queue: 64 << 10, rate: rate, rcvBuf: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 600 KB each way: about 300 ms, plus the delays.
	const n = 600_000
	go func() {
		io.CopyBuffer(c, &patternReader{n: n}, make([]byte, 32<<10))
		c.(*net.TCPConn).CloseWrite()
	}()
	var chk patternChecker
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	t0 := time.Now()
	if _, err := io.Copy(&chk, c); err != nil {
		t.Fatal(err)
	}
	el := time.Since(t0)
	if err := chk.err(n); err != nil {
		t.Fatal(err)
	}
	got := n / el.Seconds()
	// Both directions are paced: the echo's answer follows its request at the same
	// rate, so the transfer takes n ÷ rate (+ delays), not twice that.
	if got > rate*1.05+2*relayBurst/el.Seconds() {
		t.Fatalf("%.0f bytes/s through a %.0f bytes/s link", got, float64(rate))
	}
	if got < rate*0.25 {
		t.Fatalf("%.0f bytes/s through a %.0f bytes/s link: far below its rate", got, float64(rate))
	}
	t.Logf("%.0f bytes/s through a %.0f bytes/s link (%s)", got, float64(rate), el)
}

func TestPercentile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
	for _, tc := range []struct{ q, want float64 }{{0.5, 10}, {0.95, 19}, {1, 20}, {0.01, 1}} {
		if got := percentile(v, tc.q); got != tc.want {
			t.Errorf("percentile(1..20, %v) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

// TestProcTCPQueues finds a connection's unread bytes in /proc/net/tcp.
func TestProcTCPQueues(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c.Write(make([]byte, 1000))
	cp, sp := portOf(c.LocalAddr().String()), portOf(s.LocalAddr().String())
	for deadline := time.Now().Add(5 * time.Second); ; {
		if q := procTCPQueues()[[2]int{sp, cp}]; q.rx == 1000 {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("receive queue of the accepted socket: %d bytes, want 1000", q.rx)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestGridRendering(t *testing.T) {
	g := &grid{title: "T", cols: []string{"measurement", "a", "b", "target"}}
	g.add("why", "x (ms)", "1", "2 | 3", "≤ 1 ✔ met")
	rep := &report{grids: []*grid{g}}
	md := rep.markdown()
	for _, want := range []string{"**T**", "| measurement | a | b | target |\n|---|--:|--:|---|\n", "| x (ms)<br>_why_ | 1 | 2 \\| 3 | ≤ 1 ✔ met |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "Tunnel vs Caddy") {
		t.Errorf("markdown has the paths table without rows:\n%s", md)
	}
	txt := rep.text()
	if !strings.Contains(txt, "x (ms)") || !strings.Contains(txt, "↳ why") {
		t.Errorf("text lacks the row or its note:\n%s", txt)
	}
}

// TestLinkUseCountsEveryPage: the window spans the uncounted first fetch too, so
// its bytes are on the link like the timed pages'.
func TestLinkUseCountsEveryPage(t *testing.T) {
	l := loadedRun{page: pageRun{times: make([]time.Duration, prioFetches)}, window: time.Second, bulkBytes: 1e6}
	want := float64(1e6+(prioFetches+1)*prioPage) / prioLinkRate
	if got := l.linkUse(); math.Abs(got-want) > 1e-9 {
		t.Fatalf("linkUse = %v, want %v", got, want)
	}
}

// TestDownloadsCheckTheBody runs the bulk, parallel and page fetches against the
// origin: each gets its bytes, checked, and a size the origin does not send fails.
func TestDownloadsCheckTheBody(t *testing.T) {
	srv := httptest.NewTLSServer(newOrigin())
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	tg := &target{name: "test", addr: srv.Listener.Addr().String(), host: "example.com", tls: &tls.Config{RootCAs: pool, ServerName: "example.com"}}
	ctx := context.Background()
	if _, err := download(ctx, tg, 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := parallelDownload(ctx, tg, 2, 1<<20); err != nil {
		t.Fatal(err)
	}
	if run, err := fetchPages(ctx, tg, prioPagePri, 2); err != nil || len(run.times) != 2 {
		t.Fatalf("fetchPages: %d times, %v", len(run.times), err)
	}
	rc, err := tg.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.close()
	if _, err := rc.getPattern(tg.getReq("/bytes/1000"), 1001, make([]byte, 4096)); err == nil {
		t.Fatal("1000 bytes passed as 1001")
	}
}

// startTestPump runs the rp_relay relay's pump in this process in front of to,
// with a fresh self-signed certificate, and returns a target for it.
func startTestPump(t *testing.T, to string) *target {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := dir+"/relay.crt", dir+"/relay.key"
	if err := selfSigned(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveTLSPump(ln, to, &tls.Config{Certificates: []tls.Certificate{cert}})
	b := &bench{originCert: certFile}
	tc, err := b.originTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	return &target{name: pRPRelay, addr: ln.Addr().String(), host: "localhost", tls: tc}
}

// TestTLSPumpForwardsBulkAndHalfClose: every byte gets through the pump both ways,
// and each side's end of stream reaches the other (the echo server answers our
// half-close with its own, which the pump passes back as close_notify and FIN).
func TestTLSPumpForwardsBulkAndHalfClose(t *testing.T) {
	tg := startTestPump(t, echoServer(t))
	rc, err := tg.dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.close()
	c := rc.c.(*tls.Conn)
	echoPattern(t, c, 5*patternSize+4321, func() error {
		if err := c.CloseWrite(); err != nil { // close_notify
			return err
		}
		return c.NetConn().(*net.TCPConn).CloseWrite() // and FIN
	})
}

// TestTLSPumpCarriesCheckedHTTP: downloads and uploads through the pump to the
// plain origin, each body checked as on every path.
func TestTLSPumpCarriesCheckedHTTP(t *testing.T) {
	srv := httptest.NewServer(newOrigin())
	defer srv.Close()
	tg := startTestPump(t, srv.Listener.Addr().String())
	ctx := context.Background()
	if _, err := download(ctx, tg, 3<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := upload(ctx, tg, 3<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := parallelDownload(ctx, tg, 3, 1<<20); err != nil {
		t.Fatal(err)
	}
}

func TestCPUBreakdownCountsTheRelay(t *testing.T) {
	var note string
	c := cpuPer{caddy: 10, agent: 100, relay: 5, self: 1}
	if got := cpuBreakdown(pRPRelay, c, "%.0f", &note); got != 16 {
		t.Fatalf("rp_relay total = %v, want 16 (Caddy + relay + client&origin, not the agent)", got)
	}
	if got := cpuBreakdown(pRPTLS, c, "%.0f", &note); got != 11 {
		t.Fatalf("rp_https total = %v, want 11", got)
	}
	if want := "rp_https: Caddy 10 + client&origin 1; rp_relay: Caddy 10 + relay 5 + client&origin 1"; note != want {
		t.Fatalf("note = %q, want %q", note, want)
	}
}

// A target's row says how rp_relay, the topology's least-work path, does
// against the same bounds.
func TestTargetFloor(t *testing.T) {
	r := &row{vals: map[string]float64{pTunnel: 70, pRP: 100, pRPTLS: 90, pRPRelay: 80}}
	r.judge("≥ 0.85× rp", check{to: pRP, min: 0.85})
	if got := r.cells()[len(r.cells())-1]; got != "≥ 0.85× rp ✘ missed (rp_relay: 0.80× rp, missed there too)" {
		t.Fatalf("target cell %q", got)
	}
	r.judge("≥ 0.75× rp, ≥ 1/1.15× rp_https", check{to: pRP, min: 0.75}, check{to: pRPTLS, min: 1 / 1.15})
	if got := r.cells()[len(r.cells())-1]; got != "≥ 0.75× rp, ≥ 1/1.15× rp_https ✘ missed (rp_relay: 0.80× rp, 0.89× rp_https, holds there)" {
		t.Fatalf("target cell %q", got)
	}
	delete(r.vals, pRPRelay)
	r.judge("≥ 0.85× rp", check{to: pRP, min: 0.85})
	if got := r.cells()[len(r.cells())-1]; got != "≥ 0.85× rp ✘ missed" {
		t.Fatalf("target cell without rp_relay %q", got)
	}
}
