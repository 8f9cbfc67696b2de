// Command spdy-origin-agent publishes a local HTTP server or directory through a Caddy
// server running the spdy_origin module. Run it with -h for its flags; the work is done
// by package agent.
package main

import (
	"os"

	"github.com/spdy-origin/spdy-origin/agent"
)

func main() {
	os.Exit(agent.Main(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}
