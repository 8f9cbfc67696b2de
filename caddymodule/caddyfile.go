package caddymodule

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/dustin/go-humanize"
)

func parseCaddyfileHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// privateRanges mirrors the `private_ranges` shorthand of reverse_proxy's
// trusted_proxies (Caddy's internal package cannot be imported).
var privateRanges = []string{"192.168.0.0/16", "172.16.0.0/12", "10.0.0.0/8", "127.0.0.1/8", "fd00::/8", "::1"}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	spdy_origin [<matcher>] {
//	    pool     <name>
//	    connect  <path>
//	    token    <secret>            # repeatable; {env.X} works
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
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.Errf("spdy_origin takes no arguments besides a matcher, got %q; use a block: spdy_origin { token ... }", d.Val())
	}
	seen := map[string]bool{}
	once := func(name string) error {
		if seen[name] {
			return d.Errf("%s specified more than once", name)
		}
		seen[name] = true
		return nil
	}
	for d.NextBlock(0) {
		name := d.Val()
		var err error
		switch name {
		case "pool":
			if err = once(name); err == nil {
				h.Pool, err = oneArg(d)
			}
		case "connect":
			if err = once(name); err == nil {
				h.Connect, err = oneArg(d)
				if err == nil && !strings.HasPrefix(h.Connect, "/") {
					err = d.Errf("connect must be a path starting with '/', got %q", h.Connect)
				}
			}
		case "token":
			var tok string
			if tok, err = oneArg(d); err == nil {
				h.Token = append(h.Token, tok)
			}
		case "max_registration_body":
			if err = once(name); err == nil {
				h.MaxRegistrationBody, err = sizeArg(d)
			}
		case "stream_window":
			if err = once(name); err == nil {
				h.StreamWindow, err = sizeArg(d)
			}
		case "session_window":
			if err = once(name); err == nil {
				h.SessionWindow, err = sizeArg(d)
			}
		case "max_sessions":
			if err = once(name); err == nil {
				h.MaxSessions, err = intArg(d)
			}
		case "max_auth_failures":
			if err = once(name); err == nil {
				h.MaxAuthFailures, err = intArg(d)
			}
		case "max_upgraded_streams":
			if err = once(name); err == nil {
				h.MaxUpgradedStreams, err = intArg(d)
			}
		case "max_concurrent_streams":
			if err = once(name); err == nil {
				var n int
				if n, err = intArg(d); err == nil {
					h.MaxConcurrentStreams = uint32(n)
				}
			}
		case "auth_failure_window":
			err = durationOnce(d, once, &h.AuthFailureWindow)
		case "retry_after":
			err = durationOnce(d, once, &h.RetryAfter)
		case "drain_timeout":
			err = durationOnce(d, once, &h.DrainTimeout)
		case "dial_timeout":
			err = durationOnce(d, once, &h.DialTimeout)
		case "response_header_timeout":
			err = durationOnce(d, once, &h.ResponseHeaderTimeout)
		case "stream_timeout":
			err = durationOnce(d, once, &h.StreamTimeout)
		case "stream_close_delay":
			err = durationOnce(d, once, &h.StreamCloseDelay)
		case "ping_interval":
			err = durationOnce(d, once, &h.PingInterval)
		case "ping_timeout":
			err = durationOnce(d, once, &h.PingTimeout)
		case "write_timeout":
			err = durationOnce(d, once, &h.WriteTimeout)
		case "stream_idle_timeout":
			err = durationOnce(d, once, &h.StreamIdleTimeout)
		case "stream_queue_timeout":
			err = durationOnce(d, once, &h.StreamQueueTimeout)
		case "flush_interval":
			if err = once(name); err == nil {
				var v string
				if v, err = oneArg(d); err == nil {
					if n, convErr := strconv.Atoi(v); convErr == nil {
						h.FlushInterval = caddy.Duration(n)
					} else if dur, durErr := caddy.ParseDuration(v); durErr == nil {
						h.FlushInterval = caddy.Duration(dur)
					} else {
						err = d.Errf("flush_interval: bad duration %q: %v", v, durErr)
					}
				}
			}
		case "trusted_proxies":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				if a == "private_ranges" {
					h.TrustedProxies = append(h.TrustedProxies, privateRanges...)
				} else {
					h.TrustedProxies = append(h.TrustedProxies, a)
				}
			}
		case "header_up":
			if h.Headers == nil {
				h.Headers = new(headers.Handler)
			}
			if h.Headers.Request == nil {
				h.Headers.Request = new(headers.HeaderOps)
			}
			err = headerOp(d, h.Headers.Request)
		case "header_down":
			if h.Headers == nil {
				h.Headers = new(headers.Handler)
			}
			if h.Headers.Response == nil {
				h.Headers.Response = &headers.RespHeaderOps{HeaderOps: new(headers.HeaderOps)}
			}
			err = headerOp(d, h.Headers.Response.HeaderOps)
		default:
			return d.Errf("unrecognized spdy_origin subdirective: %s", name)
		}
		if err != nil {
			return err
		}
	}
	if len(h.Token) == 0 {
		return d.Err("spdy_origin: at least one 'token <secret>' is required (e.g. token {env.SPDY_ORIGIN_TOKEN})")
	}
	return nil
}

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

