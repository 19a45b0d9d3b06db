// Package dmarc is the smtp.handlers.dmarc module: DKIM verification (RFC
// 6376) and DMARC evaluation (RFC 7489) of each message after DATA, with
// emersion/go-msgauth over the app's resolver, and an
// Authentication-Results header field (RFC 8601) with the SPF, DKIM and
// DMARC results.
//
// For DMARC's SPF alignment it takes the result the spf handler recorded
// for the transaction (smtpapp.Conn.SPF); without it, it runs the SPF
// check itself (for alignment and the header only, without points).
package dmarc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/mail"
	"strconv"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/net/publicsuffix"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/caddyargs"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/headertext"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/outcome"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(DMARC{})
}

// DMARC verifies the DKIM signatures of each message and evaluates the
// DMARC policy of its From: domain: a message passes when SPF or DKIM
// passes for a domain aligned with the From: domain. A failing message
// gets the outcome configured for the domain's policy (none, quarantine
// or reject): points added to the spam score, or a refusal at the end of
// DATA (550 5.7.26; 451 4.7.26 for "defer"). The results are recorded in
// an Authentication-Results header field whose authserv-id is the
// server's hostname. Authenticated sessions are not checked.
type DMARC struct {
	// DKIMPass: the message has a valid DKIM signature (of any domain).
	// Default: score 0.
	DKIMPass *outcome.Outcome `json:"dkim_pass,omitempty"`
	// DKIMFail: it has signatures, none valid. Default: score 1.
	DKIMFail *outcome.Outcome `json:"dkim_fail,omitempty"`
	// DMARCPass: SPF or DKIM passes aligned with the From: domain.
	// Default: score 0.
	DMARCPass *outcome.Outcome `json:"dmarc_pass,omitempty"`
	// FailNone: DMARC fails and the domain's policy is none.
	// Default: score 1.
	FailNone *outcome.Outcome `json:"fail_none,omitempty"`
	// FailQuarantine: DMARC fails and the policy is quarantine. Default:
	// score 5 (the default tag_score: the message goes to Junk).
	FailQuarantine *outcome.Outcome `json:"fail_quarantine,omitempty"`
	// FailReject: DMARC fails and the policy is reject. Default: reject
	// (550 5.7.26 at the end of DATA).
	FailReject *outcome.Outcome `json:"fail_reject,omitempty"`
	// TempError: a DNS failure looking up the DMARC record; "reject" is
	// not allowed (use "defer"). Default: score 0.
	TempError *outcome.Outcome `json:"temperror,omitempty"`
	// PermError: the From: field is missing or cannot be parsed, so no
	// DMARC policy can be applied (a way to dodge it). Default: score 5
	// (the default tag_score: the message goes to Junk).
	PermError *outcome.Outcome `json:"permerror,omitempty"`

	// IgnorePercent applies the policy to every failing message, ignoring
	// the record's pct= sampling.
	IgnorePercent bool `json:"ignore_percent,omitempty"`

	// MaxSignatures is how many DKIM signatures of a message are checked.
	// Default: 5.
	MaxSignatures int `json:"max_signatures,omitempty"`

	// Timeout for the checks of one message (all their DNS queries).
	// Default: 20s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	outcomes map[string]outcome.Outcome
	resolver smtpapp.NetResolver
	logger   *zap.Logger
}

