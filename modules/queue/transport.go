package queue

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/queue/dane"
	"github.com/caddy-smtp/caddy-smtp/modules/queue/mtasts"
	"github.com/caddy-smtp/caddy-smtp/modules/queue/tlsrpt"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// Transport security of MX delivery: MTA-STS (RFC 8461), DANE (RFC 7672)
// and per-destination policies decide, for each MX host, whether TLS is
// required and how the certificate is checked; TLS-RPT (RFC 8460) counts
// the results per policy domain. The smarthost is not affected: it keeps
// its own TLS settings.

// MTASTSConfig is how MTA-STS policies are found. MTA-STS is on by default.
type MTASTSConfig struct {
	// Disable turns MTA-STS off for every destination.
	Disable bool `json:"disable,omitempty"`
	// Port of the policy hosts, mta-sts.<domain>. Default: 443. (Tests
	// point it at a server on loopback; the host name is still resolved
	// through the app's resolver and its certificate validated.)
	Port int `json:"port,omitempty"`
	// CAFile is a PEM file of root certificates trusted for the policy
	// hosts in addition to the system's (e.g. a test CA).
	CAFile string `json:"ca_file,omitempty"`
	// FetchTimeout bounds the fetch of one policy. Default: 30s.
	FetchTimeout caddy.Duration `json:"fetch_timeout,omitempty"`
	// CheckInterval is how long a cached policy (or the absence of one) is
	// trusted before the _mta-sts TXT record is looked up again to notice
	// a new policy id. For a cached policy that lookup (and the fetch of a
	// new policy) runs in the background: deliveries use the cached
	// policy meanwhile and never wait for DNS or HTTPS. Default: 10m.
	CheckInterval caddy.Duration `json:"check_interval,omitempty"`
}

