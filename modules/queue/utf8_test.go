package queue_test

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// sendUTF8 submits a message with MAIL FROM ... SMTPUTF8 (trusted
// network, no AUTH).
func sendUTF8(t testing.TB, addr, from string, to []string, body string) {
	t.Helper()
	c, greet := testenv.Dial(t, addr)
	if greet.Code != 220 {
		t.Fatalf("greeting: %s", greet)
	}
	if r := c.Expect("EHLO client.example.test", 250); !strings.Contains(r.Text(), "SMTPUTF8") {
		t.Fatalf("EHLO does not offer SMTPUTF8: %s", r)
	}
	c.Expect("MAIL FROM:<"+from+"> SMTPUTF8", 250)
	for _, r := range to {
		c.Expect("RCPT TO:<"+r+">", 250)
	}
	c.Expect("DATA", 354)
	c.Send(body + ".\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("end of data: %s", r)
	}
	c.Expect("QUIT", 221)
}

// utf8Harness: the harness with a UTF-8 local sender (jürgen@bücher.test,
// the domain configured in U-label form) and bücher.example served by a
// test MX that offers SMTPUTF8 (127.0.0.4); example.org's MX (127.0.0.2)
// does not.
func utf8Harness(t *testing.T) (*harness, *testenv.UTF8MX) {
	h := newHarness(t, "127.0.0.2")
	umx := testenv.StartUTF8MX(t, fmt.Sprintf("127.0.0.4:%d", h.port), true)
	h.dns.Add(t,
		"xn--bcher-kva.example. 300 IN MX 10 mx.xn--bcher-kva.example.",
		"mx.xn--bcher-kva.example. 300 IN A 127.0.0.4",
	)
	h.app["local_domains"] = []string{"example.test", "bücher.test"}
	h.app["accounts"] = map[string]any{"provider": "static", "accounts": []any{
		map[string]any{"address": "alice@example.test", "password": aliceHash},
		map[string]any{"address": "jürgen@xn--bcher-kva.test"},
	}}
	h.load()
	return h, umx
}

func utf8Message(subject string) string {
	return "From: jürgen@bücher.test\r\nTo: someone\r\nSubject: " + subject + "\r\n" +
		"Message-ID: <" + subject + "@bücher.test>\r\n\r\nGrüße\r\n"
}

// An SMTPUTF8 message to an IDN domain whose MX offers SMTPUTF8 goes on
// with SMTPUTF8; the recipient's domain (given as a U-label) is in
// A-label form.
func TestUTF8ToSMTPUTF8MX(t *testing.T) {
	h, umx := utf8Harness(t)
	sendUTF8(t, h.smtpAddr, "jürgen@bücher.test", []string{"пользователь@bücher.example"}, utf8Message("to-utf8-mx"))
	if !umx.WaitMessages(1, 10*time.Second) {
		t.Fatal("not delivered to the SMTPUTF8 MX")
	}
	h.waitEmpty(5 * time.Second)
	m := umx.Messages()[0]
	if !m.UTF8 {
		t.Error("MAIL FROM did not carry SMTPUTF8")
	}
	if m.From != "jürgen@xn--bcher-kva.test" || !slices.Equal(m.To, []string{"пользователь@xn--bcher-kva.example"}) {
		t.Errorf("envelope %q -> %q", m.From, m.To)
	}
	if !bytes.Contains(m.Data, []byte("with UTF8SMTP id")) || !bytes.Contains(m.Data, []byte("Subject: to-utf8-mx")) {
		t.Errorf("message:\n%s", m.Data)
	}
}

// To an MX without SMTPUTF8: with an ASCII sender and header, a UTF-8
// recipient bounces with 5.6.7 and an ASCII one in the same message is
// delivered without the parameter; a UTF-8 header or a UTF-8 sender
// bounce every recipient (the bounce reaches the UTF-8 sender's Maildir).
func TestUTF8ToPlainMX(t *testing.T) {
	h, _ := utf8Harness(t)
	mx := h.mx["127.0.0.2"]
	ascii := "From: alice@example.test\r\nSubject: ascii-header\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
	sendUTF8(t, h.smtpAddr, "alice@example.test", []string{"bob@example.org", "jörg@example.org"}, ascii)
	h.waitEmpty(10 * time.Second)
	if msgs := mx.Messages(); len(msgs) != 1 || !slices.Equal(msgs[0].To, []string{"bob@example.org"}) {
		t.Fatalf("want bob's copy only: %+v", msgs)
	}
	bounces := waitMail(t, h, "example.test", "alice", 1)
	b := string(bounces[0])
	for _, want := range []string{"Status: 5.6.7", "jörg@example.org", "does not support SMTPUTF8"} {
		if !strings.Contains(b, want) {
			t.Errorf("bounce lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(b, "bob@example.org") {
		t.Errorf("bounce names bob, who got the message:\n%s", b)
	}

	sendUTF8(t, h.smtpAddr, "alice@example.test", []string{"carol@example.org"}, utf8Message("utf8-header"))
	h.waitEmpty(10 * time.Second)
	bounces = waitMail(t, h, "example.test", "alice", 2)
	if !bytes.Contains(bounces[0], []byte("Status: 5.6.7")) || !bytes.Contains(bounces[1], []byte("Status: 5.6.7")) {
		t.Errorf("bounces:\n%s\n%s", bounces[0], bounces[1])
	}

	sendUTF8(t, h.smtpAddr, "jürgen@bücher.test", []string{"dave@example.org"}, ascii)
	h.waitEmpty(10 * time.Second)
	if b := waitMail(t, h, "xn--bcher-kva.test", "jürgen", 1)[0]; !bytes.Contains(b, []byte("Status: 5.6.7")) || !bytes.Contains(b, []byte("dave@example.org")) {
		t.Errorf("bounce to the UTF-8 sender:\n%s", b)
	}
	if n := len(mx.Messages()); n != 1 {
		t.Fatalf("a message that needs SMTPUTF8 reached an MX without it (%d messages)", n)
	}
}

func waitMail(t *testing.T, h *harness, domain, local string, n int) [][]byte {
	t.Helper()
	var out [][]byte
	testenv.WaitFor(10*time.Second, func() bool {
		out = out[:0]
		for _, f := range testenv.Maildir(t, h.env.Path("maildir"), domain, local) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
		return len(out) >= n
	})
	if len(out) < n {
		t.Fatalf("want %d messages in %s@%s, got %d", n, local, domain, len(out))
	}
	return out
}
