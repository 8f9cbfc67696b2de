//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// target is one way to reach the origin: through the tunnel, through Caddy's
// reverse_proxy, or directly (TLS straight to the origin).
type target struct {
	name string
	addr string // host:port to dial
	host string // Host header
	tls  *tls.Config
}

// rawConn is a keep-alive HTTP/1.1 client connection with no pooling machinery: the
// load generator writes prepared request bytes and parses the response itself, so the
// client spends as little of the machine's two cores as possible.
type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func (t *target) dial(ctx context.Context) (*rawConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, t.tls)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", t.addr, err)
	}
	return &rawConn{c: tc, br: bufio.NewReaderSize(tc, 64<<10)}, nil
}

// getReq is a GET of path with hdrs ("Name: value") added.
func (t *target) getReq(path string, hdrs ...string) []byte {
	var extra string
	for _, h := range hdrs {
		extra += h + "\r\n"
	}
	return []byte("GET " + path + " HTTP/1.1\r\nHost: " + t.host + "\r\nUser-Agent: spdy-origin-bench\r\n" + extra + "\r\n")
}

var errReconnect = errors.New("server closed the connection")

// do sends req and reads the whole response into sink. ttfb is the time from the
// request write to the first response byte.
func (rc *rawConn) do(req []byte, sink io.Writer, buf []byte) (status int, n int64, ttfb time.Duration, err error) {
	start := time.Now()
	if _, err = rc.c.Write(req); err != nil {
		return 0, 0, 0, err
	}
	if _, err = rc.br.Peek(1); err != nil {
		return 0, 0, 0, err
	}
	ttfb = time.Since(start)
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		return 0, 0, ttfb, err
	}
	if buf != nil {
		n, err = io.CopyBuffer(sink, resp.Body, buf)
	} else {
		n, err = io.Copy(sink, resp.Body)
	}
	resp.Body.Close()
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("short body: %d of %d bytes", n, resp.ContentLength)
	}
	if err == nil && resp.Close {
		err = errReconnect
	}
	return resp.StatusCode, n, ttfb, err
}

func (rc *rawConn) close() { rc.c.Close() }

// loadResult is one fixed-duration run of the small-request load generator.
type loadResult struct {
	reqs     int64
	errs     int64
	firstErr string
	rps      float64
	p50, p99 time.Duration
}

// runLoad runs clients keep-alive HTTP/1.1 clients, each on its own connection,
// requesting path back to back for dur after a warm-up, and reports the rate and the
// latency percentiles of the requests that completed within dur.
// probe, if not nil, is called when the measured window starts and when it ends.
func runLoad(ctx context.Context, t *target, clients int, path string, wantLen int64, warm, dur time.Duration, probe func()) (*loadResult, error) {
	conns := make([]*rawConn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.close()
			}
		}
	}()
	// Dial at most 32 at a time: a burst of 500 TLS handshakes is not what we measure.
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var dialErr atomic.Value
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := t.dial(ctx)
			if err != nil {
				dialErr.CompareAndSwap(nil, err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if e := dialErr.Load(); e != nil {
		return nil, fmt.Errorf("%s: dialing %d clients: %v", t.name, clients, e)
	}

	req := t.getReq(path)
	var (
		start    = make(chan struct{})
		measure  atomic.Bool
		stop     atomic.Bool
		reqs     atomic.Int64
		errs     atomic.Int64
		firstErr atomic.Value
		lats     = make([][]time.Duration, clients)
		tEnd     time.Time
		endMu    sync.Mutex
	)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := conns[i]
			var local []time.Duration
			<-start
			for !stop.Load() && ctx.Err() == nil {
				t0 := time.Now()
				status, n, _, err := rc.do(req, io.Discard, nil)
				el := time.Since(t0)
				if err == nil && (status != http.StatusOK || n != wantLen) {
					err = fmt.Errorf("status %d, %d bytes", status, n)
				}
				if err != nil {
					if !stop.Load() && !errors.Is(err, errReconnect) {
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					rc.close()
					nc, derr := t.dial(ctx)
					if derr != nil {
						if !stop.Load() {
							errs.Add(1)
							firstErr.CompareAndSwap(nil, derr.Error())
						}
						time.Sleep(10 * time.Millisecond)
						continue
					}
					rc, conns[i] = nc, nc
					continue
				}
				if measure.Load() && !stop.Load() {
					reqs.Add(1)
					local = append(local, el)
				}
			}
			endMu.Lock()
			lats[i] = local
			endMu.Unlock()
		}()
	}
	close(start)
	select {
	case <-time.After(warm):
	case <-ctx.Done():
	}
	if probe != nil {
		probe()
	}
	measure.Store(true)
	reqs.Store(0)
	errs.Store(0)
	t0 := time.Now()
	select {
	case <-time.After(dur):
	case <-ctx.Done():
	}
	stop.Store(true)
	tEnd = time.Now()
	if probe != nil {
		probe()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	r := &loadResult{reqs: int64(len(all)), errs: errs.Load()}
	if s, ok := firstErr.Load().(string); ok {
		r.firstErr = s
	}
	r.rps = float64(len(all)) / tEnd.Sub(t0).Seconds()
	if len(all) > 0 {
		slices.Sort(all)
		r.p50 = all[len(all)*50/100]
		r.p99 = all[min(len(all)-1, len(all)*99/100)]
	}
	return r, nil
}
