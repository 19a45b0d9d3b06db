// Package ban is the smtp.handlers.ban module: it counts abuse events per
// client network (failed AUTH, unknown recipients, relay attempts,
// protocol errors, refusals by other handlers such as rate-limit hits)
// and bans a network that reaches a threshold within a window: its
// connections are refused (554 5.7.1) for the ban period, and its open
// sessions are closed. Static allow and block lists of networks too.
//
// Bans live in a store (memory by default, Redis to share them between
// instances) and survive config reloads. The admin API lists them
// (GET /smtp/bans) and lifts one (DELETE /smtp/bans/<address or CIDR>).
package ban

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/limitstore"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Ban{})
	caddy.RegisterModule(AdminAPI{})
}

const moduleID = "smtp.handlers.ban"

// Ban bans the client networks that misbehave. Put it first among the
// handlers, so that banned clients cost nothing else.
type Ban struct {
	// Zone names the set of bans. Handlers with the same zone (and store)
	// share bans and event counts, across servers and reloads. Default:
	// "default".
	Zone string `json:"zone,omitempty"`

	// Threshold is how many abuse events of a network within Window get
	// it banned (a token bucket: Threshold events at once, or a steady
	// Threshold per Window). Default: 10.
	Threshold int `json:"threshold,omitempty"`

	// Window is the period of Threshold. Default: 10m.
	Window caddy.Duration `json:"window,omitempty"`

	// BanDuration is how long a ban lasts. Default: 1h.
	BanDuration caddy.Duration `json:"ban_duration,omitempty"`

	// Events are the kinds of events counted: auth_failed,
	// unknown_recipient, relay_denied, protocol_error, refused (a command
	// or connection refused by another handler: rate limits, DNSBLs,
	// early talkers...). Default: all of them.
	Events []string `json:"events,omitempty"`

	// IPv4Prefix groups IPv4 clients into networks of this many bits, for
	// counting and banning. Default: 32.
	IPv4Prefix int `json:"ipv4_prefix,omitempty"`

	// IPv6Prefix groups IPv6 clients into networks of this many bits.
	// Default: 64.
	IPv6Prefix int `json:"ipv6_prefix,omitempty"`

	// Allow lists networks (CIDR or addresses) that are never counted,
	// banned or blocked: your own hosts, partners, monitoring.
	Allow []string `json:"allow,omitempty"`

	// Block lists networks that are always refused at connect
	// (554 5.7.1), unless also allowed.
	Block []string `json:"block,omitempty"`

	// Store keeps the counts and bans. Default: in memory (this process).
	// With Redis, every instance using the same server and key prefix
	// shares bans.
	Store *limitstore.Config `json:"store,omitempty"`

	v4, v6  int
	allow   []netip.Prefix
	block   []netip.Prefix
	kinds   map[smtpapp.EventKind]bool
	store   limitstore.Store
	release func()
	logger  *zap.Logger
	errs    *limitstore.ErrorLog
}

// CaddyModule returns the Caddy module information.
func (Ban) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: moduleID, New: func() caddy.Module { return new(Ban) }}
}

var allKinds = []smtpapp.EventKind{smtpapp.EventAuthFailed, smtpapp.EventUnknownRecipient,
	smtpapp.EventRelayDenied, smtpapp.EventProtocolError, smtpapp.EventRefused}

var (
	bansTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "bans_total",
		Help: "Networks banned for abuse, by zone.",
	}, []string{"zone"})
	liftedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "bans_lifted_total",
		Help: "Bans lifted through the admin API, by zone.",
	}, []string{"zone"})
	activeDesc = prometheus.NewDesc("caddy_smtp_bans_active", "Networks banned now, by zone.", []string{"zone"}, nil)
)

// activeBans is a collector that counts the current bans at scrape time.
type activeBans struct{}

func (activeBans) Describe(ch chan<- *prometheus.Desc) { ch <- activeDesc }

func (activeBans) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, z := range zones() {
		bans, err := z.store.ListBans(ctx, z.banPrefix())
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(len(bans)), z.Zone)
	}
}