var outcomeFields = []outcome.Setting[DMARC]{
	{Name: "dkim_pass", Field: func(d *DMARC) **outcome.Outcome { return &d.DKIMPass }, Actions: outcome.All},
	{Name: "dkim_fail", Default: outcome.Outcome{Score: 1}, Field: func(d *DMARC) **outcome.Outcome { return &d.DKIMFail }, Actions: outcome.All},
	{Name: "dmarc_pass", Field: func(d *DMARC) **outcome.Outcome { return &d.DMARCPass }, Actions: outcome.All},
	{Name: "fail_none", Default: outcome.Outcome{Score: 1}, Field: func(d *DMARC) **outcome.Outcome { return &d.FailNone }, Actions: outcome.All},
	{Name: "fail_quarantine", Default: outcome.Outcome{Score: 5}, Field: func(d *DMARC) **outcome.Outcome { return &d.FailQuarantine }, Actions: outcome.All},
	{Name: "fail_reject", Default: outcome.Outcome{Action: outcome.Reject}, Field: func(d *DMARC) **outcome.Outcome { return &d.FailReject }, Actions: outcome.All},
	{Name: "temperror", Field: func(d *DMARC) **outcome.Outcome { return &d.TempError }, Actions: outcome.TempError},
	{Name: "permerror", Default: outcome.Outcome{Score: 5}, Field: func(d *DMARC) **outcome.Outcome { return &d.PermError }, Actions: outcome.All},
}

var (
	metricDKIM = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_dkim", Name: "signatures_total",
		Help: "DKIM signatures checked, by result (pass, fail, permerror, temperror).",
	}, []string{"result"})
	metricDMARC = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_dmarc", Name: "results_total",
		Help: "DMARC evaluations by result (pass, fail, none, temperror, permerror), policy and action.",
	}, []string{"result", "policy", "action"})
)

// CaddyModule returns the Caddy module information.
func (DMARC) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.handlers.dmarc", New: func() caddy.Module { return new(DMARC) }}
}

// Provision checks the config.
func (m *DMARC) Provision(ctx caddy.Context) error {
	m.logger = ctx.Logger()
	app, err := outcome.App(ctx, "dmarc", metricDKIM, metricDMARC)
	if err != nil {
		return err
	}
	m.resolver = smtpapp.NetResolver{R: app.DNS()}
	if m.outcomes, err = outcome.Resolve(m, outcomeFields); err != nil {
		return err
	}
	if m.MaxSignatures < 0 {
		return fmt.Errorf("max_signatures: must not be negative")
	}
	if m.MaxSignatures == 0 {
		m.MaxSignatures = 5
	}
	return outcome.Timeout(&m.Timeout, 20*time.Second)
}

// report is what the checks of one message found.
type report struct {
	spfResult   string // pass, fail... of the SPF check
	spfDomain   string
	spfIdentity string // mailfrom or helo
	dkim        []dkimResult
	fromDomains []string
	dmarc       string // pass, fail, none, temperror, permerror
	policy      string // none, quarantine, reject ("" without record)
	applied     string // the policy applied after pct sampling
	domain      string // the From: domain evaluated
	reason      string
}

type dkimResult struct {
	result   string // pass, fail, permerror, temperror
	domain   string
	identity string
	err      error
}

// Data checks the message and applies the outcomes.
func (m *DMARC) Data(ctx context.Context, c *smtpapp.Conn, msg *smtpapp.Message) error {
	if outcome.Unchecked(c) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(m.Timeout))
	defer cancel()
	rep := m.evaluate(ctx, c, msg)
	for _, r := range rep.results() {
		msg.AddAuthResult(r)
	}

	var outs []struct {
		name, reason string
	}
	add := func(name, reason string) { outs = append(outs, struct{ name, reason string }{name, reason}) }
	switch {
	case rep.anyDKIM("pass"):
		add("dkim_pass", "DKIM pass for "+rep.dkimPassDomains())
	case rep.anyDKIM("fail") || rep.anyDKIM("permerror"):
		add("dkim_fail", "DKIM signatures fail ("+rep.dkimSummary()+")")
	}
	switch rep.dmarc {
	case "pass":
		add("dmarc_pass", "DMARC pass for "+rep.domain)
	case "fail":
		add("fail_"+rep.applied, fmt.Sprintf("DMARC fail for %s, policy %s", rep.domain, rep.applied))
	case "temperror":
		add("temperror", "DMARC temperror for "+rep.domain)
	case "permerror":
		add("permerror", "DMARC permerror: "+rep.reason)
	}
	action := "none"
	var refusal error
	for _, o := range outs {
		out := m.outcomes[o.name]
		module := "dmarc"
		if strings.HasPrefix(o.name, "dkim_") {
			module = "dkim"
		}
		err := out.Apply(c, module, o.reason, smtpapp.Errorf(550, [3]int{5, 7, 26}, "%s", m.refusalText(rep, o.name)),
			smtpapp.Errorf(451, [3]int{4, 7, 26}, "Temporary failure checking the message's authentication; try again later"))
		switch {
		case err != nil && refusal == nil: // the first refusal counts
			action, refusal = out.Action, err
		case err == nil && out.Score != 0 && action == "none":
			action = "score"
		}
	}
	for _, r := range rep.dkim {
		metricDKIM.WithLabelValues(r.result).Inc()
	}
	metricDMARC.WithLabelValues(rep.dmarc, rep.applied, action).Inc()
	fields := []zap.Field{zap.String("module", "smtp.handlers.dmarc"), zap.String("dmarc", rep.dmarc),
		zap.Strings("from_domains", rep.fromDomains), zap.String("policy", rep.policy), zap.String("applied", rep.applied),
		zap.String("spf", rep.spfResult+" "+rep.spfDomain), zap.String("dkim", rep.dkimSummary()), zap.String("action", action)}
	if rep.reason != "" {
		fields = append(fields, zap.String("reason", rep.reason))
	}
	c.Logger().Info("DKIM/DMARC", fields...)
	return refusal
}

