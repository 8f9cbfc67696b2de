package caddymodule

import (
	"os"
	"testing"
)

// TestMain keeps the in-process Caddy's storage (internal CA, certificates,
// autosave) out of the user's home directory.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "caddymodule-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_DATA_HOME", dir+"/data")
	os.Setenv("XDG_CONFIG_HOME", dir+"/config")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
