package smtpapp_test

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

type submissionSetup struct {
	env       *testenv.Env
	mx, sub   string // plaintext MX and STARTTLS submission
	subs      string // implicit TLS
	tlsConfig *tls.Config
	hostname  string
}

// startSubmission runs an MX, a STARTTLS submission server with
// require_auth and an implicit-TLS one, all with internal-CA certificates.
func startSubmission(t *testing.T, mods ...func(app map[string]any)) *submissionSetup {
	env := testenv.New(t)
	s := &submissionSetup{env: env, hostname: "mail.example.test",
		mx:   fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		sub:  fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		subs: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
	}
	app := mxApp(env, s.mx, func(app, srv map[string]any) {
		srv["tls"] = map[string]any{"issuer": "internal"}
		app["servers"].(map[string]any)["submission"] = map[string]any{
			"listen": []string{s.sub}, "hostname": s.hostname, "require_auth": true,
			"tls": map[string]any{"issuer": "internal"},
		}
		app["servers"].(map[string]any)["submissions"] = map[string]any{
			"listen": []string{s.subs}, "hostname": s.hostname, "require_auth": true, "implicit_tls": true,
			"tls": map[string]any{"issuer": "internal"},
		}
	})
	for _, m := range mods {
		m(app)
	}
	env.Load(env.Config(app, nil))
	// The certificate is issued in the background after the listeners bind.
	if !testenv.WaitFor(10*time.Second, func() bool {
		_, err := os.Stat(env.Path("caddy", "pki", "authorities", "local", "root.crt"))
		return err == nil
	}) {
		t.Fatal("no internal CA")
	}
	s.tlsConfig = &tls.Config{RootCAs: env.RootCAs(), ServerName: s.hostname}
	testenv.WaitForCertificate(t, s.mx, s.tlsConfig)
	return s
}

func plain(authzid, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + user + "\x00" + pass))
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func (s *submissionSetup) login(t *testing.T, addr string) *testenv.Client {
	c, greet := testenv.Dial(t, addr)
	if greet.Code != 220 {
		t.Fatalf("greeting %s", greet)
	}
	c.Expect("EHLO client.example.org", 250)
	c.StartTLS(s.tlsConfig)
	c.Expect("EHLO client.example.org", 250)
	return c
}

func TestSubmissionStartTLSAuth(t *testing.T) {
	s := startSubmission(t)
	c, _ := testenv.Dial(t, s.sub)
	ehlo := c.Expect("EHLO client.example.org", 250)
	if strings.Contains(ehlo.Text(), "AUTH") {
		t.Fatalf("AUTH offered before TLS:\n%s", ehlo.Text())
	}
	if !strings.Contains(ehlo.Text(), "STARTTLS") {
		t.Fatalf("STARTTLS not offered:\n%s", ehlo.Text())
	}
	if r := c.Cmd("AUTH PLAIN " + plain("", "alice@example.test", "demo-alice")); r.Code/100 != 5 {
		t.Fatalf("AUTH before TLS: %s", r)
	}
	if r := c.Cmd("MAIL FROM:<alice@example.test>"); r.Code != 530 || !strings.HasPrefix(r.Text(), "5.7.0") {
		t.Fatalf("MAIL before AUTH: want 530 5.7.0, got %s", r)
	}
	st := c.StartTLS(s.tlsConfig)
	if st.NegotiatedProtocol != "" {
		t.Errorf("ALPN negotiated %q", st.NegotiatedProtocol)
	}
	ehlo = c.Expect("EHLO client.example.org", 250)
	if !strings.Contains(ehlo.Text(), "AUTH PLAIN LOGIN") {
		t.Fatalf("AUTH not offered under TLS:\n%s", ehlo.Text())
	}
	c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "demo-alice"), 235)
	c.StartMessage("alice@example.test", "bob@example.test")
	c.Send("Subject: via submission\r\n\r\nhi bob\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	files := testenv.Maildir(t, s.env.Path("maildir"), "example.test", "bob")
	if len(files) != 1 {
		t.Fatalf("bob has %d messages", len(files))
	}
	got, _ := os.ReadFile(files[0])
	if !strings.Contains(string(got), "with ESMTPSA") {
		t.Errorf("Received lacks ESMTPSA:\n%s", got)
	}
}

