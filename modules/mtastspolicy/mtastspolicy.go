// Package mtastspolicy is the http.handlers.mta_sts module: it serves the
// MTA-STS policy (RFC 8461) of the smtp app's domains at
// /.well-known/mta-sts.txt, made from the running smtp app's servers.
package mtastspolicy

import (
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/mtasts"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("mta_sts", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("mta_sts", httpcaddyfile.Before, "respond")
}

// PolicyPath is where senders fetch the policy, on https://mta-sts.<domain>.
const PolicyPath = "/.well-known/mta-sts.txt"

// Handler serves the MTA-STS policy at /.well-known/mta-sts.txt and passes
// every other request on. The policy's mx lines are the hostnames of the
// smtp app's MX servers (those that do not require AUTH), read from the
// running app on each request, so a reload of the smtp config changes the
// policy at once (and `caddy smtp-dns` prints the new _mta-sts id to
// publish). Serve it on the site mta-sts.<domain> of each local domain.
type Handler struct {
	// Mode is "enforce" (senders deliver only over TLS with a certificate
	// valid for an MX listed), "testing" (they deliver anyway and report
	// failures through TLS-RPT) or "none" (withdraws a policy). Default:
	// enforce, since Caddy keeps a publicly trusted certificate on the MX
	// hostnames; testing when an MX server uses the internal CA or has
	// STARTTLS off.
	Mode string `json:"mode,omitempty"`

	// MaxAge is how long senders cache the policy. Default: 1 week; at
	// most 31557600s (about a year).
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// MX lists more MX host names (or *.domain patterns) to allow, besides
	// the smtp app's: backup MX hosts run elsewhere.
	MX []string `json:"mx,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.mta_sts", New: func() caddy.Module { return new(Handler) }}
}

// Provision checks the config.
func (h *Handler) Provision(caddy.Context) error { return h.Validate() }

// Validate checks the config, naming the field.
func (h *Handler) Validate() error {
	return mtasts.Validate(h.Mode, time.Duration(h.MaxAge), h.MX)
}

// Policy returns the policy of app with this handler's settings.
func (h *Handler) Policy(app *smtpapp.App) mtasts.Policy {
	return mtasts.Build(app, h.Mode, time.Duration(h.MaxAge), h.MX)
}

// ServeHTTP serves the policy, or passes the request on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.URL.Path != PolicyPath {
		return next.ServeHTTP(w, r)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
	}
	app := smtpapp.Current()
	if app == nil {
		return caddyhttp.Error(http.StatusServiceUnavailable, errNoApp)
	}
	text := h.Policy(app).Text()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(text)))
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write([]byte(text))
	}
	return nil
}

type noAppError struct{}

func (noAppError) Error() string { return "the smtp app is not running" }

var errNoApp = noAppError{}

// UnmarshalCaddyfile parses:
//
//	mta_sts [<mode>] {
//		mode enforce|testing|none
//		max_age <duration>
//		mx <host>...
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		h.Mode = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "mode":
			if !d.Args(&h.Mode) {
				return d.ArgErr()
			}
		case "max_age":
			var v string
			if !d.Args(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("max_age: %v", err)
			}
			h.MaxAge = caddy.Duration(dur)
		case "mx":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.MX = append(h.MX, args...)
		default:
			return d.Errf("unrecognized mta_sts option %q", d.Val())
		}
	}
	return nil
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
