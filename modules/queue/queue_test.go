package queue_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// A message to two domains: one transaction per domain, each carrying its
// domain's recipients, and two valid DKIM signatures of the local sender's
// domain (the default: Ed25519, RFC 8463, and RSA), verified by go-msgauth
// against the records of `caddy smtp-dkim` served by the test DNS.
func TestDeliverSignedToTwoDomains(t *testing.T) {
	h := newHarness(t)
	h.queue["dkim"] = map[string]any{"selector": "s2026"}
	h.load()
	recs := h.publishDKIM()
	if len(recs) != 2 || recs[0].Name != "s2026-ed25519._domainkey.example.test" || !strings.Contains(recs[0].Value, "k=ed25519") ||
		recs[0].Algorithm != "ed25519" || recs[1].Name != "s2026._domainkey.example.test" || !strings.Contains(recs[1].Value, "k=rsa") ||
		recs[1].Algorithm != "rsa" {
		t.Fatalf("DKIM records: %+v", recs)
	}
	body := message("two domains", "bob@example.org", "carol@example.org", "dave@example.net")
	id := h.send("alice@example.test", []string{"bob@example.org", "carol@example.org", "dave@example.net"}, body)
	if id == "" {
		t.Fatal("no queue id in the reply")
	}
	mx1, mx2 := h.mx["127.0.0.2"], h.mx["127.0.0.3"]
	if !mx1.WaitMessages(1, 10*time.Second) || !mx2.WaitMessages(1, 10*time.Second) {
		t.Fatalf("not delivered: mx1 %d, mx2 %d messages", len(mx1.Messages()), len(mx2.Messages()))
	}
	h.waitEmpty(5 * time.Second)
	m1, m2 := mx1.Messages(), mx2.Messages()
	if len(m1) != 1 || len(m2) != 1 {
		t.Fatalf("want one transaction per domain, got %d and %d", len(m1), len(m2))
	}
	if got := m1[0].To; !slices.Equal(got, []string{"bob@example.org", "carol@example.org"}) {
		t.Errorf("example.org transaction recipients: %v", got)
	}
	if got := m2[0].To; !slices.Equal(got, []string{"dave@example.net"}) {
		t.Errorf("example.net transaction recipients: %v", got)
	}
	for _, m := range []testenv.MXMessage{m1[0], m2[0]} {
		if m.From != "alice@example.test" {
			t.Errorf("reverse path %q", m.From)
		}
		if m.Helo != "mail.example.test" {
			t.Errorf("EHLO name %q, want the server's hostname", m.Helo)
		}
		if !bytes.HasPrefix(m.Data, []byte("DKIM-Signature: ")) {
			t.Errorf("message does not start with a DKIM-Signature:\n%s", m.Data)
		}
		// Sent as "..a line" (dot-stuffed), stored and relayed as ".a line".
		if !bytes.Contains(m.Data, []byte("\r\n.a line with a leading dot\r\n")) {
			t.Errorf("body changed (dot-stuffing?):\n%q", m.Data)
		}
		if !bytes.HasSuffix(m.Data, []byte("\r\nbye\r\n")) {
			t.Errorf("body end changed:\n%q", m.Data)
		}
		if got := h.verifyDKIM(m.Data); !slices.Equal(got, []string{"example.test", "example.test"}) {
			t.Errorf("valid DKIM signatures: %v, want two of example.test", got)
		}
		if !bytes.Contains(m.Data, []byte("a=ed25519-sha256;")) || !bytes.Contains(m.Data, []byte("a=rsa-sha256;")) {
			t.Errorf("want an Ed25519 and an RSA signature:\n%s", m.Data)
		}
	}
}

