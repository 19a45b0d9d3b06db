package caddyfile_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// TestQuickStartExample runs examples/Caddyfile as the README's quick start
// does (its own ports and ./data folder) and delivers a message to alice.
func TestQuickStartExample(t *testing.T) {
	cfgJSON := adapt(t, "../examples/Caddyfile")
	t.Chdir(t.TempDir())
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("loading the quick-start example (are its ports 2525/2587/2465/2019 free?): %v", err)
	}
	t.Cleanup(func() { caddy.Stop() })

	c, greet := testenv.Dial(t, "127.0.0.1:2525")
	if greet.Code != 220 {
		t.Fatalf("greeting: %s", greet)
	}
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<someone@example.org>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 250)
	c.Expect("RCPT TO:<nobody@example.test>", 550)
	c.Expect("DATA", 354)
	c.Send("Subject: quick start\r\n\r\nhello alice\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	files, _ := filepath.Glob("data/maildir/example.test/alice/new/*")
	if len(files) != 1 {
		t.Fatalf("want 1 message in ./data/maildir/example.test/alice/new, got %v", files)
	}
	body, _ := os.ReadFile(files[0])
	if !strings.HasSuffix(string(body), "Subject: quick start\r\n\r\nhello alice\r\n") {
		t.Fatalf("stored: %q", body)
	}

	// Submission as the README's mail-client section says: alice logs in
	// on 2587 with STARTTLS and on 2465 with implicit TLS.
	root := "data/caddy/pki/authorities/local/root.crt"
	if !testenv.WaitFor(10*time.Second, func() bool { _, err := os.Stat(root); return err == nil }) {
		t.Fatal("no internal CA")
	}
	pem, err := os.ReadFile("data/caddy/pki/authorities/local/root.crt")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tlsConfig := &tls.Config{RootCAs: roots, ServerName: "mail.example.test"}
	testenv.WaitForCertificate(t, "127.0.0.1:2587", tlsConfig)
	login := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice@example.test\x00demo-alice"))

	s, _ := testenv.Dial(t, "127.0.0.1:2587")
	s.Expect("EHLO client.example.org", 250)
	s.StartTLS(tlsConfig)
	s.Expect("EHLO client.example.org", 250)
	s.Expect(login, 235)
	s.StartMessage("alice@example.test", "bob@example.test")
	s.Send("Subject: from alice\r\n\r\nhi bob\r\n.\r\n")
	if r := s.Read(); r.Code != 250 {
		t.Fatalf("submission DATA: %s", r)
	}

	conn, err := tls.Dial("tcp", "127.0.0.1:2465", tlsConfig)
	if err != nil {
		t.Fatalf("implicit TLS on 2465: %v", err)
	}
	ss := &testenv.Client{T: t, Conn: conn, R: bufio.NewReader(conn)}
	if r := ss.Read(); r.Code != 220 {
		t.Fatalf("greeting on 2465: %s", r)
	}
	ss.Expect("EHLO client.example.org", 250)
	ss.Expect(login, 235)
	ss.Expect("QUIT", 221)

	if files, _ := filepath.Glob("data/maildir/example.test/bob/new/*"); len(files) != 1 {
		t.Fatalf("bob: want 1 message, got %v", files)
	}
}
