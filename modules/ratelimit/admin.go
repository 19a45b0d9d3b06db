package ratelimit

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

// AdminAPI is the admin.api.smtp_ratelimit module: GET /smtp/ratelimit
// lists the latest refusals of the ratelimit handlers of this process
// (up to 256, newest first): when, which server, zone and limit, who.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.smtp_ratelimit", New: func() caddy.Module { return new(AdminAPI) }}
}

// Routes returns the admin routes.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/smtp/ratelimit", Handler: caddy.AdminHandlerFunc(serveRecent)}}
}

func serveRecent(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"recent_refusals": Recent()})
}

var _ caddy.AdminRouter = AdminAPI{}
