package smtpapp

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// Server is one SMTP service: its listeners, limits and handlers.
type Server struct {
	// Listen is the list of network addresses to bind (Caddy network
	// address syntax, e.g. ":25", "tcp/127.0.0.1:2525").
	Listen []string `json:"listen,omitempty"`

	// ImplicitTLS makes the listeners speak TLS from the first byte
	// (submissions on port 465, RFC 8314).
	ImplicitTLS bool `json:"implicit_tls,omitempty"`

	// Hostname is the server's name in its greeting, in Received headers
	// and on its certificate. Default: the machine's host name.
	Hostname string `json:"hostname,omitempty"`

	// Limits bound what a client can make the server do.
	Limits *Limits `json:"limits,omitempty"`

	// RequireAuth refuses MAIL before a successful AUTH (530 5.7.0), as a
	// submission service does.
	RequireAuth bool `json:"require_auth,omitempty"`

	// TrustedNetworks (CIDR) may relay to any domain without AUTH. Empty by
	// default: not even loopback is trusted unless listed.
	TrustedNetworks []string `json:"trusted_networks,omitempty"`

	// AllowLocalSenders lets unauthenticated clients outside
	// trusted_networks use a MAIL FROM address in a local domain. By
	// default they get 550 5.7.1: mail "from" your own domain that did
	// not log in is forged. Turn it on for a local domain whose SPF lets
	// other servers send as it.
	AllowLocalSenders bool `json:"allow_local_senders,omitempty"`

	// TLS configures STARTTLS and implicit TLS.
	TLS *ServerTLS `json:"tls,omitempty"`

	// Spam sets what the summed spam score of a message leads to.
	Spam *SpamPolicy `json:"spam,omitempty"`

	// Handlers are the policy modules (namespace smtp.handlers), called in
	// this order at each stage.
	HandlersRaw []json.RawMessage `json:"handlers,omitempty" caddy:"namespace=smtp.handlers inline_key=handler"`

	name      string
	app       *App
	logger    *zap.Logger
	metrics   *metrics
	addrs     []caddy.NetworkAddress
	trusted   []netip.Prefix
	tlsConfig *tls.Config
	tlsApp    *caddytls.TLS
	smtp      *smtp.Server
	listeners []*listener
	parking   *parking
	sessions  sessions
	ehloOnce  sync.Once
	ehloReply string // ehloTail
	hooks     hooks
	ceiling   *ceiling

	// Resolved once at provision.
	limits       Limits
	tagScore     float64
	rejectScore  float64
	spamPolicyOn bool // scores can be given: X-Spam-* from outside is removed
}

// Limits bound a session. Zero values take the defaults shown.
type Limits struct {
	// MaxMessageSize in bytes, advertised with SIZE. Default: 25 MiB.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`
	// MaxRecipients per message. Default: 100.
	MaxRecipients int `json:"max_recipients,omitempty"`
	// MaxLineLength of a command or message line, CRLF included.
	// Default: 2000 (twice RFC 5321's 1000, as real mail exceeds it).
	MaxLineLength int `json:"max_line_length,omitempty"`
	// ReadTimeout is how long the server waits for each read from the
	// client. Default: 5m (RFC 5321 4.5.3.2).
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`
	// WriteTimeout for each reply. Default: 1m.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`
	// SessionTimeout is the most a whole connection may last. Default: 30m.
	SessionTimeout caddy.Duration `json:"session_timeout,omitempty"`
	// MaxErrors is how many refused commands a session may get before it
	// is closed with 421. Default: 10.
	MaxErrors int `json:"max_errors,omitempty"`
	// MaxAuthFailures is how many failed AUTH attempts a session may make
	// before it is closed. Default: 3.
	MaxAuthFailures int `json:"max_auth_failures,omitempty"`
	// MaxMessages per session. Default: 1000.
	MaxMessages int `json:"max_messages,omitempty"`
	// MaxHops is how many Received header fields a message may carry
	// before it is refused as a mail loop (554 5.4.6). Default: 50.
	MaxHops int `json:"max_hops,omitempty"`
	// MaxJunkCommands is how many commands that move no mail (NOOP, RSET,
	// VRFY, EXPN, HELP, repeated EHLO) a session may send before it is
	// closed with 421, as Postfix's smtpd_junk_command_limit. Default: 100.
	MaxJunkCommands int `json:"max_junk_commands,omitempty"`
	// MaxConnections is how many connections the server holds at once;
	// one more gets 421 4.7.0 before any TLS. While more than half are
	// taken, each read waits at most 10s (not read_timeout), so a flood
	// of idle connections drains fast. Default: 10000 (about 20 KiB each
	// when idle: the process needs that many open files).
	MaxConnections int `json:"max_connections,omitempty"`
	// MaxConnectionsPerIP is how many connections one client network
	// (an IPv4 address, an IPv6 /64) may hold at once. Default: 20.
	MaxConnectionsPerIP int `json:"max_connections_per_ip,omitempty"`
	// MaxAuthFailuresPerIP is how many failed AUTH attempts one client
	// network may make within AuthFailureWindow, across connections;
	// then AUTH is refused (421 4.7.0) until the window ends. Default: 10.
	MaxAuthFailuresPerIP int `json:"max_auth_failures_per_ip,omitempty"`
	// AuthFailureWindow is the window of MaxAuthFailuresPerIP.
	// Default: 15m.
	AuthFailureWindow caddy.Duration `json:"auth_failure_window,omitempty"`
	// TLSHandshakeTimeout bounds the TLS handshake, after STARTTLS and
	// on implicit-TLS ports. Default: 10s.
	TLSHandshakeTimeout caddy.Duration `json:"tls_handshake_timeout,omitempty"`
	// ParkIdleAfter is how long a plaintext session may sit idle between
	// transactions before it is parked: it gives back its goroutine and
	// buffers (about 10 KiB) and resumes, unseen by the client, when the
	// client speaks again; read timeouts hold while parked. With parking
	// on, a plaintext session also starts without go-smtp: the server
	// greets and answers HELO/EHLO itself until a command needs more.
	// Default: 100ms (longer than a reply's round trip on a LAN, short
	// enough that a flood of idle connections never holds much); negative
	// turns both off.
	ParkIdleAfter caddy.Duration `json:"park_idle_after,omitempty"`
}

