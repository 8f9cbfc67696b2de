//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// streamsPerConn is how many streams the bench opens on one HTTP/2 connection to
// Caddy; below the default limit (250) of Go's HTTP/2 server, which Caddy uses.
const streamsPerConn = 100

type rssPair struct {
	before, during int64 // KiB
}

// perStream is the RSS growth in KiB per open stream.
func (r rssPair) perStream(n int64) float64 {
	if n <= 0 {
		return 0
	}
	return float64(r.during-r.before) / float64(n)
}

type streamsResult struct {
	requested int
	opened    int64 // streams whose first body byte reached the client
	atOrigin  int64 // /hold responses open at the origin at measurement time
	failed    int64
	firstErr  string
	rss       map[string]rssPair // by process name ("caddy", "agent")
	drain     time.Duration      // from client cancel until the origin saw every hold end
	drainOK   bool
}

// holdStreams opens n slow streams to t over HTTP/2 (streamsPerConn per connection),
// each answered by the origin's /hold (headers and one byte, then nothing), and reads
// VmRSS of procs before and while they are held. Then it cancels the client requests
// and checks that the cancellation reaches the origin.
// whileHeld, if not nil, runs once the RSS is read, before the streams end.
func holdStreams(ctx context.Context, t *target, o *origin, n int, procs map[string]*proc, whileHeld func()) (*streamsResult, error) {
	res := &streamsResult{requested: n, rss: map[string]rssPair{}}
	time.Sleep(time.Second) // let start-up garbage settle
	for name, p := range procs {
		kb, err := rssKiB(p.pid())
		if err != nil {
			return nil, err
		}
		res.rss[name] = rssPair{before: kb}
	}

	var h2 http.Protocols
	h2.SetHTTP2(true) // HTTP/2 only: every connection must carry streamsPerConn streams
	tr := &http.Transport{TLSClientConfig: t.tls.Clone(), Protocols: &h2}
	nconn := (n + streamsPerConn - 1) / streamsPerConn
	ccs := make([]*http.ClientConn, 0, nconn)
	defer func() {
		for _, cc := range ccs {
			cc.Close()
		}
	}()
	for i := 0; i < nconn; i++ {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		cc, err := tr.NewClientConn(dctx, "https", t.addr)
		dcancel()
		if err != nil {
			return nil, fmt.Errorf("%s: dialing HTTP/2 connection %d: %w", t.name, i, err)
		}
		ccs = append(ccs, cc)
	}

	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		opened, failed atomic.Int64
		firstErr       atomic.Value
		wg             sync.WaitGroup
	)
	url := "https://" + t.host + "/hold"
	// Open at ~4000 streams/s: fast enough, without a thundering herd of handshakes
	// inside Caddy that would measure something else.
	tick := time.NewTicker(time.Millisecond)
	for i := 0; i < n; i++ {
		if i%4 == 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(hctx, http.MethodGet, url, nil)
			resp, err := ccs[i/streamsPerConn].RoundTrip(req)
			if err == nil {
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %s", resp.Status)
				} else {
					var b [1]byte
					_, err = io.ReadFull(resp.Body, b[:])
				}
			}
			if err != nil {
				if hctx.Err() == nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				if resp != nil {
					resp.Body.Close()
				}
				return
			}
			opened.Add(1)
			<-hctx.Done()
			resp.Body.Close()
		}()
	}
	tick.Stop()

	// Wait until every stream is open, or no progress for 5 s.
	last, lastChange := int64(-1), time.Now()
	for {
		cur := opened.Load() + failed.Load()
		if cur >= int64(n) {
			break
		}
		if cur != last {
			last, lastChange = cur, time.Now()
		}
		if time.Since(lastChange) > 5*time.Second {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // let the processes finish allocating for the last streams
	res.opened = opened.Load()
	res.atOrigin = o.held.Load()
	res.failed = failed.Load()
	if s, ok := firstErr.Load().(string); ok {
		res.firstErr = s
	}
	for name, p := range procs {
		kb, err := rssKiB(p.pid())
		if err != nil {
			return nil, err
		}
		r := res.rss[name]
		r.during = kb
		res.rss[name] = r
	}
	if whileHeld != nil {
		whileHeld()
	}

	// Cancel every client request; the cancellation must travel to the origin.
	t0 := time.Now()
	cancel()
	wg.Wait()
	for time.Since(t0) < 15*time.Second && o.held.Load() > 0 {
		time.Sleep(20 * time.Millisecond)
	}
	res.drain = time.Since(t0)
	res.drainOK = o.held.Load() == 0
	o.releaseHolds()
	return res, ctx.Err()
}
