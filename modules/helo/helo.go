// Package helo is the smtp.handlers.helo module: checks of the client's
// HELO name, of its reverse DNS, and of the MAIL FROM domain.
package helo

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/outcome"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/sessiondomains"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(HELO{})
}

// HELO checks what a client says about itself:
//
//   - the HELO/EHLO name: a host name or an address literal ([192.0.2.1],
//     [IPv6:2001:db8::1]); a bare IP or a malformed name is invalid, a
//     single label ("localhost") is not fully qualified;
//   - a HELO that claims to be this server: its hostname, one of the app's
//     local domains, the address the client connected to, or own_names /
//     own_addresses;
//   - forward-confirmed reverse DNS of the client address (the PTR names
//     must resolve back to it), looked up in the background as the client
//     connects;
//   - the MAIL FROM domain: it must have an MX, or an A/AAAA record, and no
//     null MX (RFC 7505).
//
// Each failed check adds its points to the spam score, or refuses each
// RCPT of the transaction. A DNS failure never refuses anything.
//
// Sender domains are looked up once per session, and a session may have
// at most MaxDomainsPerSession distinct ones looked up: a MAIL with one
// more gets "451 4.7.1 Too many sender domains in one session, try again
// later" (temporary; none of the checks run for it), so that one
// connection cannot make the server query the DNS without end.
// Authenticated sessions are not checked. The reverse DNS result is
// recorded as "iprev" in an Authentication-Results header field.
type HELO struct {
	// InvalidSyntax: the HELO name is neither a host name nor an address
	// literal (e.g. a bare IP). Default: score 2.
	InvalidSyntax *outcome.Outcome `json:"invalid_syntax,omitempty"`
	// NotFQDN: the HELO name has one label only. Default: score 1.
	NotFQDN *outcome.Outcome `json:"not_fqdn,omitempty"`
	// Forged: the HELO name claims to be this server. Default: reject
	// (550 5.7.1).
	Forged *outcome.Outcome `json:"forged,omitempty"`
	// NoRDNS: the client address has no PTR record. Default: score 1.5.
	NoRDNS *outcome.Outcome `json:"no_rdns,omitempty"`
	// RDNSMismatch: no PTR name of the client resolves back to its
	// address. Default: score 1.
	RDNSMismatch *outcome.Outcome `json:"rdns_mismatch,omitempty"`
	// UnknownSenderDomain: the MAIL FROM domain has no MX and no address
	// record, or a null MX. Default: score 2.
	UnknownSenderDomain *outcome.Outcome `json:"unknown_sender_domain,omitempty"`

	// OwnNames are more names of this server, besides its hostname and the
	// app's local domains, that no client may use as HELO.
	OwnNames []string `json:"own_names,omitempty"`
	// OwnAddresses are more addresses (or CIDR ranges) of this server,
	// besides the one the client connected to. A client connecting from
	// one of them is not checked for a forged HELO.
	OwnAddresses []string `json:"own_addresses,omitempty"`

	// Timeout for the DNS lookups of each check. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// MaxDomainsPerSession is how many distinct MAIL FROM domains one
	// session may have looked up; MAIL with a new domain beyond it is
	// refused with 451 4.7.1. Default: 20.
	MaxDomainsPerSession int `json:"max_domains_per_session,omitempty"`

	outcomes map[string]outcome.Outcome
	ownNames map[string]bool
	ownAddrs []netip.Prefix
	app      *smtpapp.App
	connKey  string
}