// Provision checks the config and opens the store.
func (h *Ban) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.errs = &limitstore.ErrorLog{Logger: h.logger, Module: moduleID}
	var err error
	if h.Zone, err = limitstore.ZoneName(h.Zone); err != nil {
		return err
	}
	if h.Threshold < 0 {
		return fmt.Errorf("threshold: must be at least 1")
	}
	if h.Threshold == 0 {
		h.Threshold = 10
	}
	if h.Window < 0 {
		return fmt.Errorf("window: must be a positive duration")
	}
	if h.Window == 0 {
		h.Window = caddy.Duration(10 * time.Minute)
	}
	if h.BanDuration < 0 {
		return fmt.Errorf("ban_duration: must be a positive duration")
	}
	if h.BanDuration == 0 {
		h.BanDuration = caddy.Duration(time.Hour)
	}
	if h.v4, h.v6, err = limitstore.ValidatePrefixLengths(h.IPv4Prefix, h.IPv6Prefix); err != nil {
		return err
	}
	h.kinds = map[smtpapp.EventKind]bool{}
	if len(h.Events) == 0 {
		for _, k := range allKinds {
			h.kinds[k] = true
		}
	}
	for i, e := range h.Events {
		ok := false
		for _, k := range allKinds {
			if string(k) == e {
				h.kinds[k], ok = true, true
			}
		}
		if !ok {
			return fmt.Errorf("events[%d]: %q is not an event kind (%v)", i, e, allKinds)
		}
	}
	if h.allow, err = smtpapp.ParsePrefixes("allow", h.Allow); err != nil {
		return err
	}
	if h.block, err = smtpapp.ParsePrefixes("block", h.Block); err != nil {
		return err
	}
	if err := h.Store.Validate("store"); err != nil {
		return err
	}
	if err := limitstore.RegisterMetrics(ctx.GetMetricsRegistry(), bansTotal, liftedTotal, activeBans{}); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	if h.store, h.release, err = limitstore.Open(h.Store); err != nil {
		return fmt.Errorf("store: %v", err)
	}
	register(h)
	return nil
}

// Cleanup lets go of the store (kept while another config uses it).
func (h *Ban) Cleanup() error {
	unregister(h)
	if h.release != nil {
		h.release()
	}
	return nil
}

