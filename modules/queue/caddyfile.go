package queue

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
)

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	queue [<path>] {
//		path <folder>
//		hostname <name>
//		sync files|file_system|auto
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
//			ed25519_selector <selector>
//			algorithms rsa|ed25519...
//			key_type rsa2048|rsa4096|ed25519
//			domains <domain>...
//		}
//		timeouts {
//			connect <duration>
//			command <duration>
//			data <duration>
//		}
//		connection_cache [off] {
//			max_messages <n>
//			idle_timeout <duration>
//			max_idle <n>
//		}
//		allow_private_destinations
//		mta_sts [off] {
//			port <port>
//			ca_file <pem file>
//			fetch_timeout <duration>
//			check_interval <duration>
//		}
//		dane {
//			resolver <host:port>
//			timeout <duration>
//		}
//		tls_reports [off] {
//			interval <duration>
//			organization_name <name>
//			contact_info <text>
//			from <address>
//			ca_file <pem file>
//			give_up <duration>
//		}
//		destination <domain|*.domain>... {
//			tls off|opportunistic|require|verify
//			mta_sts off
//			dane off
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
		if err := q.unmarshalOption(d); err != nil {
			return err
		}
	}
	return nil
}

// unmarshalOption parses one option of the queue block.
func (q *Queue) unmarshalOption(d *caddyfile.Dispenser) error {
	var err error
	switch dir := d.Val(); dir {
	case "path":
		return oneArg(d, &q.Path)
	case "hostname":
		return oneArg(d, &q.Hostname)
	case "sync":
		return oneArg(d, &q.Sync)
	case "max_concurrency":
		q.MaxConcurrency, err = caddyargs.Int(d)
	case "max_per_domain":
		q.MaxPerDomain, err = caddyargs.Int(d)
	case "max_recipients":
		q.MaxRecipients, err = caddyargs.Int(d)
	case "remote_port":
		q.RemotePort, err = caddyargs.Int(d)
	case "allow_private_destinations":
		if d.NextArg() {
			return d.ArgErr()
		}
		q.AllowPrivateDestinations = true
	case "retry":
		q.Retry = &RetryConfig{}
		err = q.Retry.unmarshalCaddyfile(d)
	case "tls":
		q.TLS = &TLSPolicy{}
		err = q.TLS.unmarshalCaddyfile(d)
	case "smarthost":
		q.Smarthost = &Smarthost{}
		err = q.Smarthost.unmarshalCaddyfile(d)
	case "dkim":
		q.DKIM = &DKIMConfig{}
		err = q.DKIM.unmarshalCaddyfile(d)
	case "timeouts":
		q.Timeouts = &Timeouts{}
		err = q.Timeouts.unmarshalCaddyfile(d)
	case "connection_cache":
		q.ConnectionCache = &ConnectionCache{}
		err = q.ConnectionCache.unmarshalCaddyfile(d)
	case "mta_sts":
		q.MTASTS = &MTASTSConfig{}
		err = q.MTASTS.unmarshalCaddyfile(d)
	case "dane":
		q.DANE = &DANEConfig{}
		err = q.DANE.unmarshalCaddyfile(d)
	case "tls_reports":
		q.TLSReports = &TLSReportsConfig{}
		err = q.TLSReports.unmarshalCaddyfile(d)
	case "destination":
		var dp DestinationPolicy
		err = dp.unmarshalCaddyfile(d)
		q.Destinations = append(q.Destinations, dp)
	default:
		return d.Errf("unrecognized queue option %q", dir)
	}
	return err
}

// oneArg reads the single argument of an option into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.Args(dst) {
		return d.ArgErr()
	}
	return nil
}

// unmarshalCaddyfile parses `retry { ... }`.
func (r *RetryConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(1) {
		var err error
		switch f := d.Val(); f {
		case "initial":
			r.Initial, err = caddyargs.Duration(d)
		case "max":
			r.Max, err = caddyargs.Duration(d)
		case "give_up":
			r.GiveUp, err = caddyargs.Duration(d)
		case "warn_after":
			r.WarnAfter, err = caddyargs.Duration(d)
		case "multiplier":
			r.Multiplier, err = floatArg(d, "retry")
		case "jitter":
			r.Jitter, err = floatArg(d, "retry")
			if r.Jitter == 0 {
				r.Jitter = -1 // "jitter 0" means none; 0 in JSON means the default
			}
		default:
			return d.Errf("unrecognized retry option %q", f)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// floatArg parses `<option> <number>` in block.
func floatArg(d *caddyfile.Dispenser, block string) (float64, error) {
	opt := d.Val()
	var v string
	if !d.Args(&v) {
		return 0, d.ArgErr()
	}
	x, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, d.Errf("%s %s: %v", block, opt, err)
	}
	return x, nil
}

// unmarshalCaddyfile parses `tls off|opportunistic|require|verify { ... }`.
func (t *TLSPolicy) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
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
			if err := oneArg(d, &t.CAFile); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized tls option %q", d.Val())
		}
	}
	return nil
}

