// Package caddymodule is the Caddy side of spdy-origin: the `spdy_origin`
// HTTP handler (http.handlers.spdy_origin), a reverse_proxy transport
// (http.reverse_proxy.transport.spdy_origin), a dynamic upstream source for
// reverse_proxy (http.reverse_proxy.upstreams.spdy_origin) and an admin API
// route (admin.api.spdy_origin).
//
// Where to start reading:
//   - handler.go: the handler's configuration, provisioning and request dispatch.
//   - register.go: how an agent registers (auth, refusals, hijack, handshake);
//     limiter.go: the lockout of address prefixes that send wrong tokens.
//   - pool.go: process-global pools of agent sessions that survive config reloads.
//   - transport.go: the http.RoundTripper that turns a proxied request into a
//     SPDY stream on the least-busy session of a pool.
//   - caddyfile.go: Caddyfile syntax; metrics.go and admin.go: observability.
//
// The handler does not reimplement reverse proxying: it provisions a Caddy
// reverseproxy.Handler whose transport is ours, so X-Forwarded-*, trusted
// proxies, hop-by-hop rules, flushing, 499/502/504 mapping, header_up/down
// and WebSocket upgrades behave exactly as they do with reverse_proxy.
package caddymodule
