package lmtp_test

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	_ "github.com/caddy-smtp/caddy-smtp/modules/lmtp"
	_ "github.com/caddy-smtp/caddy-smtp/modules/queue"
)

// lmtpServer is a real LMTP server (go-smtp in LMTP mode) on a Unix socket
// that records what it stores and refuses the recipients in refuse.
type lmtpServer struct {
	mu     sync.Mutex
	stored map[string][]string // recipient -> messages
	from   []string
	refuse map[string]bool // 452: temporary
	full   map[string]bool // 552: for good
}

type lmtpSession struct {
	s    *lmtpServer
	from string
	to   []string
}

func (s *lmtpServer) NewSession(*smtp.Conn) (smtp.Session, error) { return &lmtpSession{s: s}, nil }
func (ls *lmtpSession) Reset()                                    { ls.to = nil }
func (ls *lmtpSession) Logout() error                             { return nil }
func (ls *lmtpSession) Mail(from string, _ *smtp.MailOptions) error {
	ls.from = from
	return nil
}
func (ls *lmtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ls.to = append(ls.to, to)
	return nil
}
func (ls *lmtpSession) Data(r io.Reader) error { return fmt.Errorf("not LMTP") }
func (ls *lmtpSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	b, _ := io.ReadAll(r)
	ls.s.mu.Lock()
	defer ls.s.mu.Unlock()
	ls.s.from = append(ls.s.from, ls.from)
	for _, to := range ls.to {
		if ls.s.refuse[to] {
			status.SetStatus(to, &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Mailbox full"})
			continue
		}
		if ls.s.full[to] {
			status.SetStatus(to, &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "Mailbox full for good"})
			continue
		}
		ls.s.stored[to] = append(ls.s.stored[to], string(b))
		status.SetStatus(to, nil)
	}
	return nil
}

func TestLMTPDelivery(t *testing.T) {
	w := newLMTPWorld(t)
	backend := startLMTP(t, w.sock)
	backend.refuse["bob@example.test"] = true

	w.load(false)

	c, _ := testenv.Dial(t, w.addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "postmaster@example.test")
	c.Send("Subject: over lmtp\r\n\r\nhello\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	backend.mu.Lock()
	got := backend.stored["alice@example.test"]
	backend.mu.Unlock()
	if len(got) != 1 || !strings.HasSuffix(got[0], "Subject: over lmtp\r\n\r\nhello\r\n") || !strings.Contains(got[0], "Received: from client.example.org") {
		t.Fatalf("LMTP server got %q", got)
	}

	// A recipient the LMTP server refuses: the client is told to retry.
	c.StartMessage("sender@example.org", "bob@example.test")
	c.Send("Subject: full\r\n\r\nhello\r\n.\r\n")
	if r := c.Read(); r.Code != 451 {
		t.Fatalf("refused by LMTP: want 451, got %s", r)
	}
}

// startLMTP starts the real LMTP server on the Unix socket sock.
func startLMTP(t *testing.T, sock string) *lmtpServer {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	backend := &lmtpServer{stored: map[string][]string{}, refuse: map[string]bool{}, full: map[string]bool{}}
	srv := smtp.NewServer(backend)
	srv.LMTP = true
	srv.Domain = "dovecot.example.test"
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return backend
}

// TestLMTPRefusedForGood: a recipient the LMTP server refuses for good
// gets a bounce (through the queue) to the sender while the others keep
// their copy and the client gets 250; a message refused for its only
// recipient gets the server's 5xx.
func TestLMTPRefusedForGood(t *testing.T) {
	w := newLMTPWorld(t)
	backend := startLMTP(t, w.sock)
	backend.full["carol@example.test"] = true
	w.load(true)

	c, _ := testenv.Dial(t, w.addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("alice@example.test", "bob@example.test", "carol@example.test")
	c.Send("Subject: to bob and carol\r\n\r\nhello\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("one of two refused for good: want 250, got %s", r)
	}
	c.StartMessage("alice@example.test", "carol@example.test")
	c.Send("Subject: to carol\r\n\r\nhello\r\n.\r\n")
	if r := c.Read(); r.Code != 552 {
		t.Fatalf("the only recipient refused for good: want 552, got %s", r)
	}
	bounced := testenv.WaitFor(10*time.Second, func() bool {
		backend.mu.Lock()
		defer backend.mu.Unlock()
		for _, m := range backend.stored["alice@example.test"] {
			if strings.Contains(m, "Final-Recipient: rfc822; carol@example.test") && strings.Contains(m, "Status: 5.2.2") &&
				strings.Contains(m, "Subject: to bob and carol") {
				return true
			}
		}
		return false
	})
	if !bounced {
		t.Fatalf("no bounce for carol reached alice: %q", backend.stored["alice@example.test"])
	}
	backend.mu.Lock()
	defer backend.mu.Unlock()
	if n := len(backend.stored["bob@example.test"]); n != 1 {
		t.Fatalf("bob: %d copies", n)
	}
}

func TestLMTPConfigErrors(t *testing.T) {
	env := testenv.New(t)
	app := map[string]any{
		"local_delivery": map[string]any{"target": "lmtp"},
		"servers":        map[string]any{"mx": map[string]any{"listen": []string{"127.0.0.1:0"}, "hostname": "mail.example.test"}},
	}
	err := env.LoadErr(env.Config(app, nil))
	if err == nil || !strings.Contains(err.Error(), "address") {
		t.Fatalf("want an error naming address, got %v", err)
	}
}
