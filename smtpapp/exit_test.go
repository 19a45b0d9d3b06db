package smtpapp_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/emersion/go-smtp"
)

// TestExitEndsSessions: when the process exits (SIGTERM), no client is
// cut off without a word (RFC 5321 3.8): a session waiting for a command,
// parked or live, on the current config or on an older one still
// finishing after a reload, gets 421 4.3.2; a message still arriving gets
// 451 and is not stored, then 421; and the process exits at once, not
// after the grace period. It runs the real binary, as the signal ends the
// process.
func TestExitEndsSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Caddy binary")
	}
	env := testenv.New(t)
	addr, p, cfg := runBinaryMX(t, env, parkFast(), func(app, srv map[string]any) {
		app["grace_period"] = "5m" // exiting must not wait for it
		// Clients from 127.0.0.2 wait a minute for the greeting.
		srv["handlers"] = []any{map[string]any{"handler": "tarpit", "greeting_delay": "1m", "exempt": []string{"127.0.0.1"}}}
	})

	// A session of an older config, still finishing after a reload.
	old, _ := testenv.Dial(t, addr)
	old.Expect("EHLO client.example.org", 250)
	old.Expect("MAIL FROM:<sender@example.org>", 250)
	reload(t, env, cfg)
	old.Expect("RCPT TO:<alice@example.test>", 250) // on its old config still

	parked, _ := testenv.Dial(t, addr)
	parked.Expect("EHLO client.example.org", 250)
	waitParked(t, env, 1)
	inMail, _ := testenv.Dial(t, addr) // in a transaction: never parks
	inMail.Expect("EHLO client.example.org", 250)
	inMail.Expect("MAIL FROM:<sender@example.org>", 250)
	sending, _ := testenv.Dial(t, addr)
	sending.Expect("EHLO client.example.org", 250)
	sending.StartMessage("sender@example.org", "alice@example.test")
	sending.Send("Subject: cut by the exit\r\n\r\nfirst half\r\n")
	// Held by the tarpit before its greeting.
	greeting := testenv.DialFromNoGreeting(t, "127.0.0.2", addr)
	time.Sleep(100 * time.Millisecond) // the body is read and waiting, the greeting held

	start := terminate(t, p)
	expect := func(name string, c *testenv.Client, code int, enhanced string) {
		t.Helper()
		if r := c.Read(); r.Code != code || !strings.HasPrefix(r.Text(), enhanced) {
			t.Errorf("%s session at the exit: got %s, want %d %s", name, r, code, enhanced)
		}
	}
	expect("old-config", old, 421, "4.3.2")
	expect("parked", parked, 421, "4.3.2")
	expect("in-transaction", inMail, 421, "4.3.2")
	expect("sending", sending, 451, "4.3.0")
	expect("sending", sending, 421, "4.3.2")
	expect("awaiting-greeting", greeting, 421, "4.3.2")
	for name, c := range map[string]*testenv.Client{"old-config": old, "parked": parked, "in-transaction": inMail, "sending": sending, "awaiting-greeting": greeting} {
		if !c.Closed() {
			t.Errorf("%s session open after the exit", name)
		}
	}
	// Nothing was being stored: no wait for it (exitWait is 10 s).
	if d := waitExited(t, p, start); d > 3*time.Second {
		t.Errorf("exited %v after SIGTERM, want at once", d)
	} else {
		t.Logf("exited %v after SIGTERM", d.Round(time.Millisecond))
	}
	if n := len(aliceMail(t, env)); n != 0 {
		t.Fatalf("a message cut by the exit was stored (%d files)", n)
	}
}

// runBinaryMX runs the real binary (cmd/caddy) on an MX config (mxApp
// with mods) written to a file: the signal tests need a process of their
// own. It returns the MX address, the process and the config file.
func runBinaryMX(t *testing.T, env *testenv.Env, mods ...func(app, srv map[string]any)) (string, *testenv.Caddy, string) {
	t.Helper()
	bin := testenv.BuildCaddy(t, "github.com/caddy-smtp/caddy-smtp/cmd/caddy")
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg := env.Path("caddy.json")
	if err := os.WriteFile(cfg, env.Config(mxApp(env, addr, mods...), nil), 0o600); err != nil {
		t.Fatal(err)
	}
	return addr, testenv.RunCaddy(t, bin, cfg, env.Path("caddy.log"), addr), cfg
}

