// Package caddymodule is the Caddy side of spdy-origin: the `spdy_origin`
// HTTP handler (http.handlers.spdy_origin), the `spdy_origin_register`
// handler that answers its registrations ahead of a site's client
// authentication (http.handlers.spdy_origin_register), a reverse_proxy transport
// (http.reverse_proxy.transport.spdy_origin), a dynamic upstream source for
// reverse_proxy (http.reverse_proxy.upstreams.spdy_origin), an on-demand TLS
// permission (tls.permission.spdy_origin) and an admin API route
// (admin.api.spdy_origin).
//
// Where to start reading:
//   - handler.go: the handler's configuration, provisioning and request dispatch.
//   - caddyfile.go: Caddyfile syntax; reverse_proxy's own subdirectives go
//     to reverse_proxy's parser.
//   - register.go: how an agent registers (auth, the hosts it announces,
//     refusals, hijack, handshake); tokens.go: tokens and the hosts each may
//     serve; limiter.go: the lockout of address prefixes that send wrong
//     tokens;
//     registrar.go: spdy_origin_register, and why a second directive.
//   - pool.go: process-global pools of agent sessions that survive config
//     reloads; poolsettings.go: what the handlers of one pool share, and
//     how a config load changes it (nothing until Provision's last step).
//   - transport.go: the http.RoundTripper that turns a proxied request into a
//     SPDY stream on the least-busy session of a pool that serves its Host
//     (pool.go: pick); body.go: the request
//     and response bodies it hands over; upstreams.go: `dynamic spdy_origin`.
//   - permission.go: certificates on demand for the names agents announce,
//     decided from each pool's index of announcements and token hosts
//     (hostindex.go), kept up to date as sessions and handlers come and go.
//   - metrics.go and admin.go: observability.
//
// The handler does not reimplement reverse proxying: it provisions a Caddy
// reverseproxy.Handler whose transport is ours, so X-Forwarded-*, trusted
// proxies, hop-by-hop rules, flushing, 499/502/504 mapping, header_up/down
// and WebSocket upgrades behave exactly as they do with reverse_proxy.
//
// Tests are named after what they test (register_test.go, transport_test.go,
// ...); caddy_test.go runs the in-process Caddy they share, agent_test.go
// and hostile_test.go are the test agents.
package caddymodule
