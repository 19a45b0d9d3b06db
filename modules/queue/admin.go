package queue

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI is the admin.api.smtp_queue module: the outbound queue in
// Caddy's admin API.
//
//	GET    /smtp/queue              list entries (all spools)
//	GET    /smtp/queue/<id>         one entry
//	POST   /smtp/queue/flush        retry every waiting entry now
//	POST   /smtp/queue/<id>/flush   retry one entry now
//	DELETE /smtp/queue/<id>         delete an entry (no bounce is sent)
//	GET    /smtp/dkim               the DKIM DNS records to publish
//	GET    /smtp/tls-reports        the TLS report counts of the current period
//	POST   /smtp/tls-reports/send   end the period and send the TLS reports now, with
//	                                every report kept from earlier failed tries
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.smtp_queue", New: func() caddy.Module { return new(AdminAPI) }}
}

// Routes returns the admin routes.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/smtp/queue", Handler: caddy.AdminHandlerFunc(a.handleQueue)},
		{Pattern: "/smtp/queue/", Handler: caddy.AdminHandlerFunc(a.handleQueue)},
		{Pattern: "/smtp/dkim", Handler: caddy.AdminHandlerFunc(a.handleDKIM)},
		{Pattern: "/smtp/tls-reports", Handler: caddy.AdminHandlerFunc(a.handleTLSReports)},
		{Pattern: "/smtp/tls-reports/", Handler: caddy.AdminHandlerFunc(a.handleTLSReports)},
	}
}

// allEngines returns the running engines by spool path.
func allEngines() []*engine {
	var out []*engine
	engines.Range(func(_, v any) bool {
		out = append(out, v.(*engine))
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].sp.root < out[j].sp.root })
	return out
}

func apiErr(code int, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return caddy.APIError{HTTPStatus: code, Err: err, Message: err.Error()}
}

func (a *AdminAPI) handleQueue(w http.ResponseWriter, r *http.Request) error {
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, "/smtp/queue"), "/")
	parts := strings.Split(rest, "/")
	if rest == "" {
		parts = nil
	}
	switch {
	case len(parts) == 0:
		if r.Method != http.MethodGet {
			return apiErr(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
		}
		out := []EntryInfo{}
		for _, e := range allEngines() {
			out = append(out, e.List()...)
		}
		return writeJSON(w, out)
	case len(parts) == 1 && parts[0] == "flush":
		if r.Method != http.MethodPost {
			return apiErr(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
		}
		n := 0
		for _, e := range allEngines() {
			n += e.Flush("")
		}
		return writeJSON(w, map[string]int{"flushed": n})
	case len(parts) == 1:
		id := parts[0]
		switch r.Method {
		case http.MethodGet:
			for _, e := range allEngines() {
				if info, ok := e.Info(id); ok {
					return writeJSON(w, info)
				}
			}
			return apiErr(http.StatusNotFound, "no queue entry %q", id)
		case http.MethodDelete:
			for _, e := range allEngines() {
				if found, inFlight := e.Delete(id); found {
					return writeJSON(w, map[string]any{"deleted": id, "in_flight": inFlight})
				}
			}
			return apiErr(http.StatusNotFound, "no queue entry %q", id)
		}
		return apiErr(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
	case len(parts) == 2 && parts[1] == "flush":
		if r.Method != http.MethodPost {
			return apiErr(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
		}
		for _, e := range allEngines() {
			if e.Flush(parts[0]) > 0 {
				return writeJSON(w, map[string]int{"flushed": 1})
			}
		}
		return apiErr(http.StatusNotFound, "no queue entry %q", parts[0])
	}
	return apiErr(http.StatusNotFound, "no such endpoint")
}

// DKIMRecord is a DNS record to publish for a DKIM key.
type DKIMRecord struct {
	Domain   string `json:"domain"`
	Selector string `json:"selector"`
	// Algorithm of the key: rsa or ed25519.
	Algorithm string `json:"algorithm"`
	Name      string `json:"name"`
	Value     string `json:"value"`
	Zone      string `json:"zone"`
}

func (a *AdminAPI) handleDKIM(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return apiErr(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
	}
	seen := map[string]bool{}
	out := []DKIMRecord{}
	for _, e := range allEngines() {
		for _, keys := range e.settings().dkim {
			for _, k := range keys {
				if seen[k.Name()] {
					continue
				}
				seen[k.Name()] = true
				out = append(out, DKIMRecord{Domain: k.Domain, Selector: k.Selector, Algorithm: k.Algorithm,
					Name: k.Name(), Value: k.Record, Zone: k.ZoneLine()})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return writeJSON(w, out)
}

func (a *AdminAPI) handleTLSReports(w http.ResponseWriter, r *http.Request) error {
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, "/smtp/tls-reports"), "/")
	switch {
	case rest == "" && r.Method == http.MethodGet:
		out := map[string]any{}
		for _, e := range allEngines() {
			out[e.sp.root] = e.TLSReportCounts()
		}
		return writeJSON(w, out)
	case rest == "send" && r.Method == http.MethodPost:
		out := []ReportResult{}
		for _, e := range allEngines() {
			out = append(out, e.SendTLSReports(r.Context())...)
		}
		return writeJSON(w, out)
	case rest == "" || rest == "send":
		return apiErr(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
	}
	return apiErr(http.StatusNotFound, "no such endpoint")
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = (*AdminAPI)(nil)
