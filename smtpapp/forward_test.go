package smtpapp_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// startForwarding is startRelay with forwarding addresses: fwd forwards
// out, mixed to local and remote targets, refused to an address the test
// MX refuses, loop1 and loop2 to each other.
func startForwarding(t *testing.T) *relaySetup {
	return startRelay(t, func(app map[string]any) {
		app["accounts"].(map[string]any)["forwarding"] = []any{
			map[string]any{"address": "fwd@example.test", "to": []string{"someone@example.org"}},
			map[string]any{"address": "mixed@example.test", "to": []string{"bob@example.test", "someone@example.org", "postmaster@example.test", "alice@example.test", "next@example.test"}},
			map[string]any{"address": "next@example.test", "to": []string{"someone@example.org", "other@example.org"}},
			map[string]any{"address": "refused@example.test", "to": []string{"nobody@example.org"}},
			map[string]any{"address": "loop1@example.test", "to": []string{"loop2@example.test"}},
			map[string]any{"address": "loop2@example.test", "to": []string{"bob@example.test", "loop1@example.test"}},
		}
	})
}

var srsAddr = regexp.MustCompile(`^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=example\.org=orig@example\.test$`)

// TestForwardRemoteWithSRS: an unauthenticated client's message to an
// address that forwards out reaches the remote MX with an SRS sender in
// the forwarding domain; a bounce to that address comes back through the
// MX and reaches the original sender; a forged SRS address is refused.
func TestForwardRemoteWithSRS(t *testing.T) {
	r := startForwarding(t)
	c, _ := testenv.Dial(t, r.mx)
	c.Expect("EHLO client.example.org", 250)
	sendTo(t, c, "orig@example.org", "fwd@example.test", "forward me")
	msgs := r.waitRemote(t, 1)
	m := msgs[0]
	if !srsAddr.MatchString(m.From) || strings.Join(m.To, ",") != "someone@example.org" {
		t.Fatalf("forwarded copy: from %q to %v", m.From, m.To)
	}
	// The secret was made on first use, in Caddy's storage.
	if secret, err := os.ReadFile(r.env.Path("caddy", "smtp", "srs", "secret")); err != nil || len(strings.TrimSpace(string(secret))) < 32 {
		t.Fatalf("SRS secret in storage: %q, %v", secret, err)
	}
	if !strings.Contains(string(m.Data), "Delivered-To: fwd@example.test\r\n") || !strings.Contains(string(m.Data), "Subject: forward me") {
		t.Fatalf("forwarded copy:\n%s", m.Data)
	}

	// The remote end bounces to the SRS address: accepted without AUTH
	// (null sender only), sent on to the original sender.
	b, _ := testenv.Dial(t, r.mx)
	b.Expect("EHLO mx.example.org", 250)
	b.Expect("MAIL FROM:<someone@example.org>", 250)
	if resp := b.Cmd("RCPT TO:<" + m.From + ">"); resp.Code != 550 || !strings.HasPrefix(resp.Text(), "5.7.1") {
		t.Fatalf("SRS address with a non-null sender: %s", resp)
	}
	b.Expect("RSET", 250)
	b.Expect("MAIL FROM:<>", 250)
	// The hash is checked without regard to case.
	b.Expect("RCPT TO:<"+strings.ToLower(m.From)+">", 250)
	b.Expect("DATA", 354)
	b.Send("Subject: Undelivered Mail Returned to Sender\r\n\r\nsorry\r\n.\r\n")
	if resp := b.Read(); resp.Code != 250 {
		t.Fatalf("bounce to the SRS address: %s", resp)
	}
	msgs = r.waitRemote(t, 2)
	if msgs[1].From != "" || strings.Join(msgs[1].To, ",") != "orig@example.org" || !strings.Contains(string(msgs[1].Data), "Returned to Sender") {
		t.Fatalf("bounce relayed from %q to %v", msgs[1].From, msgs[1].To)
	}

	// Forged, tampered or plain garbage in SRS form: unknown recipient.
	b.Expect("MAIL FROM:<>", 250)
	local := strings.TrimSuffix(m.From, "@example.test")
	for _, forged := range []string{
		"SRS0=AAAA=" + local[10:] + "@example.test",
		strings.Replace(local, "=orig", "=victim", 1) + "@example.test",
		"SRS0=xxxx@example.test",
		"SRS1=AAAA=example.org==AAAA=AA=example.net=x@example.test",
	} {
		if resp := b.Cmd("RCPT TO:<" + forged + ">"); resp.Code != 550 || !strings.HasPrefix(resp.Text(), "5.1.1") {
			t.Fatalf("forged SRS address %s: %s", forged, resp)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(r.remote.Messages()); n != 2 {
		t.Fatalf("remote MX got %d messages, want 2", n)
	}
}

// TestForwardRefusedBounces: the forward target refuses the message; the
// queue's bounce goes to the SRS sender, which the queue turns back into
// the original sender.
func TestForwardRefusedBounces(t *testing.T) {
	r := startForwarding(t)
	r.remote.RcptReplies("nobody@example.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	c, _ := testenv.Dial(t, r.mx)
	c.Expect("EHLO client.example.org", 250)
	sendTo(t, c, "orig@example.org", "refused@example.test", "will bounce")
	msgs := r.waitRemote(t, 1)
	if msgs[0].From != "" || strings.Join(msgs[0].To, ",") != "orig@example.org" {
		t.Fatalf("bounce from %q to %v", msgs[0].From, msgs[0].To)
	}
	if !strings.Contains(string(msgs[0].Data), "nobody@example.org") {
		t.Fatalf("bounce does not name the refused target:\n%s", msgs[0].Data)
	}
}

// TestForwardMixedTargets: one alias with local and remote targets (one
// of them through another forwarding address, an alias and its account,
// and a recipient also given on its own): each target gets one copy;
// the local copies keep the original sender, the remote ones share one
// envelope with the SRS sender.
func TestForwardMixedTargets(t *testing.T) {
	r := startForwarding(t)
	c, _ := testenv.Dial(t, r.mx)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("orig@example.org", "mixed@example.test", "bob@example.test", "fwd@example.test")
	c.Send("Subject: to everyone\r\n\r\nhello\r\n.\r\n")
	if resp := c.Read(); resp.Code != 250 {
		t.Fatalf("DATA: %s", resp)
	}
	for _, who := range []string{"bob", "alice"} {
		files := testenv.Maildir(t, r.env.Path("maildir"), "example.test", who)
		if len(files) != 1 {
			t.Fatalf("%s got %d copies", who, len(files))
		}
		data, _ := os.ReadFile(files[0])
		if !strings.HasPrefix(string(data), "Return-Path: <orig@example.org>") {
			t.Fatalf("%s's copy:\n%s", who, data)
		}
	}
	r.waitRemote(t, 2)
	time.Sleep(300 * time.Millisecond)
	count := r.remote.Count()
	if len(count) != 2 || count["someone@example.org"] != 1 || count["other@example.org"] != 1 {
		t.Fatalf("remote copies: %v", count)
	}
	for _, m := range r.remote.Messages() {
		if !strings.HasPrefix(m.From, "SRS0=") || !strings.HasSuffix(m.From, "=example.org=orig@example.test") {
			t.Fatalf("remote copy from %q", m.From)
		}
	}
}

// TestForwardLoops: an expansion that comes back to itself is refused at
// RCPT; a message that already went out through a forwarding address
// (our Delivered-To) is refused when it comes back to it.
func TestForwardLoops(t *testing.T) {
	r := startForwarding(t)
	c, _ := testenv.Dial(t, r.mx)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<orig@example.org>", 250)
	if resp := c.Cmd("RCPT TO:<loop1@example.test>"); resp.Code != 554 || !strings.HasPrefix(resp.Text(), "5.4.6") {
		t.Fatalf("forwarding loop at RCPT: %s", resp)
	}
	c.Expect("RCPT TO:<fwd@example.test>", 250)
	c.Expect("DATA", 354)
	c.Send("Delivered-To: fwd@example.test\r\nSubject: came back\r\n\r\nhello\r\n.\r\n")
	if resp := c.Read(); resp.Code != 554 || !strings.HasPrefix(resp.Text(), "5.4.6") {
		t.Fatalf("message that came back: %s", resp)
	}
	// Another address's Delivered-To is no loop.
	c.StartMessage("orig@example.org", "fwd@example.test")
	c.Send("Delivered-To: someone@elsewhere.test\r\nSubject: fine\r\n\r\nhello\r\n.\r\n")
	if resp := c.Read(); resp.Code != 250 {
		t.Fatalf("message with a foreign Delivered-To: %s", resp)
	}
	msgs := r.waitRemote(t, 1)
	time.Sleep(300 * time.Millisecond)
	if len(r.remote.Messages()) != 1 || !strings.Contains(string(msgs[0].Data), "Subject: fine") {
		t.Fatalf("remote got %d messages", len(r.remote.Messages()))
	}
}
