package smtpapp_test

import (
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// The protocol tests run on every kind of session: the plaintext MX, the
// MX after STARTTLS, submission after STARTTLS and AUTH, and implicit TLS
// after AUTH. What a client gets must not depend on the port or on TLS.

type portKind struct {
	name string
	dial func(t *testing.T, s *submissionSetup) *testenv.Client
	auth bool // the session is authenticated (sends as alice)
}

var portKinds = []portKind{
	{"mx", func(t *testing.T, s *submissionSetup) *testenv.Client {
		c, _ := testenv.Dial(t, s.mx)
		c.Expect("EHLO client.example.org", 250)
		return c
	}, false},
	{"mx-starttls", func(t *testing.T, s *submissionSetup) *testenv.Client {
		return s.login(t, s.mx)
	}, false},
	{"submission", func(t *testing.T, s *submissionSetup) *testenv.Client {
		c := s.login(t, s.sub)
		c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "demo-alice"), 235)
		return c
	}, true},
	{"implicit-tls", func(t *testing.T, s *submissionSetup) *testenv.Client {
		return s.dialImplicit(t, true)
	}, true},
}

// dialImplicit connects to the implicit-TLS port, greets and may log in.
func (s *submissionSetup) dialImplicit(t *testing.T, auth bool) *testenv.Client {
	t.Helper()
	conn, err := tls.Dial("tcp", s.subs, s.tlsConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &testenv.Client{T: t, Conn: conn, R: newReader(conn)}
	c.Read()
	c.Expect("EHLO client.example.org", 250)
	if auth {
		c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "demo-alice"), 235)
	}
	return c
}

func sender(k portKind) string {
	if k.auth {
		return "alice@example.test"
	}
	return "sender@example.org"
}

// TestRepliesSameOnEveryPort: wrong sequence, syntax errors, unknown
// commands and parameters get the RFC's codes, the same in plaintext,
// after STARTTLS and inside implicit TLS.
func TestRepliesSameOnEveryPort(t *testing.T) {
	s := startSubmission(t, func(app map[string]any) {
		for _, srv := range app["servers"].(map[string]any) {
			srv.(map[string]any)["limits"] = map[string]any{"max_errors": 100, "max_message_size": 64 * 1024}
		}
	})
	for _, k := range portKinds {
		t.Run(k.name, func(t *testing.T) {
			c := k.dial(t, s)
			for _, tc := range []struct {
				cmd  string
				code int
				enh  string
			}{
				{"RCPT TO:<bob@example.test>", 503, "5.5.1"}, // before MAIL
				{"DATA", 503, "5.5.1"},
				{"FOO bar", 500, "5.5.2"},
				{"MAILFROM:<a@example.org>", 500, "5.5.2"},
				{"", 500, "5.5.2"},
				{"MAIL FROM:<" + sender(k) + "> FOO=bar", 555, "5.5.4"},
				{"MAIL FROM:<jürgen@example.org>", 553, "5.6.7"}, // UTF-8 without SMTPUTF8
				{"MAIL FROM:<" + sender(k) + "> RET=FULL", 555, "5.5.4"},
				{"MAIL FROM:<" + sender(k) + "> BODY=BINARYMIME", 555, "5.5.4"},
				{"MAIL FROM:<" + sender(k), 501, "5.5.2"},
				{"MAIL FROM:<" + sender(k) + "> AUTH=<>", 250, "2.0.0"}, // RFC 4954 5: accepted, ignored
				{"MAIL FROM:<" + sender(k) + ">", 503, "5.5.1"},         // nested
				{"RCPT TO:<bob@example.test> NOTIFY=NEVER", 555, "5.5.4"},
				{"RCPT TO:<>", 501, "5.5.2"},
				{"STARTTLS now", 501, "5.5.4"},
				{"RSET", 250, "2.0.0"},
				{"EHLO", 501, "5.5.4"},
				{"EHLO \x00evil", 501, "5.5.2"},
				{"NOOP\x07", 501, "5.5.2"},
			} {
				if tc.cmd == "DATA" { // and BDAT: its chunk is read and dropped
					c.Send("BDAT 3 LAST\r\nabc")
					if r := c.Read(); r.Code != 503 {
						t.Errorf("BDAT before MAIL: %s", r)
					}
				}
				r := c.Cmd(tc.cmd)
				if r.Code != tc.code || !strings.HasPrefix(r.Text(), tc.enh) {
					t.Errorf("%q: want %d %s, got %s", tc.cmd, tc.code, tc.enh, r)
				}
				if strings.ContainsAny(r.Text(), "\x00\x07") {
					t.Errorf("%q: control character echoed: %q", tc.cmd, r.Text())
				}
			}
			c.Expect("QUIT", 221)
		})
	}
}

