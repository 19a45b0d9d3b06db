// Package limitstore keeps the counters and bans of the abuse modules
// (ratelimit, ban): in memory by default, or in Redis so that several
// instances enforce the same limits. It is a helper package, not a module.
//
// Every rate is a token bucket (the generic cell rate algorithm): a bucket
// of `limit` units that refills at limit/window. A client may spend the
// whole bucket at once, then gets limit units per window; after a full
// window without activity the bucket is full again.
package limitstore

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/promreg"
)

// Store keeps counters and bans. Keys are plain strings that the caller
// namespaces; a Redis store prefixes them with its key prefix.
type Store interface {
	// Take spends cost units from the bucket key, which holds limit units
	// and refills limit units per window. It reports whether the units
	// were there (nothing is spent otherwise) and how many are left. With
	// peek, nothing is spent either way.
	Take(ctx context.Context, key string, limit float64, window time.Duration, cost float64, peek bool) (ok bool, remaining float64, err error)
	// Acquire adds member to the set key unless the set already holds
	// limit members. Members expire after ttl (a safety net for instances
	// that die without releasing). Acquiring a member twice is a no-op.
	Acquire(ctx context.Context, key, member string, limit int, ttl time.Duration) (ok bool, err error)
	// Release removes member from the set key.
	Release(ctx context.Context, key, member string) error
	// Delete forgets buckets and sets.
	Delete(ctx context.Context, keys ...string) error

	// SetBan stores a ban until b.Until.
	SetBan(ctx context.Context, key string, b Ban) error
	// GetBan returns the ban under key, or nil.
	GetBan(ctx context.Context, key string) (*Ban, error)
	// DeleteBan lifts a ban and reports whether there was one.
	DeleteBan(ctx context.Context, key string) (bool, error)
	// ListBans returns the bans whose keys start with prefix.
	ListBans(ctx context.Context, prefix string) ([]Ban, error)

	// String names the store in logs and the admin API.
	String() string
}

// Ban is a network refused until a time.
type Ban struct {
	// Network is the banned client network (CIDR).
	Network string `json:"network"`
	// Zone is the ban zone (config name) that holds it.
	Zone string `json:"zone"`
	// Reason tells why, for the logs and the admin API.
	Reason string `json:"reason"`
	// Since is when the ban began.
	Since time.Time `json:"since"`
	// Until is when it ends.
	Until time.Time `json:"until"`
}

