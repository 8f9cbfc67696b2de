package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminPools{})
}

// adminPools adds GET /spdy_origin/pools to Caddy's admin API: a JSON
// array of every live pool ("pool", "sessions") with its agent sessions:
// "id", "remote_addr", "agent" (the name, version, instance and connection
// index it registered with), the "capabilities" and "hosts" it announced,
// the "token_hosts" its token allows, "connected_since", "open_streams",
// "upgraded_streams", "streams_total", "bytes_from_agent",
// "bytes_to_agent", "rtt" and "going_away". It is mounted with the admin
// API and has no settings and no Caddyfile syntax; for example:
//
//	curl -s localhost:2019/spdy_origin/pools
//
// Other methods get 405.
type adminPools struct{}

// CaddyModule returns the Caddy module information.
func (adminPools) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.spdy_origin",
		New: func() caddy.Module { return new(adminPools) },
	}
}

// Routes returns the admin routes.
func (a adminPools) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: "/spdy_origin/pools",
		Handler: caddy.AdminHandlerFunc(a.handlePools),
	}}
}

func (adminPools) handlePools(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	list := allPools()
	if list == nil {
		list = []poolSnapshot{}
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(list); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("encoding pools: %w", err)}
	}
	return nil
}

var _ caddy.AdminRouter = (*adminPools)(nil)
