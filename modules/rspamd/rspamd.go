// Package rspamd is the smtp.handlers.rspamd module: after DATA, the
// message and its envelope go to rspamd's HTTP protocol (POST /checkv2 on
// a normal worker), and rspamd's action and score become ours.
package rspamd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/outcome"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Rspamd{})
}

const moduleID = "smtp.handlers.rspamd"

// Defaults.
const (
	DefaultURL     = "http://127.0.0.1:11333"
	DefaultTimeout = 20 * time.Second
	// DefaultMaxSize: spam is small; scanning large attachments costs
	// rspamd much and finds little (rspamd's own max_message is 50 MiB).
	DefaultMaxSize = 20 << 20
)

// Rspamd asks rspamd about each message after DATA (a Data hook), with
// the envelope in rspamd's HTTP headers (IP, Helo, Hostname, User, From,
// one Rcpt per recipient, Queue-Id, MTA-Name). rspamd's action is mapped:
//
//   - reject: 550 5.7.1 with rspamd's SMTP message (or "Spam message
//     rejected"), nothing stored;
//   - soft reject and greylist: 451 4.7.1, the client tries again later
//     (greylist can be ignored: without rspamd's greylist module and its
//     Redis, rspamd cannot remember the retry, so every message over its
//     greylist threshold would be deferred for ever);
//   - add header and rewrite subject: the message is tagged through the
//     spam score (score_mode) and, for rewrite subject, its Subject
//     rewritten;
//   - no action: nothing but the score.
//
// rspamd's score is added to the session's spam score (score_mode
// "add"), so the server's spam policy (tag_score, reject_score) decides
// along with the other checks; with score_mode "action" only the action
// counts. The symbols are logged, listed in an X-Spam-Symbols header
// field and, with their scores, in X-Spam-Status. rspamd's header
// actions (its "milter" add_headers and remove_headers, e.g. from
// milter_headers) are applied to the message's header section.
//
// When rspamd cannot be asked (down, timeout, an HTTP error, a reply that
// cannot be read), the message is accepted with a warning in the log and
// caddy_smtp_rspamd_failures_total counted (on_failure "accept"), or
// refused with 451 4.7.1 (on_failure "defer"); never with a 5xx.
type Rspamd struct {
	// URL is rspamd's normal worker (or a proxy in self-scan mode): an
	// http or https URL; /checkv2 is added to its path. Default:
	// http://127.0.0.1:11333.
	URL string `json:"url,omitempty"`
	// Timeout for one check, from the connection to the end of the reply.
	// Default: 20s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Password, if rspamd's worker wants one (its "password" setting),
	// sent in the Password header.
	Password string `json:"password,omitempty"`
	// ScoreMode is how rspamd's verdict counts: "add" (default) adds
	// rspamd's score to the session's spam score; "action" adds only
	// ActionScore for "add header" and "rewrite subject" (reject, soft
	// reject and greylist refuse in both modes).
	ScoreMode string `json:"score_mode,omitempty"`
	// ActionScore is the points given for "add header" and "rewrite
	// subject" with score_mode "action". Default: the server's tag_score,
	// so the message is tagged (filed as Junk).
	ActionScore *float64 `json:"action_score,omitempty"`
	// OnFailure is what happens when rspamd cannot be asked: "accept"
	// (default: accepted, logged and counted) or "defer" (451 4.7.1).
	OnFailure string `json:"on_failure,omitempty"`
	// ScanAuthenticated also scans mail from authenticated users
	// (outbound spam, rspamd gets them with the User header). Default:
	// skipped.
	ScanAuthenticated bool `json:"scan_authenticated,omitempty"`
	// MaxSize is the largest message scanned, in bytes; larger ones are
	// accepted unscanned (counted in caddy_smtp_rspamd_skipped_total).
	// Default: 20 MiB.
	MaxSize int64 `json:"max_size,omitempty"`
	// IgnoreGreylist treats rspamd's greylist action as no action (for an
	// rspamd without its greylist module). Default: greylist defers.
	IgnoreGreylist bool `json:"ignore_greylist,omitempty"`
	// DisableHeader stops adding the X-Spam-Symbols header field.
	DisableHeader bool `json:"disable_header,omitempty"`
	// DisableHeaderEdits ignores rspamd's header actions (add_headers,
	// remove_headers) and Subject rewriting.
	DisableHeaderEdits bool `json:"disable_header_edits,omitempty"`

	endpoint string
	client   *http.Client
	resolver *smtpapp.Resolver
}