// algorithms ed25519: one Ed25519 signature (no RSA cost), under the
// selector <selector>-ed25519, and only its record to publish.
func TestDKIMEd25519Only(t *testing.T) {
	h := newHarness(t, "127.0.0.2")
	h.queue["dkim"] = map[string]any{"algorithms": []string{"ed25519"}}
	h.load()
	recs := h.publishDKIM()
	if len(recs) != 1 || recs[0].Name != "caddysmtp-ed25519._domainkey.example.test" || recs[0].Algorithm != "ed25519" {
		t.Fatalf("DKIM records: %+v", recs)
	}
	h.send("alice@example.test", []string{"bob@example.org"}, message("ed25519 only", "bob@example.org"))
	mx := h.mx["127.0.0.2"]
	if !mx.WaitMessages(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	data := mx.Messages()[0].Data
	if got := h.verifyDKIM(data); !slices.Equal(got, []string{"example.test"}) {
		t.Errorf("valid DKIM signatures: %v, want one of example.test", got)
	}
	if n := bytes.Count(data, []byte("DKIM-Signature:")); n != 1 || !bytes.Contains(data, []byte("a=ed25519-sha256;")) {
		t.Errorf("want one Ed25519 signature, got %d:\n%s", n, data)
	}
}

// 4xx for a recipient: retried alone until accepted. 5xx for one of two:
// that one bounces (a DSN in the local sender's Maildir), the other is
// delivered once.
func TestTempAndPermFailures(t *testing.T) {
	h := newHarness(t)
	h.load()
	mx := h.mx["127.0.0.2"]
	tempFail := &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "mailbox busy, try later"}
	mx.RcptReplies("bob@example.org", tempFail, tempFail)
	mx.RcptReplies("nobody@example.org", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"})

	start := time.Now()
	h.send("alice@example.test", []string{"bob@example.org", "carol@example.org", "nobody@example.org"},
		message("partial failure", "bob@example.org", "carol@example.org", "nobody@example.org"))
	h.waitEmpty(10 * time.Second)
	counts := mx.Count()
	if counts["carol@example.org"] != 1 || counts["bob@example.org"] != 1 || counts["nobody@example.org"] != 0 {
		t.Fatalf("deliveries per recipient: %v", counts)
	}
	msgs := mx.Messages()
	if len(msgs) != 2 || !slices.Equal(msgs[0].To, []string{"carol@example.org"}) || !slices.Equal(msgs[1].To, []string{"bob@example.org"}) {
		t.Fatalf("want carol first, then bob alone on a retry; got %+v", msgs)
	}
	// Two temporary failures: retries after 200ms and 400ms.
	if d := msgs[1].At.Sub(start); d < 550*time.Millisecond {
		t.Errorf("bob delivered after %v: retries came too early", d)
	}

	var bounces [][]byte
	testenv.WaitFor(5*time.Second, func() bool { bounces = h.aliceMail(); return len(bounces) > 0 })
	if len(bounces) != 1 {
		t.Fatalf("want 1 bounce in alice's Maildir, got %d", len(bounces))
	}
	b := string(bounces[0])
	for _, want := range []string{
		"Return-Path: <>\r\n",
		"From: Mail Delivery System <MAILER-DAEMON@mail.example.test>",
		"Content-Type: multipart/report; report-type=delivery-status;",
		"Content-Type: message/delivery-status",
		"Reporting-MTA: dns; mail.example.test",
		"Final-Recipient: rfc822; nobody@example.org",
		"Action: failed",
		"Status: 5.1.1",
		"Remote-MTA: dns; mx1.example.org",
		"Diagnostic-Code: smtp; 550 5.1.1 no such user here",
		"Content-Type: text/rfc822-headers",
		"Subject: partial failure",
		"Message-ID: <partial-failure@example.test>",
	} {
		if !strings.Contains(b, want) {
			t.Errorf("bounce lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(b, "carol@example.org\r\nAction") || strings.Contains(b, "rfc822; bob@") {
		t.Errorf("bounce names delivered recipients:\n%s", b)
	}
	if strings.Contains(b, "a line with a leading dot") {
		t.Errorf("bounce carries the original body, want only the header:\n%s", b)
	}
}

// The MX is down past the give-up age: a delay warning, then a bounce with
// the original header reach the sender's Maildir; mail from the null
// sender is dropped without a bounce.
func TestGiveUpBounce(t *testing.T) {
	h := newHarness(t)
	h.mx["127.0.0.2"].Close()
	h.queue["retry"] = map[string]any{"initial": "150ms", "max": "300ms", "jitter": -1, "give_up": "1500ms", "warn_after": "500ms"}
	h.load()
	start := time.Now()
	h.send("alice@example.test", []string{"bob@example.org"}, message("down for good", "bob@example.org"))
	h.send("", []string{"bob@example.org"}, message("from the null sender", "bob@example.org"))

	var mail [][]byte
	if !testenv.WaitFor(10*time.Second, func() bool { mail = h.aliceMail(); return len(mail) >= 2 }) {
		t.Fatalf("want a delay warning and a bounce, got %d messages", len(mail))
	}
	h.waitEmpty(5 * time.Second)
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("gave up after %v, before give_up", d)
	}
	time.Sleep(300 * time.Millisecond)
	mail = h.aliceMail()
	if len(mail) != 2 {
		t.Fatalf("want exactly 2 notifications (none for the null sender), got %d", len(mail))
	}
	var warning, bounce string
	for _, m := range mail {
		if strings.Contains(string(m), "Action: delayed") {
			warning = string(m)
		} else {
			bounce = string(m)
		}
	}
	for _, want := range []string{"Subject: Delayed Mail (still being retried)", "Final-Recipient: rfc822; bob@example.org", "Will-Retry-Until: ", "Subject: down for good"} {
		if !strings.Contains(warning, want) {
			t.Errorf("delay warning lacks %q:\n%s", want, warning)
		}
	}
	for _, want := range []string{
		"Subject: Undelivered Mail Returned to Sender",
		"Final-Recipient: rfc822; bob@example.org",
		"Action: failed",
		"Status: 4.4.1",
		"connection refused",
		"gave up",
		"Content-Type: text/rfc822-headers",
		"Subject: down for good",
		"Message-ID: <down-for-good@example.test>",
		"From: Alice <alice@example.test>",
		"DKIM-Signature: ",
	} {
		if !strings.Contains(bounce, want) {
			t.Errorf("bounce lacks %q:\n%s", want, bounce)
		}
	}
	if strings.Contains(bounce, "null sender") {
		t.Errorf("a bounce was made for the null sender's message:\n%s", bounce)
	}
}

// MX preference order with fallback to the next host, the implicit MX (an A
// record, RFC 5321 5.1), null MX (RFC 7505) and a domain that does not
// exist.
func TestMXSelection(t *testing.T) {
	h := newHarness(t, "127.0.0.2", "127.0.0.3", "127.0.0.5")
	h.mx["127.0.0.5"].Close() // the preferred MX of example.com is down
	h.dns.Add(t,
		"example.com. 300 IN MX 20 backup.example.com.",
		"example.com. 300 IN MX 10 primary.example.com.",
		"primary.example.com. 300 IN A 127.0.0.5",
		"backup.example.com. 300 IN A 127.0.0.3",
		"a-only.example. 300 IN A 127.0.0.2",
		"nullmx.example. 300 IN MX 0 .",
	)
	h.load()
	h.send("alice@example.test", []string{"x@example.com", "y@a-only.example", "z@nullmx.example", "w@nxdomain.example"},
		message("mx selection", "x@example.com"))
	h.waitEmpty(10 * time.Second)
	if c := h.mx["127.0.0.3"].Count(); c["x@example.com"] != 1 {
		t.Errorf("example.com: the backup MX got %v", c)
	}
	if c := h.mx["127.0.0.2"].Count(); c["y@a-only.example"] != 1 {
		t.Errorf("a-only.example: the A record host got %v", c)
	}
	var bounces [][]byte
	testenv.WaitFor(5*time.Second, func() bool { bounces = h.aliceMail(); return len(bounces) >= 2 })
	all := ""
	for _, b := range bounces {
		all += string(b)
	}
	for _, want := range []string{"Final-Recipient: rfc822; z@nullmx.example", "Status: 5.1.10",
		"Final-Recipient: rfc822; w@nxdomain.example", "Status: 5.1.2"} {
		if !strings.Contains(all, want) {
			t.Errorf("bounces lack %q:\n%s", want, all)
		}
	}
}

// Opportunistic STARTTLS with an untrusted certificate; verify mode with
// the right roots; verify mode without them defers.
func TestSTARTTLS(t *testing.T) {
	h := newHarness(t, "127.0.0.2")
	h.mx["127.0.0.2"].Close()
	tlsCfg, caPEM := testenv.SelfSignedTLS(t, "mx1.example.org")
	mx := testenv.StartMX(t, fmt.Sprintf("127.0.0.2:%d", h.port), testenv.MXOptions{TLS: tlsCfg})
	caFile := h.env.Path("ca.pem")
	os.WriteFile(caFile, caPEM, 0o600)

	h.load()
	h.send("alice@example.test", []string{"bob@example.org"}, message("opportunistic", "bob@example.org"))
	if !mx.WaitMessages(1, 10*time.Second) {
		t.Fatal("not delivered with opportunistic TLS")
	}
	if !mx.Messages()[0].TLS {
		t.Error("delivered without TLS though the MX offers STARTTLS")
	}

	h.queue["tls"] = map[string]any{"verify": true}
	h.load()
	h.send("alice@example.test", []string{"bob@example.org"}, message("verify without roots", "bob@example.org"))
	var list []queueEntry
	testenv.WaitFor(5*time.Second, func() bool {
		list = entries(h)
		return len(list) == 1 && list[0].Attempts > 0
	})
	if len(list) != 1 || !strings.Contains(list[0].LastError, "certificate") {
		t.Fatalf("verify mode with an unknown CA: want the message deferred with a certificate error, got %+v", list)
	}

	h.queue["tls"] = map[string]any{"verify": true, "ca_file": caFile}
	h.load()
	h.api("POST", "/smtp/queue/flush", nil)
	h.waitEmpty(5 * time.Second)
	if n := len(mx.Messages()); n != 2 || !mx.Messages()[1].TLS {
		t.Fatalf("verify mode with the right CA: %d messages", n)
	}
}

type queueEntry struct {
	ID        string
	Attempts  int
	LastError string
}

func entries(h *harness) []queueEntry {
	var out []queueEntry
	for _, e := range h.list() {
		out = append(out, queueEntry{ID: e.ID, Attempts: e.Attempts, LastError: e.LastError})
	}
	return out
}

// Everything through a smarthost with STARTTLS and AUTH.
func TestSmarthost(t *testing.T) {
	h := newHarness(t, "127.0.0.2")
	h.mx["127.0.0.2"].Close()
	tlsCfg, caPEM := testenv.SelfSignedTLS(t, "relay.example.net")
	relay := testenv.StartMX(t, fmt.Sprintf("127.0.0.4:%d", testenv.FreePort(t)), testenv.MXOptions{
		TLS: tlsCfg, AuthUser: "relayuser", AuthPass: "s3cret",
	})
	_, port, _ := strings.Cut(relay.Addr, ":")
	h.dns.Add(t, "relay.example.net. 300 IN A 127.0.0.4")
	caFile := h.env.Path("ca.pem")
	os.WriteFile(caFile, caPEM, 0o600)
	t.Setenv("TEST_RELAY_PASSWORD", "s3cret")
	h.queue["smarthost"] = map[string]any{
		"address": "relay.example.net:" + port, "username": "relayuser", "password": "{env.TEST_RELAY_PASSWORD}",
		"ca_file": caFile,
	}
	h.load()
	h.send("alice@example.test", []string{"bob@example.org", "dave@example.net"}, message("via relay", "bob@example.org", "dave@example.net"))
	h.waitEmpty(10 * time.Second)
	c := relay.Count()
	if c["bob@example.org"] != 1 || c["dave@example.net"] != 1 {
		t.Fatalf("relay got %v", c)
	}
	for _, m := range relay.Messages() {
		if !m.TLS || m.AuthUser != "relayuser" {
			t.Errorf("relay session: TLS %v, user %q", m.TLS, m.AuthUser)
		}
	}
}

// The admin API lists, deletes and flushes entries.
func TestAdminAPI(t *testing.T) {
	h := newHarness(t, "127.0.0.2", "127.0.0.4")
	h.mx["127.0.0.4"].Close()
	h.dns.Add(t, "down.example. 300 IN MX 10 mx.down.example.", "mx.down.example. 300 IN A 127.0.0.4")
	h.queue["retry"] = map[string]any{"initial": "1h", "jitter": -1}
	h.load()
	var ids []string
	for i := range 3 {
		ids = append(ids, h.send("alice@example.test", []string{fmt.Sprintf("u%d@down.example", i)}, message(fmt.Sprintf("admin %d", i), "u@down.example")))
	}
	var list []queueEntry
	testenv.WaitFor(5*time.Second, func() bool {
		list = entries(h)
		n := 0
		for _, e := range list {
			if e.Attempts == 1 {
				n++
			}
		}
		return n == 3
	})
	// An attempt counts before it ends: wait until none is in flight, so
	// that every next try is set (the test was flaky under load).
	testenv.WaitFor(5*time.Second, func() bool {
		for _, e := range h.list() {
			if e.InFlight {
				return false
			}
		}
		return true
	})
	full := h.list()
	if len(full) != 3 {
		t.Fatalf("list: %+v", full)
	}
	for i, e := range full {
		if e.ID != ids[i] || e.Sender != "alice@example.test" || len(e.Recipients) != 1 ||
			e.Recipients[0].Address != fmt.Sprintf("u%d@down.example", i) || e.Attempts != 1 ||
			e.NextTry == nil || time.Until(*e.NextTry) < 50*time.Minute || !strings.Contains(e.LastError, "127.0.0.4") {
			t.Errorf("entry %d: %+v", i, e)
		}
	}
	var one struct{ ID string }
	if code := h.api("GET", "/smtp/queue/"+ids[1], &one); code != 200 || one.ID != ids[1] {
		t.Errorf("GET one entry: %d %+v", code, one)
	}
	if code := h.api("DELETE", "/smtp/queue/"+ids[1], nil); code != 200 {
		t.Fatalf("DELETE: %d", code)
	}
	if code := h.api("DELETE", "/smtp/queue/"+ids[1], nil); code != 404 {
		t.Errorf("second DELETE: %d, want 404", code)
	}
	if code := h.api("GET", "/smtp/queue/"+ids[1], nil); code != 404 {
		t.Errorf("GET a deleted entry: %d, want 404", code)
	}
	if n := len(h.list()); n != 2 {
		t.Fatalf("after delete: %d entries", n)
	}
	if _, err := os.Stat(filepath.Join(h.env.Path("queue"), "queue", ids[1])); !os.IsNotExist(err) {
		t.Errorf("the deleted entry's file is still there: %v", err)
	}
	// The MX comes back; a flush delivers now instead of in an hour.
	mx := testenv.StartMX(t, fmt.Sprintf("127.0.0.4:%d", h.port), testenv.MXOptions{})
	var flushed map[string]int
	if code := h.api("POST", "/smtp/queue/"+ids[0]+"/flush", &flushed); code != 200 || flushed["flushed"] != 1 {
		t.Fatalf("flush one: %d %v", code, flushed)
	}
	if !mx.WaitMessages(1, 5*time.Second) {
		t.Fatal("flushing one entry did not deliver it")
	}
	if code := h.api("POST", "/smtp/queue/flush", &flushed); code != 200 {
		t.Fatalf("flush: %d", code)
	}
	h.waitEmpty(5 * time.Second)
	c := mx.Count()
	if c["u0@down.example"] != 1 || c["u1@down.example"] != 0 || c["u2@down.example"] != 1 {
		t.Fatalf("deliveries after flush: %v", c)
	}
}

// A config reload while deliveries run neither loses nor duplicates mail,
// and does not double the workers (the MX never sees more sessions at once
// than max_concurrency).
func TestReloadDuringDeliveries(t *testing.T) {
	h := newHarness(t)
	mx := h.mx["127.0.0.2"]
	mx.Delay(60 * time.Millisecond)
	h.queue["max_concurrency"] = 2
	h.load()
	const n = 30
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			send(t, h.smtpAddr, "alice@example.test", []string{fmt.Sprintf("r%d@example.org", i)}, message(fmt.Sprintf("reload %d", i), "r@example.org"))
		}
	}()
	midway := 0 // reloads while some, but not all, messages were delivered
	for i := range 6 {
		time.Sleep(100 * time.Millisecond)
		h.queue["retry"] = map[string]any{"initial": fmt.Sprintf("%dms", 200+i), "max": "1s", "jitter": -1}
		h.load()
		if got := len(mx.Messages()); got > 0 && got < n {
			midway++
		}
	}
	<-done
	if midway == 0 {
		t.Errorf("no reload happened while deliveries were running")
	}
	if !mx.WaitMessages(n, 20*time.Second) {
		t.Fatalf("only %d of %d messages delivered", len(mx.Messages()), n)
	}
	h.waitEmpty(5 * time.Second)
	time.Sleep(300 * time.Millisecond)
	c := mx.Count()
	for i := range n {
		if got := c[fmt.Sprintf("r%d@example.org", i)]; got != 1 {
			t.Errorf("r%d delivered %d times", i, got)
		}
	}
	if m := mx.MaxConcurrent(); m > 2 {
		t.Errorf("the MX saw %d sessions at once with max_concurrency 2: workers doubled", m)
	}
}

