package spdy

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, idleWorkers)
}

// idleWorkers are stream handler goroutines kept for later streams
// (workers.go), not leaks.
var idleWorkers = goleak.IgnoreAnyFunction("github.com/spdy-origin/spdy-origin/spdy.(*workerPool).work")
