// Package tarpit is the smtp.handlers.tarpit module: it slows clients
// down. A greeting delay refuses early talkers (clients that send before
// the greeting, as spam bots do and honest clients never do, like
// Postfix's postscreen); a delay that grows with each error of the
// session (unknown recipient, refused relay, bad command, failed AUTH)
// up to a maximum; and a delay for clients whose spam score is high.
//
// A waiting session costs one goroutine and its small buffers: the wait
// is a timer (or, for the greeting, a read with a deadline), never a busy
// loop or an extra goroutine, and it ends as soon as the session's
// context does.
package tarpit

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/promreg"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Tarpit{})
}

// Tarpit delays replies to suspicious clients. Authenticated sessions and
// exempt networks are never delayed.
type Tarpit struct {
	// GreetingDelay is how long a client waits for the greeting. A client
	// that sends anything meanwhile is an early talker: it gets
	// "554 5.5.1" and is disconnected. Postscreen waits 6s; a few seconds
	// stop most bots and delay honest servers very little (they wait up
	// to 5 minutes for a greeting). Default: 0 (no greeting delay).
	GreetingDelay caddy.Duration `json:"greeting_delay,omitempty"`

	// ErrorDelay is added to each reply per error the session has made
	// so far (refused recipients or relaying, bad commands, failed AUTH):
	// the n-th error and every reply after it wait n times ErrorDelay, up
	// to MaxDelay. Default: 0 (no error delay).
	ErrorDelay caddy.Duration `json:"error_delay,omitempty"`

	// MaxDelay caps the delay of one reply after the greeting (errors and
	// score together). Default: 30s.
	MaxDelay caddy.Duration `json:"max_delay,omitempty"`

	// ScoreThreshold is the spam score (summed by the handlers before
	// this one, e.g. DNSBLs) from which a client counts as suspicious.
	ScoreThreshold *float64 `json:"score_threshold,omitempty"`

	// ScoreDelay is added to the greeting and to every reply of a client
	// whose score is at or above ScoreThreshold.
	ScoreDelay caddy.Duration `json:"score_delay,omitempty"`

	// Exempt networks (CIDR or single addresses) are never delayed.
	Exempt []string `json:"exempt,omitempty"`

	exempt []netip.Prefix
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Tarpit) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.handlers.tarpit", New: func() caddy.Module { return new(Tarpit) }}
}

var (
	waiting = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "tarpit_waiting",
		Help: "Sessions currently held by a tarpit delay.",
	})
	earlyTalkers = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "tarpit_early_talkers_total",
		Help: "Clients refused for sending before the greeting.",
	})
	delayed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "tarpit_delay_seconds_total",
		Help: "Time spent holding clients, by reason (greeting, errors, score).",
	}, []string{"reason"})
)

// Provision checks the config.
func (h *Tarpit) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	for name, d := range map[string]caddy.Duration{"greeting_delay": h.GreetingDelay, "error_delay": h.ErrorDelay, "max_delay": h.MaxDelay, "score_delay": h.ScoreDelay} {
		if d < 0 {
			return fmt.Errorf("%s: must not be negative", name)
		}
	}
	if h.MaxDelay == 0 {
		h.MaxDelay = caddy.Duration(30 * time.Second)
	}
	if h.ScoreDelay > 0 && h.ScoreThreshold == nil {
		return fmt.Errorf("score_delay: needs score_threshold")
	}
	var err error
	if h.exempt, err = smtpapp.ParsePrefixes("exempt", h.Exempt); err != nil {
		return err
	}
	if err := promreg.Register(ctx.GetMetricsRegistry(), waiting, earlyTalkers, delayed); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	return nil
}

