package caddymodule

// spdy_origin_register: agent registrations answered ahead of a site's
// client authentication.
//
// Agents authenticate with their token; basic_auth, forward_auth and IP
// rules are for clients. In a Caddyfile those run before spdy_origin (they
// are ordered before it, as they must be for the requests it proxies), so
// an agent's registration would meet them first. The Caddyfile adapter
// sorts every route one directive returns at that directive's single place
// in the order, so spdy_origin cannot put its registration route before
// basic_auth and its proxying after it; ordering spdy_origin itself earlier
// would proxy requests past the login. Hence this second handler, ordered
// before every directive that reads or refuses client requests: it answers
// exactly what an agent sends, to the handler it is meant for, and nothing
// else.

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/spdy-origin/spdy-origin/internal/handshake"
)

func init() {
	caddy.RegisterModule(Registrar{})
	httpcaddyfile.RegisterHandlerDirective("spdy_origin_register", parseCaddyfileRegistrar)
	// Before redir, and so before rewrites, try_files, basic_auth,
	// forward_auth, handle/route blocks, abort, error and respond: a
	// registration is answered as the agent sent it, whatever the site does
	// to client requests. After header, map and vars (its matcher may use
	// them).
	httpcaddyfile.RegisterDirectiveOrder("spdy_origin_register", httpcaddyfile.Before, "redir")
}

// Registrar answers agent registrations for the spdy_origin handlers of its
// route list before the rest of that list runs, so that agents register
// whatever client authentication or IP rules follow it (basic_auth,
// forward_auth, remote_ip with abort or respond). Its route list is the
// innermost subroute it is in (in a Caddyfile: its site, or the handle or
// route block it is written in), or else its top-level route of the server;
// the spdy_origin handlers anywhere inside that list are the ones it answers
// for.
//
// It answers only what an agent sends: a PUT over HTTP/1.x whose path is,
// exactly and spelled without percent-encoding, the connect path of one of
// those handlers. That handler then checks the token and takes the
// connection over as it would itself (or refuses, with its own 401, 413,
// 429 or 503); when several share the connect path, the one whose token is
// presented answers. Nothing is ever proxied here: every other request
// (another method or protocol, a path that merely resembles the connect
// path) goes on to the next handler, through the site's client
// authentication like any other. With a matcher, only the registrations it
// matches are answered early; the others meet the rules that follow.
//
// The spdy_origin handler keeps answering its connect path itself, so
// configs without this handler work as before.
type Registrar struct {
	scope routeScope
}

// CaddyModule returns the Caddy module information.
func (Registrar) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.spdy_origin_register",
		New: func() caddy.Module { return new(Registrar) },
	}
}

// Provision finds the route list the registrar answers for.
func (rg *Registrar) Provision(ctx caddy.Context) error {
	scopes := scopesOf(ctx)
	if len(scopes) == 0 {
		return errors.New("spdy_origin_register: not in an HTTP server's routes")
	}
	rg.scope = scopes[0]
	return nil
}

// ServeHTTP answers a registration for a handler of its route list and
// passes everything else on.
func (rg *Registrar) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method == http.MethodPut && r.ProtoMajor == 1 && r.URL.RawPath == "" {
		if h := registrationHandler(rg.scope, r.URL.Path, r.Header); h != nil {
			return h.serveRegistration(w, r)
		}
	}
	return next.ServeHTTP(w, r)
}

func parseCaddyfileRegistrar(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	rg := new(Registrar)
	return rg, rg.UnmarshalCaddyfile(h.Dispenser)
}

// UnmarshalCaddyfile sets up the registrar from Caddyfile tokens. Syntax:
//
//	spdy_origin_register [<matcher>]
func (rg *Registrar) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.Errf("spdy_origin_register takes no arguments besides a matcher, got %q "+
			"(it answers for the spdy_origin handlers of its site, on their connect paths)", d.Val())
	}
	if d.NextBlock(0) {
		return d.Errf("spdy_origin_register takes no block, got %q (settings go in spdy_origin)", d.Val())
	}
	return nil
}

// routeScope is a route list a registrar answers for: a subroute, or one
// top-level route of a server (configs whose sites are not subroutes).
type routeScope struct {
	list  any    // *caddyhttp.Subroute or *caddyhttp.Server
	route string // with a Server: which of its routes, "route 3" or "error route 0"
}

// scopesOf lists the route lists that the module being provisioned in ctx
// is in, innermost first: every enclosing subroute, then its server's
// top-level route.
func scopesOf(ctx caddy.Context) []routeScope {
	var scopes []routeScope
	mods := ctx.Modules()
	for i := len(mods) - 1; i >= 0; i-- {
		if sr, ok := mods[i].(*caddyhttp.Subroute); ok {
			scopes = append(scopes, routeScope{list: sr})
		}
	}
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil {
		if kind, i, r := provisioningRoute(srv); r != nil {
			scopes = append(scopes, routeScope{list: srv, route: kind + " " + strconv.Itoa(i)})
		}
	}
	return scopes
}

