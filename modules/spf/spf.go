// Package spf is the smtp.handlers.spf module: the SPF check (RFC 7208) of
// the MAIL FROM domain, or of the HELO name for the null sender, with
// blitiri.com.ar/go/spf over the app's resolver.
//
// The result of the current transaction is recorded in the connection
// with smtpapp.Conn.SetSPF, for other modules (DMARC alignment) to read
// with smtpapp.Conn.SPF.
package spf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/headertext"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/outcome"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/sessiondomains"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(SPF{})
}

// SPF checks whether the client may send mail for the MAIL FROM domain
// (for the null sender: the HELO name). Each result maps to an outcome:
// points added to the spam score, a refusal of MAIL FROM (550 5.7.23), or
// a temporary refusal (451 4.7.24). A Received-SPF header field (RFC 7208
// 9.1) records the result on the message. Authenticated sessions are not
// checked.
//
// A session's checks are kept by domain: a later MAIL with the same
// sender (and HELO) reuses the result, with a new sender of a domain
// already checked it is checked again. A session may have at most
// MaxDomainsPerSession distinct domains checked; a MAIL with one more
// gets "451 4.7.1 Too many sender domains in one session, try again
// later" (temporary, not scored and not checked), so that one connection
// cannot make the server query the DNS without end.
type SPF struct {
	// Pass: the client is authorized. Default: score 0.
	Pass *outcome.Outcome `json:"pass,omitempty"`
	// Fail: the domain says the client is not authorized. Default: score 3.
	Fail *outcome.Outcome `json:"fail,omitempty"`
	// SoftFail: probably not authorized. Default: score 1.5.
	SoftFail *outcome.Outcome `json:"softfail,omitempty"`
	// Neutral: the domain makes no assertion. Default: score 0.
	Neutral *outcome.Outcome `json:"neutral,omitempty"`
	// None: the domain publishes no SPF record (or there is no domain to
	// check). Default: score 0.5.
	None *outcome.Outcome `json:"none,omitempty"`
	// TempError: a DNS failure; "reject" is not allowed (use "defer").
	// Default: score 0.
	TempError *outcome.Outcome `json:"temperror,omitempty"`
	// PermError: the domain's record is broken. Default: score 1.
	PermError *outcome.Outcome `json:"permerror,omitempty"`

	// Timeout for the whole evaluation (all its DNS queries). Default: 20s
	// (RFC 7208 4.6.4).
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// DisableHeader stops adding the Received-SPF header field.
	DisableHeader bool `json:"disable_header,omitempty"`

	// MaxDomainsPerSession is how many distinct sender domains (HELO
	// names for the null sender) one session may have checked; MAIL with
	// a new domain beyond it is refused with 451 4.7.1. Default: 20.
	MaxDomainsPerSession int `json:"max_domains_per_session,omitempty"`

	outcomes map[string]outcome.Outcome // by result
	resolver smtpapp.NetResolver
	connKey  string // of the session's checks in the connection
}

// results are the outcome settings, one a result, named as the results.
var results = []outcome.Setting[SPF]{
	{Name: "pass", Field: func(s *SPF) **outcome.Outcome { return &s.Pass }, Actions: outcome.All},
	{Name: "fail", Default: outcome.Outcome{Score: 3}, Field: func(s *SPF) **outcome.Outcome { return &s.Fail }, Actions: outcome.All},
	{Name: "softfail", Default: outcome.Outcome{Score: 1.5}, Field: func(s *SPF) **outcome.Outcome { return &s.SoftFail }, Actions: outcome.All},
	{Name: "neutral", Field: func(s *SPF) **outcome.Outcome { return &s.Neutral }, Actions: outcome.All},
	{Name: "none", Default: outcome.Outcome{Score: 0.5}, Field: func(s *SPF) **outcome.Outcome { return &s.None }, Actions: outcome.All},
	{Name: "temperror", Field: func(s *SPF) **outcome.Outcome { return &s.TempError }, Actions: outcome.TempError},
	{Name: "permerror", Default: outcome.Outcome{Score: 1}, Field: func(s *SPF) **outcome.Outcome { return &s.PermError }, Actions: outcome.All},
}

var metricResults = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy", Subsystem: "smtp_spf", Name: "results_total",
	Help: "SPF checks by result (pass, fail, softfail, neutral, none, temperror, permerror) and action taken.",
}, []string{"result", "action"})

