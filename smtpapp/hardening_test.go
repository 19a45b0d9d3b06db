package smtpapp_test

import (
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

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
