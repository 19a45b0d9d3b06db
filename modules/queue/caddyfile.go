package queue

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
)

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	queue [<path>] {
//		path <folder>
//		hostname <name>
//		max_concurrency <n>
//		max_per_domain <n>
//		max_recipients <n>
//		remote_port <port>
//		retry {
//			initial <duration>
//			max <duration>
//			multiplier <number>
//			jitter <fraction>
//			give_up <duration>
//			warn_after <duration>
//		}
//		tls off|opportunistic|require|verify {
//			ca_file <pem file>
//		}
//		smarthost <host:port> {
//			username <user>
//			password <password>
//			tls starttls|implicit|none
//			insecure_skip_verify
//			ca_file <pem file>
//		}
//		dkim [off] {
//			selector <selector>
//			key_type rsa2048|rsa4096|ed25519
//			domains <domain>...
//		}
//		timeouts {
//			connect <duration>
//			command <duration>
//			data <duration>
//		}
//	}
func (q *Queue) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	if d.NextArg() {
		q.Path = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch dir := d.Val(); dir {
		case "path":
			if !d.Args(&q.Path) {
				return d.ArgErr()
			}
		case "hostname":
			if !d.Args(&q.Hostname) {
				return d.ArgErr()
			}
		case "max_concurrency", "max_per_domain", "max_recipients", "remote_port":
			n, err := caddyargs.Int(d)
			if err != nil {
				return err
			}
			*map[string]*int{"max_concurrency": &q.MaxConcurrency, "max_per_domain": &q.MaxPerDomain,
				"max_recipients": &q.MaxRecipients, "remote_port": &q.RemotePort}[dir] = n
		case "retry":
			if d.NextArg() {
				return d.ArgErr()
			}
			r := &RetryConfig{}
			for d.NextBlock(1) {
				switch f := d.Val(); f {
				case "initial", "max", "give_up", "warn_after":
					dur, err := caddyargs.Duration(d)
					if err != nil {
						return err
					}
					*map[string]*caddy.Duration{"initial": &r.Initial, "max": &r.Max, "give_up": &r.GiveUp, "warn_after": &r.WarnAfter}[f] = dur
				case "multiplier", "jitter":
					var v string
					if !d.Args(&v) {
						return d.ArgErr()
					}
					x, err := strconv.ParseFloat(v, 64)
					if err != nil {
						return d.Errf("retry %s: %v", f, err)
					}
					if f == "multiplier" {
						r.Multiplier = x
					} else {
						r.Jitter = x
						if x == 0 {
							r.Jitter = -1
						}
					}
				default:
					return d.Errf("unrecognized retry option %q", f)
				}
			}
			q.Retry = r
		case "tls":
			t := &TLSPolicy{}
			if d.NextArg() {
				switch d.Val() {
				case "off":
					t.Disable = true
				case "opportunistic":
				case "require":
					t.Require = true
				case "verify":
					t.Verify = true
				default:
					return d.Errf("tls: %q is not off, opportunistic, require or verify", d.Val())
				}
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			for d.NextBlock(1) {
				switch d.Val() {
				case "ca_file":
					if !d.Args(&t.CAFile) {
						return d.ArgErr()
					}
				default:
					return d.Errf("unrecognized tls option %q", d.Val())
				}
			}
			q.TLS = t
		case "smarthost":
			sh := &Smarthost{}
			if !d.Args(&sh.Address) {
				return d.ArgErr()
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			for d.NextBlock(1) {
				switch d.Val() {
				case "username":
					if !d.Args(&sh.Username) {
						return d.ArgErr()
					}
				case "password":
					if !d.Args(&sh.Password) {
						return d.ArgErr()
					}
				case "tls":
					if !d.Args(&sh.TLS) {
						return d.ArgErr()
					}
				case "insecure_skip_verify":
					sh.InsecureSkipVerify = true
				case "ca_file":
					if !d.Args(&sh.CAFile) {
						return d.ArgErr()
					}
				default:
					return d.Errf("unrecognized smarthost option %q", d.Val())
				}
			}
			q.Smarthost = sh
		case "dkim":
			k := &DKIMConfig{}
			if d.NextArg() {
				if d.Val() != "off" {
					return d.Errf("dkim: %q: the only argument is off", d.Val())
				}
				k.Disable = true
			}
			for d.NextBlock(1) {
				switch d.Val() {
				case "selector":
					if !d.Args(&k.Selector) {
						return d.ArgErr()
					}
				case "key_type":
					if !d.Args(&k.KeyType) {
						return d.ArgErr()
					}
				case "domains":
					args := d.RemainingArgs()
					if len(args) == 0 {
						return d.ArgErr()
					}
					k.Domains = append(k.Domains, args...)
				case "disable":
					k.Disable = true
				default:
					return d.Errf("unrecognized dkim option %q", d.Val())
				}
			}
			q.DKIM = k
		case "timeouts":
			t := &Timeouts{}
			for d.NextBlock(1) {
				switch f := d.Val(); f {
				case "connect", "command", "data":
					dur, err := caddyargs.Duration(d)
					if err != nil {
						return err
					}
					*map[string]*caddy.Duration{"connect": &t.Connect, "command": &t.Command, "data": &t.Data}[f] = dur
				default:
					return d.Errf("unrecognized timeouts option %q", f)
				}
			}
			q.Timeouts = t
		default:
			return d.Errf("unrecognized queue option %q", dir)
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Queue)(nil)
