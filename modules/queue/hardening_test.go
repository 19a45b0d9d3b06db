package queue_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/emersion/go-smtp"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/lmtp"
)

// A remote MX that never ends its EHLO reply: the attempt fails with a
// temporary error after the client read a bounded number of bytes (the
// client's count is in the error), and the message stays queued.
func TestHostileMX(t *testing.T) {
	h := newHarness(t, "127.0.0.2", "127.0.0.6")
	h.mx["127.0.0.6"].Close()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.6:%d", h.port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveEndlessReplies(ln)
	h.dns.Add(t, "hostile.example. 300 IN MX 10 mx.hostile.example.", "mx.hostile.example. 300 IN A 127.0.0.6")
	h.queue["retry"] = map[string]any{"initial": "1h", "jitter": -1}
	h.load()
	h.send("alice@example.test", []string{"x@hostile.example"}, message("hostile", "x@hostile.example"))
	var list []queueEntry
	if !testenv.WaitFor(10*time.Second, func() bool {
		list = entries(h)
		return len(list) == 1 && list[0].Attempts == 1
	}) {
		t.Fatalf("no finished attempt: %+v", list)
	}
	m := regexp.MustCompile(`reply too long \(more than \d+ lines; (\d+) bytes read\)`).FindStringSubmatch(list[0].LastError)
	if m == nil {
		t.Fatalf("want a temporary 'reply too long' error, got %q", list[0].LastError)
	}
	const bound = 64<<10 + 8<<10 // maxReplyBytes + two lines of slack
	if n, _ := strconv.Atoi(m[1]); n > bound {
		t.Errorf("the client read %d bytes of the endless reply, more than %d", n, bound)
	}
	if l := h.list(); len(l) != 1 || l[0].Recipients[0].Status != "pending" {
		t.Errorf("want the message still queued (temporary failure), got %+v", l)
	}
}

// serveEndlessReplies greets, then answers EHLO with "250-" lines without
// end, on every connection.
func serveEndlessReplies(ln net.Listener) {
	line := []byte(strings.Repeat("250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n", 64))
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			io.WriteString(conn, "220 hostile.example ESMTP\r\n")
			buf := make([]byte, 512)
			if _, err := conn.Read(buf); err != nil {
				return
			}
			conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
			for {
				if _, err := conn.Write(line); err != nil {
					return
				}
			}
		}()
	}
}

// With allow_private_destinations off, a domain whose MX leads only to
// internal addresses (here 127.0.0.2) gets nothing: the message bounces
// with 5.4.4. A smarthost on an internal address is still used.
func TestPrivateDestinations(t *testing.T) {
	h := newHarness(t)
	h.queue["allow_private_destinations"] = false
	h.load()
	h.send("alice@example.test", []string{"bob@example.org"}, message("to an internal MX", "bob@example.org"))
	h.waitEmpty(10 * time.Second)
	var bounces [][]byte
	if !testenv.WaitFor(5*time.Second, func() bool { bounces = h.aliceMail(); return len(bounces) == 1 }) {
		t.Fatalf("want 1 bounce, got %d", len(bounces))
	}
	if n := len(h.mx["127.0.0.2"].Messages()); n != 0 {
		t.Fatalf("the internal MX got %d messages", n)
	}
	b := string(bounces[0])
	for _, want := range []string{"Final-Recipient: rfc822; bob@example.org", "Action: failed", "Status: 5.4.4",
		"destination address not allowed (private/loopback): mx1.example.org (127.0.0.2)"} {
		if !strings.Contains(b, want) {
			t.Errorf("bounce lacks %q:\n%s", want, b)
		}
	}

	// The administrator's smarthost is used whatever its address.
	h.dns.Add(t, "relay.example.net. 300 IN A 127.0.0.3")
	h.queue["smarthost"] = map[string]any{"address": fmt.Sprintf("relay.example.net:%d", h.port), "tls": "none"}
	h.load()
	h.send("alice@example.test", []string{"carol@example.org"}, message("via an internal relay", "carol@example.org"))
	if !h.mx["127.0.0.3"].WaitMessages(1, 10*time.Second) {
		t.Fatalf("the internal smarthost got nothing: %+v", h.list())
	}
}