// registrationRoutes holds, for each route list, the spdy_origin handlers
// provisioned anywhere inside it, in config order. Keys are module instances
// of one config, so configs never see each other's handlers; a handler is
// removed in its Cleanup.
var registrationRoutes = struct {
	sync.RWMutex
	m map[routeScope][]*Handler
}{m: make(map[routeScope][]*Handler)}

// addRegistrationRoute makes h known to the registrars of its route lists.
func addRegistrationRoute(h *Handler, scopes []routeScope) {
	registrationRoutes.Lock()
	defer registrationRoutes.Unlock()
	for _, s := range scopes {
		registrationRoutes.m[s] = append(registrationRoutes.m[s], h)
	}
}

// removeRegistrationRoute undoes addRegistrationRoute.
func removeRegistrationRoute(h *Handler, scopes []routeScope) {
	registrationRoutes.Lock()
	defer registrationRoutes.Unlock()
	for _, s := range scopes {
		hs := slices.DeleteFunc(registrationRoutes.m[s], func(x *Handler) bool { return x == h })
		if len(hs) == 0 {
			delete(registrationRoutes.m, s)
		} else {
			registrationRoutes.m[s] = hs
		}
	}
}

// registrationHandler returns the handler of scope whose connect path is
// path: the one that accepts the bearer token in hdr when several share the
// path, else the first. Nil if none has that path.
func registrationHandler(scope routeScope, path string, hdr http.Header) *Handler {
	registrationRoutes.RLock()
	defer registrationRoutes.RUnlock()
	var first *Handler
	for _, h := range registrationRoutes.m[scope] {
		if h.Connect != path {
			continue
		}
		if first == nil {
			first = h
		}
		if tok, ok := handshake.BearerToken(hdr); ok && h.matchToken(tok) != nil {
			return h
		}
	}
	return first
}

// warnIfShadowed logs a warning at load when client authentication runs
// before h for every request, with no spdy_origin_register ahead of it:
// agents would meet its refusal instead of registering. Only what surely
// applies to registrations counts (a handler in h's own route, or in an
// earlier route without matchers, of a subroute h is in); matchers that may
// exclude the connect path are given the benefit of the doubt.
func (h *Handler) warnIfShadowed(ctx caddy.Context) {
	if name := shadowingAuth(ctx.Modules()); name != "" {
		h.logger.Warn("spdy_origin: "+name+" runs before this handler's registration route, so agents will get its "+
			"refusal instead of registering; add spdy_origin_register to the site, which answers registrations "+
			"before client authentication (README: Protecting your site)",
			zap.String("pool", h.Pool), zap.String("connect", h.Connect))
	}
}

// shadowingAuth names the client authentication (basic_auth, forward_auth)
// that runs before the handler being provisioned, given the lineage of
// modules being provisioned; "" if none does, or a spdy_origin_register
// runs before it.
func shadowingAuth(lineage []caddy.Module) string {
	var subroutes []*caddyhttp.Subroute // outermost first: the order they run in
	for _, m := range lineage {
		if sr, ok := m.(*caddyhttp.Subroute); ok {
			subroutes = append(subroutes, sr)
		}
	}
	for i, sr := range subroutes {
		for _, r := range sr.Routes {
			if r.Handlers == nil {
				// The route being provisioned, which holds the handler:
				// itself in the innermost subroute, else in a subroute. The
				// handlers before the first of those run before it.
				holder := "subroute"
				if i == len(subroutes)-1 {
					holder = "spdy_origin"
				}
				if name, decided := rawAuthBefore(r.HandlersRaw, holder); decided {
					return name
				}
				break
			}
			if len(r.MatcherSets) > 0 {
				continue
			}
			for _, hd := range r.Handlers {
				switch hd := hd.(type) {
				case *Registrar:
					return ""
				case *caddyauth.Authentication:
					return "basic_auth"
				case *reverseproxy.Handler:
					if hd.Rewrite != nil && len(hd.HandleResponse) > 0 {
						return "forward_auth"
					}
				}
			}
		}
	}
	return ""
}

// rawAuthBefore is shadowingAuth over a route's handlers that are not
// provisioned yet, up to the first one named holder. decided is false if
// none of them settles it.
func rawAuthBefore(handlers []json.RawMessage, holder string) (name string, decided bool) {
	for _, raw := range handlers {
		var hd struct {
			Handler        string          `json:"handler"`
			Rewrite        json.RawMessage `json:"rewrite"`
			HandleResponse json.RawMessage `json:"handle_response"`
		}
		if json.Unmarshal(raw, &hd) != nil {
			continue
		}
		switch {
		case hd.Handler == "spdy_origin_register":
			return "", true
		case hd.Handler == holder:
			return "", false
		case hd.Handler == "authentication":
			return "basic_auth", true
		case hd.Handler == "reverse_proxy" && hd.Rewrite != nil && hd.HandleResponse != nil:
			return "forward_auth", true
		}
	}
	return "", false
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Registrar)(nil)
	_ caddyhttp.MiddlewareHandler = (*Registrar)(nil)
	_ caddyfile.Unmarshaler       = (*Registrar)(nil)
)