// TestAuthReplies: malformed SASL, AUTH before TLS, AUTH without a
// mechanism, cancelled AUTH.
func TestAuthReplies(t *testing.T) {
	s := startSubmission(t)
	plainC, _ := testenv.Dial(t, s.sub)
	plainC.Expect("EHLO client.example.org", 250)
	if r := plainC.Cmd("AUTH PLAIN " + plain("", "alice@example.test", "demo-alice")); r.Code != 530 || !strings.HasPrefix(r.Text(), "5.7.0") {
		t.Fatalf("AUTH before TLS: %s", r)
	}
	for _, name := range []string{"submission", "implicit-tls"} {
		t.Run(name, func(t *testing.T) {
			var c *testenv.Client
			if name == "submission" {
				c = s.login(t, s.sub)
			} else {
				c = s.dialImplicit(t, false)
			}
			for _, tc := range []struct {
				cmd  string
				code int
			}{
				{"AUTH", 501},
				{"AUTH PLAIN !!!notbase64", 501},
				{"AUTH PLAIN " + b64("no-nul-bytes"), 501},
				{"AUTH CRAM-MD5", 504},
			} {
				if r := c.Cmd(tc.cmd); r.Code != tc.code {
					t.Errorf("%q: want %d, got %s", tc.cmd, tc.code, r)
				}
			}
			c.Expect("AUTH LOGIN", 334)
			if r := c.Cmd("*"); r.Code != 501 {
				t.Errorf("cancelled AUTH: %s", r)
			}
			c.Expect("AUTH LOGIN", 334)
			if r := c.Cmd("@@@"); r.Code != 501 {
				t.Errorf("bad base64 in a SASL response: %s", r)
			}
			c.Expect("AUTH LOGIN", 334)
			if r := c.Cmd("YWxp\x00Y2U="); r.Code != 501 || strings.Contains(r.Text(), "\x00") {
				t.Errorf("control character in a SASL response: %s", r)
			}
			c.Expect("NOOP", 250) // the exchange is over, commands are commands again
			c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "demo-alice"), 235)
		})
	}
}

// TestNothingPartialStored: a BDAT chunk or a DATA body cut short by the
// client going away, or by the read timeout, is never stored, on any port.
func TestNothingPartialStored(t *testing.T) {
	s := startSubmission(t, func(app map[string]any) {
		for _, srv := range app["servers"].(map[string]any) {
			srv.(map[string]any)["limits"] = map[string]any{"read_timeout": "1s"}
		}
	})
	// Every case is started first, then all wait together: the ones cut
	// by closing, and the ones the read timeout ends.
	for _, k := range portKinds {
		for _, body := range []string{
			"BDAT 100 LAST\r\nSubject: cut\r\n\r\nonly part",   // last chunk short
			"BDAT 10\r\nSubject: \r\nBDAT 100 LAST\r\ncut\r\n", // second chunk short
			"DATA\r\nSubject: cut\r\n\r\nno end\r\n",           // no terminator
		} {
			for _, how := range []string{"close", "timeout"} {
				c := k.dial(t, s)
				c.Expect("MAIL FROM:<"+sender(k)+">", 250)
				c.Expect("RCPT TO:<bob@example.test>", 250)
				c.Send(body)
				if how == "close" {
					time.Sleep(20 * time.Millisecond) // the chunk is read, then the client goes
					c.Conn.Close()
				}
			}
		}
	}
	time.Sleep(1800 * time.Millisecond) // past the read timeout
	if files := testenv.Maildir(t, s.env.Path("maildir"), "example.test", "bob"); len(files) != 0 {
		t.Fatalf("a partial message was stored: %d files", len(files))
	}
}

