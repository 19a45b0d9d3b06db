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
	return ParseDuration(d, opt, v)
}

// ParseDuration parses v, the value of option opt, as a duration.
func ParseDuration(d *caddyfile.Dispenser, opt, v string) (caddy.Duration, error) {
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

// Float parses `<option> <number>`, with the dispenser on <option>.
func Float(d *caddyfile.Dispenser) (float64, error) {
	opt := d.Val()
	var v string
	if !d.Args(&v) {
		return 0, d.ArgErr()
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, d.Errf("%s: %v", opt, err)
	}
	return f, nil
}

// OnOff parses `<option> on|off`, with the dispenser on <option>.
func OnOff(d *caddyfile.Dispenser) (bool, error) {
	opt := d.Val()
	var v string
	if !d.Args(&v) {
		return false, d.ArgErr()
	}
	switch v {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, d.Errf("%s: %q is not on or off", opt, v)
}

// AppendArgs parses `<option> <value>...` (at least one value) and
// appends the values to list, with the dispenser on <option>.
func AppendArgs(d *caddyfile.Dispenser, list *[]string) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	*list = append(*list, args...)
	return nil
}

// Header reads a module's first line, `<module> [<arg>]`: the argument,
// if any, goes into arg; nil arg allows none.
func Header(d *caddyfile.Dispenser, arg *string) error {
	d.Next() // module name
	if arg != nil && d.NextArg() {
		*arg = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// CountPer parses `<option> <count> <window>` (a token bucket: count per
// window), with the dispenser on <option>. parse reads the count (nil:
// a decimal integer); it must be at least 1. With windowOptional the
// window may be left out, and is then 0.
func CountPer(d *caddyfile.Dispenser, parse func(string) (int64, error), windowOptional bool) (int64, caddy.Duration, error) {
	opt := d.Val()
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 || len(args) == 1 && !windowOptional {
		return 0, 0, d.ArgErr()
	}
	if parse == nil {
		parse = func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) }
	}
	n, err := parse(args[0])
	if err != nil || n < 1 {
		return 0, 0, d.Errf("%s: %q is not a positive count", opt, args[0])
	}
	if len(args) == 1 {
		return n, 0, nil
	}
	window, err := ParseDuration(d, opt+": window", args[1])
	return n, window, err
}
