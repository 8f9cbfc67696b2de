// Package hosts is the host-name vocabulary that the agent and the Caddy
// module share: what a host pattern is (ParsePattern), how a request's Host
// is compared with one (Canonical), and a table that finds the most specific
// pattern for a host (Table).
//
// A pattern is one of
//
//	media.example.com   exactly that host
//	*.example.com       any host one or more labels under example.com
//	                    (a.example.com, a.b.example.com), not example.com itself
//	*                   every host (the catch-all)
//
// Matching ignores case, a port and a trailing dot: "Media.Example.COM:443"
// is media.example.com. When several patterns match, the most specific wins:
// an exact host, then the wildcard with the longest suffix, then "*".
package hosts

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// CatchAll is the pattern that matches every host.
const CatchAll = "*"

// MaxLen is the longest pattern (and host) accepted, as DNS allows.
const MaxLen = 253

// ParsePattern checks s and returns it in canonical form (lower case, no
// trailing dot). The error says what is wrong, in words a user can act on.
func ParsePattern(s string) (string, error) {
	p := strings.ToLower(strings.TrimSpace(s))
	if p == CatchAll {
		return p, nil
	}
	p = strings.TrimSuffix(p, ".")
	switch {
	case p == "":
		return "", errors.New("empty host pattern")
	case len(p) > MaxLen:
		return "", fmt.Errorf("host pattern %.40q... is longer than %d bytes", s, MaxLen)
	case strings.Contains(p, "://") || strings.Contains(p, "/"):
		return "", fmt.Errorf("host pattern %q: a host name, not a URL", s)
	case strings.HasPrefix(p, "["), strings.Count(p, ":") > 1:
		return "", fmt.Errorf("host pattern %q: IPv6 addresses are not supported; use a host name", s)
	case strings.Contains(p, ":"):
		return "", fmt.Errorf("host pattern %q: no port (ports are ignored when hosts are matched; write %q)", s, p[:strings.IndexByte(p, ':')])
	}
	name := p
	if rest, ok := strings.CutPrefix(p, "*."); ok {
		name = rest
	}
	if strings.Contains(name, "*") {
		return "", fmt.Errorf("host pattern %q: '*' may only be the whole first label, as in *.example.com (or \"*\" alone for every host)", s)
	}
	for label := range strings.SplitSeq(name, ".") {
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("host pattern %q: %w", s, err)
		}
	}
	return p, nil
}

// checkLabel accepts what a Host header may name: letters, digits, '-'
// and '_' (service names on a LAN use it), 1 to 63 of them.
func checkLabel(l string) error {
	if l == "" {
		return errors.New("empty label (two dots in a row, or a leading dot)")
	}
	if len(l) > 63 {
		return fmt.Errorf("label %.20q... is longer than 63 bytes", l)
	}
	for i := 0; i < len(l); i++ {
		switch c := l[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return fmt.Errorf("character %q is not allowed in a host name", c)
		}
	}
	return nil
}

// IsWildcard reports whether p (canonical) is a "*.suffix" pattern.
func IsWildcard(p string) bool { return strings.HasPrefix(p, "*.") }

