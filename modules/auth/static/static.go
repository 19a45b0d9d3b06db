// Package static is the smtp.auth.static module: accounts with bcrypt
// password hashes and aliases, written in the config.
package static

import (
	"context"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/modules/auth/authtable"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Static{})
}

// Static is an accounts provider whose accounts are in the config.
type Static struct {
	// Accounts are the local mail accounts.
	Accounts []authtable.Account `json:"accounts,omitempty"`

	// Forwarding lists addresses whose mail is forwarded to other addresses,
	// on local or other domains (remote copies go through the outbound
	// queue with an SRS sender, whoever sent them). A forwarding address
	// is not an account and cannot log in.
	Forwarding []authtable.Forward `json:"forwarding,omitempty"`

	db *authtable.Table
}

// CaddyModule returns the Caddy module information.
func (Static) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.auth.static", New: func() caddy.Module { return new(Static) }}
}

// Provision builds the lookup table.
func (s *Static) Provision(ctx caddy.Context) error {
	db, err := authtable.New(s.Accounts, "accounts")
	if err != nil {
		return err
	}
	if err := db.AddForwards(s.Forwarding, "forwarding"); err != nil {
		return err
	}
	s.db = db
	return nil
}

// Forwards returns the targets of a forwarding address.
func (s *Static) Forwards(ctx context.Context, address string) ([]string, error) {
	return s.db.Forwards(address), nil
}

// Authenticate checks a login.
func (s *Static) Authenticate(ctx context.Context, username, password string) (string, error) {
	return s.db.Authenticate(username, password)
}

// Lookup finds the account of an address.
func (s *Static) Lookup(ctx context.Context, address string) (string, error) {
	return s.db.Lookup(address)
}

// MaySendAs reports whether account may use address as sender.
func (s *Static) MaySendAs(ctx context.Context, account, address string) bool {
	return s.db.MaySendAs(account, address)
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	static {
//		user <address> <bcrypt hash> {
//			alias <address>...
//			send_as <address>...
//		}
//		forward <address> <target>...
//	}
func (s *Static) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if d.Val() == "forward" {
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("forward: want <address> <target>...")
			}
			s.Forwarding = append(s.Forwarding, authtable.Forward{Address: args[0], To: args[1:]})
			continue
		}
		if d.Val() != "user" {
			return d.Errf("unrecognized static accounts option %q", d.Val())
		}
		var a authtable.Account
		if !d.NextArg() {
			return d.ArgErr()
		}
		a.Address = d.Val()
		if d.NextArg() {
			a.Password = d.Val()
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		for d.NextBlock(1) {
			switch d.Val() {
			case "alias":
				a.Aliases = append(a.Aliases, d.RemainingArgs()...)
			case "send_as":
				a.SendAs = append(a.SendAs, d.RemainingArgs()...)
			default:
				return d.Errf("unrecognized user option %q", d.Val())
			}
		}
		s.Accounts = append(s.Accounts, a)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner        = (*Static)(nil)
	_ caddyfile.Unmarshaler    = (*Static)(nil)
	_ smtpapp.Accounts         = (*Static)(nil)
	_ smtpapp.SenderAuthorizer = (*Static)(nil)
	_ smtpapp.Forwarder        = (*Static)(nil)
)
