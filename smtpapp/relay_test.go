package smtpapp_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/queue"
)

// relaySetup: the submission servers of startSubmission, an MX open to a
// trusted network, the queue as outbound target, a test DNS that sends
// example.org's mail to a real SMTP server on 127.0.0.2.
type relaySetup struct {
	*submissionSetup
	remote  *testenv.MX
	trusted string // a server that trusts 127.0.0.1/32
	queue   string // the queue's spool folder
}

func startRelay(t *testing.T, mods ...func(app map[string]any)) *relaySetup {
	dns := testenv.StartDNS(t)
	mxs, port := testenv.StartMXs(t, []string{"127.0.0.2"}, testenv.MXOptions{Host: "mx.example.org"})
	dns.Add(t, "example.org. 60 IN MX 10 mx.example.org.", "mx.example.org. 60 IN A 127.0.0.2")
	r := &relaySetup{remote: mxs[0], queue: t.TempDir()}
	r.trusted = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	r.submissionSetup = startSubmission(t, func(app map[string]any) {
		app["resolver"] = map[string]any{"servers": []string{dns.Addr}}
		app["outbound"] = map[string]any{
			"target": "queue", "path": r.queue, "remote_port": port,
			"allow_private_destinations": true, // the test MX is on loopback
			"dkim":                       map[string]any{"disable": true},
			"retry":                      map[string]any{"initial": "100ms", "max": "200ms"},
		}
		app["servers"].(map[string]any)["relay"] = map[string]any{
			"listen": []string{r.trusted}, "hostname": "mail.example.test",
			"tls": map[string]any{"disable_starttls": true}, "trusted_networks": []string{"127.0.0.1/32"},
		}
		for _, m := range mods {
			m(app)
		}
	})
	return r
}

func sendTo(t *testing.T, c *testenv.Client, from, to, subject string) {
	t.Helper()
	c.StartMessage(""+from+"", ""+to+"")
	c.Send("Subject: " + subject + "\r\n\r\nhello\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
}

func (r *relaySetup) waitRemote(t *testing.T, n int) []testenv.MXMessage {
	t.Helper()
	if !r.remote.WaitMessages(n, 15*time.Second) {
		t.Fatalf("remote MX got %d messages, want %d", len(r.remote.Messages()), n)
	}
	return r.remote.Messages()
}

// TestAuthenticatedRelay: a logged-in user sends to another domain; the
// message goes through the queue to that domain's MX; local recipients of
// the same message are delivered locally at once.
func TestAuthenticatedRelay(t *testing.T) {
	r := startRelay(t)
	c := r.login(t, r.sub)
	c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "demo-alice"), 235)
	c.StartMessage("alice@example.test", "someone@example.org", "bob@example.test")
	c.Send("Subject: out and in\r\n\r\nhello\r\n.\r\n")
	if resp := c.Read(); resp.Code != 250 {
		t.Fatalf("DATA: %s", resp)
	}
	if n := len(testenv.Maildir(t, r.env.Path("maildir"), "example.test", "bob")); n != 1 {
		t.Fatalf("bob (local): %d messages at once after 250", n)
	}
	msgs := r.waitRemote(t, 1)
	if msgs[0].From != "alice@example.test" || strings.Join(msgs[0].To, ",") != "someone@example.org" {
		t.Fatalf("remote got from %s to %v", msgs[0].From, msgs[0].To)
	}
	if !strings.Contains(string(msgs[0].Data), "Subject: out and in") {
		t.Fatalf("remote message: %s", msgs[0].Data)
	}
}

