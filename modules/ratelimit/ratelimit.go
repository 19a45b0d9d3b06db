// Package ratelimit is the smtp.handlers.ratelimit module: transfer
// limits per client network (or per account, once authenticated): new
// connections, concurrent connections, messages, recipients and bytes per
// window, and failed AUTH per network and per account.
//
// Every rate is a token bucket: `limit` units that refill at limit per
// window, so a client may use its whole allowance at once and then gets
// limit per window (see package limitstore).
//
// Counters live in a store shared by every config that uses it: a reload
// keeps them. A rate's counters are keyed by the zone, the limit's count
// and window and the network grouping, so changing a limit starts that
// limit's counters afresh (the old counts were measured against another
// rule); a limit whose config is unchanged keeps counting. The count of
// open connections (concurrent) is a fact, not a rate: it is never reset,
// and a new concurrent limit applies at once to the connections open.
package ratelimit

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/limitstore"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(RateLimit{})
	caddy.RegisterModule(AdminAPI{})
}

const moduleID = "smtp.handlers.ratelimit"

// connectionTTL is how long a connection counts as open in the store if
// the instance that opened it dies without releasing it (Redis). It is
// longer than the default session limit (30m).
const connectionTTL = time.Hour

// Rate is a limit per window.
type Rate struct {
	// Limit is how many are allowed per window (a burst of up to Limit,
	// refilled at Limit per Window). Required, at least 1.
	Limit int64 `json:"limit,omitempty"`
	// Window is the period the limit is for. Required.
	Window caddy.Duration `json:"window,omitempty"`
}

func (r *Rate) validate(field string) error {
	if r == nil {
		return nil
	}
	if r.Limit < 1 {
		return fmt.Errorf("%s.limit: must be at least 1", field)
	}
	if r.Window <= 0 {
		return fmt.Errorf("%s.window: must be a positive duration", field)
	}
	return nil
}

