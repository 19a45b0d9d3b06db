// Package caddyfile parses the `smtp` global option of the Caddyfile into
// the smtp app's JSON. App- and server-level directives are parsed here;
// each module parses its own block (UnmarshalCaddyfile).
package caddyfile

import (
	"encoding/json"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/dustin/go-humanize"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("smtp", parseGlobal)
}

// parseGlobal parses:
//
//	smtp {
//		local_domains <domain>...
//		hostname <name>
//		postmaster <address>
//		accounts <module> ...
//		local_delivery <module> ...
//		outbound <module> ...
//		resolver <ip[:port]>...
//		grace_period <duration>
//		spool_dir <path>
//		server <name> {
//			...
//		}
//	}
//
// With no server, the three standard servers are written out in full
// (smtpapp.DefaultServers), with an outbound queue unless one is given,
// so that `caddy adapt` shows everything that will run.
func parseGlobal(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the smtp global option may be given only once")
	}
	app := &smtpapp.App{Servers: map[string]*smtpapp.Server{}}
	var warnings []caddyconfig.Warning
	d.Next() // "smtp"
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		switch dir := d.Val(); dir {
		case "local_domains":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			app.LocalDomains = append(app.LocalDomains, args...)
		case "accounts":
			raw, err := loadModule(d, "smtp.auth.", "provider", &warnings)
			if err != nil {
				return nil, err
			}
			app.AccountsRaw = raw
		case "local_delivery":
			raw, err := loadModule(d, "smtp.delivery.", "target", &warnings)
			if err != nil {
				return nil, err
			}
			app.LocalDeliveryRaw = raw
		case "outbound":
			raw, err := loadModule(d, "smtp.delivery.", "target", &warnings)
			if err != nil {
				return nil, err
			}
			app.OutboundRaw = raw
		case "resolver":
			rc := &smtpapp.ResolverConfig{Servers: d.RemainingArgs()}
			for d.NextBlock(1) {
				switch d.Val() {
				case "servers":
					rc.Servers = append(rc.Servers, d.RemainingArgs()...)
				case "timeout":
					dur, err := parseDuration(d)
					if err != nil {
						return nil, err
					}
					rc.Timeout = dur
				default:
					return nil, d.Errf("unrecognized resolver option %q", d.Val())
				}
			}
			app.Resolver = rc
		case "hostname":
			if !d.Args(&app.Hostname) {
				return nil, d.ArgErr()
			}
		case "postmaster":
			if !d.Args(&app.Postmaster) {
				return nil, d.ArgErr()
			}
		case "catch_all": // catch_all <domain> <account>
			var domain, account string
			if !d.Args(&domain, &account) {
				return nil, d.ArgErr()
			}
			if app.CatchAll == nil {
				app.CatchAll = map[string]string{}
			}
			app.CatchAll[domain] = account
		case "grace_period":
			dur, err := parseDuration(d)
			if err != nil {
				return nil, err
			}
			app.GracePeriod = dur
		case "spool_dir":
			if !d.Args(&app.SpoolDir) {
				return nil, d.ArgErr()
			}
		case "body_memory":
			var v string
			if !d.Args(&v) {
				return nil, d.ArgErr()
			}
			n, err := humanize.ParseBytes(v)
			if err != nil {
				return nil, d.Errf("body_memory: %v", err)
			}
			app.BodyMemory = int64(n)
		case "server":
			var name string
			if !d.Args(&name) {
				return nil, d.ArgErr()
			}
			if _, dup := app.Servers[name]; dup {
				return nil, d.Errf("server %q is defined twice", name)
			}
			srv, err := parseServer(d, &warnings)
			if err != nil {
				return nil, err
			}
			app.Servers[name] = srv
		default:
			return nil, d.Errf("unrecognized smtp option %q", dir)
		}
	}
	if len(app.Servers) == 0 && len(app.LocalDomains) == 0 {
		return nil, d.Err("smtp: local_domains is required for the default servers (or define a server)")
	}
	if err := app.FillDefaults(); err != nil {
		return nil, d.Errf("smtp: %v", err)
	}
	return httpcaddyfile.App{Name: "smtp", Value: caddyconfig.JSON(app, &warnings)}, nil
}

