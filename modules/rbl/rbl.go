// Package rbl is the smtp.handlers.rbl module: DNS block lists (DNSBL) and
// allow lists (DNSWL) of client addresses, queried in parallel when a
// client connects, scored or refused at MAIL/RCPT.
package rbl

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(RBL{})
}

// RBL checks the client's address against DNS lists (RFC 5782). The
// queries of all zones start in parallel as the client connects, without
// delaying the greeting; their answers are collected at MAIL, so a client
// is usually answered before it gets there. Answers are cached for their
// TTL (at most an hour) in a cache that survives config reloads.
//
// A listing adds the zone's points to the spam score, or, for a zone with
// action "reject", refuses each RCPT with 554 5.7.1 naming the list and
// its reason. An allowlist zone subtracts its points and keeps the client
// from being refused by this module. A DNS failure or a list's error code
// (127.255.255.x) never refuses anyone: it is logged and counted.
//
// Each zone is checked when first loaded and then periodically with the
// RFC 5782 test entries (127.0.0.2 listed, 127.0.0.1 not); while it fails,
// it is skipped with a warning.
//
// Authenticated sessions are not checked.
type RBL struct {
	// Zones are the lists to query, in the order their reasons appear.
	Zones []*Zone `json:"zones,omitempty"`

	// RejectThreshold refuses RCPT (554 5.7.1) when the points of all the
	// listings together reach it, e.g. a client listed in two lists that
	// only score alone. 0 (default) disables it; the server's spam
	// thresholds still apply to the summed score.
	RejectThreshold float64 `json:"reject_threshold,omitempty"`

	// SkipNetworks are client networks (CIDR) that are not looked up, e.g.
	// your own or private ranges. Note that a client at 127.0.0.2 is the
	// lists' test entry, listed everywhere.
	SkipNetworks []string `json:"skip_networks,omitempty"`

	// CacheSize is the most answers cached per zone. Default: 10000.
	CacheSize int `json:"cache_size,omitempty"`

	zones  []*zone
	skip   []netip.Prefix
	keys   []string
	connID string
	logger *zap.Logger
}

// Zone is one DNS list.
type Zone struct {
	// Name is the list's DNS zone, e.g. "zen.spamhaus.org". Required.
	Name string `json:"name"`

	// Allowlist makes this an allow list (DNSWL): a listing subtracts the
	// points from the score, and the client is not refused by any zone.
	Allowlist bool `json:"allowlist,omitempty"`

	// Action on a listing: "score" (default) adds the points to the spam
	// score; "reject" refuses each RCPT with 554 5.7.1 naming the list.
	// Allow lists only score.
	Action string `json:"action,omitempty"`

	// Weight is the points a listing adds (an allow list subtracts).
	// Default: 1.
	Weight *float64 `json:"weight,omitempty"`

	// Codes give points per answer instead of the weight: keys are an
	// answer address or range ("127.0.0.4", "127.0.0.10/31"), the most
	// specific one applies. Distinct listed answers add up; listed answers
	// without a code add the weight once.
	Codes map[string]float64 `json:"codes,omitempty"`

	// Listed are the answer ranges (CIDR) that count as a listing.
	// Default: 127.0.0.0/24. Answers in 127.255.255.0/24 are the lists'
	// error codes and never count.
	Listed []string `json:"listed,omitempty"`

	// ErrorCodes are more answers (addresses or CIDR ranges) that the list
	// uses to report errors rather than listings, e.g. "127.0.0.255" for
	// list.dnswl.org. They are logged and never count as listed.
	ErrorCodes []string `json:"error_codes,omitempty"`

	// Timeout for the list's answer. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// TestInterval is how often the list is checked with the RFC 5782
	// test entries. Default: 10m (1m while it fails).
	TestInterval caddy.Duration `json:"test_interval,omitempty"`

	// DisableSelfTest uses the list without testing it, for lists that
	// publish no test entries.
	DisableSelfTest bool `json:"disable_self_test,omitempty"`
}

// zone is a provisioned Zone.
type zone struct {
	name   string
	allow  bool
	reject bool
	weight float64
	codes  []code
	ranges ranges
	state  *zoneState
}

