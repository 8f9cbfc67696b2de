//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const mb = 1e6 // throughput is in MB/s (10^6 bytes per second)

// getPattern does req on rc and checks the answer: 200 and exactly size bytes
// of the pattern. ttfb is do's.
func (rc *rawConn) getPattern(req []byte, size int64, buf []byte) (ttfb time.Duration, err error) {
	var chk patternChecker
	status, _, ttfb, err := rc.do(req, &chk, buf)
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("status %d", status)
	}
	if err == nil {
		err = chk.err(size)
	}
	return ttfb, err
}

// download fetches size pattern bytes over a fresh connection (dialled before the
// clock starts), with hdrs added to the request, checks every byte, and returns MB/s.
func download(ctx context.Context, t *target, size int64, hdrs ...string) (float64, error) {
	rc, err := t.dial(ctx)
	if err != nil {
		return 0, err
	}
	defer rc.close()
	stop := context.AfterFunc(ctx, rc.close)
	defer stop()
	t0 := time.Now()
	_, err = rc.getPattern(t.getReq("/bytes/"+strconv.FormatInt(size, 10), hdrs...), size, make([]byte, 256<<10))
	el := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("%s: download of %d bytes: %w", t.name, size, err)
	}
	return float64(size) / mb / el.Seconds(), nil
}

// upload PUTs size pattern bytes to the origin's sink (which checks them) and returns
// MB/s from the first header byte written to the response read.
func upload(ctx context.Context, t *target, size int64) (float64, error) {
	rc, err := t.dial(ctx)
	if err != nil {
		return 0, err
	}
	defer rc.close()
	stop := context.AfterFunc(ctx, rc.close)
	defer stop()
	hdr := "PUT /sink HTTP/1.1\r\nHost: " + t.host + "\r\nUser-Agent: spdy-origin-bench\r\n" +
		"Content-Type: application/octet-stream\r\nContent-Length: " + strconv.FormatInt(size, 10) + "\r\n\r\n"
	t0 := time.Now()
	werr := make(chan error, 1)
	go func() {
		if _, err := io.WriteString(rc.c, hdr); err != nil {
			werr <- err
			return
		}
		_, err := io.CopyBuffer(struct{ io.Writer }{rc.c}, &patternReader{n: size}, make([]byte, 256<<10))
		werr <- err
	}()
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		return 0, fmt.Errorf("%s: upload of %d bytes: reading response: %w", t.name, size, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	el := time.Since(t0)
	if err := <-werr; err != nil {
		return 0, fmt.Errorf("%s: upload of %d bytes: writing: %w (response %d %q)", t.name, size, err, resp.StatusCode, body)
	}
	want := fmt.Sprintf("n=%d ok", size)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), want) {
		return 0, fmt.Errorf("%s: upload of %d bytes: status %d, body %q", t.name, size, resp.StatusCode, body)
	}
	return float64(size) / mb / el.Seconds(), nil
}

// parallelDownload runs n simultaneous downloads of size bytes, each on its own
// connection, and returns the aggregate MB/s over the wall time.
func parallelDownload(ctx context.Context, t *target, n int, size int64) (float64, error) {
	conns := make([]*rawConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.close()
			}
		}
	}()
	for i := range conns {
		c, err := t.dial(ctx)
		if err != nil {
			return 0, err
		}
		conns[i] = c
	}
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.close()
		}
	})
	defer stop()
	req := t.getReq("/bytes/" + strconv.FormatInt(size, 10))
	errs := make([]error, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.getPattern(req, size, make([]byte, 256<<10))
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	for _, err := range errs {
		if err != nil {
			return 0, fmt.Errorf("%s: %d parallel downloads: %w", t.name, n, err)
		}
	}
	return float64(int64(n)*size) / mb / el.Seconds(), nil
}

// ttfbResult holds medians of time to first response byte.
type ttfbResult struct {
	cold, warm time.Duration
}

// measureTTFB samples, round-robin over the targets so drift hits all alike:
// cold = TCP connect + TLS handshake + request until the first response byte;
// warm = request on an open keep-alive connection until the first response byte.
func measureTTFB(ctx context.Context, ts []*target, coldN, warmN int) (map[string]ttfbResult, error) {
	cold := map[string][]time.Duration{}
	warm := map[string][]time.Duration{}
	buf := make([]byte, 64<<10)
	for i := 0; i < coldN; i++ {
		for _, t := range ts {
			req := t.getReq("/bytes/1024")
			t0 := time.Now()
			rc, err := t.dial(ctx)
			if err != nil {
				return nil, err
			}
			if _, err := rc.c.Write(req); err != nil {
				rc.close()
				return nil, err
			}
			if _, err := rc.br.Peek(1); err != nil {
				rc.close()
				return nil, fmt.Errorf("%s: cold TTFB: %w", t.name, err)
			}
			cold[t.name] = append(cold[t.name], time.Since(t0))
			rc.close()
		}
	}
	conns := map[string]*rawConn{}
	defer func() {
		for _, c := range conns {
			c.close()
		}
	}()
	for _, t := range ts {
		rc, err := t.dial(ctx)
		if err != nil {
			return nil, err
		}
		conns[t.name] = rc
		rc.do(t.getReq("/bytes/1024"), io.Discard, buf) // warm the upstream connections too
	}
	for i := 0; i < warmN; i++ {
		for _, t := range ts {
			status, _, ttfb, err := conns[t.name].do(t.getReq("/bytes/1024"), io.Discard, buf)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("status %d", status)
			}
			if err != nil {
				return nil, fmt.Errorf("%s: warm TTFB: %w", t.name, err)
			}
			warm[t.name] = append(warm[t.name], ttfb)
		}
	}
	out := map[string]ttfbResult{}
	for _, t := range ts {
		out[t.name] = ttfbResult{cold: median(cold[t.name]), warm: median(warm[t.name])}
	}
	return out, ctx.Err()
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}
