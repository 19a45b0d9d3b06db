package ban

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/limitstore"
)

// AdminAPI is the admin.api.smtp_bans module, the bans of the ban
// handlers of the running config:
//
//	GET    /smtp/bans                list the bans: [{network, zone, reason, since, until}]
//	POST   /smtp/bans                ban by hand: {"network": "192.0.2.7", "duration": "2h", "zone": "default", "reason": "..."}
//	DELETE /smtp/bans/<address|CIDR> lift the ban that holds the address (in every zone, or ?zone=<name>)
//
// With the Redis store, the lists and changes are those of every
// instance sharing it.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.smtp_bans", New: func() caddy.Module { return new(AdminAPI) }}
}

// Routes returns the admin routes.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/smtp/bans", Handler: caddy.AdminHandlerFunc(serveBans)},
		{Pattern: "/smtp/bans/", Handler: caddy.AdminHandlerFunc(serveBan)},
	}
}

func apiError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// selected returns the live zones, or the one named in ?zone=.
func selected(r *http.Request) ([]*Ban, error) {
	all := zones()
	name := r.URL.Query().Get("zone")
	if name == "" {
		return all, nil
	}
	for _, z := range all {
		if z.Zone == name {
			return []*Ban{z}, nil
		}
	}
	return nil, apiError(http.StatusNotFound, "no ban zone %q in the running config", name)
}

func serveBans(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet:
		zs, err := selected(r)
		if err != nil {
			return err
		}
		bans := []limitstore.Ban{}
		for _, z := range zs {
			list, err := z.store.ListBans(r.Context(), z.banPrefix())
			if err != nil {
				return apiError(http.StatusBadGateway, "zone %s: listing bans in %s: %v", z.Zone, z.store, err)
			}
			bans = append(bans, list...)
		}
		sort.Slice(bans, func(i, j int) bool { return bans[i].Since.Before(bans[j].Since) })
		return writeJSON(w, http.StatusOK, map[string]any{"bans": bans})
	case http.MethodPost:
		return addBan(w, r)
	}
	return apiError(http.StatusMethodNotAllowed, "method not allowed")
}

func addBan(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Network  string `json:"network"`
		Duration string `json:"duration"`
		Zone     string `json:"zone"`
		Reason   string `json:"reason"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		return apiError(http.StatusBadRequest, "decoding request: %v", err)
	}
	if req.Zone == "" {
		req.Zone = "default"
	}
	var z *Ban
	for _, h := range zones() {
		if h.Zone == req.Zone {
			z = h
		}
	}
	if z == nil {
		return apiError(http.StatusNotFound, "no ban zone %q in the running config", req.Zone)
	}
	d := time.Duration(z.BanDuration)
	if req.Duration != "" {
		var err error
		if d, err = caddy.ParseDuration(req.Duration); err != nil || d <= 0 {
			return apiError(http.StatusBadRequest, "duration: %q is not a positive duration", req.Duration)
		}
	}
	network := ""
	if p, err := netip.ParsePrefix(req.Network); err == nil {
		network = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked().String()
	} else if ip, err := netip.ParseAddr(req.Network); err == nil {
		network = z.network(ip)
	} else {
		return apiError(http.StatusBadRequest, "network: %q is not an IP address or CIDR", req.Network)
	}
	if req.Reason == "" {
		req.Reason = "banned through the admin API"
	}
	now := time.Now()
	b := limitstore.Ban{Network: network, Zone: z.Zone, Reason: req.Reason, Since: now, Until: now.Add(d)}
	if err := z.store.SetBan(r.Context(), z.banKey(network), b); err != nil {
		return apiError(http.StatusBadGateway, "storing the ban: %v", err)
	}
	bansTotal.WithLabelValues(z.Zone).Inc()
	z.logger.Warn("banned through the admin API", zap.String("network", network), zap.Time("until", b.Until), zap.String("reason", b.Reason))
	return writeJSON(w, http.StatusOK, b)
}

func serveBan(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodDelete {
		return apiError(http.StatusMethodNotAllowed, "method not allowed")
	}
	target := strings.TrimPrefix(r.URL.Path, "/smtp/bans/")
	if target == "" {
		return apiError(http.StatusBadRequest, "give the address or network: DELETE /smtp/bans/<address|CIDR>")
	}
	zs, err := selected(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	lifted := []limitstore.Ban{}
	for _, z := range zs {
		b, err := z.lift(ctx, target)
		if err != nil {
			return apiError(http.StatusBadRequest, "zone %s: %v", z.Zone, err)
		}
		if b != nil {
			lifted = append(lifted, *b)
		}
	}
	if len(lifted) == 0 {
		return apiError(http.StatusNotFound, "no ban holds %s", target)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"lifted": lifted})
}

var _ caddy.AdminRouter = AdminAPI{}
