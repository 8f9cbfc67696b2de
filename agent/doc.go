// Package agent is spdy-origin-agent, the origin side of spdy-origin: it puts a server
// that sits behind NAT on the internet through a Caddy server running the spdy_origin
// module. It dials the proxy over TLS, registers with a PUT (the Amahi spdy-proxy
// handshake, internal/handshake; dial.go), then becomes the SPDY/3.1 server on that
// connection and answers the proxy's streams from upstream URLs (--to, serve.go; its
// own proxy loop in proxy.go, not httputil.ReverseProxy) or
// directories (--root, files.go), chosen by the request's Host (routes.go: --to
// HOST=URL; the host patterns are announced at registration, and an unrouted Host
// gets 421).
//
// Start reading at agent.go: NewAgent checks Options, and Agent.Run keeps the sessions
// up (reconnect with backoff, several connections per proxy, several proxies, a
// graceful drain when its context ends). cli.go turns flags, environment variables
// and the --config file (config.go, TOML) into Options for Main, which
// cmd/spdy-origin-agent runs.
//
// Running it as a service: sessions.go is the table of live sessions that
// /healthz and /readyz (health.go) and the Prometheus metrics (metrics.go) read;
// endpoints.go serves them on --metrics-addr, and debug.go Go's pprof profiles on
// --debug-addr.
package agent