// checks are the outcome settings, one a check; none allows "defer".
var checks = []outcome.Setting[HELO]{
	{Name: "invalid_syntax", Default: outcome.Outcome{Score: 2}, Field: func(h *HELO) **outcome.Outcome { return &h.InvalidSyntax }, Actions: outcome.NoDefer},
	{Name: "not_fqdn", Default: outcome.Outcome{Score: 1}, Field: func(h *HELO) **outcome.Outcome { return &h.NotFQDN }, Actions: outcome.NoDefer},
	{Name: "forged", Default: outcome.Outcome{Action: outcome.Reject}, Field: func(h *HELO) **outcome.Outcome { return &h.Forged }, Actions: outcome.NoDefer},
	{Name: "no_rdns", Default: outcome.Outcome{Score: 1.5}, Field: func(h *HELO) **outcome.Outcome { return &h.NoRDNS }, Actions: outcome.NoDefer},
	{Name: "rdns_mismatch", Default: outcome.Outcome{Score: 1}, Field: func(h *HELO) **outcome.Outcome { return &h.RDNSMismatch }, Actions: outcome.NoDefer},
	{Name: "unknown_sender_domain", Default: outcome.Outcome{Score: 2}, Field: func(h *HELO) **outcome.Outcome { return &h.UnknownSenderDomain }, Actions: outcome.NoDefer},
}

var metricChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy", Subsystem: "smtp_helo", Name: "checks_total",
	Help: "HELO, reverse DNS and sender domain checks by check and result (pass, fail, temperror).",
}, []string{"check", "result"})

// CaddyModule returns the Caddy module information.
func (HELO) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.handlers.helo", New: func() caddy.Module { return new(HELO) }}
}

// Provision checks the config.
func (h *HELO) Provision(ctx caddy.Context) error {
	var err error
	if h.app, err = outcome.App(ctx, "helo", metricChecks); err != nil {
		return err
	}
	if h.outcomes, err = outcome.Resolve(h, checks); err != nil {
		return err
	}
	h.ownNames = map[string]bool{}
	for i, n := range h.OwnNames {
		n = strings.TrimSuffix(strings.ToLower(n), ".")
		if !smtpapp.ValidHostname(n) {
			return fmt.Errorf("own_names[%d]: %q is not a host name", i, h.OwnNames[i])
		}
		h.ownNames[n] = true
	}
	if h.ownAddrs, err = smtpapp.ParsePrefixes("own_addresses", h.OwnAddresses); err != nil {
		return err
	}
	if err := outcome.Timeout(&h.Timeout, 10*time.Second); err != nil {
		return err
	}
	if err := sessiondomains.Validate(&h.MaxDomainsPerSession); err != nil {
		return err
	}
	h.connKey = fmt.Sprintf("smtp.handlers.helo@%p", h)
	return nil
}

// connState is what the module knows about one connection.
type connState struct {
	rdnsDone chan struct{}
	rdns     rdnsResult

	mu       sync.Mutex
	heloName string
	heloRes  []failure // the HELO checks of heloName
	heloDone bool
	domains  *sessiondomains.Cache[domainResult] // sender domains looked up
	refusal  error                               // of the current transaction
}

type rdnsResult struct {
	result string // pass, fail (mismatch), none (no PTR), temperror
	name   string // the confirmed name
	names  []string
	err    error
}

type domainResult struct {
	result string // pass, fail, nullmx, temperror
	err    error
}

// failure is one failed check.
type failure struct {
	check  string
	reason string
	reply  *smtpapp.Error
}

// Connect starts the reverse DNS lookup.
func (h *HELO) Connect(ctx context.Context, c *smtpapp.Conn) error {
	h.state(c)
	return nil
}

func (h *HELO) state(c *smtpapp.Conn) *connState {
	if st, ok := c.Get(h.connKey).(*connState); ok {
		return st
	}
	st := &connState{rdnsDone: make(chan struct{}), domains: sessiondomains.New[domainResult](h.MaxDomainsPerSession)}
	c.Set(h.connKey, st)
	ip := c.RemoteIP().Unmap()
	go func() {
		defer close(st.rdnsDone)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(h.Timeout))
		defer cancel()
		st.rdns = h.fcrdns(ctx, ip)
	}()
	return st
}

