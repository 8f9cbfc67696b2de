package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
)

func init() {
	caddy.RegisterModule(Permission{})
}

// Permission lets on-demand TLS get a certificate for a name that agents
// of spdy_origin pools serve, so that an app added at home is online over
// HTTPS as soon as its agent announces it, with no change on the public
// server. Caddyfile syntax, in the global on_demand_tls option, with the
// sites that use it marked `tls { on_demand }`:
//
//	{
//		on_demand_tls {
//			permission spdy_origin [<pool...>] {
//				require_agent on|off
//			}
//		}
//	}
//
// A certificate for a name is allowed when a token of the pools permits
// the name and, unless require_agent is off, an agent connected now
// announces it:
//
//   - a token with hosts (`token <secret> hosts <pattern...>`) permits the
//     names its patterns match; a token without hosts permits what its
//     agents announce by name;
//   - an agent announces the patterns it routes; a catch-all ("*") or no
//     announcement counts as its token's hosts, and for a token without
//     hosts as nothing, as does a wildcard over a public suffix (*.com,
//     *.co.uk, *.github.io) under such a token: otherwise every name
//     pointed at the server would get a certificate.
//
// A name no CA issues for (a label over 63 bytes, a name over 253, an
// empty label, '_', a wildcard) is refused whatever pattern matches it.
//
// With require_agent off, the tokens' hosts alone decide (names announced
// under a token without hosts still need their agent). The decision reads
// an index the pools keep up to date as agents come and go; it takes no
// lock and does no I/O. Certificates already obtained stay in Caddy's
// cache and storage, and are served until they expire, when the agent
// leaves.
type Permission struct {
	// Pools are the names of the spdy_origin pools whose tokens and agents
	// count, e.g. ["home"] (Caddyfile: permission spdy_origin home).
	// Default: every spdy_origin pool loaded in Caddy.
	Pools []string `json:"pools,omitempty"`

	// RequireAgent: a name is allowed only while an agent connected now
	// announces it. False lets a token's hosts alone allow their names,
	// so a certificate can be obtained before the agent connects (names
	// announced under a token without hosts still need their agent).
	// Caddyfile: require_agent off. Default: true.
	RequireAgent *bool `json:"require_agent,omitempty"`

	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Permission) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.permission.spdy_origin",
		New: func() caddy.Module { return new(Permission) },
	}
}

// Provision keeps the logger.
func (p *Permission) Provision(ctx caddy.Context) error {
	p.logger = ctx.Logger()
	return nil
}

// Validate checks the configuration without side effects.
func (p *Permission) Validate() error {
	for i, name := range p.Pools {
		if name == "" {
			return fmt.Errorf("tls.permission.spdy_origin: empty pool name (pools entry %d)", i+1)
		}
	}
	return nil
}

func (p *Permission) requireAgent() bool { return p.RequireAgent == nil || *p.RequireAgent }

// CertificateAllowed returns nil if the pools' tokens and agents allow a
// certificate for name, else an error wrapping caddytls.ErrPermissionDenied
// that says why.
func (p *Permission) CertificateAllowed(_ context.Context, name string) error {
	// certmagic hands over SNI names with over-long or empty labels; a
	// wildcard pattern matches them, but no CA issues for them.
	host, err := hosts.ParsePattern(name)
	if err == nil && (host == hosts.CatchAll || hosts.IsWildcard(host) || strings.Contains(host, "_")) {
		err = errors.New("a wildcard, or '_' in a name")
	}
	if err != nil {
		err = fmt.Errorf("%w: spdy_origin: %q is not a host name a certificate can be issued for: %v", caddytls.ErrPermissionDenied, strings.ToLower(name), err)
		p.logDenial(name, err)
		return err
	}
	var (
		seen       []string
		allowed    bool
		announced  bool     // by an agent of some pool
		tokenHosts []string // of the pools' tokens with hosts
	)
	pools.Range(func(_, v any) bool {
		pl, ok := v.(*pool)
		if !ok || (len(p.Pools) > 0 && !slices.Contains(p.Pools, pl.name)) {
			return true
		}
		seen = append(seen, pl.name)
		view := pl.index.certView(host)
		if p.requireAgent() {
			allowed = view.agent && (view.token || view.anyToken)
		} else {
			allowed = view.token || (view.agent && view.anyToken)
		}
		announced = announced || view.agent
		tokenHosts = append(tokenHosts, view.tokenHosts...)
		return !allowed
	})
	if allowed {
		return nil
	}
	err = p.denial(host, seen, announced, tokenHosts)
	p.logDenial(name, err)
	return err
}

// logDenial logs a refusal at debug level.
func (p *Permission) logDenial(name string, err error) {
	if p.logger == nil {
		return // not provisioned
	}
	if c := p.logger.Check(zapcore.DebugLevel, "on-demand certificate refused"); c != nil {
		c.Write(zap.String("name", name), zap.Error(err))
	}
}

// denial explains a refusal, naming the name, the pools and what is missing.
func (p *Permission) denial(host string, seen []string, announced bool, tokenHosts []string) error {
	where := "pools " + strings.Join(p.Pools, ", ")
	if len(p.Pools) == 0 {
		where = "any spdy_origin pool"
	}
	var why string
	switch {
	case len(seen) == 0:
		why = "no such spdy_origin pool is loaded"
		if len(p.Pools) == 0 {
			why = "no spdy_origin pool is loaded"
		}
	case p.requireAgent() && !announced:
		why = "no agent connected now announces it (a catch-all \"*\" counts only as far as its token's hosts go, " +
			"and a wildcard over a public suffix such as *.com only under a token whose hosts include it)"
	case announced:
		why = fmt.Sprintf("an agent announces it, but no token permits it (tokens' hosts: %s)", listHosts(tokenHosts))
	default:
		why = fmt.Sprintf("no token's hosts include it (tokens' hosts: %s; a token without hosts permits only what its agents announce by name)",
			listHosts(tokenHosts))
	}
	return fmt.Errorf("%w: spdy_origin (%s): %q: %s", caddytls.ErrPermissionDenied, where, host, why)
}

// listHosts lists up to ten patterns, for errors.
func listHosts(list []string) string {
	list = sortedSet(slices.Clone(list))
	switch {
	case len(list) == 0:
		return "none"
	case len(list) > 10:
		return fmt.Sprintf("%s and %d more", strings.Join(list[:10], ", "), len(list)-10)
	}
	return strings.Join(list, ", ")
}

// UnmarshalCaddyfile sets up the permission from Caddyfile tokens. Syntax:
//
//	permission spdy_origin [<pool...>] {
//		require_agent on|off
//	}
func (p *Permission) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	p.Pools = append(p.Pools, d.RemainingArgs()...)
	for d.NextBlock(0) {
		switch d.Val() {
		case "require_agent":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			switch v {
			case "on":
				p.RequireAgent = nil
			case "off":
				off := false
				p.RequireAgent = &off
			default:
				return d.Errf("require_agent: want on or off, got %q", v)
			}
		default:
			return d.Errf("unrecognized spdy_origin permission subdirective: %s", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddytls.OnDemandPermission = (*Permission)(nil)
	_ caddy.Provisioner           = (*Permission)(nil)
	_ caddy.Validator             = (*Permission)(nil)
	_ caddyfile.Unmarshaler       = (*Permission)(nil)
)
