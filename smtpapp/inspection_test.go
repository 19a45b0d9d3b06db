package smtpapp_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

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

func TestBareLineEnds(t *testing.T) {
	env, addr := startMX(t)
	for _, tc := range []struct{ name, body string }{
		{"bare LF", "Subject: x\r\n\r\nline\nsmuggled\r\n"},
		{"bare CR", "Subject: x\r\n\r\nline\rsmuggled\r\n"},
		{"LF dot LF smuggling", "Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@example.org>\r\n"},
		{"CRLF dot LF", "Subject: x\r\n\r\nhello\r\n.\nRCPT TO:<bob@example.test>\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := testenv.Dial(t, addr)
			c.Expect("EHLO client.example.org", 250)
			c.StartMessage("sender@example.org", "alice@example.test")
			c.Send(tc.body + ".\r\n")
			if r := c.Read(); r.Code < 500 || r.Code > 599 {
				t.Fatalf("want 5xx, got %s", r)
			}
			// Only CRLF.CRLF ended DATA: the next reply is for NOOP.
			c.Expect("NOOP", 250)
		})
	}
	if n := len(aliceMail(t, env)); n != 0 {
		t.Fatalf("a message with bare line ends was stored (%d files)", n)
	}
	if n := len(testenv.Maildir(t, env.Path("maildir"), "example.test", "bob")); n != 0 {
		t.Fatalf("smuggled command executed")
	}
}

func TestBareLFCommand(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Send("MAIL FROM:<sender@example.org>\n")
	if r := c.Read(); r.Code < 500 {
		t.Fatalf("command ended by bare LF: want 5xx, got %s", r)
	}
	if !c.Closed() {
		t.Fatalf("connection not closed after bare LF in the command stream")
	}
	if n := len(aliceMail(t, env)); n != 0 {
		t.Fatal("stored")
	}
}

func TestDotOnlyEndsWithCRLF(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	// ".\r\n" not after CRLF, "\r\n.x" and "\r\n. \r\n" do not end DATA.
	c.Send("Subject: x\r\n\r\na.\r\n.x\r\n. \r\nend\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("want 250, got %s", r)
	}
	files := aliceMail(t, env)
	if len(files) != 1 {
		t.Fatalf("want 1 file, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	if !bytes.HasSuffix(got, []byte("\r\n\r\na.\r\nx\r\n \r\nend\r\n")) {
		t.Fatalf("body: %q", got)
	}
}

// TestBDATResetKeepsErrorCount: a BDAT transfer cut short by RSET gets no
// reply; it must not be taken for one of ours, which would hide go-smtp's
// own error replies from max_errors.
func TestBDATResetKeepsErrorCount(t *testing.T) {
	_, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"max_errors": 3}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	for i := 0; i < 5; i++ {
		c.Expect("MAIL FROM:<sender@example.org>", 250)
		c.Expect("RCPT TO:<alice@example.test>", 250)
		c.Send("BDAT 1\r\nx")
		if r := c.Read(); r.Code != 250 {
			t.Fatalf("BDAT: %s", r)
		}
		c.Expect("RSET", 250)
		time.Sleep(20 * time.Millisecond)
	}
	for i := 0; i < 3; i++ {
		if r := c.Cmd("RCPT TO:<alice@example.test>"); r.Code != 503 && !(i == 2 && r.Code == 421) { // no MAIL yet; the third is the 421
			t.Fatalf("RCPT without MAIL: %s", r)
		}
	}
	if !c.Closed() {
		t.Fatal("connection open after three errors with max_errors 3")
	}
}

// TestBodyCannotStopInspection: a message body with a STARTTLS line and a
// line starting like a TLS record does not switch off the inspection of
// the commands after it (bare LF, go-smtp's own errors).
func TestBodyCannotStopInspection(t *testing.T) {
	s := startSubmission(t)
	c, _ := testenv.Dial(t, s.mx)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: x\r\n\r\nSTARTTLS\r\n\x16hello\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	c.Send("NOOP\n")
	c.Read()
	if !c.Closed() {
		t.Fatal("bare LF accepted after a body that looked like STARTTLS")
	}
}
