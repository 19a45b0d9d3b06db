package smtpapp_test

import (
	"os"
	"strings"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// utf8MX is an inbound MX with IDN local domains, one configured as a
// U-label (bücher.test = xn--bcher-kva.test), one as an A-label
// (xn--fsqu00a.test = 例子.test), and UTF-8 accounts and aliases.
func utf8MX(t *testing.T) (*testenv.Env, string) {
	return startMX(t, func(app, srv map[string]any) {
		app["local_domains"] = []string{"example.test", "bücher.test", "xn--fsqu00a.test"}
		app["accounts"] = map[string]any{"provider": "static", "accounts": []any{
			map[string]any{"address": "alice@example.test", "password": aliceHash},
			map[string]any{"address": "jürgen@xn--bcher-kva.test", "aliases": []string{"Info@BÜCHER.test"}},
			map[string]any{"address": "用户@例子.test"},
		}}
		srv["limits"] = map[string]any{"max_message_size": 64 * 1024, "max_errors": 100}
	})
}

// sendUTF8 delivers one message with MAIL FROM ... SMTPUTF8 to rcpt.
func sendUTF8(t *testing.T, c *testenv.Client, rcpt, subject string) {
	t.Helper()
	c.Expect("MAIL FROM:<sender@example.org> SMTPUTF8", 250)
	c.Expect("RCPT TO:<"+rcpt+">", 250)
	c.Expect("DATA", 354)
	c.Send("From: sender@example.org\r\nSubject: " + subject + "\r\n\r\nGrüße\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("end of data: %s", r)
	}
}

// TestSMTPUTF8Delivery: SMTPUTF8 is offered; a UTF-8 local part on an
// IDN local domain reaches its Maildir (A-label domain folder, UTF-8
// name), whichever IDN form and case the recipient uses, aliases too.
func TestSMTPUTF8Delivery(t *testing.T) {
	env, addr := utf8MX(t)
	c, _ := testenv.Dial(t, addr)
	ehlo := c.Expect("EHLO client.example.org", 250)
	if n := strings.Count(ehlo.Text(), "SMTPUTF8"); n != 1 {
		t.Fatalf("EHLO offers SMTPUTF8 %d times: %s", n, ehlo)
	}
	for _, rcpt := range []string{"jürgen@bücher.test", "JÜRGEN@xn--bcher-kva.test", "ju\u0308rgen@BÜCHER.test.", "info@xn--bcher-kva.test", "jürgen+tag@bücher.test"} {
		sendUTF8(t, c, rcpt, "to "+rcpt)
	}
	files := testenv.Maildir(t, env.Path("maildir"), "xn--bcher-kva.test", "jürgen")
	if len(files) != 5 {
		t.Fatalf("want 5 messages for jürgen, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	for _, want := range []string{"Delivered-To: jürgen@xn--bcher-kva.test", "with UTF8SMTP id", "\r\n\r\nGrüße\r\n"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("stored message lacks %q:\n%s", want, got)
		}
	}
	sendUTF8(t, c, "用户@xn--fsqu00a.test", "cjk")
	sendUTF8(t, c, "用户@例子.test", "cjk u-label")
	if files := testenv.Maildir(t, env.Path("maildir"), "xn--fsqu00a.test", "用户"); len(files) != 2 {
		t.Fatalf("want 2 messages for 用户, got %d", len(files))
	}
	c.Expect("QUIT", 221)
}

// TestSMTPUTF8Refusals: without SMTPUTF8 on MAIL the ASCII rules hold
// (553 5.6.7), in every transaction, including one after an SMTPUTF8
// one; with it, invalid UTF-8, control, bidi and format characters,
// Unicode spaces, quoted-@ tricks and names IDNA refuses are refused.
func TestSMTPUTF8Refusals(t *testing.T) {
	_, addr := utf8MX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	check := func(cmd string, code int, enh string) {
		t.Helper()
		r := c.Cmd(cmd)
		if r.Code != code || !strings.HasPrefix(r.Text(), enh) {
			t.Errorf("%q: want %d %s, got %s", cmd, code, enh, r)
		}
	}
	check("MAIL FROM:<jürgen@example.org>", 553, "5.6.7")
	check("MAIL FROM:<sender@bücher.example>", 553, "5.6.7")
	check("MAIL FROM:<sender@example.org>", 250, "2.")
	check("RCPT TO:<jürgen@bücher.test>", 553, "5.6.7")
	check("RCPT TO:<jürgen@xn--bcher-kva.test>", 553, "5.6.7")
	check("RCPT TO:<nobody@xn--bcher-kva.test>", 550, "5.1.1") // the A-label domain is local
	check("RSET", 250, "2.")

	check("MAIL FROM:<sender@example.org> SMTPUTF8", 250, "2.")
	for _, bad := range []struct {
		rcpt string
		code int
		enh  string
	}{
		{"evil\u202etxt.exe@bücher.test", 553, "5.6.7"}, // bidi override
		{"jü\u200brgen@bücher.test", 553, "5.6.7"},      // zero-width space
		{"jü\u00a0rgen@bücher.test", 553, "5.6.7"},      // no-break space
		{"jü\u0085rgen@bücher.test", 553, "5.6.7"},      // C1 control (NEL)
		{"jü\ue000rgen@bücher.test", 553, "5.6.7"},      // private use
		{"j\xfcrgen@bücher.test", 553, "5.6.7"},         // Latin-1, not UTF-8
		{"jürgen@b\xfccher.test", 553, "5.6.7"},
		{"\"jürgen@evil.example\"@bücher.test", 501, "5.1.3"}, // quoted @
		{"jürgen@bücher.test@evil.example", 501, "5.1.3"},
		{"jürgen@-bücher.test", 501, "5.1.3"},
		{"jürgen@[127.0.0.1]", 553, "5.1.3"},
		{"nobody@bücher.test", 550, "5.1.1"},
		{strings.Repeat("ü", 33) + "@bücher.test", 501, "5.1.3"}, // 66 octets
	} {
		check("RCPT TO:<"+bad.rcpt+">", bad.code, bad.enh)
	}
	check("RCPT TO:<jürgen@bücher.test>", 250, "2.")
	check("RSET", 250, "2.")
	check("MAIL FROM:<sender@example.org>", 250, "2.")
	check("RCPT TO:<jürgen@bücher.test>", 553, "5.6.7") // the flag ended with the transaction
	c.Expect("QUIT", 221)
}
