package queue

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/emersion/go-sasl"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// The config's sub-structs each check themselves and return the runtime
// settings they stand for (as Caddy's reverse proxy transport provisions
// its TLS config). A nil sub-struct gives the defaults. Their errors name
// the field inside the sub-struct; the queue adds the sub-struct's name.

// settings is one config's view, applied to the shared engine.
type settings struct {
	logger   *zap.Logger
	app      *smtpapp.App
	hostname string
	sync     groupsync.Mode // of new message files
	limits
	retrySettings
	tlsSettings
	timeoutSettings
	smarthost *smarthostSettings
	transport transportSettings
	storage   certmagic.Storage
	dkim      map[string][]*dkimKey // by domain, in signing order
	cache     cacheSettings
	// allowPrivate lets MX/A/AAAA lookups lead to internal addresses.
	allowPrivate bool
	// trusted are the networks whose unauthenticated clients still get
	// bounces with the original header (trusted_networks of every server).
	trusted []netip.Prefix
}

// settings checks the config and builds its runtime view.
func (q *Queue) settings(ctx caddy.Context, app *smtpapp.App) (*settings, error) {
	s := &settings{logger: ctx.Logger(), app: app, allowPrivate: q.AllowPrivateDestinations, storage: ctx.Storage()}
	var err error
	if s.hostname, err = q.heloName(app); err != nil {
		return nil, err
	}
	if s.sync, err = groupsync.ParseMode(q.Sync); err != nil {
		return nil, fmt.Errorf("sync: %v", err)
	}
	if s.limits, err = q.limits(); err != nil {
		return nil, err
	}
	if s.retrySettings, err = q.Retry.provision(); err != nil {
		return nil, fieldErr("retry", err)
	}
	if s.tlsSettings, err = q.TLS.provision(); err != nil {
		return nil, fieldErr("tls", err)
	}
	if s.timeoutSettings, err = q.Timeouts.provision(); err != nil {
		return nil, fieldErr("timeouts", err)
	}
	if q.Smarthost != nil {
		if s.smarthost, err = q.Smarthost.provision(); err != nil {
			return nil, fieldErr("smarthost", err)
		}
	}
	if s.cache, err = q.ConnectionCache.provision(s.maxConc); err != nil {
		return nil, fieldErr("connection_cache", err)
	}
	if s.transport, err = q.provisionTransport(ctx, s); err != nil {
		return nil, err
	}
	if s.dkim, err = q.DKIM.provision(ctx, app.Domains(), s.logger); err != nil {
		return nil, fieldErr("dkim", err)
	}
	if s.trusted, err = trustedNetworks(app); err != nil {
		return nil, err
	}
	return s, nil
}

// fieldErr puts a sub-struct's name before the field its error names.
func fieldErr(parent string, err error) error { return fmt.Errorf("%s.%w", parent, err) }

// heloName is the configured hostname, else the hostname of the app's
// first server (by name), else the machine's.
func (q *Queue) heloName(app *smtpapp.App) (string, error) {
	name := q.Hostname
	if name == "" {
		names := make([]string, 0, len(app.Servers))
		for n := range app.Servers {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			if h := app.Servers[n].Hostname; h != "" {
				name = h
				break
			}
		}
	}
	if name == "" {
		name, _ = os.Hostname()
	}
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if !smtpapp.ValidHostname(name) {
		return "", fmt.Errorf("hostname: %q is not a valid host name (set one)", name)
	}
	return name, nil
}

// trustedNetworks gathers the trusted_networks of the app's servers.
func trustedNetworks(app *smtpapp.App) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for name, srv := range app.Servers {
		ps, err := smtpapp.ParsePrefixes("servers."+name+".trusted_networks", srv.TrustedNetworks)
		if err != nil {
			return nil, err
		}
		out = append(out, ps...)
	}
	return out, nil
}

