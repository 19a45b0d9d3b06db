package testenv

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// Helpers shared by the spam-check modules' tests (rbl, spf, helo, dmarc):
// clients from other loopback addresses, and a plain inbound MX config.

// DialFrom connects to addr from the local address from (any of
// 127.0.0.0/8 works on Linux, e.g. "127.0.0.2"), so that tests can present
// different client IPs, and reads the greeting.
func DialFrom(t testing.TB, from, addr string) (*Client, Reply) {
	t.Helper()
	c := DialFromNoGreeting(t, from, addr)
	return c, c.Read()
}

// DialFromNoGreeting is DialFrom without reading anything (a client held
// before its greeting, say).
func DialFromNoGreeting(t testing.TB, from, addr string) *Client {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Client{T: t, Conn: conn, R: bufio.NewReader(conn)}
}

// SpamMXApp is the smtp app config of an inbound MX for example.test on
// addr (hostname mail.example.test, no STARTTLS, one account
// alice@example.test, Maildir under e.Path("maildir")), its resolver on
// dnsAddr, spam thresholds tag 5 and reject 10, and the given handlers.
// The server's config is app["servers"].(map[string]any)["mx"].
func SpamMXApp(e *Env, addr, dnsAddr string, handlers ...any) map[string]any {
	if handlers == nil {
		handlers = []any{}
	}
	return map[string]any{
		"local_domains": []string{"example.test"},
		"accounts": map[string]any{"provider": "static", "accounts": []any{
			map[string]any{"address": "alice@example.test"},
		}},
		"local_delivery": map[string]any{"target": "maildir", "root": e.Path("maildir")},
		"spool_dir":      e.Path("spool"),
		"grace_period":   "2s",
		"resolver":       map[string]any{"servers": []string{dnsAddr}, "timeout": "500ms"},
		"servers": map[string]any{"mx": map[string]any{
			"listen":   []string{addr},
			"hostname": "mail.example.test",
			"tls":      map[string]any{"disable_starttls": true},
			"spam":     map[string]any{"tag_score": 5, "reject_score": 10},
			"handlers": handlers,
		}},
	}
}
