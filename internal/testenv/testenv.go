// Package testenv starts the real parts that end-to-end tests need: a Caddy
// instance with a JSON config on loopback, a DNS server, and raw SMTP
// clients. Nothing here is a mock.
package testenv

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	// The standard modules, as in cmd/caddy: storage, tls, pki, admin API.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// The kernel may hand a port just closed out again: a test asking
		// for two (an MX and a submission port) could get the same twice.
		if !portsGiven[port] {
			portsGiven[port] = true
			return port
		}
	}
}

// portsGiven are the ports FreePort handed out in this test process.
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// Env is one test's Caddy: its storage folder and admin address.
type Env struct {
	T       testing.TB
	Dir     string // scratch folder: storage, maildirs, spools
	Admin   string // admin API address (host:port)
	Storage string
}

// New makes an Env with its own folders and admin port; Caddy is stopped
// when the test ends.
func New(t testing.TB) *Env {
	t.Helper()
	dir := t.TempDir()
	e := &Env{T: t, Dir: dir, Admin: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), Storage: filepath.Join(dir, "caddy")}
	t.Cleanup(func() { caddy.Stop() })
	return e
}

// Config wraps the smtp app's config (a value that marshals to its JSON)
// with the test's storage, admin address and an internal CA that never
// touches the system trust store. Extra apps may be given by name.
func (e *Env) Config(smtpApp any, extraApps map[string]any) []byte {
	apps := map[string]any{
		"smtp": smtpApp,
		"pki": map[string]any{"certificate_authorities": map[string]any{
			"local": map[string]any{"install_trust": false},
		}},
	}
	for k, v := range extraApps {
		apps[k] = v
	}
	cfg := map[string]any{
		"admin":   map[string]any{"listen": e.Admin, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": e.Storage},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": logLevel()}}},
		"apps":    apps,
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		e.T.Fatal(err)
	}
	return b
}

func logLevel() string {
	if l := os.Getenv("SMTP_TEST_LOG"); l != "" {
		return l
	}
	return "ERROR"
}

// Load loads a config into the running Caddy (starting it the first time),
// failing the test on error.
func (e *Env) Load(cfg []byte) {
	e.T.Helper()
	if err := caddy.Load(cfg, true); err != nil {
		e.T.Fatalf("loading config: %v\n%s", err, cfg)
	}
}

// LoadErr loads a config and returns the error.
func (e *Env) LoadErr(cfg []byte) error { return caddy.Load(cfg, true) }

