package caddymodule

import (
	"fmt"
	"net"
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
	testHTTPSPort, testHTTPPort, testAdminPort = freePort(), freePort(), freePort()
	testBase = fmt.Sprintf("https://localhost:%d", testHTTPSPort)
	adminBase = fmt.Sprintf("http://localhost:%d", testAdminPort)
	testHTTPSAddr = fmt.Sprintf("127.0.0.1:%d", testHTTPSPort)
	os.Setenv("XDG_DATA_HOME", dir+"/data")
	os.Setenv("XDG_CONFIG_HOME", dir+"/config")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a TCP port that was free a moment ago. The window in
// which another process could take it is small, and far better than fixed
// ports, which collide with any other checkout testing at the same time.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
