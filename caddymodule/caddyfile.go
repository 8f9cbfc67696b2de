package caddymodule

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
)

func parseCaddyfileHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	spdy_origin [<matcher>] {
//	    pool     <name>
//	    connect  <path>
//	    token    <secret> [hosts <pattern...>]  # repeatable; {env.X} works
//
//	    max_registration_body <size>
//	    max_sessions          <n>
//	    max_auth_failures     <n>
//	    auth_failure_window   <duration>
//	    retry_after           <duration>
//	    drain_timeout         <duration>
//
//	    # proxying, as in reverse_proxy
//	    dial_timeout            <duration>
//	    response_header_timeout <duration>
//	    flush_interval          <duration>|-1
//	    trusted_proxies         <ranges...>|private_ranges
//	    header_up   [+|-]<field> [<value|regexp> [<replacement>]]
//	    header_down [+|-]<field> [<value|regexp> [<replacement>]]
//	    stream_timeout     <duration>
//	    stream_close_delay <duration>
//
//	    # SPDY session tuning
//	    stream_window          <size>
//	    session_window         <size>
//	    max_concurrent_streams <n>
//	    max_upgraded_streams   <n>
//	    ping_interval          <duration>
//	    ping_timeout           <duration>
//	    write_timeout          <duration>
//	    stream_idle_timeout    <duration>
//	    stream_queue_timeout   <duration>
//	}
//
// flush_interval, trusted_proxies, header_up, header_down, stream_timeout
// and stream_close_delay are reverse_proxy's own subdirectives, parsed by
// reverse_proxy's parser. Every subdirective but token, trusted_proxies,
// header_up and header_down may appear once. A token with hosts (patterns
// such as a.example.com or *.example.com) goes to Tokens, one without to
// Token.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	head := d.Token()
	if d.NextArg() {
		return d.Errf("spdy_origin takes no arguments besides a matcher, got %q; use a block: spdy_origin { token ... }", d.Val())
	}
	if err := parseBlock(d, "spdy_origin", h.subdirectives(head)); err != nil {
		return err
	}
	if len(h.Token)+len(h.Tokens) == 0 {
		return d.Err("spdy_origin: at least one 'token <secret>' is required (e.g. token {env.SPDY_ORIGIN_TOKEN})")
	}
	return nil
}

// subdirectives is the handler's Caddyfile vocabulary; head is the
// directive's name token.
func (h *Handler) subdirectives(head caddyfile.Token) map[string]subdirective {
	subs := map[string]subdirective{
		"connect":               {parse: pathArg(&h.Connect)},
		"token":                 {parse: h.parseToken, repeatable: true},
		"max_registration_body": {parse: sizeArg(&h.MaxRegistrationBody)},
		"max_sessions":          {parse: intArg(&h.MaxSessions)},
		"max_auth_failures":     {parse: intArg(&h.MaxAuthFailures)},
		"auth_failure_window":   {parse: durationArg(&h.AuthFailureWindow)},
		"retry_after":           {parse: durationArg(&h.RetryAfter)},
		"drain_timeout":         {parse: durationArg(&h.DrainTimeout)},

		"stream_window":          {parse: sizeArg(&h.StreamWindow)},
		"session_window":         {parse: sizeArg(&h.SessionWindow)},
		"max_concurrent_streams": {parse: intArg(&h.MaxConcurrentStreams)},
		"max_upgraded_streams":   {parse: intArg(&h.MaxUpgradedStreams)},
		"ping_interval":          {parse: durationArg(&h.PingInterval)},
		"ping_timeout":           {parse: durationArg(&h.PingTimeout)},
		"write_timeout":          {parse: durationArg(&h.WriteTimeout)},
		"stream_idle_timeout":    {parse: durationOrOffArg(&h.StreamIdleTimeout)},
		"stream_queue_timeout":   {parse: durationOrOffArg(&h.StreamQueueTimeout)},
	}
	maps.Copy(subs, transportSubdirectives(&h.Pool, &h.DialTimeout, &h.ResponseHeaderTimeout))
	proxy := h.proxySubdirective(head)
	for _, name := range []string{"flush_interval", "stream_timeout", "stream_close_delay"} {
		subs[name] = subdirective{parse: proxy}
	}
	for _, name := range []string{"trusted_proxies", "header_up", "header_down"} {
		subs[name] = subdirective{parse: proxy, repeatable: true}
	}
	return subs
}

