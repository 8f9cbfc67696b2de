package agent

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a test leaves goroutines behind: sessions, upstream
// connections and pipes must all end when the agent stops.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
