// Package e2e tests the whole system in one process: a real client (HTTP/1.1 and
// HTTP/2, WebSockets with github.com/coder/websocket) talks TLS to an in-process Caddy
// (caddytest) running the spdy_origin handler; each request goes through the SPDY
// session to the real agent (package agent, through its public API only), which serves
// it from an httptest upstream.
//
// It covers what no single package can: WebSockets end to end (echo, 100 at once, a
// slow reader held back by flow control, the agent's connection cut, the upgrade
// limit, an agent serving files refusing upgrades), Caddy's timeouts (504 for an
// ordinary request, idle WebSockets spared), config reloads with open sockets,
// WebSockets over HTTP/2 extended CONNECT (RFC 8441), gRPC (grpc_test.go: a grpc-go
// client over TLS to Caddy, the agent with --to h2c:// to a grpc-go server; every kind
// of RPC, status and metadata, cancellation, the agent killed, idle limits) and plain
// HTTP/2 upstreams, h2c and https, with trailers (http2_test.go).
//
// Caddy listens on free ports chosen at start (see ports). The HTTP/2 extended CONNECT
// test runs in a child process of the test binary (the GODEBUG setting it needs is read
// once at process start), with its own ports. The agent reaches Caddy through
// tcpForwarder, a plain TCP relay the tests can cut, which is what the network sees
// when the agent's process is killed.
//
// The package has only tests; the Caddy module's own tests (caddymodule) use a minimal
// test agent instead, and the agent's (agent) a test proxy.
package e2e