// RootCAs returns a pool with the internal CA's root, for TLS clients.
func (e *Env) RootCAs() *x509.CertPool {
	e.T.Helper()
	pem, err := os.ReadFile(filepath.Join(e.Storage, "pki", "authorities", "local", "root.crt"))
	if err != nil {
		e.T.Fatalf("reading internal CA root: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}

// Path returns a path in the test's folder.
func (e *Env) Path(elem ...string) string { return filepath.Join(append([]string{e.Dir}, elem...)...) }

// Client is a raw SMTP client line by line: it sends exactly the bytes it
// is given, so tests can send what a real client library never would.
type Client struct {
	T    testing.TB
	Conn net.Conn
	R    *bufio.Reader
}

// Dial connects to addr and reads the greeting (the greeting's code is in
// the returned Reply; use DialNoGreeting to read it yourself).
func Dial(t testing.TB, addr string) (*Client, Reply) {
	t.Helper()
	c := DialNoGreeting(t, addr)
	return c, c.Read()
}

// DialNoGreeting connects without reading anything.
func DialNoGreeting(t testing.TB, addr string) *Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Client{T: t, Conn: conn, R: bufio.NewReader(conn)}
}

// Reply is one (possibly multi-line) SMTP reply.
type Reply struct {
	Code  int
	Lines []string // text of each line, without the code
	Err   error    // set when the connection failed instead
}

// Text joins the lines.
func (r Reply) Text() string { return strings.Join(r.Lines, "\n") }

func (r Reply) String() string {
	if r.Err != nil {
		return "error: " + r.Err.Error()
	}
	return fmt.Sprintf("%d %s", r.Code, r.Text())
}

// Send writes raw bytes.
func (c *Client) Send(raw string) {
	c.T.Helper()
	c.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Conn.Write([]byte(raw)); err != nil {
		c.T.Fatalf("write: %v", err)
	}
}

// Read reads one reply (waiting up to 20s).
func (c *Client) Read() Reply {
	c.Conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	var r Reply
	for {
		line, err := c.R.ReadString('\n')
		if err != nil {
			r.Err = err
			return r
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			r.Err = fmt.Errorf("short reply line %q", line)
			return r
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			r.Err = fmt.Errorf("bad reply line %q", line)
			return r
		}
		r.Code = code
		if len(line) > 4 {
			r.Lines = append(r.Lines, line[4:])
		} else {
			r.Lines = append(r.Lines, "")
		}
		if len(line) == 3 || line[3] == ' ' {
			return r
		}
	}
}

// Cmd sends a line (CRLF added) and reads the reply.
func (c *Client) Cmd(line string) Reply {
	c.T.Helper()
	c.Send(line + "\r\n")
	return c.Read()
}

// Expect sends a line and fails the test unless the reply has code.
func (c *Client) Expect(line string, code int) Reply {
	c.T.Helper()
	r := c.Cmd(line)
	if r.Code != code {
		c.T.Fatalf("%q: want %d, got %s", line, code, r)
	}
	return r
}

// StartTLS upgrades the connection (after a 220 to STARTTLS).
func (c *Client) StartTLS(cfg *tls.Config) *tls.ConnectionState {
	c.T.Helper()
	c.Expect("STARTTLS", 220)
	tc := tls.Client(c.Conn, cfg)
	if err := tc.Handshake(); err != nil {
		c.T.Fatalf("TLS handshake: %v", err)
	}
	c.Conn = tc
	c.R = bufio.NewReader(tc)
	st := tc.ConnectionState()
	return &st
}

// Closed reports whether the server closed the connection (reading EOF or
// a reset within a short time).
func (c *Client) Closed() bool {
	c.Conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := c.R.ReadByte()
	if err == nil {
		return false
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// Maildir lists the files in a Maildir's new/ folder.
func Maildir(t testing.TB, root, domain, local string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, domain, local, "new"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, filepath.Join(root, domain, local, "new", e.Name()))
	}
	return out
}

// MaildirTexts returns the messages stored in the given folders (as
// Maildir takes them, e.g. "alice" and "alice/.Junk"), read whole.
func MaildirTexts(t testing.TB, root, domain string, folders ...string) []string {
	t.Helper()
	var out []string
	for _, folder := range folders {
		for _, f := range Maildir(t, root, domain, folder) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, string(b))
		}
	}
	return out
}

// WaitFor polls cond every 20ms until it is true or timeout passes.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}

// WaitForCertificate waits until the SMTP server on addr completes a
// STARTTLS handshake with cfg (the certificate is issued in the background
// after the listeners bind, and cached a moment after it is stored).
func WaitForCertificate(t testing.TB, addr string, cfg *tls.Config) {
	t.Helper()
	var last error
	ok := WaitFor(15*time.Second, func() bool {
		last = tryStartTLS(addr, cfg)
		return last == nil
	})
	if !ok {
		t.Fatalf("no TLS on %s: %v", addr, last)
	}
}

func tryStartTLS(addr string, cfg *tls.Config) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	readReply := func() (string, error) {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return "", err
			}
			if len(line) < 4 || line[3] == ' ' {
				return line, nil
			}
		}
	}
	if _, err := readReply(); err != nil {
		return err
	}
	for _, cmd := range []string{"EHLO wait.example\r\n", "STARTTLS\r\n"} {
		if _, err := conn.Write([]byte(cmd)); err != nil {
			return err
		}
		line, err := readReply()
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, "2") {
			return fmt.Errorf("%q: %s", cmd, line)
		}
	}
	tc := tls.Client(conn, cfg)
	return tc.Handshake()
}

// StartMessage sends MAIL FROM and RCPT TO for each recipient, then DATA,
// failing the test unless they get 250 and 354: the message text follows.
func (c *Client) StartMessage(from string, to ...string) {
	c.T.Helper()
	c.Expect("MAIL FROM:<"+from+">", 250)
	for _, rcpt := range to {
		c.Expect("RCPT TO:<"+rcpt+">", 250)
	}
	c.Expect("DATA", 354)
}