// trustedClient reports whether mail from this client may have its header
// quoted back in a bounce: it logged in, or its address is in the
// trusted_networks of a server (Postfix's permit_sasl_authenticated and
// mynetworks). Everyone else gets a bounce without the original header.
func (s *settings) trustedClient(account string, ip netip.Addr) bool {
	if account != "" {
		return true
	}
	ip = ip.Unmap()
	for _, p := range s.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// limits are the concurrency and size limits of deliveries.
type limits struct {
	maxConc      int
	maxPerDomain int
	maxRcpts     int
	port         int
}

func (q *Queue) limits() (limits, error) {
	l := limits{maxConc: 20, maxPerDomain: 5, maxRcpts: 100, port: 25}
	for _, f := range []struct {
		name string
		v    int
		dst  *int
		max  int
	}{
		{"max_concurrency", q.MaxConcurrency, &l.maxConc, 10000},
		{"max_per_domain", q.MaxPerDomain, &l.maxPerDomain, 10000},
		{"max_recipients", q.MaxRecipients, &l.maxRcpts, 100000},
		{"remote_port", q.RemotePort, &l.port, 65535},
	} {
		if f.v < 0 || f.v > f.max {
			return l, fmt.Errorf("%s: %d is out of range (1-%d)", f.name, f.v, f.max)
		}
		if f.v > 0 {
			*f.dst = f.v
		}
	}
	return l, nil
}

// RetryConfig is the retry schedule: after the n-th failed attempt the
// next one is initial * multiplier^(n-1) later, at most max, varied by
// ±jitter; a message still undelivered give_up after it was queued is
// bounced. The defaults follow Postfix.
type RetryConfig struct {
	// Initial delay after the first failure. Default: 5m.
	Initial caddy.Duration `json:"initial,omitempty"`
	// Max delay between attempts. Default: 1h.
	Max caddy.Duration `json:"max,omitempty"`
	// Multiplier of the delay after each failure. Default: 2.
	Multiplier float64 `json:"multiplier,omitempty"`
	// Jitter is the fraction by which a delay is randomly varied, 0 to 1.
	// Default: 0.1. Give a negative value for none.
	Jitter float64 `json:"jitter,omitempty"`
	// GiveUp is the age after which an undelivered message is bounced.
	// Default: 5d.
	GiveUp caddy.Duration `json:"give_up,omitempty"`
	// WarnAfter sends the sender one "delayed" notification when a message
	// is still undelivered this long after it was queued. Default: 0 (no
	// warning).
	WarnAfter caddy.Duration `json:"warn_after,omitempty"`
}

// retrySettings is the retry schedule in effect.
type retrySettings struct {
	initial    time.Duration
	maxBackoff time.Duration
	multiplier float64
	jitter     float64
	giveUp     time.Duration
	warnAfter  time.Duration
}

func (r *RetryConfig) provision() (retrySettings, error) {
	rs := retrySettings{initial: 5 * time.Minute, maxBackoff: time.Hour, multiplier: 2, jitter: 0.1, giveUp: 5 * 24 * time.Hour}
	if r == nil {
		return rs, nil
	}
	if err := setDurations(
		durationField{"initial", r.Initial, &rs.initial},
		durationField{"max", r.Max, &rs.maxBackoff},
		durationField{"give_up", r.GiveUp, &rs.giveUp},
		durationField{"warn_after", r.WarnAfter, &rs.warnAfter},
	); err != nil {
		return rs, err
	}
	if r.Multiplier != 0 {
		if r.Multiplier < 1 || r.Multiplier > 100 {
			return rs, fmt.Errorf("multiplier: %v is out of range (1-100)", r.Multiplier)
		}
		rs.multiplier = r.Multiplier
	}
	if r.Jitter > 1 {
		return rs, fmt.Errorf("jitter: %v is more than 1", r.Jitter)
	}
	if r.Jitter != 0 {
		rs.jitter = max(r.Jitter, 0)
	}
	// A long initial delay alone raises the default maximum with it.
	if r.Initial > 0 && r.Max == 0 && rs.initial > rs.maxBackoff {
		rs.maxBackoff = rs.initial
	}
	if rs.maxBackoff < rs.initial {
		return rs, fmt.Errorf("max: %v is less than initial %v", rs.maxBackoff, rs.initial)
	}
	return rs, nil
}

// backoff is the delay after the n-th failed attempt.
func (s *retrySettings) backoff(n int) time.Duration {
	d := float64(s.initial) * math.Pow(s.multiplier, float64(max(n-1, 0)))
	if d > float64(s.maxBackoff) || math.IsInf(d, 0) {
		d = float64(s.maxBackoff)
	}
	if s.jitter > 0 {
		d *= 1 + s.jitter*(2*rand.Float64()-1)
	}
	return time.Duration(d)
}

// longestWait is the longest delay backoff can give.
func (s *retrySettings) longestWait() time.Duration {
	return time.Duration(float64(s.maxBackoff) * (1 + s.jitter))
}

// durationField is an optional duration setting: zero keeps the default.
type durationField struct {
	name string
	v    caddy.Duration
	dst  *time.Duration
}

func setDurations(fields ...durationField) error {
	for _, f := range fields {
		if f.v < 0 {
			return fmt.Errorf("%s: must not be negative", f.name)
		}
		if f.v > 0 {
			*f.dst = time.Duration(f.v)
		}
	}
	return nil
}

// TLSPolicy is the STARTTLS policy for MX hosts.
type TLSPolicy struct {
	// Disable never uses STARTTLS.
	Disable bool `json:"disable,omitempty"`
	// Require defers delivery to hosts that do not offer STARTTLS (or
	// whose handshake fails) instead of falling back to plain text.
	Require bool `json:"require,omitempty"`
	// Verify requires a certificate valid for the MX host name (implies
	// require). Without it, certificates are checked and the result logged,
	// but not enforced (like Postfix's "may" level).
	Verify bool `json:"verify,omitempty"`
	// CAFile is a PEM file of root certificates to verify against instead
	// of the system's.
	CAFile string `json:"ca_file,omitempty"`
}

// tlsSettings is the STARTTLS policy in effect for MX hosts.
type tlsSettings struct {
	tlsDisable bool
	tlsRequire bool
	tlsVerify  bool
	roots      *x509.CertPool
}

func (t *TLSPolicy) provision() (tlsSettings, error) {
	if t == nil {
		return tlsSettings{}, nil
	}
	ts := tlsSettings{tlsDisable: t.Disable, tlsRequire: t.Require || t.Verify, tlsVerify: t.Verify}
	if t.Disable && (t.Require || t.Verify) {
		return ts, fmt.Errorf("disable: contradicts require/verify")
	}
	if t.CAFile != "" {
		pool, err := loadRoots(caddy.NewReplacer().ReplaceKnown(t.CAFile, ""))
		if err != nil {
			return ts, fmt.Errorf("ca_file: %v", err)
		}
		ts.roots = pool
	}
	return ts, nil
}

func loadRoots(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificates", file)
	}
	return pool, nil
}