// Canonical returns the host of a Host header (or a TLS server name) as
// patterns are compared with it: without its port, in lower case, without
// a trailing dot. An IPv6 literal keeps its brackets' content.
func Canonical(host string) string {
	// Without a ':' there is no port, and SplitHostPort would only allocate
	// its error: this runs on every proxied request. A host it splits off
	// has no brackets.
	if strings.Contains(host, ":") {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// Covers reports whether pattern outer allows everything inner matches:
// "*" covers all; *.example.com covers a.example.com, *.a.example.com and
// itself; an exact host covers itself only. Both are canonical.
func Covers(outer, inner string) bool {
	switch {
	case outer == CatchAll || outer == inner:
		return true
	case inner == CatchAll || !IsWildcard(outer):
		return false
	}
	suffix := outer[1:] // ".example.com"
	return strings.HasSuffix(strings.TrimPrefix(inner, "*"), suffix) && len(strings.TrimPrefix(inner, "*")) > len(suffix)
}

// Table maps patterns to values and finds the most specific pattern that
// matches a host. The zero value is empty; it is not safe for concurrent
// writes, but a Table no longer written to may be read concurrently.
type Table[T any] struct {
	exact    map[string]T
	wildcard map[string]T // by suffix, "example.com" for *.example.com
	all      *T
	n        int
}

// Add maps the canonical pattern p to v. It reports false, changing
// nothing, if p is already in the table.
func (t *Table[T]) Add(p string, v T) bool {
	switch {
	case p == CatchAll:
		if t.all != nil {
			return false
		}
		t.all = &v
	case IsWildcard(p):
		if _, dup := t.wildcard[p[2:]]; dup {
			return false
		}
		if t.wildcard == nil {
			t.wildcard = map[string]T{}
		}
		t.wildcard[p[2:]] = v
	default:
		if _, dup := t.exact[p]; dup {
			return false
		}
		if t.exact == nil {
			t.exact = map[string]T{}
		}
		t.exact[p] = v
	}
	t.n++
	return true
}

// Delete removes the canonical pattern p. It reports false, changing
// nothing, if p is not in the table.
func (t *Table[T]) Delete(p string) bool {
	switch {
	case p == CatchAll:
		if t.all == nil {
			return false
		}
		t.all = nil
	case IsWildcard(p):
		if _, ok := t.wildcard[p[2:]]; !ok {
			return false
		}
		delete(t.wildcard, p[2:])
	default:
		if _, ok := t.exact[p]; !ok {
			return false
		}
		delete(t.exact, p)
	}
	t.n--
	return true
}

// Len is the number of patterns in the table.
func (t *Table[T]) Len() int { return t.n }

// Specificity ranks how closely a pattern matches a host: NoMatch, then
// the catch-all (0), then wildcards by the length of their suffix (longer
// is more specific), then an exact name (Exact).
const (
	NoMatch = -1
	Exact   = 1 << 10 // above any wildcard: a name has at most 253 bytes
)

// Lookup returns the value of the most specific pattern matching host,
// which must be canonical (Canonical).
func (t *Table[T]) Lookup(host string) (v T, ok bool) {
	v, rank := t.lookup(host)
	return v, rank != NoMatch
}

// lookup is Lookup that also returns the matching pattern's specificity.
func (t *Table[T]) lookup(host string) (v T, rank int) {
	var ok bool
	if v, ok = t.exact[host]; ok {
		return v, Exact
	}
	if len(t.wildcard) > 0 {
		// a.b.example.com: try b.example.com, then example.com, then com,
		// so the longest suffix wins.
		for rest := host; ; {
			i := strings.IndexByte(rest, '.')
			if i < 0 {
				break
			}
			rest = rest[i+1:]
			if v, ok = t.wildcard[rest]; ok {
				return v, 1 + len(rest)
			}
		}
	}
	if t.all != nil {
		return *t.all, 0
	}
	return v, NoMatch
}

// Set is a set of patterns that answers whether any matches a host.
type Set struct{ t Table[struct{}] }

// NewSet returns the set of the canonical patterns ps (duplicates are
// ignored).
func NewSet(ps ...string) *Set {
	s := &Set{}
	for _, p := range ps {
		s.t.Add(p, struct{}{})
	}
	return s
}

// Match reports whether some pattern of s matches the canonical host. A nil
// Set matches nothing.
func (s *Set) Match(host string) bool {
	if s == nil {
		return false
	}
	_, ok := s.t.Lookup(host)
	return ok
}

// Specificity is how closely the most specific pattern of s matches the
// canonical host (see NoMatch and Exact). A nil Set matches nothing.
func (s *Set) Specificity(host string) int {
	if s == nil {
		return NoMatch
	}
	_, rank := s.t.lookup(host)
	return rank
}

// Len is the number of patterns in s.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.t.Len()
}

// Multiset is a set of patterns, each held some number of times, that
// answers whether any matches a host, like Set. Adding or removing a
// pattern costs the same however many the multiset holds, so an index of
// what many owners hold can follow each owner's arrival and departure
// instead of being rebuilt. The zero value is empty; it is not safe for
// concurrent use.
type Multiset struct {
	count map[string]int // times each pattern was added and not yet removed
	t     Table[struct{}]
}

// Add adds the canonical pattern p once more. It reports whether p is new.
func (m *Multiset) Add(p string) bool {
	if m.count == nil {
		m.count = map[string]int{}
	}
	m.count[p]++
	if m.count[p] > 1 {
		return false
	}
	m.t.Add(p, struct{}{})
	return true
}

// Remove takes back one Add of p. It reports whether that was p's last,
// so that p left the multiset; removing a pattern not held does nothing.
func (m *Multiset) Remove(p string) bool {
	switch n := m.count[p]; n {
	case 0:
		return false
	case 1:
		delete(m.count, p)
		m.t.Delete(p)
		return true
	default:
		m.count[p] = n - 1
		return false
	}
}

// Match reports whether some pattern of m matches the canonical host.
func (m *Multiset) Match(host string) bool {
	_, ok := m.t.Lookup(host)
	return ok
}

// Len is the number of distinct patterns in m.
func (m *Multiset) Len() int { return m.t.Len() }

// Patterns returns the distinct patterns of m, in no particular order.
func (m *Multiset) Patterns() []string {
	out := make([]string, 0, len(m.count))
	for p := range m.count {
		out = append(out, p)
	}
	return out
}