// TestTrustedNetworkRelay: a listed network relays without AUTH; the same
// client on a server without the list (loopback is not trusted by
// default) is refused, even with an outbound target configured.
func TestTrustedNetworkRelay(t *testing.T) {
	r := startRelay(t)
	c, _ := testenv.Dial(t, r.trusted)
	c.Expect("EHLO app.internal", 250)
	sendTo(t, c, "app@example.test", "someone@example.org", "from a trusted network")
	r.waitRemote(t, 1)

	u, _ := testenv.Dial(t, r.mx)
	u.Expect("EHLO client.example.org", 250)
	u.Expect("MAIL FROM:<app@example.org>", 250)
	if resp := u.Cmd("RCPT TO:<someone@example.org>"); resp.Code != 554 || !strings.HasPrefix(resp.Text(), "5.7.1") {
		t.Fatalf("untrusted loopback client relaying: %s", resp)
	}
	// The submission port needs AUTH even from a trusted address.
	s, _ := testenv.Dial(t, r.sub)
	s.Expect("EHLO client.example.org", 250)
	if resp := s.Cmd("MAIL FROM:<app@example.test>"); resp.Code != 530 {
		t.Fatalf("submission without AUTH: %s", resp)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(r.remote.Messages()); n != 1 {
		t.Fatalf("remote MX got %d messages, want only the trusted one", n)
	}
}

// TestOutboundFailureLeavesNoLocalCopy: when the queue cannot take a
// message for its remote recipients, its local recipients do not get it
// either (the client is told 451 and will retry: no duplicates).
func TestOutboundFailureLeavesNoLocalCopy(t *testing.T) {
	r := startRelay(t)
	// Break the spool: its tmp folder becomes a file.
	if err := os.RemoveAll(filepath.Join(r.queue, "tmp")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(r.queue, "tmp"), []byte("in the way"), 0o600)
	c := r.login(t, r.sub)
	c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "demo-alice"), 235)
	c.StartMessage("alice@example.test", "bob@example.test", "someone@example.org")
	c.Send("Subject: both\r\n\r\nhello\r\n.\r\n")
	if resp := c.Read(); resp.Code != 451 {
		t.Fatalf("outbound failing: want 451, got %s", resp)
	}
	if n := len(testenv.Maildir(t, r.env.Path("maildir"), "example.test", "bob")); n != 0 {
		t.Fatalf("bob got %d copies of a message the client was told to retry", n)
	}
}

// TestRequireTLS: REQUIRETLS (RFC 8689) is offered only under TLS and
// refused without it; a message that carries it is never relayed to an MX
// that no DANE or MTA-STS policy validates (the test MX has none), while
// the same message without it is.
func TestRequireTLS(t *testing.T) {
	r := startRelay(t)
	plainMX, _ := testenv.Dial(t, r.mx)
	if resp := plainMX.Cmd("EHLO client.example.org"); strings.Contains(resp.Text(), "REQUIRETLS") {
		t.Fatalf("REQUIRETLS offered without TLS: %s", resp)
	}
	if resp := plainMX.Cmd("MAIL FROM:<someone@example.org> REQUIRETLS"); resp.Code != 530 || !strings.HasPrefix(resp.Text(), "5.7.10") {
		t.Fatalf("REQUIRETLS without TLS: %s", resp)
	}
	c := r.login(t, r.sub)
	if resp := c.Cmd("EHLO client.example.org"); !strings.Contains(resp.Text(), "REQUIRETLS") {
		t.Fatalf("REQUIRETLS not offered under TLS: %s", resp)
	}
	c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "demo-alice"), 235)
	c.Expect("MAIL FROM:<alice@example.test> REQUIRETLS", 250)
	c.Expect("RCPT TO:<someone@example.org>", 250)
	c.Expect("DATA", 354)
	c.Send("Subject: must be private\r\n\r\nhello\r\n.\r\n")
	if resp := c.Read(); resp.Code != 250 {
		t.Fatal(resp)
	}
	sendTo(t, c, "alice@example.test", "someone@example.org", "may be plain")
	msgs := r.waitRemote(t, 1)
	time.Sleep(500 * time.Millisecond)
	for _, m := range r.remote.Messages() {
		if strings.Contains(string(m.Data), "must be private") {
			t.Fatal("a REQUIRETLS message was relayed without validated TLS")
		}
	}
	if !strings.Contains(string(msgs[0].Data), "may be plain") {
		t.Fatalf("remote got %s", msgs[0].Data)
	}
}
