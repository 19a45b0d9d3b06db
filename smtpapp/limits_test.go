package smtpapp_test

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/ban"
)

// The limits that hold with no handler configured (issue: survive the
// hostile Internet), each tried at its edge over real SMTP.

// TestConnectionCeilings: past the per-network ceiling a client gets 421
// 4.7.0 at connect while another address still gets in; past the
// server-wide ceiling everyone does. Closing a connection frees its slot.
func TestConnectionCeilings(t *testing.T) {
	env, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"max_connections_per_ip": 3, "max_connections": 5}
	})
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	var held []*testenv.Client
	for i := 0; i < 3; i++ {
		c, r := testenv.DialFrom(t, "127.0.0.1", addr)
		if r.Code != 220 {
			t.Fatalf("connection %d: %s", i, r)
		}
		held = append(held, c)
	}
	c, r := testenv.DialFrom(t, "127.0.0.1", addr)
	if r.Code != 421 || !strings.HasPrefix(r.Text(), "4.7.0") || !c.Closed() {
		t.Fatalf("fourth connection from one address: %s", r)
	}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		if _, r := testenv.DialFrom(t, ip, "127.0.0.1:"+port); r.Code != 220 {
			t.Fatalf("%s: %s", ip, r)
		}
	}
	if _, r := testenv.DialFrom(t, "127.0.0.4", addr); r.Code != 421 {
		t.Fatalf("sixth connection to the server: %s", r)
	}
	held[0].Expect("QUIT", 221)
	if !testenv.WaitFor(3*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		line := make([]byte, 3)
		io.ReadFull(c, line)
		return string(line) == "220"
	}) {
		t.Fatal("a closed connection did not free its slot")
	}
	if !strings.Contains(metrics(t, env), `reason="max_connections_per_ip"`) {
		t.Fatal("refusal not counted")
	}
}

// TestCeilingBeforeTLS: on the implicit-TLS port the ceiling answers in
// plaintext before any handshake (no TLS work for a refused client).
func TestCeilingBeforeTLS(t *testing.T) {
	s := startSubmission(t, func(app map[string]any) {
		app["servers"].(map[string]any)["submissions"].(map[string]any)["limits"] = map[string]any{"max_connections_per_ip": 1}
	})
	held, err := tls.Dial("tcp", s.subs, s.tlsConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	c := testenv.DialNoGreeting(t, s.subs)
	if r := c.Read(); r.Code != 421 {
		t.Fatalf("over the ceiling on the implicit-TLS port: %s", r)
	}
}

// TestHandshakeTimeout: an implicit-TLS client that never says hello is
// cut off by the handshake timeout, not by the 5 minute read timeout.
func TestHandshakeTimeout(t *testing.T) {
	s := startSubmission(t, func(app map[string]any) {
		app["servers"].(map[string]any)["submissions"].(map[string]any)["limits"] = map[string]any{"tls_handshake_timeout": "1s"}
	})
	c := testenv.DialNoGreeting(t, s.subs)
	start := time.Now()
	c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.R.ReadByte(); err == nil {
		t.Fatal("server sent something to a silent TLS client")
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("silent TLS client kept %v", d)
	}
}

// TestJunkCommands: commands that move no mail are limited.
func TestJunkCommands(t *testing.T) {
	_, addr := startMX(t, func(app, srv map[string]any) {
		srv["limits"] = map[string]any{"max_junk_commands": 5}
	})
	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	for _, cmd := range []string{"NOOP", "RSET", "VRFY alice", "NOOP", "EHLO again.example.org"} {
		if r := c.Cmd(cmd); r.Code >= 400 {
			t.Fatalf("%s: %s", cmd, r)
		}
	}
	if r := c.Cmd("NOOP"); r.Code != 421 {
		t.Fatalf("sixth junk command: %s", r)
	}
	if !c.Closed() {
		t.Fatal("connection open past the junk limit")
	}
}

// TestAuthFailuresAcrossConnections: failed logins from one network are
// counted across connections with no handler; past the limit even the
// right password is refused.
func TestAuthFailuresAcrossConnections(t *testing.T) {
	s := startSubmission(t, func(app map[string]any) {
		app["servers"].(map[string]any)["submission"].(map[string]any)["limits"] = map[string]any{"max_auth_failures_per_ip": 3}
	})
	for i := 0; i < 3; i++ {
		c := s.login(t, s.sub)
		c.Expect("AUTH PLAIN "+plain("", "alice@example.test", "wrong"), 535)
		c.Conn.Close()
	}
	c := s.login(t, s.sub)
	r := c.Cmd("AUTH PLAIN " + plain("", "alice@example.test", "demo-alice"))
	if r.Code != 421 || !strings.HasPrefix(r.Text(), "4.7.0") {
		t.Fatalf("AUTH past the per-network limit: %s", r)
	}
}

// TestBodyMemoryBudget: once the app's budget is taken, bodies go to the
// spool at once; the messages are still stored whole.
func TestBodyMemoryBudget(t *testing.T) {
	env, addr := startMX(t, func(app, srv map[string]any) {
		app["body_memory"] = 64 * 1024
		srv["limits"] = map[string]any{"max_message_size": 1 << 20}
	})
	body := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 1000) // 80 KB
	var clients []*testenv.Client
	for i := 0; i < 4; i++ {
		c, _ := testenv.Dial(t, addr)
		c.Expect("EHLO client.example.org", 250)
		c.StartMessage("sender@example.org", "alice@example.test")
		c.Send(body)
		clients = append(clients, c)
	}
	// Four bodies held open, each over the whole budget: all spooled.
	if !testenv.WaitFor(5*time.Second, func() bool {
		entries, _ := os.ReadDir(env.Path("spool"))
		return len(entries) == 4
	}) {
		entries, _ := os.ReadDir(env.Path("spool"))
		t.Fatalf("want 4 spool files for bodies over the budget, got %d", len(entries))
	}
	for _, c := range clients {
		c.Send(".\r\n")
		if r := c.Read(); r.Code != 250 {
			t.Fatal(r)
		}
	}
	files := aliceMail(t, env)
	if len(files) != 4 {
		t.Fatalf("want 4 messages, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	if !strings.HasSuffix(string(got), body) {
		t.Fatal("spooled body changed")
	}
}

func metrics(t *testing.T, env *testenv.Env) string {
	t.Helper()
	resp, err := http.Get("http://" + env.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
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

// TestConnectHooksBeforeTLS: on the implicit-TLS port a banned client is
// refused before any handshake: it costs the server no TLS work.
func TestConnectHooksBeforeTLS(t *testing.T) {
	s := startSubmission(t, func(app map[string]any) {
		app["servers"].(map[string]any)["submissions"].(map[string]any)["handlers"] = []any{
			map[string]any{"handler": "ban", "block": []string{"127.0.0.1/32"}},
		}
	})
	c := testenv.DialNoGreeting(t, s.subs)
	c.Conn.Write([]byte("\x16\x03\x01\x00\x05hello")) // the start of a ClientHello
	c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.R)
	if len(b) != 0 || err != nil && !isReset(err) {
		t.Fatalf("banned client got %q (%v): want the connection closed with no handshake", b, err)
	}
	if _, err := tls.Dial("tcp", s.subs, s.tlsConfig); err == nil {
		t.Fatal("TLS handshake completed for a banned client")
	}
}

func isReset(err error) bool { return strings.Contains(err.Error(), "reset") }