var (
	metricChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_rspamd", Name: "checks_total",
		Help: "Messages checked by rspamd, by rspamd's action.",
	}, []string{"action"})
	metricFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_rspamd", Name: "failures_total",
		Help: "Checks that failed (rspamd down, timeout, HTTP error, bad reply), by reason and the policy applied.",
	}, []string{"reason", "policy"})
	metricSkipped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_rspamd", Name: "skipped_total",
		Help: "Messages not sent to rspamd, by reason (size, authenticated).",
	}, []string{"reason"})
	metricDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "smtp_rspamd", Name: "check_duration_seconds",
		Help: "Time of one rspamd check.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
	})
)

// CaddyModule returns the Caddy module information.
func (Rspamd) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: moduleID, New: func() caddy.Module { return new(Rspamd) }}
}

// Provision checks the config and sets the defaults.
func (r *Rspamd) Provision(ctx caddy.Context) error {
	app, err := outcome.App(ctx, "rspamd", metricChecks, metricFailures, metricSkipped, metricDuration)
	if err != nil {
		return err
	}
	r.resolver = app.DNS()
	if r.URL == "" {
		r.URL = DefaultURL
	}
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url: %q is not an http(s) URL", r.URL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/checkv2"
	r.endpoint = u.String()
	if err := outcome.Timeout(&r.Timeout, DefaultTimeout); err != nil {
		return err
	}
	switch r.ScoreMode {
	case "":
		r.ScoreMode = "add"
	case "add", "action":
	default:
		return fmt.Errorf("score_mode: %q is not add or action", r.ScoreMode)
	}
	switch r.OnFailure {
	case "":
		r.OnFailure = "accept"
	case "accept", "defer":
	default:
		return fmt.Errorf("on_failure: %q is not accept or defer", r.OnFailure)
	}
	if r.MaxSize < 0 {
		return fmt.Errorf("max_size: must not be negative")
	}
	if r.MaxSize == 0 {
		r.MaxSize = DefaultMaxSize
	}
	r.client = &http.Client{Transport: &http.Transport{
		Proxy:               nil, // rspamd is ours: never through an HTTP proxy
		DialContext:         (&net.Dialer{Timeout: time.Duration(r.Timeout)}).DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}}
	return nil
}

// Cleanup closes idle connections to rspamd.
func (r *Rspamd) Cleanup() error {
	if r.client != nil {
		r.client.CloseIdleConnections()
	}
	return nil
}