// ServerTLS configures TLS for a server. Certificates come from Caddy's tls
// app for the hostname.
type ServerTLS struct {
	// DisableSTARTTLS stops offering STARTTLS.
	DisableSTARTTLS bool `json:"disable_starttls,omitempty"`
	// Issuer is "internal" to have Caddy's internal CA issue the hostname's
	// certificate (private names), or "" for the tls app's policy (ACME
	// for public names, the internal CA for internal ones).
	Issuer string `json:"issuer,omitempty"`
	// ProtocolMin is the oldest TLS version accepted. Default: tls1.2.
	ProtocolMin string `json:"protocol_min,omitempty"`
}

// SpamPolicy turns the summed score of a message into an action.
type SpamPolicy struct {
	// TagScore: at or above it, X-Spam headers mark the message as spam
	// and it is filed in the Junk folder. Default: 5.
	TagScore *float64 `json:"tag_score,omitempty"`
	// RejectScore: at or above it, the message is refused with 550 5.7.1
	// at the end of DATA. Default: 10.
	RejectScore *float64 `json:"reject_score,omitempty"`
}

func (l *Limits) withDefaults() Limits {
	var out Limits
	if l != nil {
		out = *l
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if out.MaxMessageSize == 0 {
		out.MaxMessageSize = 25 << 20
	}
	def(&out.MaxRecipients, 100)
	def(&out.MaxLineLength, 2000)
	def(&out.MaxErrors, 10)
	def(&out.MaxAuthFailures, 3)
	def(&out.MaxMessages, 1000)
	def(&out.MaxHops, 50)
	def(&out.MaxJunkCommands, 100)
	def(&out.MaxConnections, 10000)
	def(&out.MaxConnectionsPerIP, 20)
	def(&out.MaxAuthFailuresPerIP, 10)
	if out.AuthFailureWindow == 0 {
		out.AuthFailureWindow = caddy.Duration(15 * time.Minute)
	}
	if out.TLSHandshakeTimeout == 0 {
		out.TLSHandshakeTimeout = caddy.Duration(10 * time.Second)
	}
	if out.ReadTimeout == 0 {
		out.ReadTimeout = caddy.Duration(5 * time.Minute)
	}
	if out.WriteTimeout == 0 {
		out.WriteTimeout = caddy.Duration(time.Minute)
	}
	if out.SessionTimeout == 0 {
		out.SessionTimeout = caddy.Duration(30 * time.Minute)
	}
	if out.ParkIdleAfter == 0 {
		out.ParkIdleAfter = caddy.Duration(100 * time.Millisecond)
	}
	return out
}

func (s *Server) provision(ctx caddy.Context, app *App, name string) error {
	s.name, s.app, s.metrics = name, app, appMetrics
	s.logger = ctx.Logger().With(zap.String("server", name))
	if err := s.provisionAddresses(); err != nil {
		return err
	}
	if err := s.checkSettings(); err != nil {
		return err
	}
	if err := s.provisionHandlers(ctx); err != nil {
		return err
	}
	var err error
	if s.ceiling, err = loadCeiling(name, s.limits.MaxConnections, s.limits.MaxConnectionsPerIP); err != nil {
		return fmt.Errorf("limits: %v", err)
	}
	if err := s.provisionTLS(ctx); err != nil {
		return err
	}
	if s.ImplicitTLS && s.tlsConfig == nil {
		return fmt.Errorf("implicit_tls: needs TLS, but it is disabled")
	}
	s.smtp = s.newGoSMTP()
	s.parking = newParking()
	return nil
}

// provisionAddresses parses the listen addresses, the hostname and the
// trusted networks.
func (s *Server) provisionAddresses() error {
	if len(s.Listen) == 0 {
		return fmt.Errorf("listen: at least one address is required")
	}
	for i, l := range s.Listen {
		addr, err := caddy.ParseNetworkAddressWithDefaults(l, "tcp", 25)
		if err != nil {
			return fmt.Errorf("listen[%d]: %v", i, err)
		}
		if addr.IsUnixNetwork() || addr.IsFdNetwork() || !strings.HasPrefix(addr.Network, "tcp") {
			return fmt.Errorf("listen[%d]: %q: only tcp addresses are supported", i, l)
		}
		s.addrs = append(s.addrs, addr)
	}
	if s.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("hostname: not set and the machine's is unknown: %v", err)
		}
		s.Hostname = h
	}
	if !ValidHostname(s.Hostname) {
		return fmt.Errorf("hostname: %q is not a valid host name", s.Hostname)
	}
	var err error
	s.trusted, err = ParsePrefixes("trusted_networks", s.TrustedNetworks)
	return err
}