// A corrupt entry in the spool is moved aside and logged; the others are
// delivered; an unreadable state file makes its message go to everyone.
func TestCorruptSpoolEntries(t *testing.T) {
	h := newHarness(t)
	qdir := filepath.Join(h.env.Path("queue"), "queue")
	os.MkdirAll(qdir, 0o700)
	os.WriteFile(filepath.Join(qdir, "GARBAGE1"), []byte("this is not a queue file"), 0o600)
	os.WriteFile(filepath.Join(qdir, "GARBAGE2"), []byte("CSQ1 {\"id\":\"GARBAGE2\",\"rcpts\":[]}\nbody"), 0o600)
	os.WriteFile(filepath.Join(qdir, "TRUNCATED"), []byte("CSQ1 {\"id\":\"TRUNC"), 0o600)
	good := `CSQ1 {"id":"GOOD1","from":"alice@example.test","rcpts":[{"address":"bob@example.org"},{"address":"carol@example.org"}],"received":"2026-01-01T00:00:00Z","queued":"` +
		time.Now().Format(time.RFC3339) + `"}` + "\n" + message("survivor", "bob@example.org")
	os.WriteFile(filepath.Join(qdir, "GOOD1"), []byte(good), 0o600)
	os.WriteFile(filepath.Join(qdir, "GOOD1.state"), []byte("{not json"), 0o600)
	os.WriteFile(filepath.Join(qdir, "ORPHAN.state"), []byte("{}"), 0o600)
	h.load()
	mx := h.mx["127.0.0.2"]
	if !mx.WaitMessages(1, 5*time.Second) {
		t.Fatal("the good entry was not delivered")
	}
	h.waitEmpty(5 * time.Second)
	if c := mx.Count(); c["bob@example.org"] != 1 || c["carol@example.org"] != 1 {
		t.Errorf("deliveries: %v", c)
	}
	bad, _ := os.ReadDir(filepath.Join(h.env.Path("queue"), "corrupt"))
	var names []string
	for _, e := range bad {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"GARBAGE1", "GARBAGE2", "GOOD1.state", "TRUNCATED"}) {
		t.Errorf("moved aside: %v", names)
	}
	if left, _ := os.ReadDir(qdir); len(left) != 0 {
		t.Errorf("left in the queue folder: %v", left)
	}
}

