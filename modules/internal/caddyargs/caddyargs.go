// Package caddyargs parses the single arguments of Caddyfile options that
// the modules share, with errors that name the option.
package caddyargs

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Duration parses `<option> <duration>`, with the dispenser on <option>.
func Duration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	opt := d.Val()
	var v string
	if !d.Args(&v) {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: %v", opt, err)
	}
	return caddy.Duration(dur), nil
}

// Int parses `<option> <n>`, n not negative, with the dispenser on
// <option>.
func Int(d *caddyfile.Dispenser) (int, error) {
	opt := d.Val()
	var v string
	if !d.Args(&v) {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, d.Errf("%s: %q is not a positive number", opt, v)
	}
	return n, nil
}