// DANEConfig turns on DANE for MX hosts. It is off unless a resolver is
// given.
type DANEConfig struct {
	// Resolver is host:port of a DNSSEC-validating resolver (e.g. a local
	// unbound) whose AD bit is trusted; TLSA records are only looked up
	// there. Required.
	Resolver string `json:"resolver,omitempty"`
	// Timeout of one TLSA query. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// TLSReportsConfig is the sending of TLS reports (RFC 8460) to the domains
// that publish an _smtp._tls record. On by default.
type TLSReportsConfig struct {
	// Disable counts nothing and sends no report.
	Disable bool `json:"disable,omitempty"`
	// Interval is the reporting period. Default: 24h, which reports
	// whole UTC days (RFC 8460 4.1): each report covers 00:00 to 00:00
	// UTC and is sent shortly after midnight UTC. Any whole number of
	// hours that divides a day (1h, 6h, 12h...) or of days is aligned to
	// UTC the same way; other intervals (tests) run from one send to the
	// next.
	Interval caddy.Duration `json:"interval,omitempty"`
	// OrganizationName in the reports. Default: the queue's hostname.
	OrganizationName string `json:"organization_name,omitempty"`
	// ContactInfo in the reports. Default: postmaster@<hostname>.
	ContactInfo string `json:"contact_info,omitempty"`
	// From is the From address of mailed reports (sent with the null
	// reverse path). Default: postmaster@<hostname>.
	From string `json:"from,omitempty"`
	// CAFile is a PEM file of root certificates trusted for https: report
	// addresses in addition to the system's.
	CAFile string `json:"ca_file,omitempty"`
	// GiveUp is how long a report that could not be delivered (an https:
	// address that fails, a _smtp._tls lookup that fails) is kept in
	// storage and retried, with growing delays, before it is dropped
	// (RFC 8460 lets reports be dropped). Default: 72h.
	GiveUp caddy.Duration `json:"give_up,omitempty"`
}

// DestinationPolicy overrides the transport security of some destination
// domains. The first policy whose domains match applies.
type DestinationPolicy struct {
	// Domains are domain names, or "*.example.com" for every subdomain of
	// example.com (at any depth).
	Domains []string `json:"domains,omitempty"`
	// TLS for these domains, when neither DANE nor MTA-STS applies: off,
	// opportunistic, require (TLS, any certificate) or verify (TLS with a
	// certificate valid for the MX host name). Default: the queue's tls.
	TLS string `json:"tls,omitempty"`
	// DisableMTASTS ignores these domains' MTA-STS policies.
	DisableMTASTS bool `json:"disable_mta_sts,omitempty"`
	// DisableDANE ignores the TLSA records of these domains' MX hosts.
	DisableDANE bool `json:"disable_dane,omitempty"`
}

// transportSettings is the transport security in effect.
type transportSettings struct {
	sts     *mtasts.Cache  // nil: MTA-STS off
	dane    *dane.Resolver // nil: DANE off
	reports *reportSettings
	dests   []destSettings
}

type reportSettings struct {
	interval time.Duration
	align    time.Duration // periods aligned to UTC (0: from one send to the next)
	giveUp   time.Duration
	org      string
	contact  string
	from     string
	client   *http.Client
}

type destSettings struct {
	patterns []string
	tls      string
	noSTS    bool
	noDANE   bool
}

const day = 24 * time.Hour

// provisionTransport checks the transport security config.
func (q *Queue) provisionTransport(ctx caddy.Context, s *settings) (transportSettings, error) {
	var ts transportSettings
	repl := caddy.NewReplacer()
	if c := q.MTASTS; c == nil || !c.Disable {
		if c == nil {
			c = &MTASTSConfig{}
		}
		if c.Port < 0 || c.Port > 65535 {
			return ts, fmt.Errorf("mta_sts.port: %d is out of range", c.Port)
		}
		timeout, check := 30*time.Second, 10*time.Minute
		if err := setDurations(durationField{"fetch_timeout", c.FetchTimeout, &timeout}, durationField{"check_interval", c.CheckInterval, &check}); err != nil {
			return ts, fieldErr("mta_sts", err)
		}
		roots, err := extraRoots(repl.ReplaceKnown(c.CAFile, ""))
		if err != nil {
			return ts, fmt.Errorf("mta_sts.ca_file: %v", err)
		}
		ts.sts = &mtasts.Cache{
			Storage:   ctx.Storage(),
			LookupTXT: s.lookupTXT,
			Client:    mtasts.NewHTTPClient(s.dialHTTP, roots, timeout),
			Port:      c.Port,
			TXTCheck:  check,
		}
	}
	if c := q.DANE; c != nil {
		if c.Resolver == "" {
			return ts, fmt.Errorf("dane.resolver: required (a DNSSEC-validating resolver, host:port)")
		}
		addr := c.Resolver
		if _, _, err := net.SplitHostPort(addr); err != nil {
			addr = net.JoinHostPort(addr, "53")
		}
		if _, err := netip.ParseAddrPort(addr); err != nil {
			return ts, fmt.Errorf("dane.resolver: %q is not an IP address with optional port", c.Resolver)
		}
		timeout := 5 * time.Second
		if err := setDurations(durationField{"timeout", c.Timeout, &timeout}); err != nil {
			return ts, fieldErr("dane", err)
		}
		ts.dane = &dane.Resolver{Addr: addr, Timeout: timeout}
	}
	if c := q.TLSReports; c == nil || !c.Disable {
		if c == nil {
			c = &TLSReportsConfig{}
		}
		rs := &reportSettings{interval: 24 * time.Hour, giveUp: 72 * time.Hour, org: c.OrganizationName, contact: c.ContactInfo, from: c.From}
		if err := setDurations(durationField{"interval", c.Interval, &rs.interval}, durationField{"give_up", c.GiveUp, &rs.giveUp}); err != nil {
			return ts, fieldErr("tls_reports", err)
		}
		if rs.interval%time.Hour == 0 && (day%rs.interval == 0 || rs.interval%day == 0) {
			rs.align = rs.interval
		}
		if rs.org == "" {
			rs.org = s.hostname
		}
		if rs.contact == "" {
			rs.contact = "postmaster@" + s.hostname
		}
		if rs.from == "" {
			rs.from = "postmaster@" + s.hostname
		}
		if _, err := smtpapp.ParseAddress(rs.from); err != nil {
			return ts, fmt.Errorf("tls_reports.from: %q: %v", rs.from, err)
		}
		roots, err := extraRoots(repl.ReplaceKnown(c.CAFile, ""))
		if err != nil {
			return ts, fmt.Errorf("tls_reports.ca_file: %v", err)
		}
		rs.client = mtasts.NewHTTPClient(s.dialHTTP, roots, 30*time.Second)
		ts.reports = rs
	}
	for i, d := range q.Destinations {
		ds := destSettings{tls: d.TLS, noSTS: d.DisableMTASTS, noDANE: d.DisableDANE}
		switch d.TLS {
		case "", "off", "opportunistic", "require", "verify":
		default:
			return ts, fmt.Errorf("destinations[%d].tls: %q is not off, opportunistic, require or verify", i, d.TLS)
		}
		if len(d.Domains) == 0 {
			return ts, fmt.Errorf("destinations[%d].domains: required", i)
		}
		for _, p := range d.Domains {
			p = strings.TrimSuffix(strings.ToLower(p), ".")
			if !smtpapp.ValidHostname(strings.TrimPrefix(p, "*.")) {
				return ts, fmt.Errorf("destinations[%d].domains: %q is not a domain or *.domain", i, p)
			}
			ds.patterns = append(ds.patterns, p)
		}
		ts.dests = append(ts.dests, ds)
	}
	return ts, nil
}

// extraRoots is the system's roots plus those of file ("": nil, the system's).
func extraRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificates", file)
	}
	return pool, nil
}

