package caddymodule

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// What a pool shares among the handlers that use it, and how a config
// changes it.
//
// Every handler keeps its own settings, and pools are process-global. A
// handler's Provision does nothing that changes what a live config uses
// until its last step, join; a config rejected after that (by a later
// module, or because two of its handlers disagree) is undone by leave in
// Cleanup. Caddy provisions a new config while the old one still runs and
// cleans up the old one after, so during a reload the new config's
// handlers join before the old ones leave, and the newest handler's logger
// and drain timeout are in force.

// poolSettings are a handler's settings that act on its whole pool, so the
// handlers of one config on one pool must agree on them.
type poolSettings struct {
	maxAuthFailures   int           // the lockout table is the pool's
	authFailureWindow time.Duration // likewise
	maxSessions       int           // caps the pool's sessions
	drainTimeout      time.Duration // applies when the pool goes
}

func (h *Handler) poolSettings() poolSettings {
	return poolSettings{
		maxAuthFailures:   h.MaxAuthFailures,
		authFailureWindow: time.Duration(h.AuthFailureWindow),
		maxSessions:       h.MaxSessions,
		drainTimeout:      time.Duration(h.DrainTimeout),
	}
}

// differences lists the settings in which s and o differ, each as
// "<name> <s's value> and <o's value>".
func (s poolSettings) differences(o poolSettings) []string {
	var diffs []string
	add := func(name string, a, b any) {
		if a != b {
			diffs = append(diffs, fmt.Sprintf("%s %v and %v", name, a, b))
		}
	}
	add("max_auth_failures", s.maxAuthFailures, o.maxAuthFailures)
	add("auth_failure_window", s.authFailureWindow, o.authFailureWindow)
	add("max_sessions", s.maxSessions, o.maxSessions)
	add("drain_timeout", s.drainTimeout, o.drainTimeout)
	return diffs
}

// poolUser is one handler's part in its pool.
type poolUser struct {
	config   <-chan struct{} // the handler's config: its context's Done channel
	name     string          // the handler in errors
	settings poolSettings
	logger   *zap.Logger
	tokens   []*tokenScope // what its agents may serve (hostindex.go)
}

// join makes u a user of the pool, the one whose logger and drain timeout
// are in force, unless a handler of the same config already gave the pool
// other settings; then nothing changes.
func (p *pool) join(u *poolUser) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, o := range p.users {
		if o.config != u.config {
			continue
		}
		if diffs := o.settings.differences(u.settings); len(diffs) > 0 {
			return fmt.Errorf("pool %q has %s in two handlers of this config ([%s] and [%s]); "+
				"the handlers of one pool share its lockout table, session limit and drain timeout: "+
				"give them the same values, or give them pools of their own",
				p.name, strings.Join(diffs, ", "), o.name, u.name)
		}
	}
	p.users = append(p.users, u)
	p.active.Store(u)
	p.dropRevokedLocked()
	p.index.setTokens(p.users)
	return nil
}

// leave ends u's part in the pool. The newest remaining user's settings
// are then in force, or u's own if none remains: the pool is going, and the
// drain timeout of the last config that had it applies.
func (p *pool) leave(u *poolUser) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.users = slices.DeleteFunc(p.users, func(x *poolUser) bool { return x == u })
	if n := len(p.users); n > 0 {
		p.active.Store(p.users[n-1])
	} else {
		p.active.Store(u)
	}
	p.dropRevokedLocked()
	p.index.setTokens(p.users)
}

// currentLocked reports whether a handler of the pool has the token of
// scope now, with the same hosts; with no handler (the pool is going, or
// only a transport uses it) every token counts as current. p.mu is held.
func (p *pool) currentLocked(scope *tokenScope) bool {
	if len(p.users) == 0 || scope == nil {
		return true
	}
	for _, u := range p.users {
		for _, t := range u.tokens {
			if t.secret == scope.secret && t.sameHosts(scope) {
				return true
			}
		}
	}
	return false
}

// dropRevokedLocked sends GOAWAY to the sessions whose token the pool's
// handlers no longer have, or have with other hosts (a reload revoked it,
// or gave one of its hostnames to another token): their agents register
// again under the config in force, or are refused. Until they are gone
// they get no new requests and count for no certificate. p.mu is held.
func (p *pool) dropRevokedLocked() {
	for s := range p.sessions {
		if s.revoked || p.currentLocked(s.scope) {
			continue
		}
		s.revoked = true
		p.index.removeSession(s)
		p.log().Warn("agent's token was removed from the config or its hosts changed: sending GOAWAY (the agent registers again under the new config)",
			s.logFields()...)
		go s.goAway(p.drainTimeout())
	}
}

var nopLogger = zap.NewNop()

// log is the logger of the handler whose settings are in force.
func (p *pool) log() *zap.Logger {
	if u := p.active.Load(); u != nil {
		return u.logger
	}
	return nopLogger
}

// drainTimeout is how long open streams may finish once the pool goes.
func (p *pool) drainTimeout() time.Duration {
	if u := p.active.Load(); u != nil {
		return u.settings.drainTimeout
	}
	return defaultDrainTimeout
}

// handlerName names the handler being provisioned in ctx for config
// errors: its server, its route when it can be found, and connect.
func handlerName(ctx caddy.Context, connect string) string {
	var parts []string
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil {
		parts = append(parts, fmt.Sprintf("server %s %v", srv.Name(), srv.Listen))
		if kind, i, r := provisioningRoute(srv); r != nil {
			parts = append(parts, fmt.Sprintf("%s %d%s", kind, i, describeMatchers(r.MatcherSets)))
		}
	}
	return strings.Join(append(parts, "connect "+connect), ", ")
}

// provisioningRoute finds the top-level route of srv whose handlers are
// being provisioned, with its kind ("route" or "error route") and index:
// Caddy provisions routes in order and sets a route's Handlers once all of
// them are provisioned, so it is the first route with raw handlers and none
// provisioned yet. r is nil if there is none (a named route, say).
func provisioningRoute(srv *caddyhttp.Server) (kind string, i int, r *caddyhttp.Route) {
	find := func(routes caddyhttp.RouteList) (int, *caddyhttp.Route) {
		for i := range routes {
			if r := &routes[i]; r.Handlers == nil && len(r.HandlersRaw) > 0 {
				return i, r
			}
		}
		return 0, nil
	}
	if i, r := find(srv.Routes); r != nil {
		return "route", i, r
	}
	if srv.Errors != nil {
		if i, r := find(srv.Errors.Routes); r != nil {
			return "error route", i, r
		}
	}
	return "", 0, nil
}

// describeMatchers names a route's host and path matchers, such as
// " (host example.com, path /api/*)".
func describeMatchers(sets caddyhttp.MatcherSets) string {
	var hosts, paths []string
	for _, set := range sets {
		for _, m := range set {
			switch m := m.(type) {
			case *caddyhttp.MatchHost:
				hosts = append(hosts, "host "+strings.Join(*m, " "))
			case *caddyhttp.MatchPath:
				paths = append(paths, "path "+strings.Join(*m, " "))
			}
		}
	}
	if len(hosts)+len(paths) == 0 {
		return ""
	}
	return " (" + strings.Join(append(hosts, paths...), ", ") + ")"
}