// Data sends the message to rspamd and applies its verdict.
func (r *Rspamd) Data(ctx context.Context, c *smtpapp.Conn, msg *smtpapp.Message) error {
	if c.Account() != "" && !r.ScanAuthenticated {
		metricSkipped.WithLabelValues("authenticated").Inc()
		return nil
	}
	size := int64(len(msg.Header())) + msg.Size()
	if size > r.MaxSize {
		metricSkipped.WithLabelValues("size").Inc()
		c.Logger().Info("rspamd: message not scanned: too large", zap.String("module", moduleID),
			zap.Int64("size", size), zap.Int64("max_size", r.MaxSize))
		return nil
	}
	start := time.Now()
	res, reason, err := r.check(ctx, c, msg, size)
	metricDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		return r.failed(c, reason, err)
	}
	metricChecks.WithLabelValues(res.action).Inc()
	scored := res.scored()
	c.Logger().Info("rspamd", zap.String("module", moduleID), zap.String("action", res.action),
		zap.Float64("score", res.score), zap.Float64("required_score", res.required), zap.Bool("skipped", res.skipped),
		zap.Strings("symbols", scored), zap.Duration("duration", time.Since(start)))
	if res.skipped && res.action == actNoAction {
		return nil
	}
	switch res.action {
	case actReject:
		text := res.message
		if text == "" {
			text = "Spam message rejected"
		}
		return smtpapp.Refuse(550, [3]int{5, 7, 1}, "rspamd_reject", text)
	case actSoftReject:
		return smtpapp.Refuse(451, [3]int{4, 7, 1}, "rspamd_soft_reject", orDefault(res.message, "Try again later"))
	case actGreylist:
		if !r.IgnoreGreylist {
			return smtpapp.Refuse(451, [3]int{4, 7, 1}, "rspamd_greylist", orDefault(res.message, "Greylisted, try again later"))
		}
	}
	if !r.DisableHeaderEdits {
		r.editHeaders(c, msg, res)
	}
	if !r.DisableHeader && len(res.symbols) > 0 {
		msg.AddHeader("X-Spam-Symbols", foldList(res.names()))
	}
	why := fmt.Sprintf("rspamd %s, score %.2f/%.2f", res.action, res.score, res.required)
	if len(scored) > 0 {
		why += ": " + strings.Join(scored, " ")
	}
	switch {
	case r.ScoreMode == "add":
		c.AddScore("rspamd", res.score, why)
	case res.action == actAddHeader || res.action == actRewriteSubject:
		points, _ := c.SpamThresholds() // the tag score, unless set
		if r.ActionScore != nil {
			points = *r.ActionScore
		}
		c.AddScore("rspamd", points, why)
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// failed applies the failure policy.
func (r *Rspamd) failed(c *smtpapp.Conn, reason string, err error) error {
	metricFailures.WithLabelValues(reason, r.OnFailure).Inc()
	c.Logger().Warn("rspamd check failed", zap.String("module", moduleID), zap.String("reason", reason),
		zap.String("policy", r.OnFailure), zap.Error(err))
	if r.OnFailure == "defer" {
		return smtpapp.Refuse(451, [3]int{4, 7, 1}, "rspamd_failure", "Content filter unavailable, try again later")
	}
	return nil
}

// check asks rspamd. reason is the failure's metric label.
func (r *Rspamd) check(ctx context.Context, c *smtpapp.Conn, msg *smtpapp.Message, size int64) (res *result, reason string, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(r.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.endpoint, msg.Reader())
	if err != nil {
		return nil, "request", err
	}
	req.ContentLength = size
	h := req.Header
	ip := c.RemoteIP().Unmap()
	h.Set("IP", ip.String())
	h.Set("Hostname", r.hostname(ctx, c))
	if helo := c.Helo(); helo != "" {
		h.Set("Helo", headerSafe(helo))
	}
	if acct := c.Account(); acct != "" {
		h.Set("User", headerSafe(acct))
	}
	from := c.From()
	if from == "" {
		from = "<>"
	}
	h.Set("From", headerSafe(from))
	for _, rc := range c.Recipients() {
		h.Add("Rcpt", headerSafe(rc.Address))
	}
	h.Set("Queue-Id", c.MessageID())
	h.Set("MTA-Name", headerSafe(c.Hostname()))
	if r.Password != "" {
		h.Set("Password", r.Password)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded) {
			return nil, "timeout", err
		}
		return nil, "connect", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReplySize+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, "timeout", err
		}
		return nil, "read", err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "http_status", fmt.Errorf("HTTP %s: %s", resp.Status, printable(string(body), 200))
	}
	if len(body) > maxReplySize {
		return nil, "bad_reply", fmt.Errorf("%w: over %d bytes", errBadReply, maxReplySize)
	}
	res, err = parseReply(body)
	if err != nil {
		return nil, "bad_reply", err
	}
	return res, "", nil
}

