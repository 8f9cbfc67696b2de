package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

// TestMain points XDG_DATA_HOME at a temporary directory, where the tests' Caddy
// configs keep Caddy's storage (internal CA, certificates); stops that in-process
// Caddy after the tests; and then checks for leaked goroutines, ignoring the few that
// an in-process Caddy keeps for the life of the process.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "e2e-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	code := m.Run()
	stopE2ECaddy()
	if code == 0 {
		var opts []goleak.Option
		for _, f := range e2eLeakIgnores {
			opts = append(opts, goleak.IgnoreAnyFunction(f))
		}
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: Errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