type code struct {
	prefix netip.Prefix
	points float64
}

// CaddyModule returns the Caddy module information.
func (RBL) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.handlers.rbl", New: func() caddy.Module { return new(RBL) }}
}

// Provision checks the config and gets each zone's shared state.
func (r *RBL) Provision(ctx caddy.Context) error {
	r.logger = ctx.Logger()
	app := smtpapp.AppFrom(ctx)
	if app == nil {
		return fmt.Errorf("the rbl handler works only in the smtp app")
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	if len(r.Zones) == 0 {
		return fmt.Errorf("zones: at least one zone is required")
	}
	if r.CacheSize < 0 {
		return fmt.Errorf("cache_size: must not be negative")
	}
	if r.CacheSize == 0 {
		r.CacheSize = 10000
	}
	if r.RejectThreshold < 0 {
		return fmt.Errorf("reject_threshold: must not be negative")
	}
	var err error
	if r.skip, err = smtpapp.ParsePrefixes("skip_networks", r.SkipNetworks); err != nil {
		return err
	}
	resolverID := fmt.Sprintf("%v", app.Resolver)
	seen := map[string]int{}
	for i, zc := range r.Zones {
		z, p, err := r.provisionZone(i, zc)
		if err != nil {
			r.Cleanup()
			return err
		}
		key := z.name
		if z.allow {
			key += " (allowlist)"
		}
		if j, dup := seen[key]; dup {
			r.Cleanup()
			return fmt.Errorf("zones[%d].name: %s is also zones[%d]", i, z.name, j)
		}
		seen[key] = i
		p.servers = resolverID
		if z.state, err = loadZone(p, app.DNS(), r.logger); err != nil {
			r.Cleanup()
			return fmt.Errorf("zones[%d]: %v", i, err)
		}
		r.keys = append(r.keys, p.key())
		r.zones = append(r.zones, z)
	}
	r.connID = fmt.Sprintf("smtp.handlers.rbl@%p", r)
	return nil
}

func (r *RBL) provisionZone(i int, zc *Zone) (*zone, zoneParams, error) {
	field := func(f string) string { return fmt.Sprintf("zones[%d].%s", i, f) }
	if zc == nil {
		return nil, zoneParams{}, fmt.Errorf("zones[%d]: empty", i)
	}
	name := strings.Trim(strings.ToLower(zc.Name), ".")
	if name == "" {
		return nil, zoneParams{}, fmt.Errorf("%s: the list's DNS zone is required", field("name"))
	}
	if !smtpapp.ValidHostname(name) || !strings.Contains(name, ".") {
		return nil, zoneParams{}, fmt.Errorf("%s: %q is not a DNS zone", field("name"), zc.Name)
	}
	z := &zone{name: name, allow: zc.Allowlist, weight: 1}
	switch zc.Action {
	case "", "score":
	case "reject":
		if zc.Allowlist {
			return nil, zoneParams{}, fmt.Errorf("%s: an allowlist zone cannot reject", field("action"))
		}
		z.reject = true
	default:
		return nil, zoneParams{}, fmt.Errorf("%s: %q is not \"score\" or \"reject\"", field("action"), zc.Action)
	}
	if zc.Weight != nil {
		if *zc.Weight < 0 {
			return nil, zoneParams{}, fmt.Errorf("%s: must not be negative (an allowlist zone subtracts its weight)", field("weight"))
		}
		z.weight = *zc.Weight
	}
	keys := make([]string, 0, len(zc.Codes))
	for k := range zc.Codes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		var p netip.Prefix
		if ip, err := netip.ParseAddr(k); err == nil {
			p = netip.PrefixFrom(ip, ip.BitLen())
		} else if p, err = netip.ParsePrefix(k); err != nil || !p.Addr().Is4() {
			return nil, zoneParams{}, fmt.Errorf("%s: %q is not an IPv4 address or range", field("codes"), k)
		}
		if zc.Codes[k] < 0 {
			return nil, zoneParams{}, fmt.Errorf("%s: %q: points must not be negative", field("codes"), k)
		}
		z.codes = append(z.codes, code{prefix: p.Masked(), points: zc.Codes[k]})
	}
	// Most specific first.
	slices.SortStableFunc(z.codes, func(a, b code) int { return b.prefix.Bits() - a.prefix.Bits() })
	if len(zc.Listed) == 0 {
		z.ranges.listed = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/24")}
	} else {
		var err error
		if z.ranges.listed, err = smtpapp.ParsePrefixes(field("listed"), zc.Listed); err != nil {
			return nil, zoneParams{}, err
		}
	}
	var err error
	if z.ranges.errs, err = smtpapp.ParsePrefixes(field("error_codes"), zc.ErrorCodes); err != nil {
		return nil, zoneParams{}, err
	}
	timeout := time.Duration(zc.Timeout)
	if timeout < 0 {
		return nil, zoneParams{}, fmt.Errorf("%s: must not be negative", field("timeout"))
	}
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	interval := time.Duration(zc.TestInterval)
	if interval < 0 {
		return nil, zoneParams{}, fmt.Errorf("%s: must not be negative", field("test_interval"))
	}
	if interval == 0 {
		interval = 10 * time.Minute
	}
	if interval < time.Second {
		return nil, zoneParams{}, fmt.Errorf("%s: must be at least 1s", field("test_interval"))
	}
	if zc.DisableSelfTest {
		interval = 0
	}
	return z, zoneParams{name: name, timeout: timeout, interval: interval, ranges: z.ranges, wantTXT: z.reject, maxSize: r.CacheSize}, nil
}