func intArg(d *caddyfile.Dispenser) (int, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, convErr := strconv.Atoi(v)
	if convErr != nil || n < 0 {
		return 0, d.Errf("%s: want a non-negative integer, got %q", name, v)
	}
	return n, nil
}

func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, convErr := humanize.ParseBytes(v)
	if convErr != nil {
		return 0, d.Errf("%s: bad size %q: %v", name, v, convErr)
	}
	if n > 1<<62 {
		return 0, d.Errf("%s: size %q too large", name, v)
	}
	return int64(n), nil
}

func durationOnce(d *caddyfile.Dispenser, once func(string) error, dst *caddy.Duration) error {
	name := d.Val()
	if err := once(name); err != nil {
		return err
	}
	v, err := oneArg(d)
	if err != nil {
		return err
	}
	dur, perr := caddy.ParseDuration(v)
	if perr != nil {
		return d.Errf("%s: bad duration %q: %v", name, v, perr)
	}
	if dur < 0 {
		return d.Errf("%s: duration must not be negative, got %q", name, v)
	}
	*dst = caddy.Duration(dur)
	return nil
}

func headerOp(d *caddyfile.Dispenser, ops *headers.HeaderOps) error {
	args := d.RemainingArgs()
	var err error
	switch len(args) {
	case 1:
		err = headers.CaddyfileHeaderOp(ops, args[0], "", nil)
	case 2:
		err = headers.CaddyfileHeaderOp(ops, args[0], args[1], nil)
	case 3:
		err = headers.CaddyfileHeaderOp(ops, args[0], args[1], &args[2])
	default:
		return d.ArgErr()
	}
	if err != nil {
		return d.Err(err.Error())
	}
	return nil
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
	seen := map[string]bool{}
	once := func(name string) error {
		if seen[name] {
			return d.Errf("%s specified more than once", name)
		}
		seen[name] = true
		return nil
	}
	for d.NextBlock(0) {
		name := d.Val()
		var err error
		switch name {
		case "pool":
			if err = once(name); err == nil {
				t.Pool, err = oneArg(d)
			}
		case "dial_timeout":
			err = durationOnce(d, once, &t.DialTimeout)
		case "response_header_timeout":
			err = durationOnce(d, once, &t.ResponseHeaderTimeout)
		default:
			return d.Errf("unrecognized spdy_origin transport subdirective: %s", name)
		}
		if err != nil {
			return err
		}
	}
	return nil
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

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Transport)(nil)
	_ caddyfile.Unmarshaler = (*UpstreamSource)(nil)
)
