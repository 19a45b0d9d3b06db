package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNSSEC is a second front of a DNS server's records that answers as a
// DNSSEC-validating resolver would: with the AD bit set, except for names
// marked insecure; failures set with DNS.Fail (SERVFAIL, as for bogus
// data) apply here too. Point a DANE resolver setting at Addr.
type DNSSEC struct {
	Addr     string
	d        *DNS
	mu       sync.Mutex
	insecure map[string]bool
}

// StartDNSSEC serves d's records on another port of 127.0.0.1 (UDP and
// TCP) with the AD bit; it stops when the test ends.
func StartDNSSEC(t testing.TB, d *DNS) *DNSSEC {
	t.Helper()
	s := &DNSSEC{d: d, insecure: map[string]bool{}}
	s.Addr = serveDNS(t, s)
	return s
}

// Insecure makes answers for name come without the AD bit (an unsigned
// zone, or a resolver that does not validate).
func (s *DNSSEC) Insecure(name string, insecure bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.insecure[strings.ToLower(dns.Fqdn(name))] = insecure
}

// ServeDNS answers from the DNS server's records with the AD bit.
func (s *DNSSEC) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	ad := true
	if len(r.Question) == 1 {
		s.mu.Lock()
		ad = !s.insecure[strings.ToLower(r.Question[0].Name)]
		s.mu.Unlock()
	}
	s.d.ServeDNS(&adWriter{ResponseWriter: w, ad: ad}, r)
}

type adWriter struct {
	dns.ResponseWriter
	ad bool
}

func (w *adWriter) WriteMsg(m *dns.Msg) error {
	m.AuthenticatedData = w.ad && m.Rcode != dns.RcodeServerFailure
	return w.ResponseWriter.WriteMsg(m)
}

// TLSCA is a test certificate authority: it signs server certificates
// for TLS test servers (HTTPS policy hosts, MX hosts).
type TLSCA struct {
	PEM  []byte // the CA certificate
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	t    testing.TB
	n    int64
}

// NewTLSCA makes a throwaway CA.
func NewTLSCA(t testing.TB) *TLSCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "caddy-smtp test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &TLSCA{PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), Cert: cert, key: key, t: t, n: 1}
}

// Issue makes a server TLS config with a certificate for names, signed by
// the CA (the chain sent includes the CA certificate).
func (ca *TLSCA) Issue(names ...string) *tls.Config {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	ca.n++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.n),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}}}
}

// WriteFile writes the CA certificate to a file in dir and returns its path.
func (ca *TLSCA) WriteFile(dir string) string {
	ca.t.Helper()
	p := filepath.Join(dir, "test-ca.pem")
	if err := os.WriteFile(p, ca.PEM, 0o644); err != nil {
		ca.t.Fatal(err)
	}
	return p
}

// HTTPS is a real HTTPS server on a loopback address, with a certificate
// from a test CA.
type HTTPS struct {
	Addr string
	Port int
	srv  *http.Server
}

// StartHTTPS serves handler over TLS on addr (ip:port; port 0 picks one)
// until the test ends.
func StartHTTPS(t testing.TB, addr string, cfg *tls.Config, handler http.Handler) *HTTPS {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("HTTPS on %s: %v", addr, err)
	}
	srv := &http.Server{Handler: handler, TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(tls.NewListener(ln, cfg))
	h := &HTTPS{Addr: ln.Addr().String(), Port: ln.Addr().(*net.TCPAddr).Port, srv: srv}
	t.Cleanup(h.Close)
	return h
}

// Close stops the server (a policy host that is down).
func (h *HTTPS) Close() { h.srv.Close() }

// Remove deletes name's records of type rrtype (e.g. dns.TypeMX).
func (d *DNS) Remove(name string, rrtype uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.records, key(name, rrtype))
}