// A bounce about mail from a client that neither logged in nor is in
// trusted_networks quotes nothing of it but its Message-ID (no
// backscatter); mail from an account keeps its header in the bounce. The
// entries are put in the spool as the queue writes them (a stranger's
// mail reaches the queue only through other modules).
func TestBounceToStrangerQuotesNothing(t *testing.T) {
	h := newHarness(t)
	mx := h.mx["127.0.0.2"]
	refuse := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
	mx.RcptReplies("nobody1@example.org", refuse)
	mx.RcptReplies("nobody2@example.org", refuse)
	spam := "From: Alice <alice@example.test>\r\nTo: nobody@example.org\r\nSubject: Cheap pills\r\n" +
		"X-Payload: visit spam.example\r\nMessage-ID: <%s@example.test>\r\n\r\nBuy at http://spam.example now\r\n"
	qdir := filepath.Join(h.env.Path("queue"), "queue")
	os.MkdirAll(qdir, 0o700)
	now := time.Now().Format(time.RFC3339)
	for _, e := range []struct{ id, rcpt, account string }{
		{"STRANGER", "nobody1@example.org", ""},
		{"ACCOUNT", "nobody2@example.org", `,"account":"alice@example.test"`},
	} {
		rec := fmt.Sprintf(`CSQ1 {"id":%q,"from":"alice@example.test","rcpts":[{"address":%q}],"received":%q,"queued":%q,"client_ip":"203.0.113.7"%s}`,
			e.id, e.rcpt, now, now, e.account)
		os.WriteFile(filepath.Join(qdir, e.id), []byte(rec+"\n"+fmt.Sprintf(spam, strings.ToLower(e.id))), 0o600)
	}
	h.load()
	h.waitEmpty(10 * time.Second)
	var mail [][]byte
	if !testenv.WaitFor(5*time.Second, func() bool { mail = h.aliceMail(); return len(mail) == 2 }) {
		t.Fatalf("want 2 bounces, got %d", len(mail))
	}
	var stranger, account string
	for _, m := range mail {
		if strings.Contains(string(m), "nobody1@") {
			stranger = string(m)
		} else {
			account = string(m)
		}
	}
	for _, want := range []string{"Final-Recipient: rfc822; nobody1@example.org", "Status: 5.1.1",
		"Diagnostic-Code: smtp; 550 5.1.1 no such user here", "X-Original-Message-ID: <stranger@example.test>"} {
		if !strings.Contains(stranger, want) {
			t.Errorf("bounce to a stranger lacks %q:\n%s", want, stranger)
		}
	}
	for _, unwanted := range []string{"Cheap pills", "spam.example", "X-Payload", "text/rfc822-headers"} {
		if strings.Contains(stranger, unwanted) {
			t.Errorf("bounce to a stranger quotes %q:\n%s", unwanted, stranger)
		}
	}
	for _, want := range []string{"Final-Recipient: rfc822; nobody2@example.org", "Content-Type: text/rfc822-headers", "Subject: Cheap pills"} {
		if !strings.Contains(account, want) {
			t.Errorf("bounce to an account lacks %q:\n%s", want, account)
		}
	}
	if strings.Contains(account, "Buy at") {
		t.Errorf("bounce to an account carries the body:\n%s", account)
	}
}

// The Caddyfile subdirective takes no argument.
func TestCaddyfileAllowPrivateDestinations(t *testing.T) {
	got := adaptCaddyfile(t, []byte("{\n\tsmtp {\n\t\toutbound queue {\n\t\t\tallow_private_destinations\n\t\t}\n\t\tserver mx {\n\t\t\tlisten :2525\n\t\t}\n\t}\n}\n"), true)
	if got["allow_private_destinations"] != true {
		t.Errorf("adapted outbound: %v", got)
	}
	src := "{\n\tsmtp {\n\t\toutbound queue {\n\t\t\tallow_private_destinations yes\n\t\t}\n\t\tserver mx {\n\t\t\tlisten :2525\n\t\t}\n\t}\n}"
	if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil); err == nil || !strings.Contains(err.Error(), "argument") {
		t.Errorf("allow_private_destinations yes: want an argument error, got %v", err)
	}
}

