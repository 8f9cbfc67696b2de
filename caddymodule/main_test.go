package caddymodule

import (
	"os"
	"testing"
)

// testStorageDir holds the in-process Caddy's storage (internal CA,
// certificates); test configs name it explicitly because Caddy fixes its
// default storage path before TestMain runs.
var testStorageDir string

// TestMain keeps the in-process Caddy's storage (internal CA, certificates,
// autosave) out of the user's home directory.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "caddymodule-test-")
	if err != nil {
		panic(err)
	}
	testStorageDir = dir + "/storage"
	os.Setenv("XDG_DATA_HOME", dir+"/data")
	os.Setenv("XDG_CONFIG_HOME", dir+"/config")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