func TestSubmissionAuthLogin(t *testing.T) {
	s := startSubmission(t)
	c := s.login(t, s.sub)
	if r := c.Cmd("AUTH LOGIN"); r.Code != 334 || r.Text() != b64("Username:") {
		t.Fatalf("AUTH LOGIN: %s", r)
	}
	if r := c.Cmd(b64("alice@example.test")); r.Code != 334 {
		t.Fatalf("username: %s", r)
	}
	c.Expect(b64("demo-alice"), 235)
	// With an initial response.
	c2 := s.login(t, s.sub)
	c2.Expect("AUTH LOGIN "+b64("bob@example.test"), 334)
	c2.Expect(b64("demo-bob"), 235)
}

func TestImplicitTLSWithoutSNI(t *testing.T) {
	s := startSubmission(t)
	cfg := s.tlsConfig.Clone()
	cfg.ServerName = "" // no SNI: the server must still present its hostname's certificate
	cfg.InsecureSkipVerify = true
	conn, err := tls.Dial("tcp", s.subs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cert := conn.ConnectionState().PeerCertificates[0]
	if err := cert.VerifyHostname(s.hostname); err != nil {
		t.Fatalf("certificate without SNI: %v", err)
	}
	if err := verifyChain(s.tlsConfig, conn.ConnectionState()); err != nil {
		t.Fatalf("not issued by the internal CA: %v", err)
	}
	c := &testenv.Client{T: t, Conn: conn}
	c.R = newReader(conn)
	if r := c.Read(); r.Code != 220 {
		t.Fatalf("greeting over TLS: %s", r)
	}
	ehlo := c.Expect("EHLO client.example.org", 250)
	if strings.Contains(ehlo.Text(), "STARTTLS") {
		t.Errorf("STARTTLS offered inside TLS")
	}
	c.Expect("AUTH PLAIN "+plain("", "bob@example.test", "demo-bob"), 235)
	c.Expect("MAIL FROM:<bob@example.test>", 250)
}

func TestStartTLSWithoutSNI(t *testing.T) {
	s := startSubmission(t)
	c, _ := testenv.Dial(t, s.mx)
	c.Expect("EHLO client.example.org", 250)
	cfg := &tls.Config{InsecureSkipVerify: true}
	st := c.StartTLS(cfg)
	if err := st.PeerCertificates[0].VerifyHostname(s.hostname); err != nil {
		t.Fatalf("STARTTLS without SNI: %v", err)
	}
	if err := verifyChain(s.tlsConfig, *st); err != nil {
		t.Fatalf("not issued by the internal CA: %v", err)
	}
}

func TestAuthFailures(t *testing.T) {
	s := startSubmission(t)
	c := s.login(t, s.sub)
	wrong := c.Cmd("AUTH PLAIN " + plain("", "alice@example.test", "wrong"))
	unknown := c.Cmd("AUTH PLAIN " + plain("", "nobody@example.test", "wrong"))
	if wrong.Code != 535 || unknown.Code != 535 || wrong.Text() != unknown.Text() || !strings.HasPrefix(wrong.Text(), "5.7.8") {
		t.Fatalf("want the same 535 5.7.8: wrong password %s, unknown user %s", wrong, unknown)
	}
	// (That both cost the same bcrypt work is checked in authtable's tests,
	// without a clock.)
	// Third failure closes the session (max_auth_failures 3).
	if r := c.Cmd("AUTH PLAIN " + plain("", "bob@example.test", "wrong")); r.Code != 421 {
		t.Fatalf("third failure: want 421, got %s", r)
	}
	if !c.Closed() {
		t.Fatal("session open after too many AUTH failures")
	}

	// Impersonation through the authorization identity.
	c = s.login(t, s.sub)
	if r := c.Cmd("AUTH PLAIN " + plain("bob@example.test", "alice@example.test", "demo-alice")); r.Code != 535 {
		t.Fatalf("authzid impersonation: %s", r)
	}
	// Same authzid as the login is fine.
	c.Expect("AUTH PLAIN "+plain("alice@example.test", "alice@example.test", "demo-alice"), 235)
}

func TestSenderOwnership(t *testing.T) {
	s := startSubmission(t)
	c := s.login(t, s.sub)
	c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "demo-alice"), 235)
	for _, tc := range []struct {
		from string
		code int
	}{
		{"<bob@example.test>", 553},
		{"<>", 553},
		{"<someone@example.org>", 553},
		{"<postmaster@example.test>", 250}, // alias
		{"<ALICE+lists@example.test>", 250},
	} {
		r := c.Cmd("MAIL FROM:" + tc.from)
		if r.Code != tc.code {
			t.Errorf("MAIL FROM:%s as alice: want %d, got %s", tc.from, tc.code, r)
		}
		c.Cmd("RSET")
	}
}