// Provision errors name the field.
func TestConfigErrors(t *testing.T) {
	h := newHarness(t, "127.0.0.2")
	for _, tc := range []struct {
		field string
		value any
		want  string
	}{
		{"retry", map[string]any{"multiplier": 0.5}, "retry.multiplier"},
		{"retry", map[string]any{"initial": "2h", "max": "1h"}, "retry.max"},
		{"smarthost", map[string]any{"address": "relay.example.net:25", "username": "u", "password": "p", "tls": "none"}, "smarthost.tls"},
		{"smarthost", map[string]any{"address": "relay.example.net:25", "tls": "sometimes"}, "smarthost.tls"},
		{"dkim", map[string]any{"key_type": "dsa"}, "dkim.key_type"},
		{"dkim", map[string]any{"algorithms": []string{"dsa"}}, "dkim.algorithms[0]"},
		{"dkim", map[string]any{"key_type": "ed25519", "algorithms": []string{"rsa", "ed25519"}}, "dkim.key_type"},
		{"dkim", map[string]any{"selector": "a", "ed25519_selector": "a"}, "dkim.ed25519_selector"},
		{"dkim", map[string]any{"ed25519_selector": "bad_name"}, "dkim.ed25519_selector"},
		{"connection_cache", map[string]any{"max_messages": -1}, "connection_cache.max_messages"},
		{"connection_cache", map[string]any{"idle_timeout": "-1s"}, "connection_cache.idle_timeout"},
		{"tls", map[string]any{"disable": true, "verify": true}, "tls"},
		{"remote_port", 70000, "remote_port"},
		{"sync", "sometimes", "sync"},
		{"hostname", "not a host name", "hostname"},
	} {
		cfg := map[string]any{}
		for k, v := range h.queue {
			cfg[k] = v
		}
		cfg[tc.field] = tc.value
		h.app["outbound"] = cfg
		err := h.env.LoadErr(h.config())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s=%v: want an error naming %s, got %v", tc.field, tc.value, tc.want, err)
		}
	}
}
