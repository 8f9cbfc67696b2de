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

// adminPools serves GET /spdy_origin/pools on Caddy's admin API: every live
// pool with its agent sessions (remote address, agent identity, connected
// since, open streams, RTT, byte counters).
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