// TestStartTLSInjection: commands pipelined after STARTTLS in the same
// packet must be thrown away, not run inside the TLS session.
func TestStartTLSInjection(t *testing.T) {
	s := startSubmission(t)
	c, _ := testenv.Dial(t, s.mx)
	c.Expect("EHLO client.example.org", 250)
	c.Send("STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<alice@example.test>\r\n")
	if r := c.Read(); r.Code != 220 {
		t.Fatalf("STARTTLS: %s", r)
	}
	tc := tls.Client(c.Conn, s.tlsConfig)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c.Conn = tc
	c.R = newReader(tc)
	// The first reply inside TLS must be to our EHLO.
	r := c.Cmd("EHLO client.example.org")
	if r.Code != 250 || !strings.HasPrefix(r.Lines[0], "Hello") {
		t.Fatalf("first reply after STARTTLS is not for EHLO: %s", r)
	}
	// And no transaction exists: RCPT needs MAIL first.
	if r := c.Cmd("RCPT TO:<alice@example.test>"); r.Code != 502 && r.Code != 503 {
		t.Fatalf("injected MAIL was executed: RCPT got %s", r)
	}
}

// TestAuthDuringTransaction: AUTH after MAIL is refused, so a sender
// given unauthenticated cannot be relayed with a later login.
func TestAuthDuringTransaction(t *testing.T) {
	s := startSubmission(t)
	c := s.login(t, s.mx) // the MX offers AUTH after STARTTLS
	c.Expect("MAIL FROM:<ceo@bank.example>", 250)
	if r := c.Cmd("AUTH PLAIN " + plain("", "alice@example.test", "demo-alice")); r.Code != 503 {
		t.Fatalf("AUTH in a transaction: want 503, got %s", r)
	}
	if r := c.Cmd("RCPT TO:<someone@example.org>"); r.Code != 554 {
		t.Fatalf("relay after refused AUTH: %s", r)
	}
}

// TestCatchAll: with a catch-all, mail for unknown addresses of the domain
// goes to its account (off: 550 5.1.1); the catch-all account may not send
// as those addresses.
func TestCatchAll(t *testing.T) {
	s := startSubmission(t, func(app map[string]any) {
		app["catch_all"] = map[string]any{"example.test": "bob@example.test"}
	})
	c, _ := testenv.Dial(t, s.mx)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "nobody-here@example.test")
	c.Send("Subject: to anyone\r\n\r\nhi\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatal(r)
	}
	if n := len(testenv.Maildir(t, s.env.Path("maildir"), "example.test", "bob")); n != 1 {
		t.Fatalf("catch-all account got %d messages", n)
	}
	if n := len(testenv.Maildir(t, s.env.Path("maildir"), "example.test", "alice")); n != 0 {
		t.Fatalf("alice got %d messages", n)
	}
	sub := s.login(t, s.sub)
	sub.Expect("AUTH PLAIN "+plain("", "bob@example.test", "demo-bob"), 235)
	if r := sub.Cmd("MAIL FROM:<nobody-here@example.test>"); r.Code != 553 {
		t.Fatalf("catch-all account sending as an address it only catches: %s", r)
	}
	sub.Expect("MAIL FROM:<bob@example.test>", 250)
}
