package smtpapp_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"net"
)

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// verifyChain checks the peer's chain against the test's internal CA root.
func verifyChain(cfg *tls.Config, st tls.ConnectionState) error {
	inter := x509.NewCertPool()
	for _, c := range st.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := st.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: cfg.RootCAs, Intermediates: inter})
	return err
}