// The way a stranger's mail really gets bounced: an LMTP server refuses
// one local recipient of Internet mail for good (a full mailbox); the
// bounce to the (possibly forged) sender quotes nothing of the message
// but its Message-ID.
func TestLMTPRefusalBounceToStranger(t *testing.T) {
	h := newHarness(t)
	sock := h.env.Path("lmtp.sock")
	startRefusingLMTP(t, sock, "carol@example.test")
	h.app["local_delivery"] = map[string]any{"target": "lmtp", "address": "unix/" + sock}
	h.app["accounts"].(map[string]any)["accounts"] = []any{
		map[string]any{"address": "alice@example.test", "password": aliceHash},
		map[string]any{"address": "carol@example.test"},
	}
	h.load()
	c, greet := testenv.DialFrom(t, "127.0.0.5", h.smtpAddr) // not in trusted_networks
	if greet.Code != 220 {
		t.Fatalf("greeting: %s", greet)
	}
	c.Expect("EHLO stranger.example.org", 250)
	c.StartMessage("victim@example.org", "alice@example.test", "carol@example.test")
	c.Send("Subject: Cheap pills\r\nX-Payload: visit spam.example\r\nMessage-ID: <lmtp-spam@example.org>\r\n\r\nBuy at http://spam.example now\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("end of data: %s", r)
	}
	mx := h.mx["127.0.0.2"] // example.org's MX gets the bounce to victim@example.org
	if !mx.WaitMessages(1, 10*time.Second) {
		t.Fatal("no bounce reached the sender's MX")
	}
	b := mx.Messages()[0]
	if b.From != "" || len(b.To) != 1 || b.To[0] != "victim@example.org" {
		t.Fatalf("bounce envelope: from %q to %v", b.From, b.To)
	}
	data := string(b.Data)
	for _, want := range []string{"Final-Recipient: rfc822; carol@example.test", "Status: 5.2.2",
		"552 mailbox full", "X-Original-Message-ID: <lmtp-spam@example.org>"} {
		if !strings.Contains(data, want) {
			t.Errorf("bounce lacks %q:\n%s", want, data)
		}
	}
	for _, unwanted := range []string{"Cheap pills", "spam.example", "X-Payload", "text/rfc822-headers"} {
		if strings.Contains(data, unwanted) {
			t.Errorf("bounce to a stranger quotes %q:\n%s", unwanted, data)
		}
	}
}

// startRefusingLMTP serves LMTP on a unix socket: every recipient is
// accepted at RCPT, and after the data full gets 552, the others 250.
func startRefusingLMTP(t *testing.T, sock, full string) {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveLMTP(conn, full)
		}
	}()
}

func serveLMTP(conn net.Conn, full string) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	say := func(s string) { io.WriteString(conn, s+"\r\n") }
	say("220 test LMTP")
	var rcpts []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.TrimSpace(line)
		switch up := strings.ToUpper(cmd); {
		case strings.HasPrefix(up, "LHLO"):
			say("250-test\r\n250 PIPELINING")
		case strings.HasPrefix(up, "RCPT TO:"):
			rcpts = append(rcpts, strings.Trim(cmd[len("RCPT TO:"):], "<> "))
			say("250 ok")
		case up == "DATA":
			say("354 go")
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			for _, rc := range rcpts {
				if strings.EqualFold(rc, full) {
					say("552 5.2.2 mailbox full")
				} else {
					say("250 2.0.0 stored")
				}
			}
			rcpts = nil
		case up == "QUIT":
			say("221 bye")
			return
		default: // MAIL, RSET, NOOP
			say("250 ok")
		}
	}
}