// unmarshalCaddyfile parses `smarthost <host:port> { ... }`.
func (sh *Smarthost) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.Args(&sh.Address) || d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(1) {
		var err error
		switch d.Val() {
		case "username":
			err = oneArg(d, &sh.Username)
		case "password":
			err = oneArg(d, &sh.Password)
		case "tls":
			err = oneArg(d, &sh.TLS)
		case "insecure_skip_verify":
			sh.InsecureSkipVerify = true
		case "ca_file":
			err = oneArg(d, &sh.CAFile)
		default:
			return d.Errf("unrecognized smarthost option %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalCaddyfile parses `dkim [off] { ... }`.
func (k *DKIMConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		if d.Val() != "off" {
			return d.Errf("dkim: %q: the only argument is off", d.Val())
		}
		k.Disable = true
	}
	for d.NextBlock(1) {
		var err error
		switch d.Val() {
		case "selector":
			err = oneArg(d, &k.Selector)
		case "key_type":
			err = oneArg(d, &k.KeyType)
		case "ed25519_selector":
			err = oneArg(d, &k.Ed25519Selector)
		case "algorithms":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			k.Algorithms = append(k.Algorithms, args...)
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
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalCaddyfile parses `timeouts { ... }`.
func (t *Timeouts) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.NextBlock(1) {
		var err error
		switch f := d.Val(); f {
		case "connect":
			t.Connect, err = caddyargs.Duration(d)
		case "command":
			t.Command, err = caddyargs.Duration(d)
		case "data":
			t.Data, err = caddyargs.Duration(d)
		default:
			return d.Errf("unrecognized timeouts option %q", f)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// offArg reads an optional "off" argument of a block's option.
func offArg(d *caddyfile.Dispenser, block string) (bool, error) {
	if !d.NextArg() {
		return false, nil
	}
	if d.Val() != "off" {
		return false, d.Errf("%s: %q: the only argument is off", block, d.Val())
	}
	if d.NextArg() {
		return false, d.ArgErr()
	}
	return true, nil
}

// unmarshalCaddyfile parses `connection_cache [off] { ... }`.
func (c *ConnectionCache) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	var err error
	if c.Disable, err = offArg(d, "connection_cache"); err != nil {
		return err
	}
	for d.NextBlock(1) {
		switch f := d.Val(); f {
		case "max_messages":
			c.MaxMessages, err = caddyargs.Int(d)
		case "idle_timeout":
			c.IdleTimeout, err = caddyargs.Duration(d)
		case "max_idle":
			c.MaxIdle, err = caddyargs.Int(d)
		default:
			return d.Errf("unrecognized connection_cache option %q", f)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalCaddyfile parses `mta_sts [off] { ... }`.
func (c *MTASTSConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	var err error
	if c.Disable, err = offArg(d, "mta_sts"); err != nil {
		return err
	}
	for d.NextBlock(1) {
		switch f := d.Val(); f {
		case "port":
			c.Port, err = caddyargs.Int(d)
		case "ca_file":
			err = oneArg(d, &c.CAFile)
		case "fetch_timeout":
			c.FetchTimeout, err = caddyargs.Duration(d)
		case "check_interval":
			c.CheckInterval, err = caddyargs.Duration(d)
		default:
			return d.Errf("unrecognized mta_sts option %q", f)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalCaddyfile parses `dane { ... }`.
func (c *DANEConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(1) {
		var err error
		switch f := d.Val(); f {
		case "resolver":
			err = oneArg(d, &c.Resolver)
		case "timeout":
			c.Timeout, err = caddyargs.Duration(d)
		default:
			return d.Errf("unrecognized dane option %q", f)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalCaddyfile parses `tls_reports [off] { ... }`.
func (c *TLSReportsConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	var err error
	if c.Disable, err = offArg(d, "tls_reports"); err != nil {
		return err
	}
	for d.NextBlock(1) {
		switch f := d.Val(); f {
		case "interval":
			c.Interval, err = caddyargs.Duration(d)
		case "organization_name":
			err = oneArg(d, &c.OrganizationName)
		case "contact_info":
			err = oneArg(d, &c.ContactInfo)
		case "from":
			err = oneArg(d, &c.From)
		case "ca_file":
			err = oneArg(d, &c.CAFile)
		case "give_up":
			c.GiveUp, err = caddyargs.Duration(d)
		default:
			return d.Errf("unrecognized tls_reports option %q", f)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalCaddyfile parses `destination <domain>... { ... }`.
func (p *DestinationPolicy) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	p.Domains = d.RemainingArgs()
	if len(p.Domains) == 0 {
		return d.ArgErr()
	}
	for d.NextBlock(1) {
		var err error
		var v string
		switch f := d.Val(); f {
		case "tls":
			err = oneArg(d, &p.TLS)
		case "mta_sts", "dane":
			if err = oneArg(d, &v); err == nil && v != "off" {
				return d.Errf("destination %s: %q: the only value is off", f, v)
			}
			if f == "dane" {
				p.DisableDANE = true
			} else {
				p.DisableMTASTS = true
			}
		default:
			return d.Errf("unrecognized destination option %q", f)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Queue)(nil)
