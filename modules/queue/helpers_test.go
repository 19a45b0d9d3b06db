package queue_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
	"github.com/caddy-smtp/caddy-smtp/modules/queue"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

const aliceHash = "$2a$10$6jgH4C347SKTxHE7VlXyvelsUdMGEQ3kgJM74mhrsF2/2Cq.BILyG" // demo-alice

// harness is one test's world: Caddy with the smtp app and the queue, a
// DNS server, and remote MX hosts on 127.0.0.x sharing one port.
type harness struct {
	t        testing.TB
	env      *testenv.Env
	dns      *testenv.DNS
	smtpAddr string
	port     int
	mx       map[string]*testenv.MX // by IP
	queue    map[string]any         // the outbound config, changed before load
	app      map[string]any
}

// newHarness starts DNS and one MX per IP (127.0.0.2 is mx1.example.org,
// the MX of example.org; 127.0.0.3 is mx2.example.net, of example.net).
func newHarness(t testing.TB, ips ...string) *harness {
	t.Helper()
	if len(ips) == 0 {
		ips = []string{"127.0.0.2", "127.0.0.3"}
	}
	h := &harness{t: t, env: testenv.New(t), dns: startDNS(t), mx: map[string]*testenv.MX{}}
	mxs, port := testenv.StartMXs(t, ips, testenv.MXOptions{})
	for i, m := range mxs {
		h.mx[ips[i]] = m
	}
	h.port = port
	h.dns.Add(t,
		"example.org. 300 IN MX 10 mx1.example.org.",
		"mx1.example.org. 300 IN A 127.0.0.2",
		"example.net. 300 IN MX 10 mx2.example.net.",
		"mx2.example.net. 300 IN A 127.0.0.3",
	)
	h.smtpAddr = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	h.queue = map[string]any{
		"target":      "queue",
		"path":        h.env.Path("queue"),
		"remote_port": port,
		"retry":       map[string]any{"initial": "200ms", "max": "1s", "jitter": -1},
		"dkim":        map[string]any{"key_type": "ed25519"},
		"timeouts":    map[string]any{"connect": "2s", "command": "10s", "data": "10s"},
		// The test MX hosts are on 127.0.0.x.
		"allow_private_destinations": true,
	}
	h.app = map[string]any{
		"local_domains": []string{"example.test"},
		"accounts": map[string]any{"provider": "static", "accounts": []any{
			map[string]any{"address": "alice@example.test", "password": aliceHash},
		}},
		"local_delivery": map[string]any{"target": "maildir", "root": h.env.Path("maildir")},
		"outbound":       h.queue,
		"resolver":       map[string]any{"servers": []string{h.dns.Addr}, "timeout": "2s"},
		"spool_dir":      h.env.Path("spool"),
		"grace_period":   "5s",
		"servers": map[string]any{"mx": map[string]any{
			"listen":           []string{h.smtpAddr},
			"hostname":         "mail.example.test",
			"trusted_networks": []string{"127.0.0.1/32"},
			"tls":              map[string]any{"disable_starttls": true},
		}},
	}
	return h
}

// startDNS retries testenv.StartDNS: it takes a UDP port from the kernel
// and fails when the same TCP port is taken (often, on a machine busy
// with loopback connections, as the ports come from the ephemeral range).
func startDNS(t testing.TB) *testenv.DNS {
	t.Helper()
	for try := 0; ; try++ {
		tt := &retryTB{TB: t, last: try == 9}
		var d *testenv.DNS
		done := make(chan struct{})
		go func() {
			defer close(done)
			d = testenv.StartDNS(tt)
		}()
		<-done
		if d != nil {
			return d
		}
	}
}

// retryTB turns a fatal failure into a retry, except on the last try.
type retryTB struct {
	testing.TB
	last bool
}

func (r *retryTB) Fatal(args ...any) {
	if r.last {
		r.TB.Fatal(args...)
	}
	r.TB.Log(args...)
	runtime.Goexit()
}

func (r *retryTB) Fatalf(format string, args ...any) {
	if r.last {
		r.TB.Fatalf(format, args...)
	}
	r.TB.Logf("retrying: "+format, args...)
	runtime.Goexit()
}

func (h *harness) config() []byte { return h.env.Config(h.app, nil) }

func (h *harness) load() { h.t.Helper(); h.env.Load(h.config()) }

