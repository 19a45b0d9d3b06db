// Package autoconfig is the http.handlers.mail_autoconfig module: mail
// client autoconfiguration for the smtp app's domains, so that a user
// types only an address and a password. It serves:
//
//   - Thunderbird autoconfig: GET /mail/config-v1.1.xml and
//     /.well-known/autoconfig/mail/config-v1.1.xml (query parameter
//     emailaddress), on autoconfig.<domain> or the domain itself;
//   - Microsoft Autodiscover: POST /autodiscover/autodiscover.xml (any
//     case), the POX request naming EMailAddress, on autodiscover.<domain>;
//   - an Apple configuration profile: GET /mail/config.mobileconfig
//     (query parameter emailaddress), for iOS and macOS Mail.
//
// The submission servers (host, port, implicit TLS or STARTTLS) come from
// the running smtp app's servers that require AUTH, read on each request;
// the IMAP server from this handler's config, since the smtp app does not
// serve IMAP.
package autoconfig

import (
	"crypto/sha256"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("mail_autoconfig", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("mail_autoconfig", httpcaddyfile.Before, "respond")
}

// The paths served.
const (
	ThunderbirdPath      = "/mail/config-v1.1.xml"
	ThunderbirdWellKnown = "/.well-known/autoconfig/mail/config-v1.1.xml"
	AutodiscoverPath     = "/autodiscover/autodiscover.xml"
	MobileconfigPath     = "/mail/config.mobileconfig"
)

// Handler serves mail client autoconfiguration; other requests pass on.
type Handler struct {
	// IMAP is the server where users read their mail (Dovecot, say). Not
	// set: the answers name no incoming server (Thunderbird then asks the
	// user), and the Apple profile is not served (it needs one).
	IMAP *IMAPServer `json:"imap,omitempty"`

	// DisplayName is the provider's name shown by clients. Default: the
	// domain.
	DisplayName string `json:"display_name,omitempty"`
}

// IMAPServer is where mail is read.
type IMAPServer struct {
	// Host name of the IMAP server. Required.
	Host string `json:"host,omitempty"`
	// Port. Default: 993 with security "tls", 143 with "starttls".
	Port int `json:"port,omitempty"`
	// Security is "tls" (implicit TLS, default) or "starttls".
	Security string `json:"security,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.mail_autoconfig", New: func() caddy.Module { return new(Handler) }}
}

// Provision fills the defaults and checks the config.
func (h *Handler) Provision(caddy.Context) error {
	if h.IMAP != nil {
		if h.IMAP.Security == "" {
			h.IMAP.Security = "tls"
		}
		if h.IMAP.Port == 0 {
			h.IMAP.Port = 993
			if h.IMAP.Security == "starttls" {
				h.IMAP.Port = 143
			}
		}
	}
	return h.Validate()
}

// Validate checks the config, naming the field.
func (h *Handler) Validate() error {
	if h.IMAP == nil {
		return nil
	}
	if !smtpapp.ValidHostname(strings.TrimSuffix(h.IMAP.Host, ".")) {
		return fmt.Errorf("imap.host: %q is not a host name", h.IMAP.Host)
	}
	if h.IMAP.Port < 0 || h.IMAP.Port > 65535 {
		return fmt.Errorf("imap.port: %d is not a port", h.IMAP.Port)
	}
	switch h.IMAP.Security {
	case "", "tls", "starttls":
	default:
		return fmt.Errorf("imap.security: %q is not tls or starttls", h.IMAP.Security)
	}
	return nil
}

// ServeHTTP answers the autoconfiguration requests and passes others on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var serve func(http.ResponseWriter, *http.Request, *smtpapp.App) error
	switch p := r.URL.Path; {
	case p == ThunderbirdPath || p == ThunderbirdWellKnown:
		serve = h.serveThunderbird
	case strings.EqualFold(p, AutodiscoverPath):
		serve = h.serveAutodiscover
	case p == MobileconfigPath:
		serve = h.serveMobileconfig
	default:
		return next.ServeHTTP(w, r)
	}
	app := smtpapp.Current()
	if app == nil {
		return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("the smtp app is not running"))
	}
	return serve(w, r, app)
}

// account is the user and domain a request is about.
type account struct {
	address string // "" when the client gave none
	domain  string
}

// accountFor finds the domain of a request: the address's (which must be
// local), else the Host's (autoconfig.<domain>, autodiscover.<domain>,
// mta-sts.<domain> or <domain>), else the first local domain.
func accountFor(app *smtpapp.App, address string, r *http.Request) (account, error) {
	domains := app.Domains()
	if len(domains) == 0 {
		return account{}, caddyhttp.Error(http.StatusNotFound, fmt.Errorf("no local domains"))
	}
	if address != "" {
		a, err := smtpapp.ParseAddressUTF8(address) // an IDN in either form
		if err != nil || a.Local == "" {
			return account{}, caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("emailaddress: %q is not an address", address))
		}
		if !app.IsLocalDomain(a.Domain) {
			return account{}, caddyhttp.Error(http.StatusNotFound, fmt.Errorf("%s is not a local domain", a.Domain))
		}
		return account{address: a.Local + "@" + a.Domain, domain: a.Domain}, nil
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, prefix := range []string{"", "autoconfig.", "autodiscover.", "mta-sts."} {
		if d := strings.TrimPrefix(host, prefix); (prefix == "" || d != host) && slices.Contains(domains, d) {
			return account{domain: d}, nil
		}
	}
	return account{domain: domains[0]}, nil
}

// outgoing lists the submission endpoints, implicit TLS first (RFC 8314
// 3.3 prefers it), then STARTTLS; never a plaintext one.
func outgoing(app *smtpapp.App) []smtpapp.Endpoint {
	var out []smtpapp.Endpoint
	for _, sec := range []string{"tls", "starttls"} {
		for _, e := range app.SubmissionEndpoints() {
			if e.Security == sec {
				out = append(out, e)
			}
		}
	}
	return out
}

func (h *Handler) displayName(domain string) string {
	if h.DisplayName != "" {
		return h.DisplayName
	}
	return domain
}

// Thunderbird's clientConfig (https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat).
type clientConfig struct {
	XMLName  xml.Name      `xml:"clientConfig"`
	Version  string        `xml:"version,attr"`
	Provider emailProvider `xml:"emailProvider"`
}

type emailProvider struct {
	ID               string         `xml:"id,attr"`
	Domain           string         `xml:"domain"`
	DisplayName      string         `xml:"displayName"`
	DisplayShortName string         `xml:"displayShortName"`
	Incoming         []serverConfig `xml:"incomingServer"`
	Outgoing         []serverConfig `xml:"outgoingServer"`
}

type serverConfig struct {
	Type           string `xml:"type,attr"`
	Hostname       string `xml:"hostname"`
	Port           int    `xml:"port"`
	SocketType     string `xml:"socketType"`
	Username       string `xml:"username"`
	Authentication string `xml:"authentication"`
}

func socketType(security string) string {
	switch security {
	case "tls":
		return "SSL"
	case "starttls":
		return "STARTTLS"
	}
	return "plain"
}

func (h *Handler) serveThunderbird(w http.ResponseWriter, r *http.Request, app *smtpapp.App) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
	}
	acct, err := accountFor(app, r.URL.Query().Get("emailaddress"), r)
	if err != nil {
		return err
	}
	cfg := clientConfig{Version: "1.1", Provider: emailProvider{
		ID: acct.domain, Domain: acct.domain,
		DisplayName: h.displayName(acct.domain), DisplayShortName: h.displayName(acct.domain),
	}}
	if h.IMAP != nil {
		cfg.Provider.Incoming = append(cfg.Provider.Incoming, serverConfig{
			Type: "imap", Hostname: h.IMAP.Host, Port: h.IMAP.Port, SocketType: socketType(h.IMAP.Security),
			Username: "%EMAILADDRESS%", Authentication: "password-cleartext",
		})
	}
	for _, e := range outgoing(app) {
		cfg.Provider.Outgoing = append(cfg.Provider.Outgoing, serverConfig{
			Type: "smtp", Hostname: e.Host, Port: int(e.Port), SocketType: socketType(e.Security),
			Username: "%EMAILADDRESS%", Authentication: "password-cleartext",
		})
	}
	return writeXML(w, r, "application/xml; charset=utf-8", cfg)
}

// Autodiscover (POX, the "outlook" schemas of 2006).
const (
	autodiscoverResponseNS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
	outlookResponseNS      = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)

type autodiscoverRequest struct {
	XMLName xml.Name `xml:"Autodiscover"`
	Request struct {
		EMailAddress             string `xml:"EMailAddress"`
		AcceptableResponseSchema string `xml:"AcceptableResponseSchema"`
	} `xml:"Request"`
}

type autodiscoverResponse struct {
	XMLName  xml.Name `xml:"Autodiscover"`
	NS       string   `xml:"xmlns,attr"`
	Response struct {
		NS      string `xml:"xmlns,attr"`
		Account struct {
			AccountType string         `xml:"AccountType"`
			Action      string         `xml:"Action"`
			Protocols   []autodiscProt `xml:"Protocol"`
		} `xml:"Account"`
	} `xml:"Response"`
}

type autodiscProt struct {
	Type         string `xml:"Type"`
	Server       string `xml:"Server"`
	Port         int    `xml:"Port"`
	LoginName    string `xml:"LoginName"`
	DomainReq    string `xml:"DomainRequired"`
	SPA          string `xml:"SPA"`
	SSL          string `xml:"SSL"`
	Encryption   string `xml:"Encryption"`
	AuthRequired string `xml:"AuthRequired"`
}

func encryption(security string) (ssl, enc string) {
	switch security {
	case "tls":
		return "on", "SSL"
	case "starttls":
		return "on", "TLS"
	}
	return "off", "None"
}

func (h *Handler) serveAutodiscover(w http.ResponseWriter, r *http.Request, app *smtpapp.App) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
	}
	var req autodiscoverRequest
	if err := xml.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("autodiscover request: %v", err))
	}
	email := strings.TrimSpace(req.Request.EMailAddress)
	if email == "" {
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("autodiscover request: no EMailAddress"))
	}
	acct, err := accountFor(app, email, r)
	if err != nil {
		return err
	}
	resp := autodiscoverResponse{NS: autodiscoverResponseNS}
	resp.Response.NS = outlookResponseNS
	resp.Response.Account.AccountType = "email"
	resp.Response.Account.Action = "settings"
	if h.IMAP != nil {
		ssl, enc := encryption(h.IMAP.Security)
		resp.Response.Account.Protocols = append(resp.Response.Account.Protocols, autodiscProt{
			Type: "IMAP", Server: h.IMAP.Host, Port: h.IMAP.Port, LoginName: acct.address,
			DomainReq: "off", SPA: "off", SSL: ssl, Encryption: enc, AuthRequired: "on",
		})
	}
	for _, e := range outgoing(app) {
		ssl, enc := encryption(e.Security)
		resp.Response.Account.Protocols = append(resp.Response.Account.Protocols, autodiscProt{
			Type: "SMTP", Server: e.Host, Port: int(e.Port), LoginName: acct.address,
			DomainReq: "off", SPA: "off", SSL: ssl, Encryption: enc, AuthRequired: "on",
		})
	}
	return writeXML(w, r, "application/xml; charset=utf-8", resp)
}

func (h *Handler) serveMobileconfig(w http.ResponseWriter, r *http.Request, app *smtpapp.App) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
	}
	email := r.URL.Query().Get("emailaddress")
	if email == "" {
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("emailaddress: required"))
	}
	acct, err := accountFor(app, email, r)
	if err != nil {
		return err
	}
	if h.IMAP == nil {
		return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("no imap server configured: an Apple profile needs one"))
	}
	out := outgoing(app)
	if len(out) == 0 {
		return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("the smtp app has no submission server"))
	}
	body, err := h.mobileconfig(acct, out[0])
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-apple-aspen-config")
	w.Header().Set("Content-Disposition", `attachment; filename="`+acct.domain+`.mobileconfig"`)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
	return nil
}

// stableUUID is a UUID (version 8 layout) derived from its parts, so that
// a profile downloaded again replaces the installed one.
func stableUUID(parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	b := sum[:16]
	b[6] = b[6]&0x0f | 0x80
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func writeXML(w http.ResponseWriter, r *http.Request, contentType string, v any) error {
	body, err := xml.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	body = append([]byte(xml.Header), append(body, '\n')...)
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return nil
}

// UnmarshalCaddyfile parses:
//
//	mail_autoconfig {
//		imap <host> [<port>] [tls|starttls]
//		display_name <name>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "imap":
			args := d.RemainingArgs()
			if len(args) == 0 || len(args) > 3 {
				return d.ArgErr()
			}
			s := &IMAPServer{Host: args[0]}
			for _, a := range args[1:] {
				switch a {
				case "tls", "starttls":
					s.Security = a
				default:
					p, err := strconv.Atoi(a)
					if err != nil {
						return d.Errf("imap: %q is not a port, tls or starttls", a)
					}
					s.Port = p
				}
			}
			h.IMAP = s
		case "display_name":
			if !d.Args(&h.DisplayName) {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized mail_autoconfig option %q", d.Val())
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