// checkSettings refuses limits, spam thresholds and TLS settings that
// cannot work, naming the field; then resolves the defaults once.
func (s *Server) checkSettings() error {
	if l := s.Limits; l != nil {
		for _, v := range []int64{l.MaxMessageSize, int64(l.MaxRecipients), int64(l.MaxLineLength), int64(l.MaxErrors),
			int64(l.MaxJunkCommands), int64(l.MaxConnections), int64(l.MaxConnectionsPerIP), int64(l.MaxAuthFailuresPerIP)} {
			if v < 0 {
				return fmt.Errorf("limits: values must not be negative")
			}
		}
		if l.MaxLineLength != 0 && l.MaxLineLength < 512 {
			return fmt.Errorf("limits.max_line_length: must be at least 512 (RFC 5321 command line)")
		}
	}
	if s.Spam != nil && s.Spam.TagScore != nil && s.Spam.RejectScore != nil && *s.Spam.RejectScore < *s.Spam.TagScore {
		return fmt.Errorf("spam.reject_score: must not be below tag_score")
	}
	if s.TLS != nil && s.TLS.Issuer != "" && s.TLS.Issuer != "internal" {
		return fmt.Errorf("tls.issuer: %q is not supported (use \"internal\" or leave empty)", s.TLS.Issuer)
	}
	s.limits = s.Limits.withDefaults()
	s.tagScore, s.rejectScore = s.Spam.thresholds()
	return nil
}

// provisionHandlers loads the handler modules and compiles their hooks.
func (s *Server) provisionHandlers(ctx caddy.Context) error {
	mods, err := ctx.LoadModule(s, "HandlersRaw")
	if err != nil {
		return fmt.Errorf("handlers: %v", err)
	}
	handlers := mods.([]any)
	ids := make([]string, len(handlers))
	for i, m := range handlers {
		ids[i] = string(m.(caddy.Module).CaddyModule().ID)
	}
	s.hooks = compileHooks(handlers, ids)
	s.spamPolicyOn = s.Spam != nil || len(handlers) > 0
	return nil
}

// newGoSMTP sets up go-smtp beneath the session and above the wire.
func (s *Server) newGoSMTP() *smtp.Server {
	gs := smtp.NewServer(backend{s})
	gs.Domain = s.Hostname
	gs.MaxMessageBytes = s.limits.MaxMessageSize
	gs.MaxRecipients = s.limits.MaxRecipients
	// The wire enforces the line limit, the timeouts and TLS (STARTTLS
	// included) beneath go-smtp, which sees a plaintext stream: so AUTH
	// is "insecure" to it, and the session offers AUTH only under TLS.
	gs.MaxLineLength = 0
	gs.ReadTimeout = 0
	gs.WriteTimeout = 0
	gs.AllowInsecureAuth = true
	// REQUIRETLS (RFC 8689): go-smtp accepts the parameter; the wire
	// advertises it only under TLS and refuses it without.
	gs.EnableREQUIRETLS = true
	// SMTPUTF8 (RFC 6531): advertised in EHLO (the wire passes the line
	// as it is); a transaction with it takes UTF-8 addresses
	// (ParseAddressUTF8), one without keeps the ASCII rules.
	gs.EnableSMTPUTF8 = true
	gs.ErrorLog = zapPrintf{s.logger}
	return gs
}

