package caddymodule

// What a pool may get certificates for: an index of its agents'
// announcements and its tokens' hosts, rebuilt whenever a session joins or
// leaves or a handler joins or leaves the pool, and read without a lock by
// tls.permission.spdy_origin (permission.go) during TLS handshakes.

import (
	"slices"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
)

// hostIndex is one pool's immutable view, replaced whole.
type hostIndex struct {
	// agents holds what the live sessions may serve, for certificates:
	// the patterns their agents announced, and for a catch-all ("*") or
	// no announcement the patterns of a token limited to hosts. A catch-all
	// under a token without hosts adds nothing: that would be every name.
	agents *hosts.Set
	// tokens holds the patterns of the tokens limited to hosts, of every
	// handler using the pool; anyToken is set when one of them has a
	// token without hosts.
	tokens   *hosts.Set
	anyToken bool
	// announced and tokenHosts are the sorted distinct patterns, for
	// errors and the announced_hosts gauge ("*" included in announced).
	announced, tokenHosts []string
}

// reindexLocked rebuilds p.index from the sessions and users; p.mu is
// held. Pools have few sessions and tokens, so rebuilding whole is cheap.
func (p *pool) reindexLocked() {
	ix := &hostIndex{}
	var agentPatterns []string
	for s := range p.sessions {
		ix.announced = append(ix.announced, s.hosts...)
		agentPatterns = append(agentPatterns, s.certPatterns()...)
	}
	for _, u := range p.users {
		for _, t := range u.tokens {
			if t.restricted() {
				ix.tokenHosts = append(ix.tokenHosts, t.hosts...)
			} else {
				ix.anyToken = true
			}
		}
	}
	ix.announced = sortedSet(ix.announced)
	ix.tokenHosts = sortedSet(ix.tokenHosts)
	ix.agents = hosts.NewSet(agentPatterns...)
	ix.tokens = hosts.NewSet(ix.tokenHosts...)
	p.index.Store(ix)
}

// hostIndex is the pool's current index (empty before anything joined).
func (p *pool) hostIndex() *hostIndex {
	if ix := p.index.Load(); ix != nil {
		return ix
	}
	return &hostIndex{}
}

// certPatterns are the patterns the session may serve, as far as
// certificates go (see hostIndex.agents).
func (s *session) certPatterns() []string {
	var out []string
	catchAll := s.hosts == nil
	for _, h := range s.hosts {
		if h == hosts.CatchAll {
			catchAll = true
		} else {
			out = append(out, h)
		}
	}
	if catchAll && s.scope.restricted() {
		out = append(out, s.scope.hosts...)
	}
	return out
}

func sortedSet(list []string) []string {
	slices.Sort(list)
	return slices.Compact(list)
}
