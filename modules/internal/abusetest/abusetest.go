// Package abusetest holds what the tests of the abuse modules (ratelimit,
// tarpit, ban) share: the app config of a small MX, clients that dial
// from a chosen loopback address, and admin API calls.
package abusetest

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// AliceHash is the bcrypt hash of alice's password, "demo-alice".
const AliceHash = "$2a$10$6jgH4C347SKTxHE7VlXyvelsUdMGEQ3kgJM74mhrsF2/2Cq.BILyG"

// App is the smtp app config of an inbound MX for example.test on addr,
// with the given handlers. Options change the server's config.
func App(env *testenv.Env, addr string, handlers []any, opts ...func(srv map[string]any)) map[string]any {
	srv := map[string]any{
		"listen":   []string{addr},
		"hostname": "mail.example.test",
		"tls":      map[string]any{"disable_starttls": true},
		"limits":   map[string]any{"max_errors": 100, "max_auth_failures": 100},
		"handlers": handlers,
	}
	for _, o := range opts {
		o(srv)
	}
	return map[string]any{
		"local_domains": []string{"example.test"},
		"accounts": map[string]any{"provider": "static", "accounts": []any{
			map[string]any{"address": "alice@example.test", "password": AliceHash},
		}},
		"local_delivery": map[string]any{"target": "maildir", "root": env.Path("maildir")},
		"spool_dir":      env.Path("spool"),
		"grace_period":   "2s",
		"servers":        map[string]any{"mx": srv},
	}
}

// WithTLS makes the server offer STARTTLS with a certificate from the
// internal CA (needed for AUTH).
func WithTLS(srv map[string]any) { srv["tls"] = map[string]any{"issuer": "internal"} }

// Addr is a fresh 127.0.0.1 address for a server.
func Addr(t testing.TB) string { return fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) }

// DialFrom connects to addr from the loopback address from (127.0.0.x
// are distinct client addresses on Linux), without reading anything.
func DialFrom(t testing.TB, from, addr string) *testenv.Client {
	t.Helper()
	c, err := TryDialFrom(from, addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { c.Close() })
	return &testenv.Client{T: t, Conn: c, R: bufio.NewReader(c)}
}

// TryDialFrom dials addr from the address from.
func TryDialFrom(from, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return d.Dial("tcp", addr)
}

// Greet dials from an address and returns the client and the greeting.
func Greet(t testing.TB, from, addr string) (*testenv.Client, testenv.Reply) {
	t.Helper()
	c := DialFrom(t, from, addr)
	return c, c.Read()
}

// StartTLS says EHLO, upgrades with the test's internal CA and says EHLO
// again.
func StartTLS(t testing.TB, env *testenv.Env, c *testenv.Client) {
	t.Helper()
	// The certificate is issued in the background after the listeners bind.
	WaitCertificate(t, env)
	probeTLS(t, env, c.Conn.RemoteAddr().String())
	c.Expect("EHLO client.example.org", 250)
	c.StartTLS(&tls.Config{RootCAs: env.RootCAs(), ServerName: "mail.example.test"})
	c.Expect("EHLO client.example.org", 250)
}

// AuthPlain sends AUTH PLAIN with user and password and returns the reply.
func AuthPlain(c *testenv.Client, user, pass string) testenv.Reply {
	c.T.Helper()
	return c.Cmd("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)))
}

// Send runs one transaction; it returns the first reply that is not a
// success (or the final 250).
func Send(c *testenv.Client, from string, rcpts []string, body string) testenv.Reply {
	c.T.Helper()
	if r := c.Cmd("MAIL FROM:<" + from + ">"); r.Code != 250 {
		return r
	}
	for _, to := range rcpts {
		if r := c.Cmd("RCPT TO:<" + to + ">"); r.Code != 250 {
			c.Cmd("RSET")
			return r
		}
	}
	if r := c.Cmd("DATA"); r.Code != 354 {
		return r
	}
	c.Send(body + ".\r\n")
	return c.Read()
}

// Admin calls the admin API and returns the status and body.
func Admin(t testing.TB, env *testenv.Env, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+env.Admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// MetricValue returns the sum of the values of Metric's lines (0 for
// none). The collectors are package-level, so tests compare values
// before and after.
func MetricValue(t testing.TB, env *testenv.Env, name string, labels ...string) float64 {
	t.Helper()
	var sum float64
	for _, line := range Metric(t, env, name, labels...) {
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

var tlsReady sync.Map // *testenv.Env -> true

// probeTLS waits until a STARTTLS handshake with the server succeeds (the
// certificate is cached a moment after it is stored), from 127.0.0.250,
// an address the tests do not otherwise use.
func probeTLS(t testing.TB, env *testenv.Env, addr string) {
	t.Helper()
	if _, ok := tlsReady.Load(env); ok {
		return
	}
	cfg := &tls.Config{RootCAs: env.RootCAs(), ServerName: "mail.example.test"}
	var last error
	ok := testenv.WaitFor(10*time.Second, func() bool {
		conn, err := TryDialFrom("127.0.0.250", addr)
		if err != nil {
			last = err
			return false
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(conn)
		for _, cmd := range []string{"", "EHLO probe.example.org\r\n", "STARTTLS\r\n"} {
			if cmd != "" {
				conn.Write([]byte(cmd))
			}
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					last = err
					return false
				}
				if len(line) < 4 || line[3] == ' ' {
					break
				}
			}
		}
		last = tls.Client(conn, cfg).Handshake()
		return last == nil
	})
	if !ok {
		t.Fatalf("STARTTLS never worked: %v", last)
	}
	tlsReady.Store(env, true)
}

// WaitCertificate waits until the internal CA issued mail.example.test's
// certificate and let go of its lock (so that the test's folder can be
// removed).
func WaitCertificate(t testing.TB, env *testenv.Env) {
	t.Helper()
	ok := testenv.WaitFor(10*time.Second, func() bool {
		_, err := os.Stat(env.Path("caddy", "certificates", "local", "mail.example.test", "mail.example.test.crt"))
		locks, _ := filepath.Glob(env.Path("caddy", "locks", "*"))
		return err == nil && len(locks) == 0
	})
	if !ok {
		t.Fatal("no certificate issued")
	}
}

// Metric returns the metric lines (from the admin API's /metrics) that
// start with name and contain every one of the label strings.
func Metric(t testing.TB, env *testenv.Env, name string, labels ...string) []string {
	t.Helper()
	_, body := Admin(t, env, "GET", "/metrics")
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}