func (h *Tarpit) exempted(c *smtpapp.Conn) bool {
	if c.Account() != "" {
		return true
	}
	ip := c.RemoteIP()
	for _, p := range h.exempt {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (h *Tarpit) suspicious(c *smtpapp.Conn) bool {
	return h.ScoreThreshold != nil && h.ScoreDelay > 0 && c.Score().Total >= *h.ScoreThreshold
}

var replyTimeout = smtpapp.Errorf(421, [3]int{4, 4, 2}, "Session time limit reached, closing connection")

// Connect holds the greeting and refuses early talkers.
func (h *Tarpit) Connect(ctx context.Context, c *smtpapp.Conn) error {
	if h.exempted(c) {
		return nil
	}
	d := time.Duration(h.GreetingDelay)
	reason := "greeting"
	if h.suspicious(c) {
		d += time.Duration(h.ScoreDelay)
		reason = "score"
	}
	if d <= 0 {
		return nil
	}
	waiting.Inc()
	t0 := time.Now()
	early, err := c.Pause(ctx, d)
	waiting.Dec()
	delayed.WithLabelValues(reason).Add(time.Since(t0).Seconds())
	switch {
	case early:
		earlyTalkers.Inc()
		return smtpapp.Refuse(554, [3]int{5, 5, 1}, "early_talker", "Protocol error: talking before the greeting")
	case ctx.Err() != nil:
		return replyTimeout
	case err != nil:
		// The client hung up while waiting, as bots often do.
		return smtpapp.Errorf(421, [3]int{4, 4, 2}, "Connection lost during the greeting delay")
	}
	return nil
}

// delay is the wait before a reply when the session has made n errors.
func (h *Tarpit) delay(c *smtpapp.Conn, n int) (time.Duration, string) {
	d := time.Duration(h.ErrorDelay) * time.Duration(n)
	reason := "errors"
	if h.suspicious(c) {
		d += time.Duration(h.ScoreDelay)
		reason = "score"
	}
	return min(d, time.Duration(h.MaxDelay)), reason
}

// wait holds the session for its delay; errors counts its errors,
// including the one being answered, if any.
func (h *Tarpit) wait(ctx context.Context, c *smtpapp.Conn, errors int) error {
	if h.exempted(c) {
		return nil
	}
	d, reason := h.delay(c, errors)
	if d <= 0 {
		return nil
	}
	waiting.Inc()
	defer waiting.Dec()
	t := time.NewTimer(d)
	defer t.Stop()
	t0 := time.Now()
	select {
	case <-t.C:
		delayed.WithLabelValues(reason).Add(d.Seconds())
		return nil
	case <-ctx.Done():
		delayed.WithLabelValues(reason).Add(time.Since(t0).Seconds())
		return replyTimeout
	}
}

// Helo delays EHLO/HELO.
func (h *Tarpit) Helo(ctx context.Context, c *smtpapp.Conn, name string) error {
	return h.wait(ctx, c, c.Errors())
}

// Mail delays MAIL FROM.
func (h *Tarpit) Mail(ctx context.Context, c *smtpapp.Conn, from string) error {
	return h.wait(ctx, c, c.Errors())
}

// Rcpt delays an accepted RCPT TO.
func (h *Tarpit) Rcpt(ctx context.Context, c *smtpapp.Conn, rcpt smtpapp.Recipient) error {
	return h.wait(ctx, c, c.Errors())
}

// Data delays the reply to the message.
func (h *Tarpit) Data(ctx context.Context, c *smtpapp.Conn, msg *smtpapp.Message) error {
	return h.wait(ctx, c, c.Errors())
}

// Event delays the error replies themselves: the server tells the event
// hooks about an error just before it answers it (and before it counts
// it, hence the +1). Refusals by hooks ("refused") are not delayed here:
// the hook itself, or this module's hook before it, already waited.
func (h *Tarpit) Event(c *smtpapp.Conn, ev smtpapp.Event) {
	switch ev.Kind {
	case smtpapp.EventAuthFailed, smtpapp.EventUnknownRecipient, smtpapp.EventRelayDenied, smtpapp.EventProtocolError:
		_ = h.wait(c.Context(), c, c.Errors()+1)
	}
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	tarpit {
//		greeting_delay <duration>
//		error_delay <duration>
//		max_delay <duration>
//		score <threshold> <delay>
//		exempt <cidr>...
//	}
func (h *Tarpit) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := caddyargs.Header(d, nil); err != nil {
		return err
	}
	for d.NextBlock(0) {
		var err error
		switch opt := d.Val(); opt {
		case "greeting_delay":
			h.GreetingDelay, err = caddyargs.Duration(d)
		case "error_delay":
			h.ErrorDelay, err = caddyargs.Duration(d)
		case "max_delay":
			h.MaxDelay, err = caddyargs.Duration(d)
		case "score":
			err = h.unmarshalScore(d)
		case "exempt":
			err = caddyargs.AppendArgs(d, &h.Exempt)
		default:
			return d.Errf("unrecognized tarpit option %q", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unmarshalScore parses `score <threshold> <delay>`.
func (h *Tarpit) unmarshalScore(d *caddyfile.Dispenser) error {
	var thr, v string
	if !d.Args(&thr, &v) {
		return d.ArgErr()
	}
	var f float64
	if _, err := fmt.Sscanf(thr, "%g", &f); err != nil {
		return d.Errf("score: threshold %q is not a number", thr)
	}
	dur, err := caddyargs.ParseDuration(d, "score", v)
	if err != nil {
		return err
	}
	h.ScoreThreshold, h.ScoreDelay = &f, dur
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Tarpit)(nil)
	_ caddyfile.Unmarshaler = (*Tarpit)(nil)
	_ smtpapp.ConnectHook   = (*Tarpit)(nil)
	_ smtpapp.HeloHook      = (*Tarpit)(nil)
	_ smtpapp.MailHook      = (*Tarpit)(nil)
	_ smtpapp.RcptHook      = (*Tarpit)(nil)
	_ smtpapp.DataHook      = (*Tarpit)(nil)
	_ smtpapp.EventHook     = (*Tarpit)(nil)
)
