package handshake

// What an agent serves: the host patterns it routes, announced on the
// registration PUT, and the proxy's refusal of a name the token may not
// serve.

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spdy-origin/spdy-origin/internal/hosts"
)

const (
	// HeaderHosts lists, comma-separated, the host patterns the agent
	// routes (hosts.ParsePattern: "media.example.com", "*.example.com",
	// "*" for a catch-all route). An agent that sends none (an Amahi
	// origin, an older agent) serves every host, as before.
	HeaderHosts = "Spdy-Origin-Hosts"

	// MaxHosts caps the patterns one agent announces; each is at most
	// hosts.MaxLen bytes. The agent refuses to start with more routes, and
	// the proxy refuses a registration that announces more (400).
	MaxHosts = 100

	// HeaderRefusedHost is on the proxy's 403 to a registration that
	// announces a host its token may not serve, naming that host. It tells
	// spdy_origin's own 403 from one sent by access rules in front of it
	// (ErrBlocked).
	HeaderRefusedHost = "Spdy-Origin-Refused-Host"
)

// ErrHostRefused is what a *StatusError unwraps to when spdy_origin refused
// the registration because the token may not serve one of the announced
// hosts (HeaderRefusedHost names it).
var ErrHostRefused = errors.New("proxy refused a host this agent announced")

// ReadHosts returns the canonical patterns HeaderHosts lists, without
// duplicates, in the order given; nil when the header is absent (the agent
// serves every host). An empty header, more than MaxHosts patterns or an
// invalid one is an error naming it: the proxy refuses such a registration
// rather than guess what the agent serves.
func ReadHosts(h http.Header) ([]string, error) {
	values, present := h[http.CanonicalHeaderKey(HeaderHosts)]
	if !present {
		return nil, nil
	}
	var out []string
	seen := map[string]bool{}
	for _, v := range values {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			if len(seen) == MaxHosts {
				return nil, fmt.Errorf("%s lists more than %d host patterns", HeaderHosts, MaxHosts)
			}
			c, err := hosts.ParsePattern(p)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", HeaderHosts, err)
			}
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s is empty; send no header to serve every host, or \"*\"", HeaderHosts)
	}
	return out, nil
}

// RefusedHost returns the host spdy_origin's 403 names (HeaderRefusedHost),
// or "" for any other answer.
func (e *StatusError) RefusedHost() string {
	if e.StatusCode != http.StatusForbidden {
		return ""
	}
	h := printable([]byte(e.Header.Get(HeaderRefusedHost)))
	if len(h) > hosts.MaxLen {
		h = h[:hosts.MaxLen]
	}
	return h
}
