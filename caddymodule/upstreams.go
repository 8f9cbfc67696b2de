package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(UpstreamSource{})
}

// placeholderUpstream is the upstream reverse_proxy "dials"; our transport
// ignores it. The .invalid TLD (RFC 2606) can never resolve.
const placeholderUpstream = "spdy-origin.invalid:443"

// UpstreamSource is a reverse_proxy dynamic upstream source that gives
// reverse_proxy the one placeholder upstream it needs when its transport is
// spdy_origin, which ignores upstream addresses (the transport's pool is
// the backend). It has no settings. Caddyfile syntax, inside reverse_proxy:
//
//	dynamic spdy_origin
//
// In JSON: "dynamic_upstreams": {"source": "spdy_origin"}.
type UpstreamSource struct{}

// CaddyModule returns the Caddy module information.
func (UpstreamSource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.spdy_origin",
		New: func() caddy.Module { return new(UpstreamSource) },
	}
}

// GetUpstreams returns the placeholder upstream.
func (UpstreamSource) GetUpstreams(*http.Request) ([]*reverseproxy.Upstream, error) {
	return []*reverseproxy.Upstream{{Dial: placeholderUpstream}}, nil
}

// Interface guards
var _ reverseproxy.UpstreamSource = (*UpstreamSource)(nil)