// Config chooses a store. The zero value is the in-memory store.
type Config struct {
	// Type is "memory" (the default: counters in this process, kept
	// across config reloads) or "redis" (counters shared by every
	// instance that uses the same Redis server and key prefix).
	Type string `json:"type,omitempty"`

	// Address of the Redis server, host:port. Default: 127.0.0.1:6379.
	Address string `json:"address,omitempty"`

	// Username for Redis ACLs (Redis 6+), if any.
	Username string `json:"username,omitempty"`

	// Password for Redis, if any. Placeholders like {env.REDIS_PASSWORD}
	// are replaced.
	Password string `json:"password,omitempty"`

	// DB is the Redis database number. Default: 0.
	DB int `json:"db,omitempty"`

	// KeyPrefix starts every Redis key. Default: "caddy-smtp:".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// Timeout of each Redis operation. A store that fails or times out
	// lets the client through (fail open) and logs a warning: mail keeps
	// flowing while Redis is down. Default: 1s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// Validate checks the config; field names the config field in errors.
func (c *Config) Validate(field string) error {
	if c == nil {
		return nil
	}
	switch c.Type {
	case "", "memory":
		if c.Address != "" || c.Username != "" || c.Password != "" || c.DB != 0 || c.KeyPrefix != "" {
			return fmt.Errorf("%s: address, username, password, db and key_prefix apply only to the redis store", field)
		}
	case "redis":
		if c.DB < 0 {
			return fmt.Errorf("%s.db: must not be negative", field)
		}
		if c.Timeout < 0 {
			return fmt.Errorf("%s.timeout: must not be negative", field)
		}
		if c.Address != "" {
			if _, _, err := splitHostPort(c.Address); err != nil {
				return fmt.Errorf("%s.address: %v", field, err)
			}
		}
	default:
		return fmt.Errorf("%s.type: %q is not a store (use memory or redis)", field, c.Type)
	}
	return nil
}

func splitHostPort(a string) (string, int, error) {
	i := strings.LastIndexByte(a, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("%q is not host:port", a)
	}
	p, err := strconv.Atoi(a[i+1:])
	if err != nil || p <= 0 || p > 65535 {
		return "", 0, fmt.Errorf("%q has no valid port", a)
	}
	return a[:i], p, nil
}

// IsRedis reports whether the config chooses Redis.
func (c *Config) IsRedis() bool { return c != nil && c.Type == "redis" }

var pool = caddy.NewUsagePool()

// Open returns the store for cfg, shared by every handler (and every
// loaded config) with the same store config: a reload keeps it. Call
// release (once) in the handler's Cleanup.
func Open(cfg *Config) (Store, func(), error) {
	key := "memory"
	if cfg.IsRedis() {
		r := caddy.NewReplacer()
		c := *cfg
		c.Password = r.ReplaceKnown(c.Password, "")
		if c.Address == "" {
			c.Address = "127.0.0.1:6379"
		}
		if c.KeyPrefix == "" {
			c.KeyPrefix = "caddy-smtp:"
		}
		if c.Timeout == 0 {
			c.Timeout = caddy.Duration(time.Second)
		}
		cfg = &c
		key = fmt.Sprintf("redis\x00%s\x00%s\x00%s\x00%d\x00%s\x00%d", c.Address, c.Username, c.Password, c.DB, c.KeyPrefix, c.Timeout)
	}
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		if cfg.IsRedis() {
			return newRedis(cfg), nil
		}
		return newMemory(), nil
	})
	if err != nil {
		return nil, nil, err
	}
	var once sync.Once
	release := func() { once.Do(func() { _, _ = pool.Delete(key) }) }
	return v.(Store), release, nil
}

// NetworkKey is the client network an address counts for: the address
// masked to v4 bits (IPv4) or v6 bits (IPv6), as a CIDR.
func NetworkKey(ip netip.Addr, v4, v6 int) string {
	ip = ip.Unmap()
	bits := v6
	if ip.Is4() {
		bits = v4
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return ip.String()
	}
	return p.String()
}

// ValidatePrefixLengths checks ipv4_prefix and ipv6_prefix values and
// returns them with the defaults (32 and 64) for zero.
func ValidatePrefixLengths(v4, v6 int) (int, int, error) {
	if v4 == 0 {
		v4 = 32
	}
	if v6 == 0 {
		v6 = 64
	}
	if v4 < 1 || v4 > 32 {
		return 0, 0, fmt.Errorf("ipv4_prefix: %d is not between 1 and 32", v4)
	}
	if v6 < 1 || v6 > 128 {
		return 0, 0, fmt.Errorf("ipv6_prefix: %d is not between 1 and 128", v6)
	}
	return v4, v6, nil
}

// Errors of a store: counted, and logged at most once per interval so a
// Redis outage does not flood the log.
var storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy", Subsystem: "smtp", Name: "limit_store_errors_total",
	Help: "Failed operations of the rate-limit and ban store (the client was let through).",
}, []string{"module"})

// RegisterMetrics registers the package's collectors (and extra ones)
// into reg, tolerating earlier registrations (reloads).
func RegisterMetrics(reg prometheus.Registerer, extra ...prometheus.Collector) error {
	return promreg.Register(reg, append([]prometheus.Collector{storeErrors}, extra...)...)
}

// ErrorLog reports store errors for one module instance.
type ErrorLog struct {
	Logger *zap.Logger
	Module string
	mu     sync.Mutex
	last   time.Time
	missed int
}

