package dovecot

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
)

func authPlain(user, pass string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))
}

// TestSubmissionWithDovecot: a real Caddy with a submission server and
// an MX whose accounts are a real Dovecot's. alice logs in with her
// Dovecot password, a wrong one gets 535, recipients are looked up in
// Dovecot's userdb, and a stopped Dovecot gives temporary failures.
func TestSubmissionWithDovecot(t *testing.T) {
	dv := startDovecot(t, "auth_verbose = yes\n", dovecotUsers)
	env := testenv.New(t)
	sub := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	mx := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	app := map[string]any{
		"local_domains":  []string{"example.test"},
		"accounts":       map[string]any{"provider": "dovecot", "auth": dv.authSock, "userdb": "unix/" + dv.userdbSock, "timeout": "3s"},
		"local_delivery": map[string]any{"target": "maildir", "root": env.Path("maildir")},
		"spool_dir":      env.Path("spool"),
		"servers": map[string]any{
			"submission": map[string]any{
				"listen": []string{sub}, "hostname": "mail.example.test", "require_auth": true,
				"tls": map[string]any{"issuer": "internal"},
			},
			"mx": map[string]any{"listen": []string{mx}, "hostname": "mail.example.test"},
		},
	}
	env.Load(env.Config(app, nil))
	if !testenv.WaitFor(10*time.Second, func() bool {
		_, err := os.Stat(env.Path("caddy", "pki", "authorities", "local", "root.crt"))
		return err == nil
	}) {
		t.Fatal("no internal CA")
	}
	cfg := &tls.Config{RootCAs: env.RootCAs(), ServerName: "mail.example.test"}
	testenv.WaitForCertificate(t, sub, cfg)
	login := func() *testenv.Client {
		c, _ := testenv.Dial(t, sub)
		c.Expect("EHLO client.example.org", 250)
		c.StartTLS(cfg)
		c.Expect("EHLO client.example.org", 250)
		return c
	}

	// alice logs in and sends to a Dovecot user; an unknown one is 550.
	c := login()
	c.Expect(authPlain("alice@example.test", "alice-dovecot-pw"), 235)
	c.Expect("MAIL FROM:<alice@example.test>", 250)
	c.Expect("RCPT TO:<bob@example.test>", 250)
	c.Expect("RCPT TO:<bob+lists@example.test>", 250)
	if r := c.Cmd("RCPT TO:<zed@example.test>"); r.Code != 550 || !strings.HasPrefix(r.Text(), "5.1.1") {
		t.Fatalf("unknown recipient: want 550 5.1.1, got %s", r)
	}
	c.Expect("DATA", 354)
	c.Expect("Subject: hi\r\n\r\nfrom alice\r\n.", 250)
	if got := testenv.Maildir(t, env.Path("maildir"), "example.test", "bob"); len(got) != 1 {
		t.Fatalf("bob's maildir has %d messages", len(got))
	}
	// She may not send as bob: Dovecot names both accounts the same way.
	if r := c.Cmd("MAIL FROM:<bob@example.test>"); r.Code/100 != 5 {
		t.Fatalf("alice sending as bob: %s", r)
	}
	c.Cmd("QUIT")

	// The MX looks recipients up in the userdb too.
	m, _ := testenv.Dial(t, mx)
	m.Expect("EHLO remote.example.org", 250)
	m.Expect("MAIL FROM:<someone@example.org>", 250)
	m.Expect("RCPT TO:<alice@example.test>", 250)
	if r := m.Cmd("RCPT TO:<zed@example.test>"); r.Code != 550 || !strings.HasPrefix(r.Text(), "5.1.1") {
		t.Fatalf("MX, unknown recipient: want 550 5.1.1, got %s", r)
	}

	// A wrong password is 535, and Dovecot saw the client's address.
	c = login()
	if r := c.Cmd(authPlain("alice@example.test", "wrong")); r.Code != 535 {
		t.Fatalf("wrong password: want 535, got %s", r)
	}
	c.Cmd("QUIT")
	logged, _ := os.ReadFile(filepath.Join(dv.dir, "dovecot.log"))
	if !strings.Contains(string(logged), "(alice@example.test,127.0.0.1)") {
		t.Errorf("Dovecot's log does not show the SMTP client's address:\n%s", logged)
	}

	// Dovecot stopped: AUTH is a temporary failure, never "wrong
	// password", and so is a recipient lookup.
	dv.stop(t)
	c = login()
	if r := c.Cmd(authPlain("alice@example.test", "alice-dovecot-pw")); r.Code != 454 || !strings.HasPrefix(r.Text(), "4.7.0") {
		t.Fatalf("Dovecot stopped: want 454 4.7.0, got %s", r)
	}
	if r := m.Cmd("RCPT TO:<bob@example.test>"); r.Code != 451 || !strings.HasPrefix(r.Text(), "4.3.0") {
		t.Fatalf("Dovecot stopped, RCPT: want 451 4.3.0, got %s", r)
	}
}
