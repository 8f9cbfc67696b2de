package caddymodule

// What a pool may get certificates for: an index of its agents'
// announcements and its tokens' hosts, read by tls.permission.spdy_origin
// (permission.go) during TLS handshakes, and by the announced_hosts gauge
// and the 503 log.
//
// A session's join or leave adds or removes its own patterns only. Each
// session may announce a hundred patterns and a pool may hold any number
// of sessions, so rebuilding the whole index then, as this once did, cost
// every join and leave all of the pool's patterns under the pool's lock,
// which routing takes too: an agent that opened and closed sessions in a
// loop slowed every site of the pool (TestHostileSessionChurnCost).

import (
	"slices"
	"sync"

	"go.uber.org/zap/zapcore"
	"golang.org/x/net/publicsuffix"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
)

// hostIndex is one pool's index. Its own lock guards it, not the pool's,
// so that a handshake asking about a name does not wait for routing, nor
// routing for it; writers hold the pool's lock too (p.mu, then mu), as
// what they add follows the pool's sessions and users.
type hostIndex struct {
	mu sync.RWMutex
	// agents holds what the live sessions may serve, for certificates:
	// the patterns their agents announced, and for a catch-all ("*") or
	// no announcement the patterns of a token limited to hosts. A catch-all
	// under a token without hosts adds nothing: that would be every name;
	// nor does a wildcard over a public suffix (*.com, *.co.uk,
	// *.github.io) under such a token: a hundred of them are every name too.
	// Sessions whose token was revoked (dropRevokedLocked) are not in it.
	agents hosts.Multiset
	// announced holds the patterns the live sessions announce ("*"
	// included), once per session announcing each, for errors and the
	// announced_hosts gauge.
	announced hosts.Multiset
	// tokens holds the patterns of the tokens limited to hosts, of every
	// handler using the pool, and tokenHosts the same sorted and each
	// once (replaced whole, never changed, so readers may keep it);
	// anyToken is set when one of them has a token without hosts. They
	// change only when a handler joins or leaves, with a config.
	tokens     *hosts.Set
	tokenHosts []string
	anyToken   bool
}

// addSession indexes a session that joined the pool; p.mu is held.
func (ix *hostIndex) addSession(s *session) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, h := range s.hosts {
		ix.announced.Add(h)
	}
	for _, c := range s.certPatterns() {
		ix.agents.Add(c)
	}
}

// removeSession takes back addSession when the session leaves or its token
// is revoked, whichever is first; p.mu is held.
func (ix *hostIndex) removeSession(s *session) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, h := range s.hosts {
		ix.announced.Remove(h)
	}
	for _, c := range s.certPatterns() {
		ix.agents.Remove(c)
	}
}

// setTokens indexes the tokens of the pool's users; p.mu is held.
func (ix *hostIndex) setTokens(users []*poolUser) {
	var list []string
	anyToken := false
	for _, u := range users {
		for _, t := range u.tokens {
			if t.restricted() {
				list = append(list, t.hosts...)
			} else {
				anyToken = true
			}
		}
	}
	list = sortedSet(list)
	set := hosts.NewSet(list...)
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.tokens, ix.tokenHosts, ix.anyToken = set, list, anyToken
}

// certView is what the index says about one name, for certificates.
type certView struct {
	agent      bool     // a live session may serve it
	token      bool     // a token limited to hosts includes it
	anyToken   bool     // the pool has a token without hosts
	tokenHosts []string // the tokens' patterns, for errors: not to be changed
}

func (ix *hostIndex) certView(host string) certView {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return certView{
		agent:      ix.agents.Match(host),
		token:      ix.tokens.Match(host),
		anyToken:   ix.anyToken,
		tokenHosts: ix.tokenHosts,
	}
}

// announcedCount is the number of distinct patterns the live sessions
// announce.
func (ix *hostIndex) announcedCount() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.announced.Len()
}

// announcedList is the distinct patterns the live sessions announce,
// sorted. It costs all of them: use it for what is rare (a log line that
// passed its rate limit), never per request.
func (ix *hostIndex) announcedList() []string {
	ix.mu.RLock()
	list := ix.announced.Patterns()
	ix.mu.RUnlock()
	slices.Sort(list)
	return list
}

// announcedField logs announcedList, computed only when the entry is
// written: the 503 warning that uses it is rate-limited, but its fields
// are built for every 503.
type announcedField struct{ ix *hostIndex }

func (f announcedField) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, h := range f.ix.announcedList() {
		enc.AppendString(h)
	}
	return nil
}

// certPatterns are the patterns the session may serve, as far as
// certificates go (see hostIndex.agents). They depend only on what the
// session announced and its token, neither of which changes, so removing
// them from the index takes back exactly what adding them put in.
func (s *session) certPatterns() []string {
	var out []string
	catchAll := s.hosts == nil
	for _, h := range s.hosts {
		switch {
		case h == hosts.CatchAll:
			catchAll = true
		case !s.scope.restricted() && overPublicSuffix(h):
		default:
			out = append(out, h)
		}
	}
	if catchAll && s.scope.restricted() {
		out = append(out, s.scope.hosts...)
	}
	return out
}

// overPublicSuffix reports whether p is a wildcard whose suffix is a public
// suffix (ICANN's or a private one such as github.io; an unlisted top-level
// label counts), so that it matches names anyone may register.
func overPublicSuffix(p string) bool {
	if !hosts.IsWildcard(p) {
		return false
	}
	suffix := p[2:]
	ps, _ := publicsuffix.PublicSuffix(suffix)
	return ps == suffix
}

func sortedSet(list []string) []string {
	slices.Sort(list)
	return slices.Compact(list)
}
