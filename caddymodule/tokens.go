package caddymodule

// Tokens and what each lets its agents serve.
//
// A token may be limited to host patterns (`token <secret> hosts
// a.example.com *.b.example.com`; JSON "tokens"): an agent registering
// with it may announce only hosts those patterns cover (register.go
// refuses any other with 403), and its sessions get only requests for
// hosts the patterns match, whatever the agent announced ("*" included).
// Several tokens with different hosts in one pool let several people or
// customers share an edge without one taking over another's hostname. A
// token without hosts may serve anything, as before.

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
)

// TokenConfig is a bearer token limited to the hosts its agents may serve.
type TokenConfig struct {
	// Value is the token, resolved as the entries of Token are
	// ({env.X} at load, surrounding whitespace trimmed), e.g.
	// "{env.ALICE_TOKEN}". Required.
	Value string `json:"value"`

	// Hosts are the host patterns agents registering with this token may
	// announce and be sent requests for: "a.example.com",
	// "*.example.com" (one or more labels under example.com, not
	// example.com itself). An agent announcing anything else is refused
	// with 403; one that announces a catch-all ("*") or nothing serves
	// these patterns. They also bound what on-demand certificates
	// tls.permission.spdy_origin allows for this token's agents. Empty (or
	// "*"): any host.
	Hosts []string `json:"hosts,omitempty"`
}

// tokenScope is a resolved token and the hosts it may serve.
type tokenScope struct {
	n      int // its position among the handler's tokens (1-based), for logs: never the secret
	secret [sha256.Size]byte
	hosts  []string   // canonical patterns, sorted, each once; nil: any host
	set    *hosts.Set // of hosts
}

// restricted reports whether the token is limited to some hosts.
func (s *tokenScope) restricted() bool { return s != nil && s.hosts != nil }

// sameHosts reports whether s and o allow the same hosts: both any host, or
// the same patterns (hosts are sorted, so their order in the config does
// not count).
func (s *tokenScope) sameHosts(o *tokenScope) bool {
	return s.restricted() == o.restricted() && slices.Equal(s.hosts, o.hosts)
}

// hostList is the token's patterns, nil for any host.
func (s *tokenScope) hostList() []string {
	if s == nil {
		return nil
	}
	return s.hosts
}

// refused returns the first announced pattern the token may not serve, or
// "": a catch-all ("*") is always accepted, and then means the token's
// hosts.
func (s *tokenScope) refused(announced []string) string {
	if !s.restricted() {
		return ""
	}
	for _, a := range announced {
		if a == hosts.CatchAll {
			continue
		}
		if !slices.ContainsFunc(s.hosts, func(p string) bool { return hosts.Covers(p, a) }) {
			return a
		}
	}
	return ""
}

// resolveTokens resolves Token and Tokens: placeholders, whitespace, host
// patterns. A short token is logged as a warning; one secret given twice
// with different hosts is an error (which would apply?).
func (h *Handler) resolveTokens() ([]*tokenScope, error) {
	repl := caddy.NewReplacer()
	all := make([]TokenConfig, 0, len(h.Token)+len(h.Tokens))
	for _, v := range h.Token {
		all = append(all, TokenConfig{Value: v})
	}
	all = append(all, h.Tokens...)
	var scopes []*tokenScope
	seen := map[[sha256.Size]byte]*tokenScope{}
	for i, tc := range all {
		n := i + 1
		// Unknown or empty placeholders are errors: silently dropping one
		// would leave a weaker token than the one configured.
		v, err := repl.ReplaceOrErr(tc.Value, true, true)
		if err != nil {
			return nil, fmt.Errorf("spdy_origin: token %d: %w (is the environment variable set?)", n, err)
		}
		// A bearer token in a header never has surrounding whitespace (HTTP
		// trims it), so a trailing newline from an env var or secrets file
		// would make the token unusable: trim it.
		v = strings.TrimSpace(v)
		if v == "" {
			return nil, fmt.Errorf("spdy_origin: token %d (%q) is empty after resolving placeholders; is the environment variable set?", n, tc.Value)
		}
		if len(v) < minTokenBytes {
			// Loud but not fatal: a short token may be what an existing
			// fleet of agents uses. Never log the token itself.
			h.logger.Warn("spdy_origin: token is short enough to guess; generate a strong one with "+
				"`head -c 32 /dev/urandom | base64` or `openssl rand -base64 32`",
				zap.Int("token", n), zap.Int("bytes", len(v)), zap.Int("recommended_min_bytes", minTokenBytes))
		}
		s := &tokenScope{n: n, secret: sha256.Sum256([]byte(v))}
		if s.hosts, err = tokenHosts(tc.Hosts); err != nil {
			return nil, fmt.Errorf("spdy_origin: token %d: %w", n, err)
		}
		s.set = hosts.NewSet(s.hosts...)
		if prev, dup := seen[s.secret]; dup {
			if !prev.sameHosts(s) {
				return nil, fmt.Errorf("spdy_origin: tokens %d and %d are the same secret with different hosts; give it one line", prev.n, n)
			}
			continue
		}
		seen[s.secret] = s
		scopes = append(scopes, s)
	}
	if len(scopes) == 0 {
		return nil, errors.New("spdy_origin: at least one token is required (agents authenticate with it)")
	}
	return scopes, nil
}

// tokenHosts checks a token's host patterns and returns them canonical,
// sorted and each once; nil means any host (none given, or "*").
func tokenHosts(list []string) ([]string, error) {
	var out []string
	for _, p := range list {
		c, err := hosts.ParsePattern(p)
		if err != nil {
			return nil, err
		}
		if c == hosts.CatchAll {
			return nil, nil
		}
		out = append(out, c)
	}
	return sortedSet(out), nil
}

// matchToken returns the scope of the token given matches, or nil. It
// compares against every token in constant time; hashing first hides the
// tokens' lengths too.
func (h *Handler) matchToken(given string) *tokenScope {
	g := sha256.Sum256([]byte(given))
	found := -1
	for i, s := range h.tokens {
		eq := subtle.ConstantTimeCompare(g[:], s.secret[:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return nil
	}
	return h.tokens[found]
}
