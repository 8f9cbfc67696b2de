// Package spdy is a SPDY/3.1 session layer: streams, both levels of flow
// control, priorities, keepalive, graceful shutdown, and the mapping of HTTP
// requests and responses (trailers and upgrades included) onto streams,
// over any net.Conn.
//
// It speaks the dialect of github.com/amahi/spdy (the library of the original
// Amahi spdy-proxy), of node-spdy and of github.com/moby/spdystream. Frames
// are read and written by our own code (frame.go; header blocks in
// headerblock.go), which bounds what a hostile peer can cost and allocates
// next to nothing per frame; moby/spdystream's codec is the independent
// implementation the tests check our encoding and decoding against, and a
// peer in the interop tests.
//
// Start reading at session.go (one connection, its lock order, the stream
// table), then reader.go and writer.go (its two goroutines), stream.go (one
// stream's state and buffers), flow.go (windows, and why the session's
// credit goes back on receipt), schedule.go (priorities), client.go
// (RoundTrip), server.go (serving an http.Handler) and keepalive.go (PINGs
// and the idle watchdog).
//
// In spdy-origin the proxy (Caddy) is the SPDY client: it opens odd-numbered
// streams, one per proxied request. The origin agent is the SPDY server.
package spdy