// provisionTLS builds the TLS config from the tls app; certificates are
// managed later, in Start, after the listeners are bound.
func (s *Server) provisionTLS(ctx caddy.Context) error {
	if s.TLS != nil && s.TLS.DisableSTARTTLS && !s.ImplicitTLS {
		return nil
	}
	tlsAppIface, err := ctx.App("tls")
	if err != nil {
		return fmt.Errorf("tls: getting the tls app: %v", err)
	}
	s.tlsApp = tlsAppIface.(*caddytls.TLS)
	if !certmagic.SubjectQualifiesForCert(s.Hostname) {
		return fmt.Errorf("hostname: %q does not qualify for a certificate (turn TLS off with tls.disable_starttls)", s.Hostname)
	}
	internal := s.TLS != nil && s.TLS.Issuer == "internal"
	if internal && !s.app.internalNames[s.Hostname] {
		if s.app.internalNames == nil {
			s.app.internalNames = map[string]bool{}
		}
		s.app.internalNames[s.Hostname] = true
		ap := &caddytls.AutomationPolicy{
			SubjectsRaw: []string{s.Hostname},
			IssuersRaw:  []json.RawMessage{json.RawMessage(`{"module":"internal"}`)},
		}
		if err := s.tlsApp.AddAutomationPolicy(ap); err != nil {
			return fmt.Errorf("tls: automation policy for %s: %v", s.Hostname, err)
		}
	}
	pol := &caddytls.ConnectionPolicy{
		// Clients without SNI (most MTAs) get the hostname's certificate.
		DefaultSNI: s.Hostname,
		// No HTTP ALPN: this is SMTP.
		ALPN:        []string{},
		ProtocolMin: "tls1.2",
	}
	if s.TLS != nil && s.TLS.ProtocolMin != "" {
		pol.ProtocolMin = s.TLS.ProtocolMin
	}
	cps := caddytls.ConnectionPolicies{pol}
	if err := cps.Provision(ctx); err != nil {
		return fmt.Errorf("tls: %v", err)
	}
	s.tlsConfig = cps.TLSConfig(ctx)
	s.tlsConfig.NextProtos = nil
	return nil
}

// thresholds are the tag and reject scores, defaults filled in.
func (p *SpamPolicy) thresholds() (tag, reject float64) {
	tag, reject = 5, 10
	if p != nil && p.TagScore != nil {
		tag = *p.TagScore
	}
	if p != nil && p.RejectScore != nil {
		reject = *p.RejectScore
	}
	return tag, reject
}

// newConn sets up the state of a new client connection.
func (s *Server) newConn(raw net.Conn) *Conn {
	w := newWire(s, raw)
	ctx, cancel := context.WithDeadline(context.Background(), w.deadline)
	c := &Conn{
		ID:     newID(),
		server: s,
		ctx:    ctx,
		cancel: cancel,
		start:  time.Now(),
		remote: addrPortOf(raw.RemoteAddr()),
		local:  addrPortOf(raw.LocalAddr()),
		wire:   w,
	}
	c.ctx = context.WithValue(ctx, connCtxKey{}, c)
	w.conn = c
	s.sessions.add(c)
	s.metrics.accepted.WithLabelValues(s.name).Inc()
	s.metrics.connections.WithLabelValues(s.name).Inc()
	return c
}

func (s *Server) start() error {
	for _, addr := range s.addrs {
		for port := uint(0); port < addr.PortRangeSize(); port++ {
			l, err := newListener(s, addr, port)
			if err != nil {
				s.closeListeners()
				return fmt.Errorf("listen %s: %v", addr.JoinHostPort(port), err)
			}
			s.listeners = append(s.listeners, l)
			go func() {
				if err := s.smtp.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
					s.logger.Error("serving", zap.Error(err))
				}
			}()
			s.logger.Info("listening", zap.String("address", l.Addr().String()), zap.Bool("implicit_tls", s.ImplicitTLS))
		}
	}
	if len(s.listeners) > 0 {
		go s.smtp.Serve(resumeListener{s.parking, s.listeners[0].Addr()})
	}
	return nil
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.Close()
	}
}

