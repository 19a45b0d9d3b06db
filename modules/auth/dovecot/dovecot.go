// Package dovecot is the smtp.auth.dovecot module: accounts checked
// against Dovecot's authentication service, so that one password
// database serves IMAP and SMTP. Logins go to the auth-client socket
// (SASL PLAIN; an SMTP AUTH LOGIN is passed on as PLAIN, the server has
// the user name and password either way), recipient lookups to the
// auth-userdb socket (the auth-master protocol's USER request).
package dovecot

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Dovecot{})
}

// Default socket paths, those of Debian's and Dovecot's default config.
const (
	DefaultAuth   = "/run/dovecot/auth-client"
	DefaultUserdb = "/run/dovecot/auth-userdb"
)

// DefaultTimeout bounds each request to Dovecot.
const DefaultTimeout = 5 * time.Second

// Dovecot is an accounts provider that asks Dovecot's auth service.
//
// A socket address is a unix socket path (absolute, or with a `unix/`
// prefix) or a TCP `host:port` (optionally with a `tcp/` prefix) of an
// inet_listener in Dovecot's `service auth`.
//
// The account of a login is the user name Dovecot answers with (after
// its auth_username_format), and the account of a recipient address
// the user name its userdb answers with, so both must name users the
// same way (as one Dovecot does for IMAP). When Dovecot's user names
// have no domain, set domain, and strip_domain if the userdb only knows
// bare names.
//
// When Dovecot cannot be reached or does not answer within timeout, a
// login gets a temporary failure (454 4.7.0), never "wrong password",
// and a recipient 451 4.3.0.
type Dovecot struct {
	// Auth is the address of the auth-client socket, for logins.
	// Default: /run/dovecot/auth-client.
	Auth string `json:"auth,omitempty"`

	// Userdb is the address of the auth-userdb (or auth-master) socket,
	// for recipient lookups. Default: /run/dovecot/auth-userdb.
	Userdb string `json:"userdb,omitempty"`

	// Timeout bounds each request, connecting included. It must be
	// longer than Dovecot's auth_failure_delay (default 2s), after
	// which Dovecot answers a wrong password. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Service is the service name sent with each request, which
	// Dovecot's passdb and userdb rules see as %s (or %{service}).
	// Default: smtp.
	Service string `json:"service,omitempty"`

	// Domain is added ("@" and the domain) to a user name that Dovecot
	// answers without one, to make the account an address.
	Domain string `json:"domain,omitempty"`

	// StripDomain makes recipient lookups ask the userdb for the local
	// part only (for a userdb of bare user names, with domain set).
	StripDomain bool `json:"strip_domain,omitempty"`

	logger  *zap.Logger
	auth    *endpoint
	userdb  *endpoint
	timeout time.Duration
}

// CaddyModule returns the Caddy module information.
func (Dovecot) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.auth.dovecot", New: func() caddy.Module { return new(Dovecot) }}
}

// Provision checks the config; it does not connect (connections are
// made on first use, so `caddy validate` needs no running Dovecot).
func (d *Dovecot) Provision(ctx caddy.Context) error {
	d.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	if d.Auth == "" {
		d.Auth = DefaultAuth
	}
	if d.Userdb == "" {
		d.Userdb = DefaultUserdb
	}
	if d.Service == "" {
		d.Service = "smtp"
	}
	if strings.ContainsAny(d.Service, "\t\r\n\x00\x01") {
		return fmt.Errorf("service: %q has control characters", d.Service)
	}
	if strings.Contains(d.Domain, "@") {
		return fmt.Errorf("domain: %q is not a domain", d.Domain)
	}
	if d.StripDomain && d.Domain == "" {
		return fmt.Errorf("strip_domain needs domain (the domain of the accounts)")
	}
	d.Domain = strings.ToLower(d.Domain)
	d.timeout = DefaultTimeout
	if d.Timeout > 0 {
		d.timeout = time.Duration(d.Timeout)
	}
	network, addr, err := ParseAddress(repl.ReplaceKnown(d.Auth, ""))
	if err != nil {
		return fmt.Errorf("auth: %v", err)
	}
	d.auth = newEndpoint(network, addr, false)
	network, addr, err = ParseAddress(repl.ReplaceKnown(d.Userdb, ""))
	if err != nil {
		return fmt.Errorf("userdb: %v", err)
	}
	d.userdb = newEndpoint(network, addr, true)
	return nil
}

// Cleanup closes the connections to Dovecot.
func (d *Dovecot) Cleanup() error {
	if d.auth != nil {
		d.auth.close()
	}
	if d.userdb != nil {
		d.userdb.close()
	}
	return nil
}

// ParseAddress parses a socket address: an absolute path or unix/<path>
// is a unix socket, host:port or tcp/host:port a TCP address.
func ParseAddress(s string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(s, "unix/"):
		network, addr = "unix", strings.TrimPrefix(s, "unix/")
	case strings.HasPrefix(s, "/"):
		network, addr = "unix", s
	case strings.HasPrefix(s, "tcp/"):
		network, addr = "tcp", strings.TrimPrefix(s, "tcp/")
	default:
		network, addr = "tcp", s
	}
	if network == "unix" {
		if addr == "" {
			return "", "", fmt.Errorf("%q: no socket path", s)
		}
		return network, addr, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" {
		return "", "", fmt.Errorf("%q is neither a unix socket path nor host:port", s)
	}
	return network, addr, nil
}