// hostname is the client's name by reverse DNS (the first PTR name,
// unverified, as Postfix's "unknown" otherwise), within the check's time.
func (r *Rspamd) hostname(ctx context.Context, c *smtpapp.Conn) string {
	if r.resolver == nil {
		return "unknown"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	names, err := r.resolver.LookupPTR(ctx, c.RemoteIP().Unmap())
	if err != nil || len(names) == 0 || !smtpapp.ValidHostname(names[0]) {
		return "unknown"
	}
	return names[0]
}

// headerSafe keeps a value from the client fit for an HTTP header.
func headerSafe(s string) string { return printable(s, 512) }

// foldList joins names with spaces, folded every few names.
func foldList(names []string) string {
	var b strings.Builder
	line := 0
	for i, n := range names {
		if i > 0 {
			if line+len(n) > 70 {
				b.WriteString(",\r\n\t")
				line = 0
			} else {
				b.WriteString(", ")
				line += 2
			}
		}
		b.WriteString(n)
		line += len(n)
	}
	return b.String()
}

// editHeaders applies rspamd's header actions: removals first, then
// additions (at their order, else at the bottom of the header section),
// then the rewritten Subject.
func (r *Rspamd) editHeaders(c *smtpapp.Conn, msg *smtpapp.Message, res *result) {
	log := func(what, name string, err error) {
		c.Logger().Warn("rspamd: header action not applied", zap.String("module", moduleID),
			zap.String("action", what), zap.String("field", name), zap.Error(err))
	}
	for _, rm := range res.remove {
		if err := msg.DeleteHeader(rm.name, rm.index); err != nil && !errors.Is(err, smtpapp.ErrNoHeaderField) {
			log("remove", rm.name, err)
		}
	}
	for _, a := range res.add {
		if err := msg.InsertHeader(a.order, a.name, a.value); err != nil {
			log("add", a.name, err)
		}
	}
	if res.action == actRewriteSubject && res.subject != "" {
		err := msg.ChangeHeader("Subject", 1, res.subject)
		if errors.Is(err, smtpapp.ErrNoHeaderField) {
			err = msg.AppendHeader("Subject", res.subject)
		}
		if err != nil {
			log("rewrite subject", "Subject", err)
		}
	}
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	rspamd [<url>] {
//		url <url>
//		timeout <duration>
//		password <password>
//		score_mode add|action
//		action_score <points>
//		on_failure accept|defer
//		scan_authenticated [on|off]
//		max_size <size>
//		greylist defer|ignore
//		header on|off
//		header_edits on|off
//	}
func (r *Rspamd) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := caddyargs.Header(d, &r.URL); err != nil {
		return err
	}
	one := func() (string, error) {
		var v string
		if !d.Args(&v) || d.NextArg() {
			return "", d.ArgErr()
		}
		return v, nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var err error
		switch opt {
		case "url":
			r.URL, err = one()
		case "timeout":
			r.Timeout, err = caddyargs.Duration(d)
		case "password":
			r.Password, err = one()
		case "score_mode":
			r.ScoreMode, err = one()
		case "action_score":
			var f float64
			f, err = caddyargs.Float(d)
			r.ActionScore = &f
		case "on_failure":
			r.OnFailure, err = one()
		case "scan_authenticated":
			r.ScanAuthenticated = true
			if d.NextArg() {
				d.Prev()
				r.ScanAuthenticated, err = caddyargs.OnOff(d)
			}
		case "max_size":
			var v string
			if v, err = one(); err == nil {
				var n uint64
				n, err = humanize.ParseBytes(v)
				if err != nil || n > 1<<40 {
					err = d.Errf("max_size: %q is not a size", v)
				}
				r.MaxSize = int64(n)
			}
		case "greylist":
			var v string
			if v, err = one(); err == nil {
				switch v {
				case "defer":
					r.IgnoreGreylist = false
				case "ignore":
					r.IgnoreGreylist = true
				default:
					err = d.Errf("greylist: %q is not defer or ignore", v)
				}
			}
		case "header":
			var on bool
			on, err = caddyargs.OnOff(d)
			r.DisableHeader = !on
		case "header_edits":
			var on bool
			on, err = caddyargs.OnOff(d)
			r.DisableHeaderEdits = !on
		default:
			return d.Errf("unrecognized rspamd option %q", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Rspamd)(nil)
	_ caddy.CleanerUpper    = (*Rspamd)(nil)
	_ caddyfile.Unmarshaler = (*Rspamd)(nil)
	_ smtpapp.DataHook      = (*Rspamd)(nil)
)