// TestBDATFraming: CHUNKING only after EHLO, an unreadable size loses the
// framing (501, closed), DATA after BDAT is a bad sequence.
func TestBDATFraming(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	if r := c.Cmd("HELO client.example.org"); r.Code != 250 || len(r.Lines) != 1 {
		t.Fatalf("HELO: %s", r)
	}
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 250)
	c.Send("BDAT 3 LAST\r\nabc")
	if r := c.Read(); r.Code != 503 {
		t.Fatalf("BDAT after HELO: %s", r)
	}
	c.Expect("NOOP", 250) // the chunk was read and dropped: still in step

	c2, _ := testenv.Dial(t, addr)
	if r := c2.Cmd("EHLO client.example.org"); !strings.Contains(r.Text(), "CHUNKING") {
		t.Fatalf("EHLO without CHUNKING: %s", r)
	}
	c2.StartMessage("sender@example.org", "alice@example.test")
	c2.Conn.Close()

	for _, size := range []string{"abc", "99999999999999999999", "-1", "+5", "5x"} {
		c, _ := testenv.Dial(t, addr)
		c.Expect("EHLO client.example.org", 250)
		c.Expect("MAIL FROM:<sender@example.org>", 250)
		c.Expect("RCPT TO:<alice@example.test>", 250)
		if r := c.Cmd("BDAT " + size); r.Code != 501 {
			t.Errorf("BDAT %s: %s", size, r)
		}
		if !c.Closed() {
			t.Errorf("BDAT %s: connection open after the framing was lost", size)
		}
	}

	c3, _ := testenv.Dial(t, addr)
	c3.Expect("EHLO client.example.org", 250)
	c3.Expect("MAIL FROM:<sender@example.org>", 250)
	c3.Expect("RCPT TO:<alice@example.test>", 250)
	c3.Send("BDAT 12\r\nSubject: x\r\n")
	c3.Read()
	c3.Expect("DATA", 503)
	c3.Send("BDAT 6 LAST\r\n\r\nok\r\n")
	if r := c3.Read(); r.Code != 250 {
		t.Fatalf("BDAT LAST: %s", r)
	}
	// RFC 3030: the last chunk may be empty.
	c3.Expect("MAIL FROM:<sender@example.org>", 250)
	c3.Expect("RCPT TO:<alice@example.test>", 250)
	c3.Send("BDAT 18\r\nSubject: y\r\n\r\nok\r\n")
	c3.Read()
	if r := c3.Cmd("BDAT 0 LAST"); r.Code != 250 {
		t.Fatalf("BDAT 0 LAST: %s", r)
	}
	if n := len(aliceMail(t, env)); n != 2 {
		t.Fatalf("want 2 messages, got %d", n)
	}
}

// TestDataCRCRLFDot: a body line ending in CR CR LF, then ".", CRLF: the
// client gets an answer (refused: bare CR), never a hang, and the next
// command is a command.
func TestDataCRCRLFDot(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: x\r\n\r\nline\r\r\n.\r\n")
	if r := c.Read(); r.Code != 550 || !strings.HasPrefix(r.Text(), "5.6.0") {
		t.Fatalf("CR CR LF . CR LF: %s", r)
	}
	c.Expect("NOOP", 250)
	if n := len(aliceMail(t, env)); n != 0 {
		t.Fatalf("stored %d", n)
	}
}

// TestLongBodyLine: a line over the limit gets a permanent refusal after
// the whole message; the session stays in step and nothing is stored.
func TestLongBodyLine(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: x\r\n\r\n" + strings.Repeat("a", 2500) + "\r\nMAIL FROM:<evil@example.org>\r\n.\r\n")
	if r := c.Read(); r.Code != 550 {
		t.Fatalf("long line: %s", r)
	}
	c.Expect("NOOP", 250)
	if n := len(aliceMail(t, env)); n != 0 {
		t.Fatalf("stored %d", n)
	}
}