// Report counts err and logs it unless one was logged in the last 10s.
func (l *ErrorLog) Report(op string, err error) {
	storeErrors.WithLabelValues(l.Module).Inc()
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.last) < 10*time.Second {
		l.missed++
		l.mu.Unlock()
		return
	}
	missed := l.missed
	l.last, l.missed = now, 0
	l.mu.Unlock()
	l.Logger.Warn("limit store failed; letting the client through", zap.String("op", op), zap.Error(err), zap.Int("unlogged_errors", missed))
}

// UnmarshalCaddyfile parses the store directive:
//
//	store memory
//	store redis [<address>] {
//		address <host:port>
//		username <name>
//		password <password>
//		db <number>
//		key_prefix <prefix>
//		timeout <duration>
//	}
//
// The dispenser is on the `store` token.
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	c.Type = d.Val()
	if c.Type != "memory" && c.Type != "redis" {
		return d.Errf("store: %q is not a store (use memory or redis)", c.Type)
	}
	if d.NextArg() {
		c.Address = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt == "timeout" {
			var err error
			if c.Timeout, err = caddyargs.Duration(d); err != nil {
				return err
			}
			continue
		}
		var v string
		if !d.Args(&v) {
			return d.ArgErr()
		}
		switch opt {
		case "address":
			c.Address = v
		case "username":
			c.Username = v
		case "password":
			c.Password = v
		case "db":
			n, err := strconv.Atoi(v)
			if err != nil {
				return d.Errf("store db: %q is not a number", v)
			}
			c.DB = n
		case "key_prefix":
			c.KeyPrefix = v
		default:
			return d.Errf("unrecognized store option %q", opt)
		}
	}
	return nil
}

// ZoneName is a zone name as configured, "default" when empty; zones
// are part of the store's keys, so they hold no colons or spaces.
func ZoneName(zone string) (string, error) {
	if zone == "" {
		return "default", nil
	}
	if strings.ContainsAny(zone, ": \t\r\n") {
		return "", fmt.Errorf("zone: %q must not contain colons or spaces", zone)
	}
	return zone, nil
}

// Options are the config fields that every handler counting in a store
// (ban, ratelimit) has, for UnmarshalCaddyfile.
type Options struct {
	Zone       *string
	IPv4Prefix *int
	IPv6Prefix *int
	Store      **Config
}

// UnmarshalCaddyfile parses a handler's block: the shared options
//
//	<handler> {
//		zone <name>
//		ipv4_prefix <bits>
//		ipv6_prefix <bits>
//		store memory | redis [<address>] { ... }
//	}
//
// and the handler's own, which option parses with the dispenser on the
// option's name, reporting whether it was one of them.
func (o Options) UnmarshalCaddyfile(d *caddyfile.Dispenser, option func(d *caddyfile.Dispenser) (bool, error)) error {
	if err := caddyargs.Header(d, nil); err != nil {
		return err
	}
	handler := d.Val()
	for d.NextBlock(0) {
		opt := d.Val()
		ok, err := o.unmarshalOption(d)
		if !ok {
			ok, err = option(d)
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

// unmarshalOption parses one of the shared options, with the dispenser
// on its name, and reports whether it was one.
func (o Options) unmarshalOption(d *caddyfile.Dispenser) (bool, error) {
	switch opt := d.Val(); opt {
	case "zone":
		if !d.Args(o.Zone) {
			return true, d.ArgErr()
		}
	case "ipv4_prefix", "ipv6_prefix":
		n, err := caddyargs.Int(d)
		if err != nil {
			return true, err
		}
		*map[string]*int{"ipv4_prefix": o.IPv4Prefix, "ipv6_prefix": o.IPv6Prefix}[opt] = n
	case "store":
		*o.Store = &Config{}
		return true, (*o.Store).UnmarshalCaddyfile(d)
	default:
		return false, nil
	}
	return true, nil
}
