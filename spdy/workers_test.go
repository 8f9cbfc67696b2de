package spdy

import (
	"bytes"
	"runtime"
	"sync"
	"testing"
	"time"
)

func goroutineID() string {
	b := make([]byte, 64)
	b = b[:runtime.Stack(b, false)]
	return string(bytes.Fields(b)[1])
}

func idleWorkerCount() int {
	workers.mu.Lock()
	defer workers.mu.Unlock()
	return len(workers.idle)
}

func waitIdle(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); idleWorkerCount() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle workers, want %d", idleWorkerCount(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A handler's goroutine serves the next stream once it is free, and no more
// than maxIdleWorkers wait.
func TestWorkersReusedAndBounded(t *testing.T) {
	workers.stopIdle()
	defer workers.stopIdle()
	ids := make(chan string, 1)
	workers.run(func() { ids <- goroutineID() })
	first := <-ids
	waitIdle(t, 1)
	workers.run(func() { ids <- goroutineID() })
	if second := <-ids; second != first {
		t.Fatalf("second stream ran on goroutine %s, want the first's (%s)", second, first)
	}
	waitIdle(t, 1)

	release := make(chan struct{})
	var started sync.WaitGroup
	n := maxIdleWorkers + 36
	started.Add(n)
	for range n {
		workers.run(func() { started.Done(); <-release })
	}
	started.Wait()
	if got := idleWorkerCount(); got != 0 {
		t.Fatalf("%d idle workers while all run handlers", got)
	}
	close(release)
	waitIdle(t, maxIdleWorkers)
	before := runtime.NumGoroutine()
	workers.stopIdle()
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before-maxIdleWorkers; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after stopping %d idle workers (from %d)", runtime.NumGoroutine(), maxIdleWorkers, before)
		}
		time.Sleep(time.Millisecond)
	}
}