// lookupTXT adapts the app's resolver: (nil, nil) when there is no record.
func (s *settings) lookupTXT(ctx context.Context, name string) ([]string, error) {
	txts, err := s.app.DNS().LookupTXT(ctx, name)
	if errors.Is(err, smtpapp.ErrNotFound) {
		return nil, nil
	}
	return txts, err
}

// dialHTTP connects to host:port through the app's resolver, to internal
// addresses only with allow_private_destinations (as for MX hosts).
func (s *settings) dialHTTP(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, err := s.app.DNS().LookupIP(ctx, host)
	if err != nil {
		return nil, err
	}
	if !s.allowPrivate {
		var internal []netip.Addr
		if ips, internal = splitInternal(ips); len(ips) == 0 {
			return nil, fmt.Errorf("%s has only internal addresses (%v); allow_private_destinations is off", host, internal)
		}
	}
	d := net.Dialer{Timeout: s.connectTimeout}
	var last error
	for _, ip := range ips {
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}

// dest is the destination policy of domain, or nil.
func (ts *transportSettings) dest(domain string) *destSettings {
	for i := range ts.dests {
		for _, p := range ts.dests[i].patterns {
			if p == domain || strings.HasPrefix(p, "*.") && strings.HasSuffix(domain, p[1:]) {
				return &ts.dests[i]
			}
		}
	}
	return nil
}

// Policy kinds of a host, as shown in the admin API and logs.
const (
	polNone          = "none" // TLS off
	polOpportunistic = "opportunistic"
	polRequire       = "require"
	polVerify        = "verify"
	polSTS           = "mta-sts"
	polSTSTesting    = "mta-sts-testing"
	polDANE          = "dane"
)

// domainPolicy is what applies to every MX host of a destination.
type domainPolicy struct {
	domain string
	dest   *destSettings
	sts    *mtasts.Policy
}

// hostPolicy is the transport security of one session with one MX host.
type hostPolicy struct {
	kind    string
	mustTLS bool
	verify  bool        // a certificate valid for the host name is required
	tlsa    []*dns.TLSA // DANE records (none: TLS without authentication)
	report  *tlsrpt.PolicyDesc
	roots   *x509.CertPool

	// Set by the session:
	failure string // TLS-RPT result type of a failure
	detail  string
	tlsUp   bool
}

func (p *hostPolicy) fail(kind, detail string) {
	if p.failure == "" {
		p.failure, p.detail = kind, detail
	}
}

// outcome is the TLS outcome of a delivery (the metric label).
func (p *hostPolicy) outcome() string {
	switch {
	case p == nil:
		return "opportunistic"
	case !p.tlsUp:
		return "plaintext"
	case p.failure != "":
		return "opportunistic"
	case p.kind == polDANE:
		return "dane"
	case p.kind == polSTS || p.kind == polSTSTesting:
		return "mta-sts"
	}
	return "opportunistic"
}

// domainPolicy finds the MTA-STS policy of domain (unless turned off) and
// counts a policy that could not be had in the TLS reports.
func (e *engine) domainPolicy(ctx context.Context, s *settings, domain string) *domainPolicy {
	dp := &domainPolicy{domain: domain, dest: s.transport.dest(domain)}
	if s.transport.sts == nil || dp.dest != nil && dp.dest.noSTS {
		return dp
	}
	res := s.transport.sts.Get(ctx, domain)
	if res.Policy != nil && res.Policy.Mode != mtasts.ModeNone {
		dp.sts = res.Policy
	}
	if res.Err != nil {
		s.logger.Warn("MTA-STS policy unavailable", zap.String("domain", domain), zap.Error(res.Err), zap.Bool("using_cached", res.Policy != nil))
		metricTLSFailures.WithLabelValues(res.Failure).Inc()
		e.reportSession(&tlsrpt.PolicyDesc{Type: tlsrpt.PolicySTS, Domain: domain},
			&tlsrpt.FailureDetail{ResultType: res.Failure, AdditionalInfo: oneLine(res.Err.Error(), 200)}, "", "")
	}
	return dp
}

// hostPolicy decides the transport security of MX host h: DANE first
// (RFC 8461 2: DANE takes precedence), then MTA-STS, then the
// destination's or the queue's tls. A host that must not be used gives a
// result instead (the next host is tried).
func (e *engine) hostPolicy(ctx context.Context, s *settings, dp *domainPolicy, h hop) (*hostPolicy, *result) {
	if s.transport.dane != nil && (dp.dest == nil || !dp.dest.noDANE) {
		port, _ := strconv.Atoi(h.port)
		r := s.transport.dane.Lookup(ctx, h.host, port)
		switch r.Status {
		case dane.Bogus:
			desc := &tlsrpt.PolicyDesc{Type: tlsrpt.PolicyTLSA, Domain: dp.domain, MXHost: []string{h.host}}
			metricTLSFailures.WithLabelValues(tlsrpt.DNSSECInvalid).Inc()
			e.reportSession(desc, &tlsrpt.FailureDetail{ResultType: tlsrpt.DNSSECInvalid, ReceivingMXHostname: h.host, AdditionalInfo: oneLine(r.Err.Error(), 200)}, h.host, "")
			res := tempErr("4.7.5", "%s: DANE: TLSA lookup failed (DNSSEC bogus or resolver failure): %v", h.host, r.Err)
			res.policy, res.tlsFailure = polDANE, tlsrpt.DNSSECInvalid
			return nil, &res
		case dane.Secure:
			return &hostPolicy{kind: polDANE, mustTLS: true, tlsa: r.Records,
				report: &tlsrpt.PolicyDesc{Type: tlsrpt.PolicyTLSA, String: dane.Strings(r.Records), Domain: dp.domain, MXHost: []string{h.host}}}, nil
		}
	}
	if dp.sts != nil {
		enforce := dp.sts.Mode == mtasts.ModeEnforce
		p := &hostPolicy{kind: polSTSTesting, roots: s.roots,
			report: &tlsrpt.PolicyDesc{Type: tlsrpt.PolicySTS, String: dp.sts.Lines(), Domain: dp.domain, MXHost: dp.sts.MX}}
		if enforce {
			p.kind, p.mustTLS, p.verify = polSTS, true, true
		}
		if !dp.sts.Match(h.host) {
			p.fail(tlsrpt.ValidationFailure, "MX host "+h.host+" does not match the MTA-STS policy")
			if enforce {
				metricTLSFailures.WithLabelValues(p.failure).Inc()
				e.reportSession(p.report, &tlsrpt.FailureDetail{ResultType: p.failure, ReceivingMXHostname: h.host, AdditionalInfo: p.detail}, h.host, "")
				res := tempErr("4.7.5", "%s: not an MX host of the MTA-STS policy of %s (mode enforce)", h.host, dp.domain)
				res.policy, res.tlsFailure = polSTS, p.failure
				return nil, &res
			}
		}
		return p, nil
	}
	mode := ""
	if dp.dest != nil {
		mode = dp.dest.tls
	}
	if mode == "" {
		switch {
		case s.tlsDisable:
			mode = "off"
		case s.tlsVerify:
			mode = "verify"
		case s.tlsRequire:
			mode = "require"
		}
	}
	switch mode {
	case "off":
		return &hostPolicy{kind: polNone}, nil
	case "require":
		return &hostPolicy{kind: polRequire, mustTLS: true, roots: s.roots}, nil
	case "verify":
		return &hostPolicy{kind: polVerify, mustTLS: true, verify: true, roots: s.roots}, nil
	}
	return &hostPolicy{kind: polOpportunistic, roots: s.roots}, nil
}

// tlsConfig is the STARTTLS config for host under the policy. The chain
// is always checked (to report it); the handshake fails only when the
// policy requires a valid one.
func (p *hostPolicy) tlsConfig(host string, verified *bool) *tls.Config {
	cfg := &tls.Config{ServerName: host, InsecureSkipVerify: true}
	if p.mustTLS || p.kind == polSTSTesting {
		cfg.MinVersion = tls.VersionTLS12
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		chain := cs.PeerCertificates
		if p.kind == polDANE {
			if len(p.tlsa) == 0 {
				return nil // only unusable records: TLS without authentication (RFC 7672 2.2)
			}
			if err := dane.Verify(p.tlsa, chain, []string{host}, time.Now()); err != nil {
				p.fail(tlsrpt.ValidationFailure, err.Error())
				return err
			}
			*verified = true
			return nil
		}
		err := verifyWebPKI(chain, host, p.roots)
		*verified = err == nil
		if err != nil && (p.verify || p.kind == polSTSTesting) {
			p.fail(certFailure(err), err.Error())
			if p.verify {
				return err
			}
		}
		return nil
	}
	return cfg
}

func verifyWebPKI(chain []*x509.Certificate, host string, roots *x509.CertPool) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	opts := x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: x509.NewCertPool()}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := chain[0].Verify(opts)
	return err
}