// CaddyModule returns the Caddy module information.
func (SPF) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.handlers.spf", New: func() caddy.Module { return new(SPF) }}
}

// Provision checks the config.
func (s *SPF) Provision(ctx caddy.Context) error {
	app, err := outcome.App(ctx, "spf", metricResults)
	if err != nil {
		return err
	}
	s.resolver = smtpapp.NetResolver{R: app.DNS()}
	if s.outcomes, err = outcome.Resolve(s, results); err != nil {
		return err
	}
	if err := sessiondomains.Validate(&s.MaxDomainsPerSession); err != nil {
		return err
	}
	s.connKey = fmt.Sprintf("smtp.handlers.spf@%p", s)
	return outcome.Timeout(&s.Timeout, 20*time.Second)
}

// check is one SPF evaluation.
type check struct {
	result   spf.Result
	err      error
	domain   string
	identity string // mailfrom or helo
	from     string
	addr     netip.Addr // the client's
	ip       string     // addr as text
	helo     string
}

// Mail checks the sender and applies the result's outcome.
func (s *SPF) Mail(ctx context.Context, c *smtpapp.Conn, from string) error {
	if outcome.Unchecked(c) {
		return nil
	}
	ck, ok := s.checkOnce(ctx, c, from)
	if !ok {
		c.Logger().Info("SPF not checked: too many sender domains in the session", zap.String("module", "smtp.handlers.spf"),
			zap.String("domain", ck.domain), zap.Int("max_domains_per_session", s.MaxDomainsPerSession))
		return sessiondomains.Refusal()
	}
	c.SetSPF(smtpapp.SPFResult{From: from, Result: string(ck.result), Domain: ck.domain, Identity: ck.identity})
	o := s.outcomes[string(ck.result)]
	fields := []zap.Field{zap.String("module", "smtp.handlers.spf"), zap.String("result", string(ck.result)),
		zap.String("identity", ck.identity), zap.String("domain", ck.domain), zap.String("action", o.Action)}
	if ck.err != nil {
		fields = append(fields, zap.String("detail", ck.err.Error()))
	}
	c.Logger().Info("SPF", fields...)
	metricResults.WithLabelValues(string(ck.result), o.Action).Inc()
	return o.Apply(c, "spf", fmt.Sprintf("SPF %s for %s %s", ck.result, ck.identity, ck.domain),
		smtpapp.Errorf(550, [3]int{5, 7, 23}, "SPF %s: %s", ck.result, ck.explain()),
		smtpapp.Errorf(451, [3]int{4, 7, 24}, "SPF %s: %s; try again later", ck.result, ck.explain()))
}

// checkOnce checks the sender, or reuses the session's check of the same
// sender and HELO. ok is false, and nothing checked, when the sender's
// domain would be one too many for the session.
func (s *SPF) checkOnce(ctx context.Context, c *smtpapp.Conn, from string) (ck check, ok bool) {
	ck = newCheck(c, from)
	if ck.identity == "helo" && !smtpapp.ValidHostname(ck.helo) {
		// An address literal or a malformed name: nothing to look up.
		ck.result, ck.err = spf.None, errors.New("the HELO name is not a domain")
		return ck, true
	}
	checks := s.sessionChecks(c)
	if prev, ok := checks.Get(ck.domain); ok && prev.from == ck.from && prev.helo == ck.helo {
		return prev, true
	}
	if !checks.Admit(ck.domain) {
		return ck, false
	}
	s.evaluate(ctx, &ck)
	checks.Put(ck.domain, ck)
	return ck, true
}

// sessionChecks are the session's checks by domain.
func (s *SPF) sessionChecks(c *smtpapp.Conn) *sessiondomains.Cache[check] {
	if v, ok := c.Get(s.connKey).(*sessiondomains.Cache[check]); ok {
		return v
	}
	v := sessiondomains.New[check](s.MaxDomainsPerSession)
	c.Set(s.connKey, v)
	return v
}

// newCheck is the check of the session's sender: its identity and domain.
func newCheck(c *smtpapp.Conn, from string) check {
	addr := c.RemoteIP().Unmap()
	ck := check{from: from, addr: addr, ip: addr.String(), helo: c.Helo(), identity: "mailfrom"}
	if at := strings.LastIndexByte(ck.sender(), '@'); at >= 0 {
		ck.domain = strings.ToLower(ck.sender()[at+1:])
	}
	if from == "" {
		ck.identity = "helo"
	}
	return ck
}

