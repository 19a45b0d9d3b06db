package lmtp_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// lmtpWorld is a test's Caddy, the LMTP server's socket path and the
// address of the MX that delivers to it.
type lmtpWorld struct {
	t          *testing.T
	env        *testenv.Env
	sock, addr string
}

func newLMTPWorld(t *testing.T) *lmtpWorld {
	env := testenv.New(t)
	return &lmtpWorld{t: t, env: env, sock: env.Path("lmtp.sock"), addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
}

// load starts the MX: local delivery over LMTP, and with outbound the
// queue (which bounces what LMTP refuses for good).
func (w *lmtpWorld) load(outbound bool) {
	w.env.Load(w.env.Config(lmtpApp(w.env, w.sock, w.addr, outbound), nil))
}

func lmtpApp(env *testenv.Env, sock, addr string, outbound bool) map[string]any {
	app := map[string]any{
		"local_domains": []string{"example.test"},
		"accounts": map[string]any{"provider": "static", "accounts": []any{
			map[string]any{"address": "alice@example.test", "aliases": []string{"postmaster@example.test"}},
			map[string]any{"address": "bob@example.test"}, map[string]any{"address": "carol@example.test"},
		}},
		"local_delivery": map[string]any{"target": "lmtp", "address": "unix/" + sock},
		"spool_dir":      env.Path("spool"),
		"servers": map[string]any{"mx": map[string]any{
			"listen": []string{addr}, "hostname": "mail.example.test", "tls": map[string]any{"disable_starttls": true},
			"trusted_networks": []string{"127.0.0.1/32"},
		}},
	}
	if outbound {
		app["outbound"] = map[string]any{"target": "queue", "path": env.Path("queue"), "dkim": map[string]any{"disable": true},
			"retry": map[string]any{"initial": "1h", "max": "1h"}}
	}
	return app
}

// An LMTP server that answers 250 for the first recipient, 552 for the
// second, then drops the connection before the third reply.
func TestLMTPDropAfterPartial(t *testing.T) {
	world := newLMTPWorld(t)
	ln, err := net.Listen("unix", world.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func(conn net.Conn) {
				defer conn.Close()
				r := bufio.NewReader(conn)
				w := func(s string) { conn.Write([]byte(s + "\r\n")) }
				w("220 fake LMTP")
				nr := 0
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					cmd := strings.ToUpper(strings.TrimSpace(line))
					switch {
					case strings.HasPrefix(cmd, "LHLO"):
						w("250-fake\r\n250 PIPELINING")
					case strings.HasPrefix(cmd, "MAIL"):
						w("250 ok")
					case strings.HasPrefix(cmd, "RCPT"):
						nr++
						w("250 ok")
					case cmd == "DATA":
						w("354 go")
						for {
							l, err := r.ReadString('\n')
							if err != nil || l == ".\r\n" {
								break
							}
						}
						w("250 2.0.0 stored alice")
						w("552 5.2.2 carol full")
						return // drop before the third reply
					default:
						w("250 ok")
					}
				}
			}(conn)
		}
	}()
	world.load(true)
	c, _ := testenv.Dial(t, world.addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test", "carol@example.test", "bob@example.test")
	c.Send("Subject: x\r\n\r\nhello\r\n.\r\n")
	r := c.Read()
	t.Logf("reply: %s", r)
	if r.Code != 451 {
		t.Fatalf("want 451 (bob's LMTP reply was never read: the connection dropped), got %s", r)
	}
}

// Mixed local+remote: every local recipient refused for good gives the
// client 250: the remote recipient is queued, the local one bounced.
func TestMixedAllLocalRefused(t *testing.T) {
	w := newLMTPWorld(t)
	backend := startLMTP(t, w.sock)
	backend.full["carol@example.test"] = true
	w.load(true)
	c, _ := testenv.Dial(t, w.addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "carol@example.test", "someone@example.org")
	c.Send("Subject: x\r\n\r\nhello\r\n.\r\n")
	r := c.Read()
	entries, _ := os.ReadDir(filepath.Join(w.env.Path("queue"), "queue"))
	// The remote recipient is queued, carol's refusal bounced: 250.
	if r.Code != 250 || len(entries) < 1 {
		t.Fatalf("reply %s, %d queue entries: the remote recipient must still be queued", r, len(entries))
	}
}

// No Bouncer (no outbound): once some recipients have their copy, the
// message is accepted (250) rather than 451, which would have the client
// send it again and again.
func TestPartialNoBouncerAccepts(t *testing.T) {
	w := newLMTPWorld(t)
	backend := startLMTP(t, w.sock)
	backend.full["carol@example.test"] = true
	w.load(false)
	c, _ := testenv.Dial(t, w.addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "bob@example.test", "carol@example.test")
	c.Send("Subject: x\r\n\r\nhello\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("partial delivery without a queue: want 250, got %s", r)
	}
	backend.mu.Lock()
	defer backend.mu.Unlock()
	if n := len(backend.stored["bob@example.test"]); n != 1 {
		t.Fatalf("bob got %d copies", n)
	}
}

var _ = time.Second