// TestStartTLSResetsSession: after the handshake nothing said before
// survives: a new EHLO is needed, the old name is gone (Received).
func TestStartTLSResetsSession(t *testing.T) {
	s := startSubmission(t)
	c, _ := testenv.Dial(t, s.mx)
	c.Expect("EHLO before.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	if r := c.Cmd("STARTTLS"); r.Code != 503 {
		t.Fatalf("STARTTLS in a transaction: %s", r)
	}
	c.Expect("RSET", 250)
	c.StartTLS(s.tlsConfig)
	for _, cmd := range []string{"MAIL FROM:<sender@example.org>", "RCPT TO:<alice@example.test>", "DATA"} {
		if r := c.Cmd(cmd); r.Code != 503 {
			t.Fatalf("%s after STARTTLS, before EHLO: %s", cmd, r)
		}
	}
	r := c.Cmd("EHLO after.example.org")
	if r.Code != 250 || strings.Contains(r.Text(), "STARTTLS") || !strings.Contains(r.Text(), "AUTH") {
		t.Fatalf("EHLO under TLS: %s", r)
	}
	if r := c.Cmd("STARTTLS"); r.Code != 503 {
		t.Fatalf("second STARTTLS: %s", r)
	}
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: x\r\n\r\nhi\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatal(r)
	}
	c.Expect("QUIT", 221)
	files := testenv.Maildir(t, s.env.Path("maildir"), "example.test", "alice")
	if len(files) != 1 {
		t.Fatalf("want 1 message, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	if strings.Contains(string(got), "before.example.org") || !strings.Contains(string(got), "from after.example.org") {
		t.Fatalf("the name given before STARTTLS survived:\n%s", got)
	}
}

// TestInspectionAfterStartTLS: after STARTTLS a bare LF still ends the
// connection and go-smtp's own errors still count toward max_errors.
func TestInspectionAfterStartTLS(t *testing.T) {
	s := startSubmission(t, func(app map[string]any) {
		app["servers"].(map[string]any)["mx"].(map[string]any)["limits"] = map[string]any{"max_errors": 3}
	})
	c := s.login(t, s.mx)
	c.Send("NOOP\n")
	if r := c.Read(); r.Code != 500 {
		t.Fatalf("bare LF under TLS: %s", r)
	}
	if !c.Closed() {
		t.Fatal("connection open after a bare LF under TLS")
	}
	c = s.login(t, s.mx)
	c.Expect("RCPT TO:<alice@example.test>", 503)
	c.Expect("DATA", 503)
	if r := c.Cmd("RCPT TO:<alice@example.test>"); r.Code != 421 {
		t.Fatalf("third error under TLS: %s", r)
	}
	if !c.Closed() {
		t.Fatal("connection open after max_errors under TLS")
	}
}

// TestStartTLSStrict: bytes that are not TLS after the 220 end the
// connection; a stalled handshake is cut off by its timeout; what was
// pipelined after STARTTLS is never executed.
func TestStartTLSStrict(t *testing.T) {
	s := startSubmission(t, func(app map[string]any) {
		app["servers"].(map[string]any)["mx"].(map[string]any)["limits"] = map[string]any{"tls_handshake_timeout": "1s"}
	})
	c, _ := testenv.Dial(t, s.mx)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("STARTTLS", 220)
	c.Send("MAIL FROM:<plaintext@example.org>\r\n")
	if !c.Closed() {
		t.Fatal("plaintext after STARTTLS: connection open")
	}

	c, _ = testenv.Dial(t, s.mx)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("STARTTLS", 220)
	start := time.Now()
	c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.R.ReadByte(); err == nil {
		t.Fatal("server spoke during a stalled handshake")
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("stalled handshake cut after %v, want about 1s", d)
	}
}

// TestHTTPDisconnected: a browser's request is answered with one line and
// the connection ends, before any header line is read as a command.
func TestHTTPDisconnected(t *testing.T) {
	_, addr := startMX(t)
	for _, req := range []string{"GET / HTTP/1.1", "POST /x HTTP/1.1", "CONNECT example.org:25 HTTP/1.1", "Host: example.test"} {
		c, _ := testenv.Dial(t, addr)
		c.Send(req + "\r\nHost: x\r\nMAIL FROM:<a@example.org>\r\n")
		if r := c.Read(); r.Code != 221 {
			t.Errorf("%q: %s", req, r)
		}
		if !c.Closed() {
			t.Errorf("%q: connection open", req)
		}
	}
}