func parseServer(d *caddyfile.Dispenser, warnings *[]caddyconfig.Warning) (*smtpapp.Server, error) {
	srv := &smtpapp.Server{}
	for d.NextBlock(1) {
		switch dir := d.Val(); dir {
		case "listen":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.ArgErr()
			}
			srv.Listen = append(srv.Listen, args...)
		case "implicit_tls":
			srv.ImplicitTLS = true
		case "hostname":
			if !d.Args(&srv.Hostname) {
				return nil, d.ArgErr()
			}
		case "require_auth":
			srv.RequireAuth = true
		case "allow_local_senders":
			srv.AllowLocalSenders = true
		case "trusted_networks":
			srv.TrustedNetworks = append(srv.TrustedNetworks, d.RemainingArgs()...)
		case "tls":
			t, err := parseTLS(d)
			if err != nil {
				return nil, err
			}
			srv.TLS = t
		case "spam":
			p := &smtpapp.SpamPolicy{}
			for d.NextBlock(2) {
				var v string
				field := d.Val()
				if !d.Args(&v) {
					return nil, d.ArgErr()
				}
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return nil, d.Errf("spam %s: %v", field, err)
				}
				switch field {
				case "tag_score":
					p.TagScore = &f
				case "reject_score":
					p.RejectScore = &f
				default:
					return nil, d.Errf("unrecognized spam option %q", field)
				}
			}
			srv.Spam = p
		case "limits":
			lim, err := parseLimits(d)
			if err != nil {
				return nil, err
			}
			srv.Limits = lim
		case "handler":
			raw, err := loadModule(d, "smtp.handlers.", "handler", warnings)
			if err != nil {
				return nil, err
			}
			srv.HandlersRaw = append(srv.HandlersRaw, raw)
		default:
			return nil, d.Errf("unrecognized server option %q", dir)
		}
	}
	return srv, nil
}

// parseTLS parses `tls off`, `tls internal`, or a block.
func parseTLS(d *caddyfile.Dispenser) (*smtpapp.ServerTLS, error) {
	t := &smtpapp.ServerTLS{}
	for d.NextArg() {
		switch d.Val() {
		case "off":
			t.DisableSTARTTLS = true
		case "internal":
			t.Issuer = "internal"
		default:
			return nil, d.Errf("unrecognized tls argument %q", d.Val())
		}
	}
	for d.NextBlock(2) {
		switch d.Val() {
		case "issuer":
			if !d.Args(&t.Issuer) {
				return nil, d.ArgErr()
			}
		case "disable_starttls":
			t.DisableSTARTTLS = true
		case "protocol_min":
			if !d.Args(&t.ProtocolMin) {
				return nil, d.ArgErr()
			}
		default:
			return nil, d.Errf("unrecognized tls option %q", d.Val())
		}
	}
	return t, nil
}

func parseLimits(d *caddyfile.Dispenser) (*smtpapp.Limits, error) {
	lim := &smtpapp.Limits{}
	for d.NextBlock(2) {
		field := d.Val()
		switch field {
		case "max_message_size":
			var v string
			if !d.Args(&v) {
				return nil, d.ArgErr()
			}
			n, err := humanize.ParseBytes(v)
			if err != nil {
				return nil, d.Errf("max_message_size: %v", err)
			}
			lim.MaxMessageSize = int64(n)
		case "read_timeout", "write_timeout", "session_timeout", "auth_failure_window", "tls_handshake_timeout", "park_idle_after":
			dur, err := parseDuration(d)
			if err != nil {
				return nil, err
			}
			*map[string]*caddy.Duration{"read_timeout": &lim.ReadTimeout, "write_timeout": &lim.WriteTimeout, "session_timeout": &lim.SessionTimeout,
				"auth_failure_window": &lim.AuthFailureWindow, "tls_handshake_timeout": &lim.TLSHandshakeTimeout, "park_idle_after": &lim.ParkIdleAfter}[field] = dur
		case "max_recipients", "max_line_length", "max_errors", "max_auth_failures", "max_messages", "max_hops",
			"max_junk_commands", "max_connections", "max_connections_per_ip", "max_auth_failures_per_ip":
			var v string
			if !d.Args(&v) {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, d.Errf("%s: %q is not a positive number", field, v)
			}
			*map[string]*int{"max_recipients": &lim.MaxRecipients, "max_line_length": &lim.MaxLineLength,
				"max_errors": &lim.MaxErrors, "max_auth_failures": &lim.MaxAuthFailures, "max_messages": &lim.MaxMessages,
				"max_hops": &lim.MaxHops, "max_junk_commands": &lim.MaxJunkCommands, "max_connections": &lim.MaxConnections,
				"max_connections_per_ip": &lim.MaxConnectionsPerIP, "max_auth_failures_per_ip": &lim.MaxAuthFailuresPerIP}[field] = n
		default:
			return nil, d.Errf("unrecognized limits option %q", field)
		}
	}
	return lim, nil
}

func parseDuration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	var v string
	field := d.Val()
	if !d.Args(&v) {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: %v", field, err)
	}
	return caddy.Duration(dur), nil
}

// loadModule parses `<directive> <module> [args] { block }` with the
// module's own UnmarshalCaddyfile and returns its JSON with the inline key.
func loadModule(d *caddyfile.Dispenser, namespace, inlineKey string, warnings *[]caddyconfig.Warning) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	name := d.Val()
	unm, err := caddyfile.UnmarshalModule(d, namespace+name)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(unm, inlineKey, name, warnings), nil
}
