// Package queue is the smtp.delivery.queue module: the durable outbound
// queue. It takes mail for remote recipients, stores it on disk (synced)
// before the server answers 250, and delivers it to each domain's MX (or a
// smarthost) with retries, backoff, bounces (RFC 3464) and DKIM signing. An
// admin API module (admin.api.smtp_queue) lists, flushes and deletes
// entries; the `caddy smtp-queue` and `caddy smtp-dkim` commands use it.
package queue

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/emersion/go-sasl"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Queue{})
}

// Queue is the outbound queue. Its state (the spool, the delivery workers,
// the messages in flight) is kept across config reloads for as long as some
// config uses the same path; the newest config's settings apply to it.
type Queue struct {
	// Path is the spool folder. Default: smtp/queue under Caddy's data
	// directory. Placeholders like {env.HOME} are replaced.
	Path string `json:"path,omitempty"`

	// Hostname is the name given in EHLO to remote servers and used in
	// bounces (MAILER-DAEMON@hostname). Default: the hostname of the
	// app's first server (by name), else the machine's host name.
	Hostname string `json:"hostname,omitempty"`

	// MaxConcurrency is the number of deliveries in progress at once.
	// Default: 20.
	MaxConcurrency int `json:"max_concurrency,omitempty"`

	// MaxPerDomain is the number of deliveries in progress at once to one
	// destination domain. Default: 5.
	MaxPerDomain int `json:"max_per_domain,omitempty"`

	// MaxRecipients per transaction; more recipients for one domain are
	// sent in further transactions on the same connection. Default: 100.
	MaxRecipients int `json:"max_recipients,omitempty"`

	// RemotePort is the port of remote MX hosts. Default: 25. (Tests point
	// it at a server on loopback.)
	RemotePort int `json:"remote_port,omitempty"`

	// Retry sets when failed deliveries are retried and when the queue
	// gives up.
	Retry *RetryConfig `json:"retry,omitempty"`

	// TLS is the policy for STARTTLS to MX hosts. Default: opportunistic
	// (encrypt when offered, without requiring a valid certificate).
	TLS *TLSPolicy `json:"tls,omitempty"`

	// Smarthost sends everything through one relay instead of MX lookup.
	Smarthost *Smarthost `json:"smarthost,omitempty"`

	// DKIM signs mail from local domains. On by default.
	DKIM *DKIMConfig `json:"dkim,omitempty"`

	// Timeouts of outbound connections.
	Timeouts *Timeouts `json:"timeouts,omitempty"`

	path string
	s    *settings
	eng  *engine
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

// Smarthost is a relay that takes all outbound mail.
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

// settings is one config's view, applied to the shared engine.
type settings struct {
	logger        *zap.Logger
	app           *smtpapp.App
	hostname      string
	maxConc       int
	maxPerDomain  int
	maxRcpts      int
	port          int
	initial       time.Duration
	maxBackoff    time.Duration
	multiplier    float64
	jitter        float64
	giveUp        time.Duration
	warnAfter     time.Duration
	tlsDisable    bool
	tlsRequire    bool
	tlsVerify     bool
	roots         *x509.CertPool
	smarthost     *smarthostSettings
	dkim          map[string]*dkimKey
	connectTimout time.Duration
	cmdTimeout    time.Duration
	dataTimeout   time.Duration
}

type smarthostSettings struct {
	host, port  string
	implicitTLS bool
	starttls    bool
	tlsConfig   *tls.Config
	username    string
	password    string
}

func (s *smarthostSettings) saslClient(mechs string) sasl.Client {
	if s.username == "" {
		return nil
	}
	for _, m := range strings.Fields(strings.ToUpper(mechs)) {
		if m == "PLAIN" {
			return sasl.NewPlainClient("", s.username, s.password)
		}
	}
	for _, m := range strings.Fields(strings.ToUpper(mechs)) {
		if m == "LOGIN" {
			return sasl.NewLoginClient(s.username, s.password)
		}
	}
	return sasl.NewPlainClient("", s.username, s.password)
}

// backoff is the delay after the n-th failed attempt.
func (s *settings) backoff(n int) time.Duration {
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
func (s *settings) longestWait() time.Duration {
	return time.Duration(float64(s.maxBackoff) * (1 + s.jitter))
}

// CaddyModule returns the Caddy module information.
func (Queue) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.delivery.queue", New: func() caddy.Module { return new(Queue) }}
}

// Provision checks the config, loads the DKIM keys, and attaches to the
// queue engine of the spool path (loading the spool if this is the first
// config that uses it).
func (q *Queue) Provision(ctx caddy.Context) error {
	app := smtpapp.AppFrom(ctx)
	if app == nil {
		return fmt.Errorf("the queue must be loaded by the smtp app (as its outbound target)")
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	s, err := q.settings(ctx, app)
	if err != nil {
		return err
	}
	q.s = s
	repl := caddy.NewReplacer()
	path := q.Path
	if path == "" {
		path = filepath.Join(caddy.AppDataDir(), "smtp", "queue")
	}
	path, err = filepath.Abs(repl.ReplaceKnown(path, ""))
	if err != nil {
		return fmt.Errorf("path: %v", err)
	}
	val, _, err := engines.LoadOrNew(path, func() (caddy.Destructor, error) {
		return openEngine(path, s)
	})
	if err != nil {
		return fmt.Errorf("path: %s: %v", path, err)
	}
	q.path = path
	q.eng = val.(*engine)
	q.eng.attach(q)
	return nil
}

func (q *Queue) settings(ctx caddy.Context, app *smtpapp.App) (*settings, error) {
	repl := caddy.NewReplacer()
	s := &settings{
		logger:        ctx.Logger(),
		app:           app,
		maxConc:       20,
		maxPerDomain:  5,
		maxRcpts:      100,
		port:          25,
		initial:       5 * time.Minute,
		maxBackoff:    time.Hour,
		multiplier:    2,
		jitter:        0.1,
		giveUp:        5 * 24 * time.Hour,
		connectTimout: 30 * time.Second,
		cmdTimeout:    5 * time.Minute,
		dataTimeout:   10 * time.Minute,
	}
	s.hostname = q.Hostname
	if s.hostname == "" {
		names := make([]string, 0, len(app.Servers))
		for name := range app.Servers {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if h := app.Servers[name].Hostname; h != "" {
				s.hostname = h
				break
			}
		}
	}
	if s.hostname == "" {
		s.hostname, _ = os.Hostname()
	}
	s.hostname = strings.TrimSuffix(strings.ToLower(s.hostname), ".")
	if !smtpapp.ValidHostname(s.hostname) {
		return nil, fmt.Errorf("hostname: %q is not a valid host name (set one)", s.hostname)
	}
	for _, f := range []struct {
		name string
		v    int
		dst  *int
		max  int
	}{
		{"max_concurrency", q.MaxConcurrency, &s.maxConc, 10000},
		{"max_per_domain", q.MaxPerDomain, &s.maxPerDomain, 10000},
		{"max_recipients", q.MaxRecipients, &s.maxRcpts, 100000},
		{"remote_port", q.RemotePort, &s.port, 65535},
	} {
		if f.v < 0 || f.v > f.max {
			return nil, fmt.Errorf("%s: %d is out of range (1-%d)", f.name, f.v, f.max)
		}
		if f.v > 0 {
			*f.dst = f.v
		}
	}
	if r := q.Retry; r != nil {
		for _, f := range []struct {
			name string
			v    caddy.Duration
			dst  *time.Duration
		}{
			{"retry.initial", r.Initial, &s.initial},
			{"retry.max", r.Max, &s.maxBackoff},
			{"retry.give_up", r.GiveUp, &s.giveUp},
			{"retry.warn_after", r.WarnAfter, &s.warnAfter},
		} {
			if f.v < 0 {
				return nil, fmt.Errorf("%s: must not be negative", f.name)
			}
			if f.v > 0 {
				*f.dst = time.Duration(f.v)
			}
		}
		if r.Multiplier != 0 {
			if r.Multiplier < 1 || r.Multiplier > 100 {
				return nil, fmt.Errorf("retry.multiplier: %v is out of range (1-100)", r.Multiplier)
			}
			s.multiplier = r.Multiplier
		}
		if r.Jitter > 1 {
			return nil, fmt.Errorf("retry.jitter: %v is more than 1", r.Jitter)
		}
		if r.Jitter != 0 {
			s.jitter = max(r.Jitter, 0)
		}
		if r.Initial > 0 && r.Max == 0 && s.initial > s.maxBackoff {
			s.maxBackoff = s.initial
		}
	}
	if s.maxBackoff < s.initial {
		return nil, fmt.Errorf("retry.max: %v is less than retry.initial %v", s.maxBackoff, s.initial)
	}
	if t := q.TLS; t != nil {
		s.tlsDisable, s.tlsRequire, s.tlsVerify = t.Disable, t.Require || t.Verify, t.Verify
		if t.Disable && (t.Require || t.Verify) {
			return nil, fmt.Errorf("tls: disable contradicts require/verify")
		}
		if t.CAFile != "" {
			pool, err := loadRoots(repl.ReplaceKnown(t.CAFile, ""))
			if err != nil {
				return nil, fmt.Errorf("tls.ca_file: %v", err)
			}
			s.roots = pool
		}
	}
	if sh := q.Smarthost; sh != nil {
		ss, err := sh.build(repl)
		if err != nil {
			return nil, fmt.Errorf("smarthost.%v", err)
		}
		s.smarthost = ss
	}
	if t := q.Timeouts; t != nil {
		for _, f := range []struct {
			name string
			v    caddy.Duration
			dst  *time.Duration
		}{
			{"timeouts.connect", t.Connect, &s.connectTimout},
			{"timeouts.command", t.Command, &s.cmdTimeout},
			{"timeouts.data", t.Data, &s.dataTimeout},
		} {
			if f.v < 0 {
				return nil, fmt.Errorf("%s: must not be negative", f.name)
			}
			if f.v > 0 {
				*f.dst = time.Duration(f.v)
			}
		}
	}
	d := q.DKIM
	if d == nil {
		d = &DKIMConfig{}
	}
	if !d.Disable {
		sel := d.Selector
		if sel == "" {
			sel = "caddysmtp"
		}
		if !smtpapp.ValidHostname(sel) || strings.Contains(sel, "_") {
			return nil, fmt.Errorf("dkim.selector: %q is not a valid DNS label sequence", sel)
		}
		switch d.KeyType {
		case "", "rsa2048", "rsa4096", "ed25519":
		default:
			return nil, fmt.Errorf("dkim.key_type: %q is not rsa2048, rsa4096 or ed25519", d.KeyType)
		}
		domains := d.Domains
		if len(domains) == 0 {
			domains = app.LocalDomains
		}
		s.dkim = map[string]*dkimKey{}
		for i, dom := range domains {
			dom = strings.TrimSuffix(strings.ToLower(dom), ".")
			if !smtpapp.ValidHostname(dom) {
				return nil, fmt.Errorf("dkim.domains[%d]: invalid domain %q", i, domains[i])
			}
			k, err := loadDKIMKey(ctx, ctx.Storage(), dom, sel, d.KeyType, s.logger)
			if err != nil {
				return nil, fmt.Errorf("dkim: %s: %v", dom, err)
			}
			s.dkim[dom] = k
		}
	}
	return s, nil
}

func (sh *Smarthost) build(repl *caddy.Replacer) (*smarthostSettings, error) {
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
	addr := repl.ReplaceKnown(sh.Address, "")
	if addr == "" {
		return nil, fmt.Errorf("address: required")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		host, port = addr, "587"
		if ss.implicitTLS {
			port = "465"
		}
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("address: bad port in %q", addr)
	}
	if host == "" {
		return nil, fmt.Errorf("address: no host in %q", addr)
	}
	ss.host, ss.port = host, port
	ss.tlsConfig = &tls.Config{ServerName: host, InsecureSkipVerify: sh.InsecureSkipVerify}
	if sh.CAFile != "" {
		pool, err := loadRoots(repl.ReplaceKnown(sh.CAFile, ""))
		if err != nil {
			return nil, fmt.Errorf("ca_file: %v", err)
		}
		ss.tlsConfig.RootCAs = pool
	}
	if ss.username == "" && ss.password != "" {
		return nil, fmt.Errorf("username: required with a password")
	}
	return ss, nil
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

// Bounce queues a delivery status notification to env.From about
// recipients that another target (LMTP) refused for good, for a message
// the server still accepts for the others.
func (q *Queue) Bounce(ctx context.Context, env *smtpapp.Envelope, msg *smtpapp.Message, failed []smtpapp.FailedRecipient) error {
	hdr, _ := readHeader(msg.Reader())
	if len(hdr) > maxDSNHeader {
		hdr = hdr[:maxDSNHeader]
		if i := bytes.LastIndex(hdr, []byte("\r\n")); i > 0 {
			hdr = hdr[:i+2]
		}
	}
	now := time.Now()
	rcpts := make([]dsnRcpt, len(failed))
	for i, f := range failed {
		status := "5.0.0"
		if ec := f.Reply.EnhancedCode; ec[0] == 5 {
			status = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
		}
		rcpts[i] = dsnRcpt{Address: f.Address, Action: "failed", Status: status,
			Diagnostic: fmt.Sprintf("%d %s", f.Reply.Code, f.Reply.Message), LastAttempt: now}
	}
	return q.eng.queueNotification(q.s, &dsnInput{QueueID: env.ID, Sender: env.From, Arrival: env.Received, Header: hdr, Rcpts: rcpts})
}

// Start begins delivering from the spool (the smtp app calls it when it
// starts, after its listeners are bound).
func (q *Queue) Start() error {
	q.eng.begin()
	return nil
}

// Cleanup detaches from the engine; the last config to leave stops it.
func (q *Queue) Cleanup() error {
	if q.eng == nil {
		return nil
	}
	q.eng.detach(q)
	_, err := engines.Delete(q.path)
	return err
}

// Deliver queues the message for env's (remote) recipients. It returns once
// the message and envelope are synced to the spool.
func (q *Queue) Deliver(ctx context.Context, env *smtpapp.Envelope, msg *smtpapp.Message) error {
	if len(env.Recipients) == 0 {
		return nil
	}
	now := time.Now()
	rec := &record{
		ID:         env.ID,
		From:       env.From,
		Recipients: append([]smtpapp.Recipient(nil), env.Recipients...),
		Received:   env.Received,
		Queued:     now,
		Account:    env.Account,
	}
	if env.ClientIP.IsValid() {
		rec.ClientIP = env.ClientIP.String()
	}
	if rec.Received.IsZero() {
		rec.Received = now
	}
	return q.eng.enqueue(q.s, rec, func(w io.Writer) (int64, error) { return msg.WriteTo(w) }, msg.Reader)
}

// engines holds the queue engines by spool path, across config reloads.
var engines = caddy.NewUsagePool()

// Interface guards
var (
	_ caddy.Provisioner      = (*Queue)(nil)
	_ caddy.CleanerUpper     = (*Queue)(nil)
	_ smtpapp.Bouncer        = (*Queue)(nil)
	_ smtpapp.DeliveryTarget = (*Queue)(nil)
)
