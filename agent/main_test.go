package agent

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a test leaves goroutines behind: sessions, upstream
// connections and pipes must all end when the agent stops.
func TestMain(m *testing.M) {
	// spdy keeps stream handler goroutines for later streams; not leaks.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/spdy-origin/spdy-origin/spdy.(*workerPool).work"))
}