// Smarthost is a relay that takes all outbound mail. Its address is the
// administrator's choice: it may be internal (allow_private_destinations
// does not apply to it).
type Smarthost struct {
	// Address is host:port. Port default: 587 (465 with implicit TLS).
	Address string `json:"address,omitempty"`
	// Username for AUTH (PLAIN, or LOGIN if PLAIN is not offered).
	// Placeholders like {env.SMTP_USER} are replaced.
	Username string `json:"username,omitempty"`
	// Password for AUTH. Placeholders like {env.SMTP_PASSWORD} are replaced.
	Password string `json:"password,omitempty"`
	// TLS is starttls (default), implicit (TLS from the first byte), or
	// none (only without AUTH).
	TLS string `json:"tls,omitempty"`
	// InsecureSkipVerify accepts any certificate from the relay.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
	// CAFile is a PEM file of root certificates to verify the relay with.
	CAFile string `json:"ca_file,omitempty"`
}

// smarthostSettings is the relay in effect.
type smarthostSettings struct {
	host, port  string
	implicitTLS bool
	starttls    bool
	tlsConfig   *tls.Config
	username    string
	password    string
}

func (sh *Smarthost) provision() (*smarthostSettings, error) {
	repl := caddy.NewReplacer()
	ss := &smarthostSettings{
		username: repl.ReplaceKnown(sh.Username, ""),
		password: repl.ReplaceKnown(sh.Password, ""),
	}
	switch sh.TLS {
	case "", "starttls":
		ss.starttls = true
	case "implicit":
		ss.implicitTLS = true
	case "none":
		if ss.username != "" {
			return nil, fmt.Errorf("tls: none would send the password in clear text; use starttls or implicit")
		}
	default:
		return nil, fmt.Errorf("tls: %q is not starttls, implicit or none", sh.TLS)
	}
	if ss.username == "" && ss.password != "" {
		return nil, fmt.Errorf("username: required with a password")
	}
	var err error
	if ss.host, ss.port, err = ss.address(repl.ReplaceKnown(sh.Address, "")); err != nil {
		return nil, err
	}
	ss.tlsConfig = &tls.Config{ServerName: ss.host, InsecureSkipVerify: sh.InsecureSkipVerify}
	if sh.CAFile != "" {
		pool, err := loadRoots(repl.ReplaceKnown(sh.CAFile, ""))
		if err != nil {
			return nil, fmt.Errorf("ca_file: %v", err)
		}
		ss.tlsConfig.RootCAs = pool
	}
	return ss, nil
}

