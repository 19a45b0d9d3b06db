package outcome

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/promreg"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// App returns the smtp app that provisions the check handler named
// handler ("spf"), with the handler's collectors registered.
func App(ctx caddy.Context, handler string, collectors ...prometheus.Collector) (*smtpapp.App, error) {
	app := smtpapp.AppFrom(ctx)
	if app == nil {
		return nil, fmt.Errorf("the %s handler works only in the smtp app", handler)
	}
	if err := promreg.Register(ctx.GetMetricsRegistry(), collectors...); err != nil {
		return nil, fmt.Errorf("registering metrics: %v", err)
	}
	return app, nil
}

// Timeout checks a handler's timeout field and sets def when unset.
func Timeout(t *caddy.Duration, def time.Duration) error {
	if *t < 0 {
		return fmt.Errorf("timeout: must not be negative")
	}
	if *t == 0 {
		*t = caddy.Duration(def)
	}
	return nil
}

// Unchecked reports whether the check handlers leave the session alone:
// it is authenticated, or comes from a trusted network.
func Unchecked(c *smtpapp.Conn) bool {
	return c.Account() != "" || c.Trusted()
}

// UnmarshalCaddyfile parses a check handler's block:
//
//	<handler> {
//		timeout <duration>
//		<setting> reject|defer|<score>
//		...the handler's own options
//	}
//
// option parses the handler's own options, with the dispenser on the
// option's name; it reports whether the option was one of them. timeout
// is the handler's Timeout field.
func UnmarshalCaddyfile[C any](d *caddyfile.Dispenser, cfg *C, settings []Setting[C], timeout *caddy.Duration,
	option func(d *caddyfile.Dispenser) (bool, error)) error {
	if err := caddyargs.Header(d, nil); err != nil {
		return err
	}
	handler := d.Val()
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var ok bool
		var err error
		switch {
		case opt == "timeout":
			*timeout, err = caddyargs.Duration(d)
			ok = true
		case option != nil:
			ok, err = option(d)
		}
		if !ok {
			ok, err = Unmarshal(d, cfg, settings)
		}
		if !ok {
			return d.Errf("unrecognized %s option %q", handler, opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
