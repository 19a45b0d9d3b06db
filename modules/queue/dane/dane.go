// Package dane implements DANE for SMTP (RFC 7672, RFC 7671) on the
// sending side: TLSA lookup through a DNSSEC-validating resolver (trusting
// its AD bit) and matching of a server's certificate chain against the
// records.
package dane

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Usages, selectors and matching types that SMTP uses (RFC 7672 3.1).
const (
	UsageDANETA  = 2
	UsageDANEEE  = 3
	SelectorCert = 0
	SelectorSPKI = 1
	MatchFull    = 0
	MatchSHA256  = 1
	MatchSHA512  = 2
)

// Status is what a TLSA lookup found.
type Status int

const (
	// Insecure: no usable DNSSEC-validated TLSA records (none, a secure
	// denial, or an answer without the AD bit): DANE does not apply.
	Insecure Status = iota
	// Secure: validated TLSA records exist; TLS is mandatory and
	// authenticated by them (by none, if all are unusable).
	Secure
	// Bogus: the resolver failed (SERVFAIL, as a validating resolver
	// answers for bogus data) or did not answer: delivery must wait.
	Bogus
)

func (s Status) String() string {
	return [...]string{"insecure", "secure", "bogus"}[s]
}

// Resolver asks a DNSSEC-validating resolver for TLSA records.
type Resolver struct {
	// Addr is the resolver's host:port.
	Addr string
	// Timeout of one query. Default: 5s.
	Timeout time.Duration
}

// Result of a TLSA lookup.
type Result struct {
	Status Status
	// Records are the usable records (usage 2 or 3, selector 0 or 1,
	// matching type 0, 1 or 2); Secure with no Records means TLS without
	// authentication (RFC 7672 2.2).
	Records []*dns.TLSA
	// Err is why the status is Bogus.
	Err error
}

// Name is the TLSA owner name of host:port.
func Name(host string, port int) string {
	return "_" + strconv.Itoa(port) + "._tcp." + dns.Fqdn(strings.ToLower(host))
}

// Lookup finds the TLSA records of host:port.
func (r *Resolver) Lookup(ctx context.Context, host string, port int) Result {
	m := new(dns.Msg)
	m.SetQuestion(Name(host, port), dns.TypeTLSA)
	m.SetEdns0(1232, true)
	m.AuthenticatedData = true
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	cl := &dns.Client{Net: "udp", Timeout: timeout}
	in, _, err := cl.ExchangeContext(ctx, m, r.Addr)
	if err == nil && in.Truncated {
		cl.Net = "tcp"
		in, _, err = cl.ExchangeContext(ctx, m, r.Addr)
	}
	if err != nil {
		return Result{Status: Bogus, Err: fmt.Errorf("TLSA lookup of %s: %v", m.Question[0].Name, err)}
	}
	return Classify(in)
}

// Classify turns a resolver's answer into a Result: SERVFAIL (or any
// rcode but NOERROR and NXDOMAIN) is bogus; no AD bit is insecure
// (ignored); an authenticated denial is insecure too (no DANE).
func Classify(in *dns.Msg) Result {
	if in.Rcode != dns.RcodeSuccess && in.Rcode != dns.RcodeNameError {
		return Result{Status: Bogus, Err: fmt.Errorf("TLSA lookup: %s", dns.RcodeToString[in.Rcode])}
	}
	if !in.AuthenticatedData {
		return Result{Status: Insecure}
	}
	var recs, all []*dns.TLSA
	for _, rr := range in.Answer {
		t, ok := rr.(*dns.TLSA)
		if !ok {
			continue
		}
		all = append(all, t)
		if Usable(t) {
			recs = append(recs, t)
		}
	}
	if len(all) == 0 {
		return Result{Status: Insecure}
	}
	return Result{Status: Secure, Records: recs}
}

// Usable reports whether SMTP can use the record (RFC 7672 3.1).
func Usable(t *dns.TLSA) bool {
	return (t.Usage == UsageDANETA || t.Usage == UsageDANEEE) &&
		(t.Selector == SelectorCert || t.Selector == SelectorSPKI) &&
		t.MatchingType <= MatchSHA512
}

// ErrNoMatch is a chain that no record matches.
var ErrNoMatch = errors.New("no TLSA record matches the certificate chain")

// Verify checks a server's chain (leaf first) against usable records: a
// DANE-EE record matching the leaf passes with no name or date check
// (RFC 7672 3.1.1); a DANE-TA record matching a certificate of the chain
// makes it the trust anchor, and the leaf must chain to it with a name of
// names (the MX host name; RFC 7672 3.2.2).
func Verify(recs []*dns.TLSA, chain []*x509.Certificate, names []string, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	var taErr error
	for _, t := range recs {
		switch t.Usage {
		case UsageDANEEE:
			if Matches(t, chain[0]) {
				return nil
			}
		case UsageDANETA:
			for i, c := range chain {
				if i == 0 && len(chain) > 1 || !Matches(t, c) {
					continue
				}
				err := verifyTA(c, chain, names, now)
				if err == nil {
					return nil
				}
				taErr = err
			}
		}
	}
	if taErr != nil {
		return fmt.Errorf("DANE-TA: %w", taErr)
	}
	return ErrNoMatch
}

func verifyTA(ta *x509.Certificate, chain []*x509.Certificate, names []string, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(ta)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	var last error
	for _, n := range names {
		_, err := chain[0].Verify(x509.VerifyOptions{DNSName: strings.TrimSuffix(n, "."), Roots: roots, Intermediates: inter, CurrentTime: now})
		if err == nil {
			return nil
		}
		last = err
	}
	if last == nil {
		last = errors.New("no reference name")
	}
	return last
}

// Matches reports whether the record matches certificate c.
func Matches(t *dns.TLSA, c *x509.Certificate) bool {
	var data []byte
	switch t.Selector {
	case SelectorCert:
		data = c.Raw
	case SelectorSPKI:
		data = c.RawSubjectPublicKeyInfo
	default:
		return false
	}
	switch t.MatchingType {
	case MatchFull:
	case MatchSHA256:
		s := sha256.Sum256(data)
		data = s[:]
	case MatchSHA512:
		s := sha512.Sum512(data)
		data = s[:]
	default:
		return false
	}
	want, err := hex.DecodeString(t.Certificate)
	return err == nil && len(want) == len(data) && subtle.ConstantTimeCompare(want, data) == 1
}

// Record makes the TLSA record text for c (zone-file syntax), e.g. for
// tests and documentation: "_25._tcp.mx.example.com. 300 IN TLSA 3 1 1 <hex>".
func Record(host string, port, usage, selector, matching int, c *x509.Certificate) string {
	t := &dns.TLSA{Usage: uint8(usage), Selector: uint8(selector), MatchingType: uint8(matching)}
	if err := t.Sign(usage, selector, matching, c); err != nil {
		return ""
	}
	return Name(host, port) + " 300 IN TLSA " + strconv.Itoa(usage) + " " + strconv.Itoa(selector) + " " + strconv.Itoa(matching) + " " + t.Certificate
}

// Strings formats records for logs and TLS reports.
func Strings(recs []*dns.TLSA) []string {
	out := make([]string, len(recs))
	for i, t := range recs {
		out[i] = fmt.Sprintf("%d %d %d %s", t.Usage, t.Selector, t.MatchingType, t.Certificate)
	}
	return out
}