// Cleanup releases the zones' shared state.
func (r *RBL) Cleanup() error {
	for _, k := range r.keys {
		_, _ = zones.Delete(k)
	}
	r.keys = nil
	return nil
}

// pending is one connection's lookups, then its decision.
type pending struct {
	ip      netip.Addr
	entries []*entry // nil where the zone was down at connect
	mu      sync.Mutex
	d       *decision
}

// decision is what the listings of one client come to.
type decision struct {
	scores []smtpapp.ScoreReason
	reject error
}

// Connect starts the lookups; it does not wait for them.
func (r *RBL) Connect(ctx context.Context, c *smtpapp.Conn) error {
	r.start(c)
	return nil
}

func (r *RBL) start(c *smtpapp.Conn) *pending {
	ip := c.RemoteIP().Unmap()
	if !ip.IsValid() {
		return nil
	}
	for _, p := range r.skip {
		if p.Contains(ip) {
			return nil
		}
	}
	p := &pending{ip: ip, entries: make([]*entry, len(r.zones))}
	for i, z := range r.zones {
		if z.state.health.Load() == healthDown {
			continue
		}
		e, hit := z.state.lookup(ip)
		if hit {
			metricCacheHits.WithLabelValues(z.name).Inc()
		}
		p.entries[i] = e
	}
	c.Set(r.connID, p)
	return p
}

// Mail collects the answers (once per connection) and adds the points of
// the listings to this transaction's score.
func (r *RBL) Mail(ctx context.Context, c *smtpapp.Conn, from string) error {
	if c.Account() != "" || c.Trusted() {
		return nil
	}
	p, _ := c.Get(r.connID).(*pending)
	if p == nil {
		if p = r.start(c); p == nil {
			return nil
		}
	}
	d := r.decide(ctx, c, p)
	for _, s := range d.scores {
		c.AddScore(s.Module, s.Points, s.Reason)
	}
	return nil
}

// Rcpt refuses the recipient if a list said so at MAIL.
func (r *RBL) Rcpt(ctx context.Context, c *smtpapp.Conn, rcpt smtpapp.Recipient) error {
	if c.Account() != "" || c.Trusted() {
		return nil
	}
	p, _ := c.Get(r.connID).(*pending)
	if p == nil {
		return nil
	}
	p.mu.Lock()
	d := p.d
	p.mu.Unlock()
	if d == nil || d.reject == nil {
		return nil
	}
	return d.reject
}

