//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// profiler is -profile: after the small and bulk sections' measurements it
// runs their loads once more on every path through Caddy, while it takes a
// CPU profile and an allocation profile (a delta over the same seconds) of
// Caddy (its admin endpoint's /debug/pprof/) and, on the tunnel, of the
// agent (--debug-addr). Files: DIR/<load>-<path>-<process>.{cpu,allocs}.pprof,
// for `go tool pprof -top`. The captures are not part of any figure.
type profiler struct {
	dir        string
	secs       int
	caddyAdmin int    // Caddy's admin port
	agentDebug string // the agent's --debug-addr
}

// agentFlags picks the agent's --debug-addr.
func (p *profiler) agentFlags() ([]string, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p.agentDebug = "127.0.0.1:" + strconv.Itoa(port)
	return []string{"--debug-addr", p.agentDebug}, nil
}

// small profiles 1 KiB GETs at 1 and 50 clients.
func (p *profiler) small(ctx context.Context, ts []*target) error {
	if p == nil {
		return nil
	}
	for _, clients := range []int{1, 50} {
		for _, t := range ts {
			err := p.capture(ctx, fmt.Sprintf("small%d", clients), t, func(ctx context.Context, d time.Duration) error {
				_, err := runLoad(ctx, t, clients, "/bytes/1024", 1024, 0, d, nil)
				return err
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// bulk profiles back-to-back downloads, then uploads, of size bytes.
func (p *profiler) bulk(ctx context.Context, ts []*target, size int64) error {
	if p == nil {
		return nil
	}
	loads := []struct {
		name string
		one  func(context.Context, *target, int64) (float64, error)
	}{{"download", func(ctx context.Context, t *target, n int64) (float64, error) { return download(ctx, t, n) }}, {"upload", upload}}
	for _, l := range loads {
		for _, t := range ts {
			err := p.capture(ctx, l.name, t, func(ctx context.Context, d time.Duration) error {
				for end := time.Now().Add(d); time.Now().Before(end); {
					if _, err := l.one(ctx, t, size); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// capture runs load for the profile's length (plus a margin on both
// sides, so the profile sees only the load) while it fetches the profiles
// of the processes on t's way.
func (p *profiler) capture(ctx context.Context, load string, t *target, run func(context.Context, time.Duration) error) error {
	if t.name == pDirect {
		return nil // neither Caddy nor the agent is on its way
	}
	procs := map[string]string{"caddy": "127.0.0.1:" + strconv.Itoa(p.caddyAdmin)}
	if t.name == pTunnel {
		procs["agent"] = p.agentDebug
	}
	step("profile: %s via %s for %ds", load, t.name, p.secs)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	loadErr := make(chan error, 1)
	go func() { loadErr <- run(lctx, time.Duration(p.secs)*time.Second+time.Second) }()
	time.Sleep(300 * time.Millisecond)
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(procs))
	for name, addr := range procs {
		for _, kind := range []string{"profile", "allocs"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ext := map[string]string{"profile": "cpu", "allocs": "allocs"}[kind]
				file := filepath.Join(p.dir, fmt.Sprintf("%s-%s-%s.%s.pprof", load, t.name, name, ext))
				errs <- fetchProfile(ctx, fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", addr, kind, p.secs), file)
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return <-loadErr
}

func fetchProfile(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("profile %s: %s: %s", url, resp.Status, b)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", url, err)
	}
	return f.Close()
}

// heaps writes the heap and goroutine profiles of Caddy and, with agent, of
// the agent, as they are now (the streams section: while the slow streams
// are held). A failure is reported, not fatal: the figures do not need it.
func (p *profiler) heaps(ctx context.Context, name string, agent bool) {
	procs := map[string]string{"caddy": "127.0.0.1:" + strconv.Itoa(p.caddyAdmin)}
	if agent {
		procs["agent"] = p.agentDebug
	}
	for proc, addr := range procs {
		for _, kind := range []string{"heap", "goroutine"} {
			file := filepath.Join(p.dir, fmt.Sprintf("%s-%s.%s.pprof", name, proc, kind))
			// gc=1: the heap as it is now, not at the last collection,
			// which may predate the last streams (the RSS is read already).
			if err := fetchProfile(ctx, fmt.Sprintf("http://%s/debug/pprof/%s?gc=1", addr, kind), file); err != nil {
				step("profile: %v", err)
			}
		}
		// The text form ends with runtime.MemStats: stacks (StackInuse)
		// are in RSS but not in the heap profile.
		file := filepath.Join(p.dir, fmt.Sprintf("%s-%s.heap.txt", name, proc))
		if err := fetchProfile(ctx, fmt.Sprintf("http://%s/debug/pprof/heap?debug=1&gc=1", addr), file); err != nil {
			step("profile: %v", err)
		}
	}
}