// fcrdns checks forward-confirmed reverse DNS: a PTR name of ip whose
// addresses include ip.
func (h *HELO) fcrdns(ctx context.Context, ip netip.Addr) rdnsResult {
	res := h.app.DNS()
	names, err := res.LookupPTR(ctx, ip)
	switch {
	case errors.Is(err, smtpapp.ErrNotFound):
		return rdnsResult{result: "none"}
	case err != nil:
		return rdnsResult{result: "temperror", err: err}
	}
	if len(names) > 10 {
		names = names[:10]
	}
	var tempErr error
	for _, n := range names {
		addrs, err := res.LookupIP(ctx, n)
		if err != nil {
			if !errors.Is(err, smtpapp.ErrNotFound) {
				tempErr = err
			}
			continue
		}
		for _, a := range addrs {
			if a.Unmap() == ip {
				return rdnsResult{result: "pass", name: n, names: names}
			}
		}
	}
	if tempErr != nil {
		return rdnsResult{result: "temperror", names: names, err: tempErr}
	}
	return rdnsResult{result: "fail", names: names}
}

// Mail runs the checks for this transaction: points now, a refusal at RCPT.
func (h *HELO) Mail(ctx context.Context, c *smtpapp.Conn, from string) error {
	if outcome.Unchecked(c) {
		return nil
	}
	st := h.state(c)
	domain := ""
	if at := strings.LastIndexByte(from, '@'); at >= 0 {
		domain = from[at+1:]
	}
	if domain != "" && !st.domains.Admit(domain) {
		st.mu.Lock()
		st.refusal = nil
		st.mu.Unlock()
		c.Logger().Info("sender domain not checked: too many sender domains in the session", zap.String("module", "smtp.handlers.helo"),
			zap.String("domain", clean(domain)), zap.Int("max_domains_per_session", h.MaxDomainsPerSession))
		return sessiondomains.Refusal()
	}
	var fails []failure
	fails = append(fails, h.heloChecks(c, st)...)

	select {
	case <-st.rdnsDone:
		fails = append(fails, h.rdnsFailures(c, st)...)
	case <-ctx.Done():
	}

	if domain != "" {
		fails = append(fails, h.senderDomain(ctx, c, st, domain)...)
	}

	var refusal error
	for _, f := range fails {
		// A refusal waits for RCPT; the first one counts.
		if err := h.outcomes[f.check].Apply(c, "helo", f.reason, f.reply, nil); err != nil && refusal == nil {
			refusal = err
		}
	}
	st.mu.Lock()
	st.refusal = refusal
	st.mu.Unlock()
	if len(fails) > 0 {
		var reasons []string
		for _, f := range fails {
			reasons = append(reasons, f.check+": "+f.reason+" ("+h.outcomes[f.check].Action+")")
		}
		c.Logger().Info("HELO/rDNS/sender checks failed", zap.String("module", "smtp.handlers.helo"),
			zap.String("helo", c.Helo()), zap.String("from", from), zap.Strings("failed", reasons), zap.Bool("refused", refusal != nil))
	}
	return nil
}

