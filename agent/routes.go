package agent

// Routing by Host: each route sends the requests for a host pattern to an
// upstream (--to HOST=URL) or a directory (--root HOST=DIR); the agent
// announces the patterns at registration (handshake.HeaderHosts), and a
// request for a host no route matches gets 421 Misdirected Request.

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
	"github.com/spdy-origin/spdy-origin/internal/hosts"
)

// Route sends the requests whose Host matches Host to the upstream To or
// the directory Root (exactly one of them).
type Route struct {
	// Host is a host pattern: "media.example.com", "*.example.com" (one
	// or more labels under example.com, not example.com itself), or "*"
	// (or "") for every host no other route matches. Case and a port in
	// the request's Host do not matter; the most specific pattern wins.
	Host string
	To   *url.URL // --to [HOST=]URL
	Root string   // --root [HOST=]DIR
}

// String is the route as its flag's value: "a.example.com=http://127.0.0.1:8080",
// or the URL or directory alone for a catch-all route.
func (r Route) String() string {
	target := r.Root
	if r.To != nil {
		target = r.To.Redacted()
	}
	if r.Host == "" || r.Host == hosts.CatchAll {
		return target
	}
	return r.Host + "=" + target
}

// describe says what the route serves, for logs: "upstream http://…" or
// "files from DIR".
func (r Route) describe() string {
	if r.To != nil {
		return "upstream " + r.To.Redacted()
	}
	return "files from " + r.Root
}

// routes checks o's routes and returns them with canonical host patterns:
// Routes, then To or Root as the catch-all route. Each host pattern may
// have one route.
func (o *Options) routes() ([]Route, error) {
	all := append([]Route(nil), o.Routes...)
	switch {
	case o.To != nil && o.Root != "":
		return nil, errors.New("--to and --root without a host are both the route for every host; give one, or give them hosts (--to HOST=URL)")
	case o.To != nil:
		all = append(all, Route{Host: hosts.CatchAll, To: o.To})
	case o.Root != "":
		all = append(all, Route{Host: hosts.CatchAll, Root: o.Root})
	}
	if len(all) == 0 {
		return nil, errors.New("at least one route is required: --to [HOST=]URL or --root [HOST=]DIR")
	}
	if len(all) > handshake.MaxHosts {
		return nil, fmt.Errorf("%d routes; at most %d are supported", len(all), handshake.MaxHosts)
	}
	seen := map[string]Route{}
	for i, r := range all {
		if r.Host == "" {
			r.Host = hosts.CatchAll
		}
		h, err := hosts.ParsePattern(r.Host)
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", r, err)
		}
		r.Host = h
		if (r.To == nil) == (r.Root == "") {
			return nil, fmt.Errorf("route for %s: give exactly one of an upstream URL (--to) and a directory (--root)", h)
		}
		if r.To != nil {
			if err := checkUpstreamURL(r.To); err != nil {
				return nil, fmt.Errorf("route %s: %w", r, err)
			}
		}
		if prev, dup := seen[h]; dup {
			what := "host " + h
			if h == hosts.CatchAll {
				what = "every host (a --to or --root without HOST=)"
			}
			return nil, fmt.Errorf("two routes for %s: %s and %s", what, prev, r)
		}
		seen[h] = r
		all[i] = r
	}
	return all, nil
}

// checkUpstreamURL accepts http://, https:// and h2c:// URLs with a host.
func checkUpstreamURL(u *url.URL) error {
	if (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "h2c") || u.Host == "" {
		return fmt.Errorf("upstream %q: want http://host:port, https://host:port or h2c://host:port", u.Redacted())
	}
	return nil
}

// announced lists the routes' host patterns, in order, for HeaderHosts.
func announced(routes []Route) []string {
	out := make([]string, len(routes))
	for i, r := range routes {
		out[i] = r.Host
	}
	return out
}

// maxLoggedHosts bounds the memory of hosts already logged as unrouted: any
// client can send any Host.
const maxLoggedHosts = 256

// hostRouter serves each request with the handler of the most specific
// route for its Host, and answers 421 when none matches.
type hostRouter struct {
	table  hosts.Table[http.Handler]
	serves string // the routes' patterns, for the 421's body
	log    *zap.Logger

	mu     sync.Mutex
	logged map[string]struct{} // unrouted hosts already logged, up to maxLoggedHosts
}

func newHostRouter(routes []Route, handlers []http.Handler, log *zap.Logger) *hostRouter {
	rt := &hostRouter{
		serves: strings.Join(announced(routes), ", "),
		log:    log,
		logged: map[string]struct{}{},
	}
	for i, r := range routes {
		rt.table.Add(r.Host, handlers[i])
	}
	return rt
}

func (rt *hostRouter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := hosts.Canonical(r.Host)
	if h, ok := rt.table.Lookup(host); ok {
		h.ServeHTTP(w, r)
		return
	}
	if len(host) > hosts.MaxLen {
		host = host[:hosts.MaxLen] + "..."
	}
	rt.logUnrouted(host)
	writeError(w, http.StatusMisdirectedRequest,
		fmt.Sprintf("spdy-origin-agent: no route for host %q; this agent serves %s", host, rt.serves))
}

// logUnrouted logs the first request for each host no route matches, up to
// maxLoggedHosts hosts; past that, once, that it stops.
func (rt *hostRouter) logUnrouted(host string) {
	rt.mu.Lock()
	_, seen := rt.logged[host]
	first := !seen && len(rt.logged) < maxLoggedHosts
	if first {
		// Its own copy: host may be cut from a far longer Host header
		// (hosts.Canonical drops the port without copying).
		rt.logged[strings.Clone(host)] = struct{}{}
	}
	stop := first && len(rt.logged) == maxLoggedHosts
	rt.mu.Unlock()
	if first {
		rt.log.Warn("request for a host no route serves: answered 421 Misdirected Request (each host is logged once)",
			zap.String("host", host), zap.String("routes", rt.serves))
	}
	if stop {
		rt.log.Warn(fmt.Sprintf("%d different unrouted hosts logged; further ones are not (spdy_origin_agent_requests_total{code=\"421\"} counts them)", maxLoggedHosts))
	}
}