// request bounds ctx by the timeout.
func (d *Dovecot) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.timeout)
}

// account makes a user name that Dovecot answered with an account.
func (d *Dovecot) account(user string) string {
	if d.Domain != "" && !strings.Contains(user, "@") {
		return user + "@" + d.Domain
	}
	return user
}

// Authenticate sends the login to the auth-client socket as SASL PLAIN.
func (d *Dovecot) Authenticate(ctx context.Context, username, password string) (string, error) {
	if username == "" || strings.ContainsRune(username, 0) || strings.ContainsRune(password, 0) {
		return "", smtpapp.ErrAuthFailed
	}
	ctx, cancel := d.request(ctx)
	defer cancel()
	// "secured": the session offers AUTH only under TLS, so Dovecot's
	// disable_plaintext_auth must not refuse the login.
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + username + "\x00" + password))
	params := clientParams(ctx)
	r, err := d.auth.do(ctx, func(id string) string {
		return "AUTH\t" + id + "\tPLAIN\tservice=" + d.Service + "\tsecured" + params + "\tresp=" + resp
	})
	if err != nil {
		return "", err
	}
	switch r.Cmd {
	case "OK":
		user, _ := r.param("user")
		if user == "" {
			user = username
		}
		return d.account(user), nil
	case "FAIL":
		if r.tempFail() {
			reason, _ := r.param("reason")
			return "", fmt.Errorf("Dovecot auth service: temporary failure: %s", reason)
		}
		return "", smtpapp.ErrAuthFailed
	case "CONT":
		return "", errors.New("Dovecot auth service asked for more than PLAIN's one response")
	}
	return "", fmt.Errorf("Dovecot auth service answered AUTH with %s", r.Cmd)
}

// clientParams tells Dovecot the SMTP client's address and ours, for
// its logs, its passdb rules (allow_nets, %{rip}) and its penalty for
// addresses with failed logins. Without them (a login from no SMTP
// session) it asks for no penalty: Dovecot would otherwise count every
// failure against one shared unknown address and slow every login down.
func clientParams(ctx context.Context) string {
	c := smtpapp.ConnFrom(ctx)
	if c == nil || !c.RemoteIP().IsValid() {
		return "\tno-penalty"
	}
	p := fmt.Sprintf("\trip=%s\trport=%d", c.RemoteIP().Unmap(), c.RemoteAddr().Port())
	if l := c.LocalAddr(); l.IsValid() {
		p += fmt.Sprintf("\tlip=%s\tlport=%d", l.Addr().Unmap(), l.Port())
	}
	return p
}

// Lookup asks the userdb whether the address (or its local part, with
// strip_domain) is a user.
func (d *Dovecot) Lookup(ctx context.Context, address string) (string, error) {
	user := address
	if d.StripDomain {
		if i := strings.LastIndexByte(user, '@'); i >= 0 {
			user = user[:i]
		}
	}
	if user == "" {
		return "", smtpapp.ErrNoSuchUser
	}
	ctx, cancel := d.request(ctx)
	defer cancel()
	r, err := d.userdb.do(ctx, func(id string) string {
		return "USER\t" + id + "\t" + escape(user) + "\tservice=" + d.Service
	})
	if err != nil {
		return "", err
	}
	switch r.Cmd {
	case "USER":
		name := user
		if len(r.Args) > 0 && r.Args[0] != "" {
			name = r.Args[0]
		}
		return d.account(name), nil
	case "NOTFOUND":
		return "", smtpapp.ErrNoSuchUser
	case "FAIL":
		reason, _ := r.param("reason")
		return "", fmt.Errorf("Dovecot userdb lookup failed: %s", reason)
	}
	return "", fmt.Errorf("Dovecot auth service answered USER with %s", r.Cmd)
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	dovecot [<auth socket>] {
//		auth     <unix path | host:port>
//		userdb   <unix path | host:port>
//		timeout  <duration>
//		service  <name>
//		domain   <domain>
//		strip_domain
//	}
func (d *Dovecot) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	if err := caddyargs.Header(disp, &d.Auth); err != nil {
		return err
	}
	for disp.NextBlock(0) {
		switch opt := disp.Val(); opt {
		case "auth", "userdb", "service", "domain":
			var v string
			if !disp.Args(&v) || disp.NextArg() {
				return disp.ArgErr()
			}
			switch opt {
			case "auth":
				d.Auth = v
			case "userdb":
				d.Userdb = v
			case "service":
				d.Service = v
			case "domain":
				d.Domain = v
			}
		case "timeout":
			var err error
			if d.Timeout, err = caddyargs.Duration(disp); err != nil {
				return err
			}
		case "strip_domain":
			if disp.NextArg() {
				return disp.ArgErr()
			}
			d.StripDomain = true
		default:
			return disp.Errf("unrecognized dovecot accounts option %q", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Dovecot)(nil)
	_ caddy.CleanerUpper    = (*Dovecot)(nil)
	_ caddyfile.Unmarshaler = (*Dovecot)(nil)
	_ smtpapp.Accounts      = (*Dovecot)(nil)
)