func (m *DMARC) refusalText(rep *report, outcome string) string {
	switch outcome {
	case "fail_reject", "fail_quarantine", "fail_none":
		return fmt.Sprintf("Message refused: the DMARC policy of %s is %s and the message is not authenticated (no aligned SPF or DKIM pass)", rep.domain, rep.applied)
	case "dkim_fail":
		return "Message refused: its DKIM signatures do not verify"
	}
	return "Message refused by the authentication checks"
}

// evaluate runs DKIM, SPF (unless the spf handler did) and DMARC.
func (m *DMARC) evaluate(ctx context.Context, c *smtpapp.Conn, msg *smtpapp.Message) *report {
	rep := &report{}
	lookupTXT := func(name string) ([]string, error) { return m.resolver.LookupTXT(ctx, name) }

	// DKIM.
	verifs, err := dkim.VerifyWithOptions(msg.Body(), &dkim.VerifyOptions{LookupTXT: lookupTXT, MaxVerifications: m.MaxSignatures})
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		rep.reason = "DKIM: " + err.Error()
	}
	for _, v := range verifs {
		r := dkimResult{domain: strings.ToLower(v.Domain), identity: v.Identifier, err: v.Err, result: "pass"}
		switch {
		case v.Err == nil:
		case dkim.IsTempFail(v.Err):
			r.result = "temperror"
		case dkim.IsPermFail(v.Err):
			r.result = "permerror"
		default:
			r.result = "fail"
		}
		rep.dkim = append(rep.dkim, r)
	}

	// SPF: the spf handler's result for this transaction, or our own.
	from := c.From()
	if r, ok := c.SPF(); ok {
		rep.spfResult, rep.spfDomain, rep.spfIdentity = r.Result, r.Domain, r.Identity
	} else {
		rep.spfResult, rep.spfDomain, rep.spfIdentity = m.checkSPF(ctx, c, from)
	}

	// DMARC, for each distinct From: domain; the first that fails decides.
	var problem string
	rep.fromDomains, problem = fromDomains(msg.Body())
	if len(rep.fromDomains) == 0 {
		rep.dmarc = "permerror"
		rep.reason = problem
		if rep.reason == "" {
			rep.reason = "no From: domain"
		}
		return rep
	}
	for _, d := range rep.fromDomains {
		one := m.evaluateDomain(ctx, rep, d)
		if rep.dmarc == "" || rank(one.dmarc) > rank(rep.dmarc) {
			rep.dmarc, rep.policy, rep.applied, rep.domain = one.dmarc, one.policy, one.applied, d
		}
	}
	return rep
}