// terminate sends SIGTERM and returns when it did.
func terminate(t *testing.T, p *testenv.Caddy) time.Time {
	t.Helper()
	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	return start
}

// waitExited waits for the process to exit cleanly after terminate and
// returns how long after the signal.
func waitExited(t *testing.T, p *testenv.Caddy, start time.Time) time.Duration {
	t.Helper()
	switch ok, err := p.Wait(15 * time.Second); {
	case !ok:
		t.Fatal("caddy still running 15 s after SIGTERM")
	case err != nil:
		t.Errorf("caddy exited with %v:\n%s", err, p.Output())
	}
	return time.Since(start)
}

// reload makes the running process load cfg again (Cache-Control:
// must-revalidate: even an unchanged config is reloaded).
func reload(t *testing.T, env *testenv.Env, cfg string) {
	t.Helper()
	body, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+env.Admin+"/load", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("reload: %s %s", resp.Status, msg)
	}
}

// slowLMTP is an LMTP server (go-smtp in LMTP mode) that takes its time
// over each message: a store still running when the process exits.
type slowLMTP struct {
	delay   time.Duration
	started chan struct{} // a message's data has arrived
	mu      sync.Mutex
	stored  int
}

func (s *slowLMTP) NewSession(*smtp.Conn) (smtp.Session, error) { return slowLMTPSession{s}, nil }

type slowLMTPSession struct{ s *slowLMTP }

func (slowLMTPSession) Reset()                               {}
func (slowLMTPSession) Logout() error                        { return nil }
func (slowLMTPSession) Mail(string, *smtp.MailOptions) error { return nil }
func (slowLMTPSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (slowLMTPSession) Data(io.Reader) error                 { return errors.New("not LMTP") }
func (ss slowLMTPSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	io.Copy(io.Discard, r)
	ss.s.started <- struct{}{}
	time.Sleep(ss.s.delay)
	ss.s.mu.Lock()
	ss.s.stored++
	ss.s.mu.Unlock()
	status.SetStatus("alice@example.test", nil)
	return nil
}

// TestExitWaitsForStoring: a message whose store is still running when
// the process exits is stored and gets its 250 before the 421 and the
// exit: nothing the client sent in full is lost or left unanswered.
func TestExitWaitsForStoring(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Caddy binary")
	}
	env := testenv.New(t)
	sock := env.Path("lmtp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	backend := &slowLMTP{delay: 1500 * time.Millisecond, started: make(chan struct{}, 1)}
	lmtp := smtp.NewServer(backend)
	lmtp.LMTP = true
	lmtp.Domain = "dovecot.example.test"
	go lmtp.Serve(ln)
	t.Cleanup(func() { lmtp.Close() })

	addr, p, _ := runBinaryMX(t, env, func(app, _ map[string]any) {
		app["local_delivery"] = map[string]any{"target": "lmtp", "address": "unix/" + sock}
	})

	c, _ := testenv.Dial(t, addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("Subject: stored across the exit\r\n\r\nbody\r\n.\r\n")
	select {
	case <-backend.started:
	case <-time.After(10 * time.Second):
		t.Fatalf("the message never reached the LMTP server:\n%s", p.Output())
	}
	start := terminate(t, p)
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("message being stored at the exit: %s", r)
	}
	if r := c.Read(); r.Code != 421 || !strings.HasPrefix(r.Text(), "4.3.2") {
		t.Errorf("after the 250: %s", r)
	}
	if d := waitExited(t, p, start); d < backend.delay/2 || d > backend.delay+3*time.Second {
		t.Errorf("exited %v after SIGTERM; the store took %v", d, backend.delay)
	}
	backend.mu.Lock()
	defer backend.mu.Unlock()
	if backend.stored != 1 {
		t.Fatalf("stored %d messages, want 1", backend.stored)
	}
}