// sender is the address checked: RFC 7208 2.4 checks the null sender as
// postmaster@<HELO>.
func (ck check) sender() string {
	if ck.from == "" {
		return "postmaster@" + ck.helo
	}
	return ck.from
}

// evaluate runs check_host (RFC 7208 4) for the check's sender.
func (s *SPF) evaluate(ctx context.Context, ck *check) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(s.Timeout))
	defer cancel()
	ck.result, ck.err = spf.CheckHostWithSender(net.IP(ck.addr.AsSlice()), ck.helo, ck.sender(),
		spf.WithResolver(s.resolver), spf.WithContext(ctx))
	if ck.result == "" {
		ck.result = spf.TempError
	}
}

// explain is the human part of a result (RFC 7208 9.1 comment).
func (ck check) explain() string {
	who := "domain of " + ck.domain
	if ck.from != "" {
		who = "domain of " + ck.from
	}
	switch ck.result {
	case spf.Pass:
		return fmt.Sprintf("%s designates %s as permitted sender", who, ck.ip)
	case spf.Fail:
		return fmt.Sprintf("%s does not designate %s as permitted sender", who, ck.ip)
	case spf.SoftFail:
		return fmt.Sprintf("%s discourages use of %s as permitted sender", who, ck.ip)
	case spf.Neutral:
		return fmt.Sprintf("%s is neither permitted nor denied by %s", ck.ip, who)
	case spf.None:
		return fmt.Sprintf("%s does not designate permitted sender hosts", who)
	case spf.TempError:
		return fmt.Sprintf("error in processing during lookup of %s", who)
	default:
		return fmt.Sprintf("permanent error in processing %s", who)
	}
}

// Data adds the Received-SPF header field of this transaction's check.
func (s *SPF) Data(ctx context.Context, c *smtpapp.Conn, msg *smtpapp.Message) error {
	if s.DisableHeader || outcome.Unchecked(c) {
		return nil
	}
	r, ok := c.SPF()
	if !ok {
		return nil
	}
	ck := check{result: spf.Result(r.Result), domain: r.Domain, identity: r.Identity, from: r.From,
		ip: c.RemoteIP().Unmap().String(), helo: c.Helo()}
	msg.AddHeader("Received-SPF", receivedSPF(ck, c.Hostname()))
	return nil
}

// receivedSPF formats the field's value (RFC 7208 9.1).
func receivedSPF(ck check, receiver string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s: %s)\r\n\tclient-ip=%s; envelope-from=%s; helo=%s;\r\n\treceiver=%s; identity=%s;",
		ck.result, receiver, headertext.Comment(ck.explain()), ck.ip, kvValue(ck.from), kvValue(ck.helo), kvValue(receiver), ck.identity)
	return b.String()
}

// kvValue is a dot-atom as is, anything else quoted (RFC 5322).
func kvValue(s string) string {
	atom := s != ""
	for i := 0; i < len(s) && atom; i++ {
		ch := s[i]
		atom = ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte("!#$%&'*+-/=?^_`{|}~.", ch) >= 0
	}
	if atom && !strings.HasPrefix(s, ".") && !strings.HasSuffix(s, ".") && !strings.Contains(s, "..") {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '"' || ch == '\\':
			b.WriteByte('\\')
			b.WriteByte(ch)
		case ch < 0x20 || ch >= 0x7f:
			b.WriteByte('?')
		default:
			b.WriteByte(ch)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	spf {
//		pass|fail|softfail|neutral|none|temperror|permerror reject|defer|<score>
//		timeout <duration>
//		header off
//		max_domains_per_session <n>
//	}
func (s *SPF) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return outcome.UnmarshalCaddyfile(d, s, results, &s.Timeout, func(d *caddyfile.Dispenser) (bool, error) {
		var err error
		switch d.Val() {
		case "header":
			var on bool
			on, err = caddyargs.OnOff(d)
			s.DisableHeader = !on
		case "max_domains_per_session":
			s.MaxDomainsPerSession, err = caddyargs.Int(d)
		default:
			return false, nil
		}
		return true, err
	})
}

// Interface guards
var (
	_ caddy.Provisioner     = (*SPF)(nil)
	_ caddyfile.Unmarshaler = (*SPF)(nil)
	_ smtpapp.MailHook      = (*SPF)(nil)
	_ smtpapp.DataHook      = (*SPF)(nil)
)