// certFailure is the TLS-RPT result type of a certificate error.
func certFailure(err error) string {
	var host x509.HostnameError
	var unk x509.UnknownAuthorityError
	var inv x509.CertificateInvalidError
	switch {
	case errors.As(err, &host):
		return tlsrpt.CertificateHostMismatch
	case errors.As(err, &unk):
		return tlsrpt.CertificateNotTrusted
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		return tlsrpt.CertificateExpired
	}
	return tlsrpt.ValidationFailure
}

// reportSession counts a session (fd nil: a success) in the TLS reports.
func (e *engine) reportSession(p *tlsrpt.PolicyDesc, fd *tlsrpt.FailureDetail, mx, ip string) {
	if p == nil || e.rpt == nil || e.settings().transport.reports == nil {
		return
	}
	if fd != nil {
		if fd.ReceivingMXHostname == "" {
			fd.ReceivingMXHostname = mx
		}
		if fd.ReceivingIP == "" {
			fd.ReceivingIP = ip
		}
	}
	e.rpt.Record(*p, fd, time.Now())
}

// endSession counts a finished session under its policy: in the metrics
// and the TLS reports (sessions that got to no TLS decision are not
// counted).
func (e *engine) endSession(p *hostPolicy, host string, ip netip.Addr) {
	if p.failure != "" {
		metricTLSFailures.WithLabelValues(p.failure).Inc()
		e.reportSession(p.report, &tlsrpt.FailureDetail{ResultType: p.failure, ReceivingMXHostname: host,
			ReceivingIP: ip.String(), AdditionalInfo: oneLine(p.detail, 200)}, host, ip.String())
		return
	}
	if p.tlsUp {
		e.reportSession(p.report, nil, host, ip.String())
	}
}