// message is a test message from alice.
func message(subject string, to ...string) string {
	return "From: Alice <alice@example.test>\r\n" +
		"To: " + strings.Join(to, ", ") + "\r\n" +
		"Subject: " + subject + "\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\n" +
		"Message-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@example.test>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"\r\n" +
		"Hello,\r\n..a line with a leading dot\r\n\r\nbye\r\n"
}

// send submits a message over SMTP (trusted network, no AUTH) and returns
// its queue id.
func send(t testing.TB, addr, from string, to []string, body string) string {
	t.Helper()
	c, greet := testenv.Dial(t, addr)
	if greet.Code != 220 {
		t.Fatalf("greeting: %s", greet)
	}
	c.Expect("EHLO client.example.test", 250)
	c.Expect("MAIL FROM:<"+from+">", 250)
	for _, r := range to {
		c.Expect("RCPT TO:<"+r+">", 250)
	}
	c.Expect("DATA", 354)
	c.Send(body + ".\r\n")
	r := c.Read()
	if r.Code != 250 {
		t.Fatalf("end of data: %s", r)
	}
	c.Expect("QUIT", 221)
	_, id, _ := strings.Cut(r.Text(), "queued as ")
	return strings.TrimSpace(id)
}

func (h *harness) send(from string, to []string, body string) string {
	h.t.Helper()
	return send(h.t, h.smtpAddr, from, to, body)
}

// api calls the admin API and decodes the JSON answer into out (if not nil).
func (h *harness) api(method, path string, out any) int {
	h.t.Helper()
	var resp *http.Response
	var err error
	for try := 0; try < 20; try++ {
		// Right after a config load the admin server is being replaced:
		// a connection may be reset before the request reaches a handler.
		req, _ := http.NewRequest(method, "http://"+h.env.Admin+path, nil)
		if resp, err = adminClient.Do(req); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			h.t.Fatalf("%s %s: decoding %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

// adminClient opens a connection per request: each config load replaces
// the admin server, and a kept-alive connection to the old one is reset.
var adminClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

func (h *harness) list() []queue.EntryInfo {
	h.t.Helper()
	var out []queue.EntryInfo
	if code := h.api("GET", "/smtp/queue", &out); code != 200 {
		h.t.Fatalf("GET /smtp/queue: %d", code)
	}
	return out
}

// waitEmpty waits until the queue has no entries.
func (h *harness) waitEmpty(timeout time.Duration) {
	h.t.Helper()
	var last []queue.EntryInfo
	if !testenv.WaitFor(timeout, func() bool { last = h.list(); return len(last) == 0 }) {
		b, _ := json.MarshalIndent(last, "", "  ")
		h.t.Fatalf("the queue is not empty after %v:\n%s", timeout, b)
	}
}

// aliceMail returns the messages in alice's Maildir.
func (h *harness) aliceMail() [][]byte {
	h.t.Helper()
	var out [][]byte
	for _, f := range testenv.Maildir(h.t, h.env.Path("maildir"), "example.test", "alice") {
		b, err := os.ReadFile(f)
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// publishDKIM puts the queue's DKIM records into the test DNS.
func (h *harness) publishDKIM() []queue.DKIMRecord {
	h.t.Helper()
	var recs []queue.DKIMRecord
	if code := h.api("GET", "/smtp/dkim", &recs); code != 200 || len(recs) == 0 {
		h.t.Fatalf("GET /smtp/dkim: %d %v", code, recs)
	}
	for _, r := range recs {
		h.dns.Add(h.t, r.Zone)
	}
	return recs
}

// verifyDKIM checks the message's DKIM signatures against the test DNS and
// returns the domains with a valid one.
func (h *harness) verifyDKIM(data []byte) []string {
	h.t.Helper()
	res, err := smtpapp.NewResolver(&smtpapp.ResolverConfig{Servers: []string{h.dns.Addr}})
	if err != nil {
		h.t.Fatal(err)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(data), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return res.LookupTXT(context.Background(), name) },
	})
	if err != nil {
		h.t.Fatalf("DKIM verification: %v", err)
	}
	var ok []string
	for _, v := range vs {
		if v.Err != nil {
			h.t.Errorf("DKIM signature of %s does not verify: %v", v.Domain, v.Err)
			continue
		}
		ok = append(ok, v.Domain)
	}
	return ok
}