func contains(list []netip.Prefix, ip netip.Addr) bool {
	for _, p := range list {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (h *Ban) network(ip netip.Addr) string { return limitstore.NetworkKey(ip, h.v4, h.v6) }
func (h *Ban) banPrefix() string            { return "ban:" + h.Zone + ":b:" }
func (h *Ban) banKey(network string) string { return h.banPrefix() + network }
func (h *Ban) countKey(network string) string {
	return fmt.Sprintf("ban:%s:ev:%d/%d:%d/%d:", h.Zone, h.Threshold, int64(h.Window), h.v4, h.v6) + network
}

// banned returns the ban of the client's network, if any.
func (h *Ban) banned(ctx context.Context, c *smtpapp.Conn) *limitstore.Ban {
	b, err := h.store.GetBan(ctx, h.banKey(h.network(c.RemoteIP())))
	if err != nil {
		h.errs.Report("get ban", err)
		return nil
	}
	return b
}

// Connect refuses blocked and banned networks.
func (h *Ban) Connect(ctx context.Context, c *smtpapp.Conn) error {
	ip := c.RemoteIP()
	if contains(h.allow, ip) {
		return nil
	}
	if contains(h.block, ip) {
		return smtpapp.Refuse(554, [3]int{5, 7, 1}, "blocked", "Access denied: "+ip.String()+" is blocked")
	}
	if b := h.banned(ctx, c); b != nil {
		return smtpapp.Refuse(554, [3]int{5, 7, 1}, "banned", "Access denied: "+b.Network+" is banned for abuse until "+b.Until.UTC().Format(time.RFC3339))
	}
	return nil
}

// inSession closes sessions of a network banned after they began.
func (h *Ban) inSession(ctx context.Context, c *smtpapp.Conn) error {
	if contains(h.allow, c.RemoteIP()) {
		return nil
	}
	if b := h.banned(ctx, c); b != nil {
		return smtpapp.Refuse(421, [3]int{4, 7, 1}, "banned", "Access denied: "+b.Network+" is banned for abuse, closing connection")
	}
	return nil
}

// Helo closes the session if the network was banned meanwhile.
func (h *Ban) Helo(ctx context.Context, c *smtpapp.Conn, name string) error {
	return h.inSession(ctx, c)
}

// Auth closes the session if the network was banned meanwhile.
func (h *Ban) Auth(ctx context.Context, c *smtpapp.Conn, username string) error {
	return h.inSession(ctx, c)
}

// Mail closes the session if the network was banned meanwhile.
func (h *Ban) Mail(ctx context.Context, c *smtpapp.Conn, from string) error {
	return h.inSession(ctx, c)
}

// Rcpt closes the session if the network was banned meanwhile.
func (h *Ban) Rcpt(ctx context.Context, c *smtpapp.Conn, rcpt smtpapp.Recipient) error {
	return h.inSession(ctx, c)
}

// Event counts abuse events and bans the network at the threshold.
func (h *Ban) Event(c *smtpapp.Conn, ev smtpapp.Event) {
	if !h.kinds[ev.Kind] || ev.Module == moduleID {
		return // our own refusals do not extend a ban
	}
	ip := c.RemoteIP()
	if contains(h.allow, ip) {
		return
	}
	ctx := c.Context()
	network := h.network(ip)
	ok, remaining, err := h.store.Take(ctx, h.countKey(network), float64(h.Threshold), time.Duration(h.Window), 1, false)
	if err != nil {
		h.errs.Report("count", err)
		return
	}
	if ok && remaining >= 1 {
		return
	}
	now := time.Now()
	detail := string(ev.Kind)
	if ev.Detail != "" {
		detail += " (" + ev.Detail + ")"
	}
	b := limitstore.Ban{
		Network: network,
		Zone:    h.Zone,
		Reason:  strconv.Itoa(h.Threshold) + " abuse events in " + time.Duration(h.Window).String() + ", the last: " + detail,
		Since:   now,
		Until:   now.Add(time.Duration(h.BanDuration)),
	}
	if err := h.store.SetBan(ctx, h.banKey(network), b); err != nil {
		h.errs.Report("set ban", err)
		return
	}
	// Start counting afresh for when the ban ends.
	_ = h.store.Delete(ctx, h.countKey(network))
	bansTotal.WithLabelValues(h.Zone).Inc()
	c.Logger().Warn("banned", zap.String("network", network), zap.String("zone", h.Zone),
		zap.Time("until", b.Until), zap.String("reason", b.Reason))
}

// Lift lifts the ban of the network that holds addr (an address, or a
// CIDR as listed) in this zone.
func (h *Ban) lift(ctx context.Context, target string) (*limitstore.Ban, error) {
	network := target
	if p, err := netip.ParsePrefix(target); err == nil {
		network = p.Masked().String()
	} else if ip, err := netip.ParseAddr(target); err == nil {
		network = h.network(ip)
	} else {
		return nil, fmt.Errorf("%q is not an IP address or CIDR", target)
	}
	key := h.banKey(network)
	b, err := h.store.GetBan(ctx, key)
	if err != nil || b == nil {
		return nil, err
	}
	if _, err := h.store.DeleteBan(ctx, key); err != nil {
		return nil, err
	}
	_ = h.store.Delete(ctx, h.countKey(network))
	liftedTotal.WithLabelValues(h.Zone).Inc()
	h.logger.Info("ban lifted", zap.String("network", network), zap.String("zone", h.Zone))
	return b, nil
}

// The live handlers, for the admin API and the metrics.
var live struct {
	sync.Mutex
	handlers map[*Ban]struct{}
}

func register(h *Ban) {
	live.Lock()
	defer live.Unlock()
	if live.handlers == nil {
		live.handlers = map[*Ban]struct{}{}
	}
	live.handlers[h] = struct{}{}
}

func unregister(h *Ban) {
	live.Lock()
	defer live.Unlock()
	delete(live.handlers, h)
}

// zones returns one live handler per distinct zone and store (a reload
// briefly has two configs with the same zone).
func zones() []*Ban {
	live.Lock()
	defer live.Unlock()
	type id struct {
		zone  string
		store limitstore.Store
	}
	seen := map[id]bool{}
	var out []*Ban
	for h := range live.handlers {
		k := id{h.Zone, h.store}
		if !seen[k] {
			seen[k] = true
			out = append(out, h)
		}
	}
	return out
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	ban {
//		zone <name>
//		threshold <count> [<window>]
//		window <duration>
//		ban_duration <duration>
//		events <kind>...
//		ipv4_prefix <bits>
//		ipv6_prefix <bits>
//		allow <cidr>...
//		block <cidr>...
//		store memory | redis [<address>] {
//			...
//		}
//	}
func (h *Ban) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	shared := limitstore.Options{Zone: &h.Zone, IPv4Prefix: &h.IPv4Prefix, IPv6Prefix: &h.IPv6Prefix, Store: &h.Store}
	return shared.UnmarshalCaddyfile(d, func(d *caddyfile.Dispenser) (bool, error) {
		var err error
		switch d.Val() {
		case "threshold":
			err = h.unmarshalThreshold(d)
		case "window":
			h.Window, err = caddyargs.Duration(d)
		case "ban_duration":
			h.BanDuration, err = caddyargs.Duration(d)
		case "events":
			err = caddyargs.AppendArgs(d, &h.Events)
		case "allow":
			err = caddyargs.AppendArgs(d, &h.Allow)
		case "block":
			err = caddyargs.AppendArgs(d, &h.Block)
		default:
			return false, nil
		}
		return true, err
	})
}

// unmarshalThreshold parses `threshold <count> [<window>]`.
func (h *Ban) unmarshalThreshold(d *caddyfile.Dispenser) error {
	n, window, err := caddyargs.CountPer(d, nil, true)
	if err != nil {
		return err
	}
	h.Threshold = int(n)
	if window != 0 {
		h.Window = window
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Ban)(nil)
	_ caddy.CleanerUpper    = (*Ban)(nil)
	_ caddyfile.Unmarshaler = (*Ban)(nil)
	_ smtpapp.ConnectHook   = (*Ban)(nil)
	_ smtpapp.HeloHook      = (*Ban)(nil)
	_ smtpapp.AuthHook      = (*Ban)(nil)
	_ smtpapp.MailHook      = (*Ban)(nil)
	_ smtpapp.RcptHook      = (*Ban)(nil)
	_ smtpapp.EventHook     = (*Ban)(nil)
)
