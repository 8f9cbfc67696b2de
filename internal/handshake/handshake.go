// Package handshake is the wire contract of agent registration, both halves
// in one place: the agent's PUT and the proxy's 200, after which the same
// connection carries SPDY/3.1 with the proxy as client and the agent as
// server. It is the Amahi spdy-proxy handshake, hardened:
//
//	agent → proxy   PUT <proxy URL path, default DefaultPath> HTTP/1.1
//	                Host: <proxy host>
//	                User-Agent: spdy-origin-agent/<version>
//	                Content-Length: n
//	                Authorization: Bearer <token>
//	                Content-Type: text/plain; charset=utf-8
//	                Spdy-Origin-Agent-Connection: <0-based index of this connection>
//	                Spdy-Origin-Agent-Instance: <random id, one per process>
//	                Spdy-Origin-Agent-Name: <agent name>
//	                Spdy-Origin-Agent-Version: <version>
//	                Spdy-Origin-Capabilities: trailers
//	                Spdy-Origin-Hosts: <host patterns it routes, e.g. a.example.com, *.example.com>
//
//	                spdy-origin-agent <version> name=<name> instance=<id>
//
//	proxy → agent   HTTP/1.1 200 OK
//	                Content-Type: text/plain; charset=utf-8
//	                Content-Length: n
//
//	                spdy-origin: registered session <id> in pool "<pool>"
//
// The agent sends it over TLS offering only "http/1.1" in ALPN, so that the
// proxy's HTTP server hands it the connection (a hijack), which HTTP/2 and
// HTTP/3 cannot do. A refusal is an ordinary HTTP answer (401 with
// WWW-Authenticate, 429 and 503 with Retry-After, ...), after which the proxy
// closes the connection. The proxy's 401 carries its own challenge,
// `Bearer realm="spdy-origin"` (TokenChallenge), so that the agent can tell a
// refused token from a 401 that something in front of the registration
// route sent (refusal.go). Its 403 to an announced host the token may not
// serve names that host in Spdy-Origin-Refused-Host (hosts.go); no other
// 403 is its own.
//
// The 200's body must be delimited (Content-Length, or chunked), or the agent
// could not tell where SPDY starts. The proxy may send its first SPDY frames
// right behind the body, and the agent may send its own right behind the PUT's
// body, before the 200 arrives (Amahi origins do): both sides must hand the
// bytes their HTTP reader has already buffered to the SPDY session.
//
// Register is the agent's half (client.go), Accept the proxy's (server.go).
package handshake

import (
	"net/http"
	"strings"
)

// Identity headers on the registration PUT. The proxy uses them only for its
// logs, metrics and admin view: they are not authenticated.
const (
	HeaderName       = "Spdy-Origin-Agent-Name"       // the agent's --name, default its host name
	HeaderVersion    = "Spdy-Origin-Agent-Version"    // the agent's version
	HeaderInstance   = "Spdy-Origin-Agent-Instance"   // random id, one per agent process
	HeaderConnection = "Spdy-Origin-Agent-Connection" // 0-based index of the connection to this proxy
)

// Capabilities: what each side says it understands beyond the Amahi
// protocol, in a comma-separated HeaderCapabilities on the PUT (agent) and
// on the 200 (proxy). New frames or headers go only to a peer that listed
// them: an Amahi origin or proxy lists nothing and gets none.
const (
	HeaderCapabilities = "Spdy-Origin-Capabilities"
	// CapTrailers: HEADERS frames carrying trailers (gRPC needs them;
	// amahi/spdy panics on them).
	CapTrailers = "trailers"
)

// Capabilities is the set a side announced.
type Capabilities []string

// Has reports whether c lists name.
func (c Capabilities) Has(name string) bool {
	for _, v := range c {
		if strings.EqualFold(v, name) {
			return true
		}
	}
	return false
}

// ReadCapabilities returns what HeaderCapabilities in h lists (at most 16
// names of at most 32 bytes each: anything else is ignored).
func ReadCapabilities(h http.Header) Capabilities {
	var c Capabilities
	for _, v := range h.Values(HeaderCapabilities) {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" && len(name) <= 32 && len(c) < 16 {
				c = append(c, strings.ToLower(name))
			}
		}
	}
	return c
}

const (
	// DefaultPath is where agents register when their proxy URL has no path,
	// and the proxy's default registration route.
	DefaultPath = "/.well-known/spdy-origin"

	// DefaultMaxRequestBody is the proxy's default cap on the PUT's body (the
	// agent's is a line); a larger one gets 413.
	DefaultMaxRequestBody = 64 << 10

	// MaxResponseBody caps the 200's body the agent reads; a larger one is not
	// an spdy_origin endpoint.
	MaxResponseBody = 64 << 10

	// MaxResponseHeaderBytes caps the status line and header of the answer
	// the agent reads (spdy_origin's are a few hundred bytes; a CDN's or an
	// access rule's refusal a few kilobytes). Past it, Register fails with
	// ErrResponseHeaderTooLarge.
	MaxResponseHeaderBytes = 1 << 20

	// maxIdentityLen caps each identity value the proxy keeps.
	maxIdentityLen = 128
)

// Identity is what an agent says about itself in its registration headers.
type Identity struct {
	Name       string // HeaderName
	Version    string // HeaderVersion
	Instance   string // HeaderInstance
	Connection string // HeaderConnection
}

// setHeaders writes the identity headers, empty values included.
func (id Identity) setHeaders(h http.Header) {
	h.Set(HeaderName, id.Name)
	h.Set(HeaderVersion, id.Version)
	h.Set(HeaderInstance, id.Instance)
	h.Set(HeaderConnection, id.Connection)
}

// ReadIdentity returns the identity a registration's headers claim, each
// value cut to at most 128 bytes of printable ASCII: the values end up in
// logs, metric labels and the admin API.
func ReadIdentity(h http.Header) Identity {
	return Identity{
		Name:       cleanIdentity(h.Get(HeaderName)),
		Version:    cleanIdentity(h.Get(HeaderVersion)),
		Instance:   cleanIdentity(h.Get(HeaderInstance)),
		Connection: cleanIdentity(h.Get(HeaderConnection)),
	}
}

// cleanIdentity keeps at most maxIdentityLen bytes of printable ASCII.
func cleanIdentity(v string) string {
	var b strings.Builder
	for i := 0; i < len(v) && b.Len() < maxIdentityLen; i++ {
		if c := v[i]; c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		}
	}
	return strings.TrimSpace(b.String())
}

// BearerToken returns the token of an "Authorization: Bearer <token>"
// header (the scheme is case-insensitive, RFC 6750 section 2.1); false when
// the header is missing, another scheme, or has an empty token.
func BearerToken(h http.Header) (string, bool) {
	const prefix = "bearer "
	auth := h.Get("Authorization")
	if len(auth) <= len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return "", false
	}
	tok := strings.TrimSpace(auth[len(prefix):])
	return tok, tok != ""
}
