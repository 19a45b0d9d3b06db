package caddyfile_test

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// TestThreeLineDefaults: the three-line config of the README (its golden
// JSON is testdata/defaults.txt) runs, with only what a test must change
// overridden in its JSON: loopback ports, the internal CA, the test's DNS
// and folders. The default handlers are in force on the MX (tarpit,
// helo, spf, spam headers) and submission relays through the default
// outbound queue.
func TestThreeLineDefaults(t *testing.T) {
	env := testenv.New(t)
	dnsSrv := testenv.StartDNS(t)
	dnsSrv.Add(t, "example.org. 300 IN MX 10 mx.example.org.", "mx.example.org. 300 IN A 192.0.2.10",
		`example.org. 300 IN TXT "v=spf1 ~all"`)
	users := env.Path("mail-users")
	// alice = demo-alice (bcrypt)
	if err := os.WriteFile(users, []byte("alice@example.com:$2a$10$6jgH4C347SKTxHE7VlXyvelsUdMGEQ3kgJM74mhrsF2/2Cq.BILyG\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	caddyfileText := fmt.Sprintf("{\n\tsmtp {\n\t\tlocal_domains example.com\n\t\taccounts file %s\n\t}\n}\n", users)
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), nil)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps map[string]map[string]any `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	app := cfg.Apps["smtp"]
	servers := app["servers"].(map[string]any)
	if len(servers) != 3 {
		t.Fatalf("want the 3 default servers, got %v", servers)
	}
	addr := map[string]string{}
	for name, s := range servers {
		srv := s.(map[string]any)
		addr[name] = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		srv["listen"] = []string{addr[name]}
		srv["tls"] = map[string]any{"issuer": "internal"}
	}
	app["resolver"] = map[string]any{"servers": []string{dnsSrv.Addr}, "timeout": "2s"}
	app["local_delivery"] = map[string]any{"target": "maildir", "root": env.Path("maildir")}
	app["spool_dir"] = env.Path("spool")
	outbound := app["outbound"].(map[string]any)
	if outbound["target"] != "queue" {
		t.Fatalf("default outbound: %v", outbound)
	}
	outbound["path"] = env.Path("queue")
	outbound["allow_private_destinations"] = true
	env.Load(env.Config(app, nil))

	// Tarpit: a client that talks before the 2s greeting is refused.
	early := testenv.DialNoGreeting(t, addr["mx"])
	early.Send("EHLO early.example.org\r\n")
	if r := early.Read(); r.Code != 554 {
		t.Fatalf("early talker: want 554, got %s", r)
	}

	// helo: a client (from 127.0.0.2) that claims to be this server.
	forged := dialFrom(t, "127.0.0.2", addr["mx"])
	if r := forged.Read(); r.Code != 220 {
		t.Fatalf("greeting: %s", r)
	}
	forged.Expect("EHLO mail.example.com", 250)
	forged.Expect("MAIL FROM:<someone@example.org>", 250)
	if r := forged.Cmd("RCPT TO:<alice@example.com>"); r.Code != 550 {
		t.Fatalf("forged HELO: RCPT want 550, got %s", r)
	}

	// A message from the Internet, with the checks' header fields.
	start := time.Now()
	c, greet := testenv.Dial(t, addr["mx"])
	if greet.Code != 220 || time.Since(start) < 1500*time.Millisecond {
		t.Fatalf("greeting %s after %v (want 220 after the 2s tarpit)", greet, time.Since(start))
	}
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("someone@example.org", "alice@example.com")
	c.Send("From: <someone@example.org>\r\nSubject: hi\r\n\r\nhello\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	files := testenv.Maildir(t, env.Path("maildir"), "example.com", "alice")
	if len(files) != 1 {
		t.Fatalf("alice: want 1 message, got %v", files)
	}
	body, _ := os.ReadFile(files[0])
	for _, field := range []string{"Received-SPF: softfail", "Authentication-Results:", "X-Spam-Score:"} {
		if !strings.Contains(string(body), field) {
			t.Errorf("stored message lacks %q:\n%s", field, body)
		}
	}

	// Submission: hostname mail.example.com, STARTTLS, AUTH required, and
	// mail to another domain goes to the default queue.
	roots := env.RootCAs
	if !testenv.WaitFor(10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(env.Storage, "pki", "authorities", "local", "root.crt"))
		return err == nil
	}) {
		t.Fatal("no internal CA")
	}
	tlsConfig := &tls.Config{RootCAs: roots(), ServerName: "mail.example.com"}
	testenv.WaitForCertificate(t, addr["submission"], tlsConfig)
	s, _ := testenv.Dial(t, addr["submission"])
	s.Expect("EHLO client.example.org", 250)
	s.StartTLS(tlsConfig)
	s.Expect("EHLO client.example.org", 250)
	s.Expect("MAIL FROM:<alice@example.com>", 530)
	s.Expect("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice@example.com\x00demo-alice")), 235)
	s.StartMessage("alice@example.com", "bob@example.org")
	s.Send("From: <alice@example.com>\r\nSubject: out\r\n\r\nhi bob\r\n.\r\n")
	if r := s.Read(); r.Code != 250 {
		t.Fatalf("submission DATA: %s", r)
	}

	// Implicit TLS on the third server.
	conn, err := tls.Dial("tcp", addr["submissions"], tlsConfig)
	if err != nil {
		t.Fatalf("implicit TLS: %v", err)
	}
	ss := &testenv.Client{T: t, Conn: conn, R: bufio.NewReader(conn)}
	t.Cleanup(func() { conn.Close() })
	if r := ss.Read(); r.Code != 220 || !strings.Contains(r.Text(), "mail.example.com") {
		t.Fatalf("greeting on submissions: %s", r)
	}
}

func dialFrom(t *testing.T, local, addr string) *testenv.Client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, local, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &testenv.Client{T: t, Conn: conn, R: bufio.NewReader(conn)}
}
