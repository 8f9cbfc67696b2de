// Package spdy is a SPDY/3.1 session layer: streams, both levels of flow
// control, keepalive, graceful shutdown, and the mapping of HTTP requests and
// responses onto streams, over any net.Conn.
//
// It speaks the dialect of github.com/amahi/spdy (the library of the original
// Amahi spdy-proxy) and of node-spdy, and uses github.com/moby/spdystream/spdy
// as its frame codec and header compressor.
//
// Start reading at session.go (one connection: a reader goroutine, a writer
// goroutine, the stream table), then stream.go (one stream's state and
// buffers), flow.go (window accounting), client.go (RoundTrip) and server.go
// (serving an http.Handler).
//
// In spdy-origin the proxy (Caddy) is the SPDY client: it opens odd-numbered
// streams, one per proxied request. The origin agent is the SPDY server.
package spdy