// parseToken parses `token <secret> [hosts <pattern...>]`.
func (h *Handler) parseToken(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	switch {
	case len(args) == 0:
		return d.ArgErr()
	case len(args) == 1:
		h.Token = append(h.Token, args[0])
		return nil
	case args[1] != "hosts":
		return d.Errf("token takes a secret and optionally `hosts <pattern...>`; unexpected %q", args[1])
	case len(args) == 2:
		return d.Err("token ... hosts: give at least one host pattern, such as a.example.com or *.example.com")
	}
	for _, p := range args[2:] {
		if _, err := hosts.ParsePattern(p); err != nil {
			return d.Errf("token ... hosts: %v", err)
		}
	}
	h.Tokens = append(h.Tokens, TokenConfig{Value: args[0], Hosts: args[2:]})
	return nil
}

// proxySubdirective parses one of reverse_proxy's own subdirectives with
// reverse_proxy's parser, so that it means exactly what it means there
// (private_ranges, header ops, "-1" for flush_interval...), and keeps the
// fields that parser sets. head is the directive's name token.
func (h *Handler) proxySubdirective(head caddyfile.Token) func(*caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		name := d.Val()
		seg := d.NextSegment()
		if len(seg) == 1 {
			return d.ArgErr()
		}
		rp := h.reverseProxy()
		if err := rp.UnmarshalCaddyfile(caddyfile.NewDispenser(proxyBlock(head, seg))); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if rp.StreamTimeout < 0 || rp.StreamCloseDelay < 0 {
			return d.Errf("%s: duration must not be negative, got %q", name, seg[1].Text)
		}
		h.FlushInterval, h.TrustedProxies, h.Headers = rp.FlushInterval, rp.TrustedProxies, rp.Headers
		h.StreamTimeout, h.StreamCloseDelay = rp.StreamTimeout, rp.StreamCloseDelay
		return nil
	}
}

// proxyBlock wraps a subdirective's tokens as the block of a reverse_proxy
// directive: `<head> { <seg> }`. The braces are copies of head (same file,
// line and import chain), so the block opens on the directive's line; the
// closing brace gets a line of its own after the segment.
func proxyBlock(head caddyfile.Token, seg caddyfile.Segment) []caddyfile.Token {
	open, end := head, head
	open.Text, end.Text = "{", "}"
	last := seg[len(seg)-1]
	end.Line = max(head.Line, last.Line+last.NumLineBreaks()) + 1
	return slices.Concat([]caddyfile.Token{head, open}, seg, []caddyfile.Token{end})
}

// UnmarshalCaddyfile sets up the transport from Caddyfile tokens. Syntax:
//
//	transport spdy_origin {
//	    pool                    <name>
//	    dial_timeout            <duration>
//	    response_header_timeout <duration>
//	}
func (t *Transport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume transport name
	if d.NextArg() {
		return d.Errf("transport spdy_origin takes no arguments, got %q", d.Val())
	}
	return parseBlock(d, "spdy_origin transport", transportSubdirectives(&t.Pool, &t.DialTimeout, &t.ResponseHeaderTimeout))
}

// transportSubdirectives are the subdirectives the handler shares with
// the transport.
func transportSubdirectives(pool *string, dialTimeout, responseHeaderTimeout *caddy.Duration) map[string]subdirective {
	return map[string]subdirective{
		"pool":                    {parse: stringArg(pool)},
		"dial_timeout":            {parse: durationArg(dialTimeout)},
		"response_header_timeout": {parse: durationArg(responseHeaderTimeout)},
	}
}

