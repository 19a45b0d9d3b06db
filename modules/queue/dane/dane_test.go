package dane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func cert(t *testing.T, cn string, names []string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, ca bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: ca, BasicConstraintsValid: ca,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func tlsa(t *testing.T, usage, sel, match int, c *x509.Certificate) *dns.TLSA {
	r := &dns.TLSA{Hdr: dns.RR_Header{Name: "_25._tcp.mx.example.", Rrtype: dns.TypeTLSA, Class: dns.ClassINET, Ttl: 300}}
	if err := r.Sign(usage, sel, match, c); err != nil {
		t.Fatal(err)
	}
	r.Usage, r.Selector, r.MatchingType = uint8(usage), uint8(sel), uint8(match)
	return r
}

func TestVerify(t *testing.T) {
	ca, caKey := cert(t, "CA", nil, nil, nil, true)
	leaf, _ := cert(t, "mx.example", []string{"mx.example"}, ca, caKey, false)
	other, _ := cert(t, "other", []string{"other.example"}, nil, nil, false)
	chain := []*x509.Certificate{leaf, ca}
	now := time.Now()
	for _, c := range []struct {
		name  string
		recs  []*dns.TLSA
		names []string
		ok    bool
	}{
		{"EE SPKI SHA-256", []*dns.TLSA{tlsa(t, 3, 1, 1, leaf)}, []string{"whatever"}, true},
		{"EE cert SHA-512", []*dns.TLSA{tlsa(t, 3, 0, 2, leaf)}, nil, true},
		{"EE cert full", []*dns.TLSA{tlsa(t, 3, 0, 0, leaf)}, nil, true},
		{"EE SPKI full", []*dns.TLSA{tlsa(t, 3, 1, 0, leaf)}, nil, true},
		{"EE other cert", []*dns.TLSA{tlsa(t, 3, 1, 1, other)}, nil, false},
		{"EE one of two", []*dns.TLSA{tlsa(t, 3, 1, 1, other), tlsa(t, 3, 1, 1, leaf)}, nil, true},
		{"TA cert SHA-256, right name", []*dns.TLSA{tlsa(t, 2, 0, 1, ca)}, []string{"mx.example"}, true},
		{"TA SPKI, wrong name", []*dns.TLSA{tlsa(t, 2, 1, 1, ca)}, []string{"evil.example"}, false},
		{"TA not in chain", []*dns.TLSA{tlsa(t, 2, 0, 1, other)}, []string{"mx.example"}, false},
		{"TA matching the leaf of a chain is not a TA", []*dns.TLSA{tlsa(t, 2, 0, 1, leaf)}, []string{"mx.example"}, false},
		{"no records", nil, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := Verify(c.recs, chain, c.names, now)
			if (err == nil) != c.ok {
				t.Errorf("Verify: %v, want ok=%v", err, c.ok)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	ca, _ := cert(t, "CA", nil, nil, nil, true)
	rec := tlsa(t, 3, 1, 1, ca)
	unusable := tlsa(t, 1, 1, 1, ca) // PKIX-EE: not for SMTP
	msg := func(rcode int, ad bool, rrs ...dns.RR) *dns.Msg {
		m := new(dns.Msg)
		m.Rcode, m.AuthenticatedData, m.Answer = rcode, ad, rrs
		return m
	}
	for _, c := range []struct {
		name   string
		in     *dns.Msg
		status Status
		n      int
	}{
		{"secure", msg(dns.RcodeSuccess, true, rec), Secure, 1},
		{"no AD: ignored", msg(dns.RcodeSuccess, false, rec), Insecure, 0},
		{"SERVFAIL: bogus", msg(dns.RcodeServerFailure, false), Bogus, 0},
		{"REFUSED: bogus", msg(dns.RcodeRefused, false), Bogus, 0},
		{"secure denial", msg(dns.RcodeNameError, true), Insecure, 0},
		{"secure, no data", msg(dns.RcodeSuccess, true), Insecure, 0},
		{"only unusable: TLS without authentication", msg(dns.RcodeSuccess, true, unusable), Secure, 0},
	} {
		r := Classify(c.in)
		if r.Status != c.status || len(r.Records) != c.n {
			t.Errorf("%s: %v with %d records", c.name, r.Status, len(r.Records))
		}
	}
}