// How a server stops.
type stopMode int

const (
	stopGraceful stopMode = iota // a reload: sessions finish on this config, up to the grace period
	stopNow                      // a start undone: everything closes at once
	stopExit                     // the process exits: sessions end now, what is being stored is stored
)

// exitWait bounds how long an exiting process waits for its sessions to
// store what they are storing and answer.
const exitWait = 10 * time.Second

// stop closes the listeners at once. Gracefully (a reload), sessions
// finish in the background for the app's grace period, then the rest are
// ended. When the process exits there is no background: every session is
// ended at once (a 421 to one waiting for a command, a 451 to a message
// still arriving), one already storing a message finishes and gets its
// reply, and stop returns when all are gone (at most exitWait), so that
// no client is cut off without a reply (RFC 5321 3.8).
func (s *Server) stop(ctx context.Context, mode stopMode) {
	if s.smtp == nil {
		return
	}
	switch mode {
	case stopNow:
		s.closeListeners() // Serve may not have taken them yet
		s.parking.stop(parkClosed, nil)
		s.smtp.Close()
		s.parking.closeResume()
		return
	case stopExit:
		s.closeListeners()
		s.parking.stop(parkClosed, nil)
		n := s.sessions.endAll()
		ctx, cancel := context.WithTimeout(ctx, exitWait)
		defer cancel()
		if !s.sessions.waitEmpty(ctx.Done()) {
			s.logger.Warn("exiting with sessions still open", zap.Int("sessions", s.sessions.count()), zap.Duration("waited", exitWait))
		} else if n > 0 {
			s.logger.Info("exiting: sessions ended", zap.Int("sessions", n))
		}
		s.smtp.Close()
		s.parking.closeResume()
		return
	}
	srv := s.smtp
	grace := time.Duration(s.app.GracePeriod)
	// The listeners leave their sockets now, not in the background: after
	// a full stop, a socket still open with no listener would take (and
	// drop) connections meant for the next config's new socket.
	s.closeListeners()
	draining.add(s)
	go func() {
		defer draining.remove(s)
		ctx, cancel := context.WithTimeout(ctx, grace)
		defer cancel()
		// Parked and detached sessions first: each ends, or reaches go-smtp
		// when its client needs it (parking.stop); then go-smtp's own.
		s.parking.stop(parkDraining, ctx.Done())
		// At the end of the grace period go-smtp's Close would do nothing
		// (its Shutdown has begun): the sessions are ended here.
		if srv.Shutdown(ctx); ctx.Err() != nil {
			if n := s.sessions.endAll(); n > 0 {
				s.logger.Warn("grace period over, ending sessions", zap.Int("sessions", n), zap.Duration("grace_period", grace))
			}
		}
		s.parking.closeResume()
	}()
}

// draining are the servers of older configs whose sessions are still
// finishing (a graceful stop), so that an exit ends theirs too.
var draining serverSet

type serverSet struct {
	mu sync.Mutex
	m  map[*Server]struct{}
}

func (d *serverSet) add(s *Server) {
	d.mu.Lock()
	if d.m == nil {
		d.m = map[*Server]struct{}{}
	}
	d.m[s] = struct{}{}
	d.mu.Unlock()
}

func (d *serverSet) remove(s *Server) {
	d.mu.Lock()
	delete(d.m, s)
	d.mu.Unlock()
}

func (d *serverSet) list() []*Server {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Collect(maps.Keys(d.m))
}

// trustedIP reports whether ip is in a trusted network.
func (s *Server) trustedIP(ip netip.Addr) bool {
	for _, p := range s.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
		}
		return netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR: %v", s, err)
	}
	// Clients are matched unmapped: an IPv4-mapped IPv6 prefix means
	// its IPv4 range, or nothing at all (then it is an error, not a list
	// entry that silently matches no one).
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("%q: an IPv4-mapped prefix must be /96 or longer", s)
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked(), nil
	}
	return p.Masked(), nil
}

// ParsePrefixes parses CIDRs (or single addresses); modules use it for
// their network lists, naming the field in errors.
func ParsePrefixes(field string, list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for i, n := range list {
		p, err := parsePrefix(n)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %v", field, i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

type zapPrintf struct{ l *zap.Logger }

func (z zapPrintf) Printf(format string, v ...any) { z.l.Debug(fmt.Sprintf(format, v...)) }
func (z zapPrintf) Println(v ...any)               { z.l.Debug(fmt.Sprint(v...)) }