// score turns a list's answer into points, the listed codes and the
// error codes.
func (z *zone) score(addrs []netip.Addr) (points float64, codes, listErrs []string) {
	seen := map[netip.Addr]bool{}
	unmatched := false
	for _, a := range addrs {
		if seen[a] {
			continue
		}
		seen[a] = true
		if z.ranges.isError(a) {
			listErrs = append(listErrs, a.String())
			continue
		}
		if !z.ranges.isListed(a) {
			continue
		}
		codes = append(codes, a.String())
		matched := false
		for _, c := range z.codes {
			if c.prefix.Contains(a) {
				points += c.points
				matched = true
				break
			}
		}
		if !matched {
			unmatched = true
		}
	}
	if unmatched {
		points += z.weight
	}
	return points, codes, listErrs
}

// cleanReason makes a list's TXT record safe for an SMTP reply: printable
// ASCII only, white space collapsed, at most 200 characters.
func cleanReason(s string) string {
	var b strings.Builder
	space := false
	for _, ch := range s {
		switch {
		case ch == ' ' || ch == '\t':
			space = b.Len() > 0
			continue
		case ch < 0x20 || ch == 0x7f:
			continue // control characters: dropped
		case ch > 0x7e:
			ch = '?'
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(ch)
		if b.Len() >= 200 {
			break
		}
	}
	return b.String()
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	rbl {
//		zone <name> [<weight>] [reject|score] {
//			weight <points>
//			action reject|score
//			code <address|range> <points>
//			listed <range>...
//			error_codes <address|range>...
//			timeout <duration>
//			test_interval <duration>
//			self_test off
//		}
//		allow <name> [<weight>] { ...same options, but no action }
//		reject_threshold <points>
//		skip_networks <cidr>...
//		cache_size <n>
//	}
func (r *RBL) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := caddyargs.Header(d, nil); err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch dir := d.Val(); dir {
		case "zone", "allow":
			z := &Zone{Allowlist: dir == "allow"}
			if !d.NextArg() {
				return d.ArgErr()
			}
			z.Name = d.Val()
			for d.NextArg() {
				switch v := d.Val(); v {
				case "reject", "score":
					z.Action = v
				default:
					f, err := strconv.ParseFloat(v, 64)
					if err != nil {
						return d.Errf("%s %s: %q is not a weight, \"reject\" or \"score\"", dir, z.Name, v)
					}
					z.Weight = &f
				}
			}
			if err := parseZoneBlock(d, z); err != nil {
				return err
			}
			r.Zones = append(r.Zones, z)
		case "reject_threshold":
			r.RejectThreshold, err = caddyargs.Float(d)
		case "skip_networks":
			err = caddyargs.AppendArgs(d, &r.SkipNetworks)
		case "cache_size":
			r.CacheSize, err = caddyargs.Int(d)
		default:
			return d.Errf("unrecognized rbl option %q", dir)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func parseZoneBlock(d *caddyfile.Dispenser, z *Zone) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "weight":
			var f float64
			f, err = caddyargs.Float(d)
			z.Weight = &f
		case "action":
			if !d.Args(&z.Action) {
				return d.ArgErr()
			}
		case "code":
			var k, v string
			if !d.Args(&k, &v) {
				return d.ArgErr()
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return d.Errf("code %s: %v", k, err)
			}
			if z.Codes == nil {
				z.Codes = map[string]float64{}
			}
			z.Codes[k] = f
		case "listed":
			err = caddyargs.AppendArgs(d, &z.Listed)
		case "error_codes":
			err = caddyargs.AppendArgs(d, &z.ErrorCodes)
		case "timeout":
			z.Timeout, err = caddyargs.Duration(d)
		case "test_interval":
			z.TestInterval, err = caddyargs.Duration(d)
		case "self_test":
			var on bool
			on, err = caddyargs.OnOff(d)
			z.DisableSelfTest = !on
		default:
			return d.Errf("unrecognized zone option %q", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*RBL)(nil)
	_ caddy.CleanerUpper    = (*RBL)(nil)
	_ caddyfile.Unmarshaler = (*RBL)(nil)
	_ smtpapp.ConnectHook   = (*RBL)(nil)
	_ smtpapp.MailHook      = (*RBL)(nil)
	_ smtpapp.RcptHook      = (*RBL)(nil)
)