// UnmarshalCaddyfile sets up the upstream source: `dynamic spdy_origin`.
func (u *UpstreamSource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume source name
	if d.NextArg() {
		return d.Errf("dynamic spdy_origin takes no arguments, got %q", d.Val())
	}
	if d.NextBlock(0) {
		return d.Errf("dynamic spdy_origin takes no block, got %q", d.Val())
	}
	return nil
}

// subdirective is how one subdirective of a block is parsed.
type subdirective struct {
	// parse reads the subdirective's arguments; the dispenser is on its name.
	parse func(d *caddyfile.Dispenser) error
	// repeatable subdirectives may appear more than once; others once.
	repeatable bool
}

// parseBlock parses the block of the directive d is on. what names the
// directive in errors.
func parseBlock(d *caddyfile.Dispenser, what string, subs map[string]subdirective) error {
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		name := d.Val()
		sub, ok := subs[name]
		if !ok {
			return d.Errf("unrecognized %s subdirective: %s", what, name)
		}
		if seen[name] && !sub.repeatable {
			return d.Errf("%s specified more than once", name)
		}
		seen[name] = true
		if err := sub.parse(d); err != nil {
			return err
		}
	}
	return nil
}

// oneArg returns the single argument of the subdirective d is on.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	name := d.Val()
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s takes one argument; unexpected %q", name, d.Val())
	}
	return v, nil
}

// argParser parses the single argument of a subdirective into dst with
// conv, which is given the subdirective's name for its errors.
func argParser[T any](dst *T, conv func(name, v string) (T, error)) func(*caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		name := d.Val()
		v, err := oneArg(d)
		if err != nil {
			return err
		}
		x, err := conv(name, v)
		if err != nil {
			return d.WrapErr(err)
		}
		*dst = x
		return nil
	}
}

func stringArg(dst *string) func(*caddyfile.Dispenser) error {
	return argParser(dst, func(_, v string) (string, error) { return v, nil })
}

func pathArg(dst *string) func(*caddyfile.Dispenser) error {
	return argParser(dst, func(name, v string) (string, error) {
		if !strings.HasPrefix(v, "/") {
			return "", fmt.Errorf("%s must be a path starting with '/', got %q", name, v)
		}
		return v, nil
	})
}

// intArg parses a non-negative integer that fits in T.
func intArg[T int | uint32](dst *T) func(*caddyfile.Dispenser) error {
	return argParser(dst, func(name, v string) (T, error) {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || int(T(n)) != n {
			return 0, fmt.Errorf("%s: want a non-negative integer, got %q", name, v)
		}
		return T(n), nil
	})
}

// sizeArg parses a byte size such as 4096, 64KiB or 16MB.
func sizeArg(dst *int64) func(*caddyfile.Dispenser) error {
	return argParser(dst, func(name, v string) (int64, error) {
		n, err := humanize.ParseBytes(v)
		if err != nil {
			return 0, fmt.Errorf("%s: bad size %q: %v", name, v, err)
		}
		if n > 1<<62 {
			return 0, fmt.Errorf("%s: size %q too large", name, v)
		}
		return int64(n), nil
	})
}

// durationArg parses a non-negative duration such as 30s, 1m or 1d.
func durationArg(dst *caddy.Duration) func(*caddyfile.Dispenser) error {
	return argParser(dst, func(name, v string) (caddy.Duration, error) {
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%s: bad duration %q: %v", name, v, err)
		}
		if dur < 0 {
			return 0, fmt.Errorf("%s: duration must not be negative, got %q", name, v)
		}
		return caddy.Duration(dur), nil
	})
}

// durationOrOffArg parses a non-negative duration, or "off" (-1: no limit).
func durationOrOffArg(dst *caddy.Duration) func(*caddyfile.Dispenser) error {
	return argParser(dst, func(name, v string) (caddy.Duration, error) {
		if v == "off" {
			return -1, nil
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil || dur < 0 {
			return 0, fmt.Errorf("%s: want a duration or off, got %q", name, v)
		}
		return caddy.Duration(dur), nil
	})
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Transport)(nil)
	_ caddyfile.Unmarshaler = (*UpstreamSource)(nil)
)