// address splits host[:port], with the default port of the TLS mode.
func (ss *smarthostSettings) address(addr string) (host, port string, err error) {
	if addr == "" {
		return "", "", fmt.Errorf("address: required")
	}
	host, port, err = net.SplitHostPort(addr)
	if err != nil {
		host, port = addr, "587"
		if ss.implicitTLS {
			port = "465"
		}
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", "", fmt.Errorf("address: bad port in %q", addr)
	}
	if host == "" {
		return "", "", fmt.Errorf("address: no host in %q", addr)
	}
	return host, port, nil
}

// tlsLabel is the metric label of a TLS session with the relay.
func (ss *smarthostSettings) tlsLabel() string {
	if ss.tlsConfig.InsecureSkipVerify {
		return "unverified"
	}
	return "verified"
}

// saslClient picks PLAIN, or LOGIN if the server offers only that.
func (ss *smarthostSettings) saslClient(mechs string) sasl.Client {
	if ss.username == "" {
		return nil
	}
	offered := strings.Fields(strings.ToUpper(mechs))
	if !slices.Contains(offered, "PLAIN") && slices.Contains(offered, "LOGIN") {
		return sasl.NewLoginClient(ss.username, ss.password)
	}
	return sasl.NewPlainClient("", ss.username, ss.password)
}

// Timeouts of outbound SMTP.
type Timeouts struct {
	// Connect is the TCP connect timeout. Default: 30s.
	Connect caddy.Duration `json:"connect,omitempty"`
	// Command is the wait for the reply to a command. Default: 5m (RFC 5321).
	Command caddy.Duration `json:"command,omitempty"`
	// Data is the time to send the message and get the final reply.
	// Default: 10m.
	Data caddy.Duration `json:"data,omitempty"`
}

// timeoutSettings are the timeouts in effect.
type timeoutSettings struct {
	connectTimeout time.Duration
	cmdTimeout     time.Duration
	dataTimeout    time.Duration
}

func (t *Timeouts) provision() (timeoutSettings, error) {
	ts := timeoutSettings{connectTimeout: 30 * time.Second, cmdTimeout: 5 * time.Minute, dataTimeout: 10 * time.Minute}
	if t == nil {
		return ts, nil
	}
	err := setDurations(
		durationField{"connect", t.Connect, &ts.connectTimeout},
		durationField{"command", t.Command, &ts.cmdTimeout},
		durationField{"data", t.Data, &ts.dataTimeout},
	)
	return ts, err
}
