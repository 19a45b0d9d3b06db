package smtpapp_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// TestForgedAuthResultsVariants: the header-only message and the obsolete
// "name :" syntax lose their forged results too.
func TestForgedAuthResultsVariants(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	for i, data := range []string{
		"Subject: x\r\nAuthentication-Results: mail.example.test; dmarc=pass header.from=bank.example\r\n",
		"Authentication-Results : mail.example.test; dmarc=pass header.from=bank.example\r\nSubject: y\r\n\r\nbody\r\n",
		"Authentication-Results: (trust me)\r\n mail.example.test; dmarc=pass header.from=bank.example\r\nSubject: z\r\n\r\nbody\r\n",
	} {
		c.StartMessage("sender@example.org", "alice@example.test")
		c.Send(data + ".\r\n")
		if r := c.Read(); r.Code != 250 {
			t.Fatalf("message %d: %s", i, r)
		}
	}
	for _, f := range aliceMail(t, env) {
		got, _ := os.ReadFile(f)
		if strings.Contains(string(got), "bank.example") {
			t.Fatalf("forged result kept:\n%s", got)
		}
	}
}

// TestHeloInReceived: a HELO that is not a host name cannot forge the
// Received trace.
func TestHeloInReceived(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO x\t([192.0.2.1])\tby\tmail.bank.example", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: x\r\n\r\nx\r\n.\r\n")
	c.Read()
	files := aliceMail(t, env)
	if len(files) != 1 {
		t.Fatal("not stored")
	}
	got, _ := os.ReadFile(files[0])
	if strings.Contains(string(got), "by\tmail.bank") || strings.Contains(string(got), "([192.0.2.1])") {
		t.Fatalf("HELO forged the trace:\n%s", got)
	}
	if !strings.Contains(string(got), "Received: from [127.0.0.1] (helo=") {
		t.Fatalf("Received: %s", got)
	}
}

// TestForgedAuthResultsRemoved: Authentication-Results fields that claim
// this server's authserv-id are dropped (RFC 8601 5); others stay.
func TestForgedAuthResultsRemoved(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Authentication-Results: MAIL.example.test;\r\n\tdkim=pass header.d=bank.example\r\n" +
		"Authentication-Results: relay.example.org; spf=pass\r\n" +
		"Subject: forged\r\n\r\nAuthentication-Results: mail.example.test; body text stays\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	files := aliceMail(t, env)
	if len(files) != 1 {
		t.Fatalf("want 1 message, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	if strings.Contains(string(got), "bank.example") {
		t.Fatalf("forged Authentication-Results kept:\n%s", got)
	}
	if !bytes.HasSuffix(got, []byte("Authentication-Results: relay.example.org; spf=pass\r\nSubject: forged\r\n\r\nAuthentication-Results: mail.example.test; body text stays\r\n")) {
		t.Fatalf("other fields or the body changed:\n%q", got)
	}
}

func TestMailLoopRefused(t *testing.T) {
	env, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"max_hops": 3}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	send := func(hops int) testenv.Reply {
		c.StartMessage("sender@example.org", "alice@example.test")
		c.Send(strings.Repeat("Received: from a by b; Fri, 27 Nov 2026 20:00:00 +0000\r\n", hops) + "Subject: loop\r\n\r\nx\r\n.\r\n")
		return c.Read()
	}
	if r := send(3); r.Code != 250 {
		t.Fatalf("3 hops: %s", r)
	}
	if r := send(4); r.Code != 554 || !strings.HasPrefix(r.Text(), "5.4.6") {
		t.Fatalf("4 hops: want 554 5.4.6, got %s", r)
	}
	if n := len(aliceMail(t, env)); n != 1 {
		t.Fatalf("want only the 3-hop message stored, got %d", n)
	}
}