// Rcpt refuses the recipient when a check of this transaction said so.
func (h *HELO) Rcpt(ctx context.Context, c *smtpapp.Conn, rcpt smtpapp.Recipient) error {
	if outcome.Unchecked(c) {
		return nil
	}
	st, ok := c.Get(h.connKey).(*connState)
	if !ok {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.refusal
}

// heloChecks checks the HELO name (once per name and connection).
func (h *HELO) heloChecks(c *smtpapp.Conn, st *connState) []failure {
	name := c.Helo()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.heloDone && st.heloName == name {
		return st.heloRes
	}
	var fails []failure
	count := func(check string, failed bool) {
		r := "pass"
		if failed {
			r = "fail"
		}
		metricChecks.WithLabelValues(check, r).Inc()
	}
	lit, isLiteral, litOK := parseLiteral(name)
	lname := strings.TrimSuffix(strings.ToLower(name), ".")
	bare, bareErr := netip.ParseAddr(name)
	valid := isLiteral && litOK || !isLiteral && smtpapp.ValidHostname(name)
	count("helo_syntax", !valid)
	if !valid {
		fails = append(fails, failure{"invalid_syntax", fmt.Sprintf("HELO %q is not a host name or address literal", clean(name)),
			smtpapp.Errorf(550, [3]int{5, 7, 1}, "Client HELO %s is not a valid host name", clean(name))})
	} else if !isLiteral {
		single := !strings.Contains(lname, ".")
		count("helo_fqdn", single)
		if single {
			fails = append(fails, failure{"not_fqdn", fmt.Sprintf("HELO %q is not fully qualified", clean(name)),
				smtpapp.Errorf(550, [3]int{5, 7, 1}, "Client HELO %s is not a fully qualified host name", clean(name))})
		}
	}
	// Forged: the client claims our name or address, and is not us.
	client := c.RemoteIP().Unmap()
	local := c.LocalAddr().Addr().Unmap()
	if client != local && !h.ownAddr(client) {
		forged := false
		switch {
		case isLiteral && litOK:
			forged = lit == local || h.ownAddr(lit)
		case bareErr == nil:
			forged = bare.Unmap() == local || h.ownAddr(bare.Unmap())
		default:
			forged = lname == strings.ToLower(c.Hostname()) || h.app.IsLocalDomain(lname) || h.ownNames[lname]
		}
		count("helo_forged", forged)
		if forged {
			fails = append(fails, failure{"forged", fmt.Sprintf("HELO %q claims to be this server", clean(name)),
				smtpapp.Errorf(550, [3]int{5, 7, 1}, "Client HELO %s claims to be this server; you are not", clean(name))})
		}
	}
	st.heloName, st.heloRes, st.heloDone = name, fails, true
	return fails
}

func (h *HELO) ownAddr(ip netip.Addr) bool {
	for _, p := range h.ownAddrs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// parseLiteral parses an address literal ("[192.0.2.1]",
// "[IPv6:2001:db8::1]"); isLiteral reports the brackets, ok the syntax.
func parseLiteral(s string) (ip netip.Addr, isLiteral, ok bool) {
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
		return netip.Addr{}, false, false
	}
	inner := s[1 : len(s)-1]
	if len(inner) > 5 && strings.EqualFold(inner[:5], "IPv6:") {
		ip, err := netip.ParseAddr(inner[5:])
		return ip.Unmap(), true, err == nil && ip.Is6() && ip.Zone() == ""
	}
	ip, err := netip.ParseAddr(inner)
	return ip, true, err == nil && ip.Is4()
}

// rdnsFailures turns the reverse DNS result into failures.
func (h *HELO) rdnsFailures(c *smtpapp.Conn, st *connState) []failure {
	ip := c.RemoteIP().Unmap()
	r := st.rdns
	switch r.result {
	case "none":
		return []failure{{"no_rdns", fmt.Sprintf("client %s has no reverse DNS", ip),
			smtpapp.Errorf(550, [3]int{5, 7, 25}, "Client address [%s] has no reverse DNS", ip)}}
	case "fail":
		return []failure{{"rdns_mismatch", fmt.Sprintf("reverse DNS of %s (%s) does not resolve back to it", ip, strings.Join(r.names, ",")),
			smtpapp.Errorf(550, [3]int{5, 7, 25}, "Reverse DNS of client address [%s] does not resolve back to it", ip)}}
	}
	return nil
}

// senderDomain checks that the MAIL FROM domain can receive mail.
func (h *HELO) senderDomain(ctx context.Context, c *smtpapp.Conn, st *connState, domain string) []failure {
	domain = strings.ToLower(domain)
	r, ok := st.domains.Get(domain)
	if !ok {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(h.Timeout))
		r = h.lookupDomain(ctx, domain)
		cancel()
		metricChecks.WithLabelValues("sender_domain", r.result).Inc()
		st.domains.Put(domain, r)
	}
	switch r.result {
	case "fail":
		return []failure{{"unknown_sender_domain", fmt.Sprintf("sender domain %s has no MX or address record", domain),
			smtpapp.Errorf(550, [3]int{5, 1, 8}, "Sender address rejected: domain %s has no MX or address record", domain)}}
	case "nullmx":
		return []failure{{"unknown_sender_domain", fmt.Sprintf("sender domain %s has a null MX", domain),
			smtpapp.Errorf(550, [3]int{5, 7, 27}, "Sender address rejected: domain %s does not accept mail (null MX)", domain)}}
	case "temperror":
		c.Logger().Debug("sender domain check failed", zap.String("domain", domain), zap.Error(r.err))
	}
	return nil
}