// TestLastReplyReachesClient: the 421 that ends a session full of
// pipelined junk reaches the client instead of a reset.
func TestLastReplyReachesClient(t *testing.T) {
	_, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"max_errors": 2}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Send("FOO\r\nBAR\r\n" + strings.Repeat("JUNK JUNK JUNK JUNK\r\n", 4000))
	if r := c.Read(); r.Code != 500 {
		t.Fatalf("first: %s", r)
	}
	if r := c.Read(); r.Code != 421 {
		t.Fatalf("the closing 421 was lost: %s", r)
	}
}

// TestBarePostmaster: RFC 5321 4.5.1 RCPT TO:<postmaster> without domain.
func TestBarePostmaster(t *testing.T) {
	env, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<Postmaster>", 250)
	c.Expect("DATA", 354)
	c.Send("Subject: to the postmaster\r\n\r\nhi\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatal(r)
	}
	if n := len(aliceMail(t, env)); n != 1 { // alice has postmaster@example.test
		t.Fatalf("postmaster got %d messages", n)
	}
}

// TestForeignFieldsRemoved: header fields this server is the authority
// for are removed from incoming mail before its own are added.
func TestForeignFieldsRemoved(t *testing.T) {
	env, addr := startMX(t, func(app, srv map[string]any) {
		srv["spam"] = map[string]any{"tag_score": 5}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Return-Path: <forged@example.org>\r\n" +
		"Delivered-To: someone@example.test\r\n" +
		"X-Spam-Status: No, score=-100\r\n" +
		"X-Spam-Score: -100\r\n" +
		"Received-SPF: pass (mail.example.test: forged) receiver=mail.example.test; client-ip=192.0.2.1\r\n" +
		"Received-SPF: pass receiver=mx.other.example; client-ip=192.0.2.1\r\n" +
		"Authentication-Results: example.test; dkim=pass\r\n" +
		"Subject: hygiene\r\n\r\nbody\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatal(r)
	}
	files := aliceMail(t, env)
	if len(files) != 1 {
		t.Fatalf("want 1, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	for _, forged := range []string{"forged@example.org", "someone@example.test", "score=-100", "X-Spam-Score: -100", "receiver=mail.example.test", "example.test; dkim=pass"} {
		if strings.Contains(string(got), forged) {
			t.Errorf("forged field kept (%q):\n%s", forged, got)
		}
	}
	if !strings.Contains(string(got), "receiver=mx.other.example") {
		t.Errorf("another server's Received-SPF removed:\n%s", got)
	}
}

// TestLocalSenderSpoofing: an unauthenticated client outside the trusted
// networks may not use a local domain as sender, unless allowed.
func TestLocalSenderSpoofing(t *testing.T) {
	_, addr := startMX(t)
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	if r := c.Cmd("MAIL FROM:<alice@example.test>"); r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.1") {
		t.Fatalf("spoofed local sender: %s", r)
	}
	c.Expect("MAIL FROM:<>", 250) // bounces come from anywhere

	_, addr = startMX(t, func(app, srv map[string]any) { srv["allow_local_senders"] = true })
	c, _ = testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<alice@example.test>", 250)
}

// TestMappedPrefixes: an IPv4-mapped IPv6 prefix in a network list means
// its IPv4 range, or is refused at load naming the field.
func TestMappedPrefixes(t *testing.T) {
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	app := mxApp(env, addr, func(app, srv map[string]any) { srv["trusted_networks"] = []string{"::ffff:0:0/64"} })
	err := env.LoadErr(env.Config(app, nil))
	if err == nil || !strings.Contains(err.Error(), "trusted_networks[0]") {
		t.Fatalf("want an error naming trusted_networks[0], got %v", err)
	}
	app = mxApp(env, addr, func(app, srv map[string]any) {
		srv["trusted_networks"] = []string{"::ffff:127.0.0.0/104"}
		app["outbound"] = map[string]any{"target": "maildir", "root": env.Path("relayed")}
	})
	env.Load(env.Config(app, nil))
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<app@example.org>", 250)
	c.Expect("RCPT TO:<someone@example.org>", 250) // 127.0.0.1 is in ::ffff:127.0.0.0/104
}