// RateLimit limits what one client network (or one authenticated account)
// may make the server do. A client over a connection limit gets
// "421 4.7.0" instead of the greeting and is disconnected; over a message,
// recipient or byte limit it gets "451 4.7.1" for that command; AUTH over
// the failure limits gets "421 4.7.0" (per network, disconnected) or
// "454 4.7.0" (per account). Each limit is off unless configured.
type RateLimit struct {
	// Zone names the counter set. Handlers with the same zone and the same
	// limit share counters, across servers and reloads. Give each server
	// its own zone to count separately. Default: "default".
	Zone string `json:"zone,omitempty"`

	// Connections limits new connections per client network.
	Connections *Rate `json:"connections,omitempty"`

	// Concurrent limits the connections open at once per client network.
	Concurrent int `json:"concurrent,omitempty"`

	// Messages limits MAIL FROM commands (transactions) per client network,
	// or per account for authenticated sessions.
	Messages *Rate `json:"messages,omitempty"`

	// Recipients limits accepted RCPT TO commands per client network, or
	// per account for authenticated sessions.
	Recipients *Rate `json:"recipients,omitempty"`

	// Bytes limits message bytes (body size as received) per client
	// network, or per account for authenticated sessions. A message that
	// does not fit in what is left is refused at the end of DATA; once
	// nothing is left, MAIL FROM is refused.
	Bytes *Rate `json:"bytes,omitempty"`

	// AuthFailures limits failed AUTH attempts per client network: once
	// used up, further AUTH commands from the network are refused before
	// the password is checked, and the connection is closed.
	AuthFailures *Rate `json:"auth_failures,omitempty"`

	// AccountAuthFailures limits failed AUTH attempts per username tried,
	// from anywhere: once used up, logins to that account are refused for
	// a while (454 4.7.0). Beware that anyone can use up a known
	// account's allowance: set it well above AuthFailures.
	AccountAuthFailures *Rate `json:"account_auth_failures,omitempty"`

	// IPv4Prefix groups IPv4 clients into networks of this many bits.
	// Default: 32 (each address on its own).
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`

	// IPv6Prefix groups IPv6 clients into networks of this many bits.
	// Default: 64 (a typical customer's subnet).
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	// Exempt networks (CIDR or single addresses) are never limited.
	Exempt []string `json:"exempt,omitempty"`

	// Store keeps the counters. Default: in memory (this process only).
	// With Redis, every instance that uses the same server and key prefix
	// enforces the same limits.
	Store *limitstore.Config `json:"store,omitempty"`

	v4, v6  int
	exempt  []netip.Prefix
	store   limitstore.Store
	release func()
	logger  *zap.Logger
	errs    *limitstore.ErrorLog
	mark    string // Conn key of the concurrent slot this instance took
	keys    map[string]string
}

// CaddyModule returns the Caddy module information.
func (RateLimit) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: moduleID, New: func() caddy.Module { return new(RateLimit) }}
}

// The limits, as named in config, metrics and messages.
const (
	limConnections         = "connections"
	limConcurrent          = "concurrent"
	limMessages            = "messages"
	limRecipients          = "recipients"
	limBytes               = "bytes"
	limAuthFailures        = "auth_failures"
	limAccountAuthFailures = "account_auth_failures"
)

// Provision checks the config and opens the store.
func (h *RateLimit) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.errs = &limitstore.ErrorLog{Logger: h.logger, Module: moduleID}
	var err error
	if h.Zone, err = limitstore.ZoneName(h.Zone); err != nil {
		return err
	}
	if h.v4, h.v6, err = limitstore.ValidatePrefixLengths(h.IPv4Prefix, h.IPv6Prefix); err != nil {
		return err
	}
	if h.Concurrent < 0 {
		return fmt.Errorf("concurrent: must not be negative")
	}
	rates := map[string]*Rate{limConnections: h.Connections, limMessages: h.Messages, limRecipients: h.Recipients,
		limBytes: h.Bytes, limAuthFailures: h.AuthFailures, limAccountAuthFailures: h.AccountAuthFailures}
	h.keys = map[string]string{}
	for name, r := range rates {
		if err := r.validate(name); err != nil {
			return err
		}
		if r != nil {
			// The counters' identity: a changed limit counts afresh.
			h.keys[name] = fmt.Sprintf("rl:%s:%s:%d/%d:%d/%d:", h.Zone, name, r.Limit, int64(r.Window), h.v4, h.v6)
		}
	}
	h.keys[limConcurrent] = fmt.Sprintf("rl:%s:%s:%d/%d:", h.Zone, limConcurrent, h.v4, h.v6)
	if h.exempt, err = smtpapp.ParsePrefixes("exempt", h.Exempt); err != nil {
		return err
	}
	if err := h.Store.Validate("store"); err != nil {
		return err
	}
	if err := limitstore.RegisterMetrics(ctx.GetMetricsRegistry(), refusals); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	if h.store, h.release, err = limitstore.Open(h.Store); err != nil {
		return fmt.Errorf("store: %v", err)
	}
	h.mark = fmt.Sprintf("%s/%p", moduleID, h)
	return nil
}

// Cleanup lets go of the store (kept while another config uses it).
func (h *RateLimit) Cleanup() error {
	if h.release != nil {
		h.release()
	}
	return nil
}

func (h *RateLimit) exempted(ip netip.Addr) bool {
	for _, p := range h.exempt {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// client is who a limit counts: the account of an authenticated session,
// else the client's network.
func (h *RateLimit) client(c *smtpapp.Conn) string {
	if a := c.Account(); a != "" {
		return "account " + a
	}
	return limitstore.NetworkKey(c.RemoteIP(), h.v4, h.v6)
}

// take spends cost from a limit; store errors let the client through.
func (h *RateLimit) take(ctx context.Context, name string, r *Rate, who string, cost float64, peek bool) bool {
	ok, _, err := h.store.Take(ctx, h.keys[name]+who, float64(r.Limit), time.Duration(r.Window), cost, peek)
	if err != nil {
		h.errs.Report(name, err)
		return true
	}
	return ok
}

func (h *RateLimit) refuse(c *smtpapp.Conn, name, who string, code int, enh [3]int, msg string) error {
	refusals.WithLabelValues(h.Zone, name).Inc()
	record(Refusal{Time: time.Now(), Server: c.ServerName(), Zone: h.Zone, Limit: name, Client: who, RemoteIP: c.RemoteIP().String(), Code: code})
	return smtpapp.Refuse(code, enh, name, msg)
}

func describe(r *Rate) string {
	return strconv.FormatInt(r.Limit, 10) + " per " + time.Duration(r.Window).String()
}

// Connect applies the connection limits.
func (h *RateLimit) Connect(ctx context.Context, c *smtpapp.Conn) error {
	ip := c.RemoteIP()
	if h.exempted(ip) {
		return nil
	}
	who := limitstore.NetworkKey(ip, h.v4, h.v6)
	if r := h.Connections; r != nil && !h.take(ctx, limConnections, r, who, 1, false) {
		return h.refuse(c, limConnections, who, 421, [3]int{4, 7, 0},
			"Too many connections from "+who+" (limit "+describe(r)+"), try again later")
	}
	if h.Concurrent > 0 {
		key := h.keys[limConcurrent] + who
		ok, err := h.store.Acquire(ctx, key, c.ID, h.Concurrent, connectionTTL)
		if err != nil {
			h.errs.Report(limConcurrent, err)
			return nil
		}
		if !ok {
			return h.refuse(c, limConcurrent, who, 421, [3]int{4, 7, 0},
				"Too many concurrent connections from "+who+" (limit "+strconv.Itoa(h.Concurrent)+"), try again later")
		}
		c.Set(h.mark, key)
	}
	return nil
}

// Close gives back the connection's concurrent slot.
func (h *RateLimit) Close(c *smtpapp.Conn) {
	key, _ := c.Get(h.mark).(string)
	if key == "" {
		return
	}
	if err := h.store.Release(context.Background(), key, c.ID); err != nil {
		h.errs.Report(limConcurrent, err)
	}
}

// Auth refuses logins once the failure limits are used up.
func (h *RateLimit) Auth(ctx context.Context, c *smtpapp.Conn, username string) error {
	if h.exempted(c.RemoteIP()) {
		return nil
	}
	if r := h.AuthFailures; r != nil {
		who := limitstore.NetworkKey(c.RemoteIP(), h.v4, h.v6)
		if !h.take(ctx, limAuthFailures, r, who, 1, true) {
			return h.refuse(c, limAuthFailures, who, 421, [3]int{4, 7, 0},
				"Too many failed authentications from "+who+", try again later")
		}
	}
	if r := h.AccountAuthFailures; r != nil {
		if user := accountKey(username); user != "" && !h.take(ctx, limAccountAuthFailures, r, user, 1, true) {
			return h.refuse(c, limAccountAuthFailures, "account "+user, 454, [3]int{4, 7, 0},
				"Too many failed authentications for this account, try again later")
		}
	}
	return nil
}

// accountKey is the username as counted, or "" for none.
func accountKey(username string) string {
	username = strings.ToLower(strings.TrimSpace(username))
	if username == "" || len(username) > 320 || strings.ContainsAny(username, " \t\r\n") {
		return ""
	}
	return username
}

// Event counts failed AUTH attempts.
func (h *RateLimit) Event(c *smtpapp.Conn, ev smtpapp.Event) {
	if ev.Kind != smtpapp.EventAuthFailed || (h.AuthFailures == nil && h.AccountAuthFailures == nil) || h.exempted(c.RemoteIP()) {
		return
	}
	ctx := c.Context()
	if r := h.AuthFailures; r != nil {
		h.take(ctx, limAuthFailures, r, limitstore.NetworkKey(c.RemoteIP(), h.v4, h.v6), 1, false)
	}
	if r := h.AccountAuthFailures; r != nil {
		// The Detail of an auth_failed event is the username tried.
		if user := accountKey(ev.Detail); user != "" {
			h.take(ctx, limAccountAuthFailures, r, user, 1, false)
		}
	}
}

// Mail counts a message; it also refuses early when the byte allowance is
// used up.
func (h *RateLimit) Mail(ctx context.Context, c *smtpapp.Conn, from string) error {
	if (h.Messages == nil && h.Bytes == nil) || h.exempted(c.RemoteIP()) {
		return nil
	}
	who := h.client(c)
	if r := h.Bytes; r != nil && !h.take(ctx, limBytes, r, who, 1, true) {
		return h.refuse(c, limBytes, who, 451, [3]int{4, 7, 1},
			"Too much mail from "+who+" (limit "+humanize.IBytes(uint64(r.Limit))+" per "+time.Duration(r.Window).String()+"), try again later")
	}
	if r := h.Messages; r != nil && !h.take(ctx, limMessages, r, who, 1, false) {
		return h.refuse(c, limMessages, who, 451, [3]int{4, 7, 1},
			"Too many messages from "+who+" (limit "+describe(r)+"), try again later")
	}
	return nil
}

// Rcpt counts a recipient.
func (h *RateLimit) Rcpt(ctx context.Context, c *smtpapp.Conn, rcpt smtpapp.Recipient) error {
	r := h.Recipients
	if r == nil || h.exempted(c.RemoteIP()) {
		return nil
	}
	who := h.client(c)
	if !h.take(ctx, limRecipients, r, who, 1, false) {
		return h.refuse(c, limRecipients, who, 451, [3]int{4, 7, 1},
			"Too many recipients from "+who+" (limit "+describe(r)+"), try again later")
	}
	return nil
}

// Data counts the message's bytes.
func (h *RateLimit) Data(ctx context.Context, c *smtpapp.Conn, msg *smtpapp.Message) error {
	r := h.Bytes
	if r == nil || h.exempted(c.RemoteIP()) {
		return nil
	}
	who := h.client(c)
	if !h.take(ctx, limBytes, r, who, float64(msg.Size()), false) {
		return h.refuse(c, limBytes, who, 451, [3]int{4, 7, 1},
			"Too much mail from "+who+" (limit "+humanize.IBytes(uint64(r.Limit))+" per "+time.Duration(r.Window).String()+"), try again later")
	}
	return nil
}

// refusals counts the refusals by limit: smtpapp's refusals_total labels
// a refusal only by its reply code.
var refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy", Subsystem: "smtp", Name: "ratelimit_refusals_total",
	Help: "Commands and connections refused by the ratelimit handler, by zone and limit.",
}, []string{"zone", "limit"})

// Refusal is one refusal, as the admin API lists it.
type Refusal struct {
	Time     time.Time `json:"time"`
	Server   string    `json:"server"`
	Zone     string    `json:"zone"`
	Limit    string    `json:"limit"`
	Client   string    `json:"client"`
	RemoteIP string    `json:"remote_ip"`
	Code     int       `json:"code"`
}

// The most recent refusals, for the admin API.
var recent struct {
	sync.Mutex
	ring [256]Refusal
	next int
	n    int
}

func record(r Refusal) {
	recent.Lock()
	defer recent.Unlock()
	recent.ring[recent.next] = r
	recent.next = (recent.next + 1) % len(recent.ring)
	if recent.n < len(recent.ring) {
		recent.n++
	}
}

// Recent returns the latest refusals, newest first.
func Recent() []Refusal {
	recent.Lock()
	defer recent.Unlock()
	out := make([]Refusal, 0, recent.n)
	for i := 1; i <= recent.n; i++ {
		out = append(out, recent.ring[(recent.next-i+len(recent.ring))%len(recent.ring)])
	}
	return out
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	ratelimit {
//		zone <name>
//		connections <count> <window>
//		concurrent <count>
//		messages <count> <window>
//		recipients <count> <window>
//		bytes <size> <window>
//		auth_failures <count> <window>
//		account_auth_failures <count> <window>
//		ipv4_prefix <bits>
//		ipv6_prefix <bits>
//		exempt <cidr>...
//		store memory | redis [<address>] {
//			address <host:port>
//			username <name>
//			password <password>
//			db <number>
//			key_prefix <prefix>
//			timeout <duration>
//		}
//	}
func (h *RateLimit) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	shared := limitstore.Options{Zone: &h.Zone, IPv4Prefix: &h.IPv4Prefix, IPv6Prefix: &h.IPv6Prefix, Store: &h.Store}
	rates := map[string]**Rate{limConnections: &h.Connections, limMessages: &h.Messages, limRecipients: &h.Recipients,
		limBytes: &h.Bytes, limAuthFailures: &h.AuthFailures, limAccountAuthFailures: &h.AccountAuthFailures}
	return shared.UnmarshalCaddyfile(d, func(d *caddyfile.Dispenser) (bool, error) {
		var err error
		switch opt := d.Val(); opt {
		case limConnections, limMessages, limRecipients, limBytes, limAuthFailures, limAccountAuthFailures:
			var parse func(string) (int64, error) // a count
			if opt == limBytes {
				parse = parseBytes
			}
			r := &Rate{}
			r.Limit, r.Window, err = caddyargs.CountPer(d, parse, false)
			*rates[opt] = r
		case limConcurrent:
			h.Concurrent, err = caddyargs.Int(d)
		case "exempt":
			err = caddyargs.AppendArgs(d, &h.Exempt)
		default:
			return false, nil
		}
		return true, err
	})
}

// parseBytes reads a size such as 100MiB.
func parseBytes(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("%s is too large", s)
	}
	return int64(n), err
}

// Interface guards
var (
	_ caddy.Provisioner     = (*RateLimit)(nil)
	_ caddy.CleanerUpper    = (*RateLimit)(nil)
	_ caddyfile.Unmarshaler = (*RateLimit)(nil)
	_ smtpapp.ConnectHook   = (*RateLimit)(nil)
	_ smtpapp.AuthHook      = (*RateLimit)(nil)
	_ smtpapp.MailHook      = (*RateLimit)(nil)
	_ smtpapp.RcptHook      = (*RateLimit)(nil)
	_ smtpapp.DataHook      = (*RateLimit)(nil)
	_ smtpapp.CloseHook     = (*RateLimit)(nil)
	_ smtpapp.EventHook     = (*RateLimit)(nil)
)