func (h *HELO) lookupDomain(ctx context.Context, domain string) domainResult {
	res := h.app.DNS()
	mxs, err := res.LookupMX(ctx, domain)
	if err == nil {
		if len(mxs) == 1 && (mxs[0].Host == "" || mxs[0].Host == ".") {
			return domainResult{result: "nullmx"}
		}
		return domainResult{result: "pass"}
	}
	if !errors.Is(err, smtpapp.ErrNotFound) {
		return domainResult{result: "temperror", err: err}
	}
	if _, err := res.LookupIP(ctx, domain); err != nil {
		if errors.Is(err, smtpapp.ErrNotFound) {
			return domainResult{result: "fail"}
		}
		return domainResult{result: "temperror", err: err}
	}
	return domainResult{result: "pass"}
}

// Data records the reverse DNS result as iprev (RFC 8601 3).
func (h *HELO) Data(ctx context.Context, c *smtpapp.Conn, msg *smtpapp.Message) error {
	if outcome.Unchecked(c) {
		return nil
	}
	st, ok := c.Get(h.connKey).(*connState)
	if !ok {
		return nil
	}
	select {
	case <-st.rdnsDone:
	default:
		return nil
	}
	ip := c.RemoteIP().Unmap().String()
	v := map[string]string{"pass": "pass", "fail": "fail", "none": "permerror", "temperror": "temperror"}[st.rdns.result]
	field := "iprev=" + v + " policy.iprev=" + ip
	if st.rdns.name != "" {
		field += " (" + clean(st.rdns.name) + ")"
	}
	msg.AddAuthResult(field)
	return nil
}

// clean keeps a client-given name printable and short for replies and
// logs.
func clean(s string) string {
	if len(s) > 100 {
		s = s[:100]
	}
	return strings.Map(func(r rune) rune {
		if r <= 0x20 || r >= 0x7f || r == '(' || r == ')' || r == '\\' {
			return '?'
		}
		return r
	}, s)
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	helo {
//		invalid_syntax|not_fqdn|forged|no_rdns|rdns_mismatch|unknown_sender_domain reject|<score>
//		own_names <name>...
//		own_addresses <address|cidr>...
//		timeout <duration>
//		max_domains_per_session <n>
//	}
func (h *HELO) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return outcome.UnmarshalCaddyfile(d, h, checks, &h.Timeout, func(d *caddyfile.Dispenser) (bool, error) {
		switch d.Val() {
		case "own_names":
			return true, caddyargs.AppendArgs(d, &h.OwnNames)
		case "own_addresses":
			return true, caddyargs.AppendArgs(d, &h.OwnAddresses)
		case "max_domains_per_session":
			var err error
			h.MaxDomainsPerSession, err = caddyargs.Int(d)
			return true, err
		}
		return false, nil
	})
}

// Interface guards
var (
	_ caddy.Provisioner     = (*HELO)(nil)
	_ caddyfile.Unmarshaler = (*HELO)(nil)
	_ smtpapp.ConnectHook   = (*HELO)(nil)
	_ smtpapp.MailHook      = (*HELO)(nil)
	_ smtpapp.RcptHook      = (*HELO)(nil)
	_ smtpapp.DataHook      = (*HELO)(nil)
)