// rank orders DMARC results from best to worst for a message with
// several From: domains.
func rank(result string) int {
	return map[string]int{"pass": 1, "none": 2, "permerror": 3, "temperror": 4, "fail": 5}[result]
}

type domainResult struct{ dmarc, policy, applied string }

func (m *DMARC) evaluateDomain(ctx context.Context, rep *report, domain string) domainResult {
	lookupTXT := func(name string) ([]string, error) { return m.resolver.LookupTXT(ctx, name) }
	org := orgDomain(domain)
	rec, err := dmarc.LookupWithOptions(domain, &dmarc.LookupOptions{LookupTXT: lookupTXT})
	sub := false
	if errors.Is(err, dmarc.ErrNoPolicy) && org != domain {
		rec, err = dmarc.LookupWithOptions(org, &dmarc.LookupOptions{LookupTXT: lookupTXT})
		sub = true
	}
	switch {
	case errors.Is(err, dmarc.ErrNoPolicy):
		return domainResult{dmarc: "none"}
	case dmarc.IsTempFail(err):
		return domainResult{dmarc: "temperror"}
	case err != nil:
		return domainResult{dmarc: "permerror"}
	}
	policy := rec.Policy
	if sub && rec.SubdomainPolicy != "" {
		policy = rec.SubdomainPolicy
	}
	res := domainResult{policy: string(policy)}
	if res.policy == "" {
		res.policy = "none"
	}
	aligned := func(d string, mode dmarc.AlignmentMode) bool {
		if d == "" {
			return false
		}
		if mode == dmarc.AlignmentStrict {
			return d == domain
		}
		return orgDomain(d) == org
	}
	for _, r := range rep.dkim {
		if r.result == "pass" && aligned(r.domain, rec.DKIMAlignment) {
			res.dmarc, res.applied = "pass", res.policy
			return res
		}
	}
	if rep.spfResult == "pass" && aligned(rep.spfDomain, rec.SPFAlignment) {
		res.dmarc, res.applied = "pass", res.policy
		return res
	}
	res.dmarc, res.applied = "fail", res.policy
	if rec.Percent != nil && *rec.Percent < 100 && !m.IgnorePercent && rand.IntN(100) >= *rec.Percent {
		// Outside the sample: the next milder policy (RFC 7489 6.6.4).
		switch res.policy {
		case "reject":
			res.applied = "quarantine"
		case "quarantine":
			res.applied = "none"
		}
	}
	return res
}

// checkSPF runs the SPF check when the spf handler did not.
func (m *DMARC) checkSPF(ctx context.Context, c *smtpapp.Conn, from string) (result, domain, identity string) {
	helo := c.Helo()
	sender, identity := from, "mailfrom"
	if from == "" {
		sender, identity = "postmaster@"+helo, "helo"
		if !smtpapp.ValidHostname(helo) {
			return "none", "", identity
		}
	}
	domain = strings.ToLower(sender[strings.LastIndexByte(sender, '@')+1:])
	res, _ := spf.CheckHostWithSender(net.IP(c.RemoteIP().Unmap().AsSlice()), helo, sender,
		spf.WithResolver(m.resolver), spf.WithContext(ctx))
	if res == "" {
		res = spf.TempError
	}
	return string(res), domain, identity
}

