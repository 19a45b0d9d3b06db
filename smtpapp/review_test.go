package smtpapp_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// TestFailedReloadKeepsOldConfig: when a new config fails to start after
// one of its servers bound, the old config keeps serving.
func TestFailedReloadKeepsOldConfig(t *testing.T) {
	env, addr := startMX(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bad := env.Config(mxApp(env, addr, func(app, srv map[string]any) {
		srv["hostname"] = "new.example.test"
		app["servers"].(map[string]any)["zz"] = map[string]any{
			"listen": []string{busy.Addr().String()}, "hostname": "new.example.test",
			"tls": map[string]any{"disable_starttls": true},
		}
	}), nil)
	if err := env.LoadErr(bad); err == nil {
		t.Fatal("config with a busy port loaded")
	}
	_, greet := testenv.Dial(t, addr)
	if greet.Code != 220 || !strings.Contains(greet.Text(), "mail.example.test") {
		t.Fatalf("after a failed reload: %s", greet)
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

// TestLargeMessageSpooled: a message over the in-memory limit goes through
// the spool folder (created by the app) and is stored whole.
func TestLargeMessageSpooled(t *testing.T) {
	env, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"max_message_size": 4 << 20}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	line := strings.Repeat("y", 998) + "\r\n"
	body := "Subject: big\r\n\r\n" + strings.Repeat(line, 2<<20/len(line))
	c.Send(body + ".\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("2 MiB message: %s", r)
	}
	files := aliceMail(t, env)
	if len(files) != 1 {
		t.Fatalf("want 1 message, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	if !strings.HasSuffix(string(got), body) {
		t.Fatal("large message not stored whole")
	}
	if left, _ := os.ReadDir(env.Path("spool")); len(left) != 0 {
		t.Fatalf("spool files left behind: %v", left)
	}
}

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

// TestBodySTARTTLSLineKeepsInspection: a body line starting with STARTTLS
// does not switch off the bare-LF check of later commands.
func TestBodySTARTTLSLineKeepsInspection(t *testing.T) {
	s := startSubmission(t) // its MX offers STARTTLS
	c, _ := testenv.Dial(t, s.mx)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: x\r\n\r\nSTARTTLS is a verb\r\n.\r\n")
	c.Read()
	c.Send("MAIL FROM:<a@example.org>\n")
	if r := c.Read(); r.Code < 500 {
		t.Fatalf("bare LF after a STARTTLS body line: %s", r)
	}
}

// TestBareLFNoopCloses: a command go-smtp accepts whatever its line end
// still ends the connection when it ends with a bare LF.
func TestBareLFNoopCloses(t *testing.T) {
	_, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Send("NOOP\n")
	c.Read()
	if !c.Closed() {
		t.Fatal("connection open after a bare LF")
	}
}

// TestBareLFInsideImplicitTLS: commands inside implicit TLS are inspected
// like plaintext ones.
func TestBareLFInsideImplicitTLS(t *testing.T) {
	s := startSubmission(t)
	for _, tc := range []struct{ line, want string }{
		{"MAIL FROM:<alice@example.test>\n", "5"},
		{"NOOP\n", "5"},
	} {
		conn, err := tls.Dial("tcp", s.subs, s.tlsConfig)
		if err != nil {
			t.Fatal(err)
		}
		c := &testenv.Client{T: t, Conn: conn, R: newReader(conn)}
		c.Read()
		c.Expect("EHLO client.example.org", 250)
		c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "demo-alice"), 235)
		c.Send(tc.line)
		if r := c.Read(); fmt.Sprint(r.Code)[:1] != tc.want {
			t.Errorf("%q: %s", tc.line, r)
		}
		if !c.Closed() {
			t.Errorf("%q: connection open after a bare LF inside TLS", tc.line)
		}
		conn.Close()
	}
}

// TestGoSMTPErrorsCount: errors that go-smtp answers itself (unknown
// commands, bad syntax) count toward max_errors and the abuse metric.
func TestGoSMTPErrorsCount(t *testing.T) {
	env, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"max_errors": 3}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("RCPT TO:<alice@example.test>", 503) // before MAIL: go-smtp's reply, made 503
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<nobody@example.test>", 550) // ours
	c.Cmd("DATA")                                  // go-smtp: no valid recipient: the third error
	if !c.Closed() {
		t.Fatal("connection open after three errors, two of them go-smtp's")
	}
	resp, err := http.Get("http://" + env.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `caddy_smtp_abuse_events_total{kind="protocol_error",server="mx"}`) {
		t.Fatal("go-smtp's errors not counted as protocol errors")
	}
}