// fromDomains returns the distinct domains of the From: field(s).
func fromDomains(body io.Reader) (domains []string, problem string) {
	msg, err := mail.ReadMessage(bufio.NewReader(body))
	if err != nil {
		return nil, "unreadable header: " + err.Error()
	}
	var out []string
	var values []string
	for k, v := range msg.Header {
		// "From :" (obsolete syntax, RFC 5322 4.5) is a From field too,
		// and mail clients show it: it must not dodge the policy.
		if strings.EqualFold(strings.TrimRight(k, " \t"), "From") {
			values = append(values, v...)
		}
	}
	for _, v := range values {
		addrs, err := mail.ParseAddressList(v)
		if err != nil {
			return nil, "unparsable From: " + err.Error()
		}
		for _, a := range addrs {
			at := strings.LastIndexByte(a.Address, '@')
			if at < 0 {
				continue
			}
			d := strings.TrimSuffix(strings.ToLower(a.Address[at+1:]), ".")
			if !containsString(out, d) {
				out = append(out, d)
			}
		}
	}
	return out, ""
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// orgDomain is the organizational domain (RFC 7489 3.2) by the public
// suffix list.
func orgDomain(d string) string {
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	if od, err := publicsuffix.EffectiveTLDPlusOne(d); err == nil {
		return od
	}
	return d
}

func (r *report) anyDKIM(result string) bool {
	for _, d := range r.dkim {
		if d.result == result {
			return true
		}
	}
	return false
}

func (r *report) dkimPassDomains() string {
	var ds []string
	for _, d := range r.dkim {
		if d.result == "pass" && !containsString(ds, d.domain) {
			ds = append(ds, d.domain)
		}
	}
	return strings.Join(ds, ",")
}

func (r *report) dkimSummary() string {
	if len(r.dkim) == 0 {
		return "none"
	}
	var parts []string
	for _, d := range r.dkim {
		parts = append(parts, d.result+" "+d.domain)
	}
	return strings.Join(parts, ", ")
}

// results formats the Authentication-Results resinfo parts (RFC 8601).
func (r *report) results() []string {
	var parts []string
	if r.spfResult != "" {
		p := "spf=" + r.spfResult
		if r.spfDomain != "" {
			if r.spfIdentity == "helo" {
				p += " smtp.helo=" + pvalue(r.spfDomain)
			} else {
				p += " smtp.mailfrom=" + pvalue(r.spfDomain)
			}
		}
		parts = append(parts, p)
	}
	if len(r.dkim) == 0 {
		parts = append(parts, "dkim=none")
	}
	for _, d := range r.dkim {
		p := "dkim=" + d.result
		if d.err != nil {
			p += " (" + headertext.Comment(strings.TrimPrefix(d.err.Error(), "dkim: ")) + ")"
		}
		p += " header.d=" + pvalue(d.domain)
		if d.identity != "" {
			p += " header.i=" + pvalue(d.identity)
		}
		parts = append(parts, p)
	}
	p := "dmarc=" + r.dmarc
	switch {
	case r.policy != "" && r.applied != r.policy:
		p += " (p=" + r.policy + " dis=" + r.applied + " by pct)"
	case r.policy != "":
		p += " (p=" + r.policy + ")"
	case r.reason != "" && r.dmarc == "permerror":
		p += " (" + headertext.Comment(r.reason) + ")"
	}
	if r.domain != "" {
		p += " header.from=" + pvalue(r.domain)
	}
	return append(parts, p)
}

// pvalue keeps a property value to the characters of a domain or an
// address; anything else is quoted.
func pvalue(s string) string {
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte(".-_@+", ch) >= 0) {
			return strconv.Quote(strings.Map(func(r rune) rune {
				if r < 0x20 || r >= 0x7f {
					return '?'
				}
				return r
			}, s))
		}
	}
	return s
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens:
//
//	dmarc {
//		dkim_pass|dkim_fail|dmarc_pass|fail_none|fail_quarantine|fail_reject|temperror reject|defer|<score>
//		ignore_percent
//		max_signatures <n>
//		timeout <duration>
//	}
func (m *DMARC) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return outcome.UnmarshalCaddyfile(d, m, outcomeFields, &m.Timeout, func(d *caddyfile.Dispenser) (bool, error) {
		var err error
		switch d.Val() {
		case "ignore_percent":
			m.IgnorePercent = true
		case "max_signatures":
			m.MaxSignatures, err = caddyargs.Int(d)
		default:
			return false, nil
		}
		return true, err
	})
}

// Interface guards
var (
	_ caddy.Provisioner     = (*DMARC)(nil)
	_ caddyfile.Unmarshaler = (*DMARC)(nil)
	_ smtpapp.DataHook      = (*DMARC)(nil)
)
